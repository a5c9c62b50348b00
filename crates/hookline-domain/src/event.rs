//! The event envelope: what producers send, what sits on the events topic, and the
//! body a receiver gets.

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::ids::{self, EventId};

/// Longest accepted event type, tenant or id.
const MAX_NAME_LEN: usize = 128;

/// A finance event as it travels through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id (`evt_…` when Hookline made it; any producer id otherwise).
    pub id: EventId,
    /// Dotted event type, e.g. `invoice.paid`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The tenant (the payment processor's customer) the event belongs to.
    pub tenant: String,
    /// When the event happened at its source.
    pub occurred_at: DateTime<Utc>,
    /// The event's payload, as JSON text (parsed only for the readers that need it).
    pub data: EventData,
    /// Channels the event is published on (subscriptions with channels receive only
    /// events on one of them). Empty: no channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// An event's `data`: its JSON text, shared by every copy of the event (one per
/// delivery task) and written out verbatim, so that routing and delivery build no tree
/// they do not read. The parsed [`Value`] is built by the first call to
/// [`value`](Self::value) (filters, schema checks, the entity id) and kept for the
/// other copies.
///
/// Whatever makes one checks the text as parsing it into a [`Value`] would (syntax,
/// number range, nesting depth), so what was refused before is refused still, and
/// `value()` never meets text it cannot parse.
#[derive(Clone)]
pub struct EventData(Arc<DataInner>);

struct DataInner {
    raw: Box<RawValue>,
    parsed: OnceLock<Value>,
}

impl EventData {
    /// `{}`, the data of an event that has none.
    pub fn empty() -> Self {
        Self::from_value(Value::Object(Map::new()))
    }

    /// The data `value` holds, as compact JSON with its keys sorted (as a [`Value`]
    /// serializes: what receivers have always got); the tree is kept as the parsed one.
    pub fn from_value(value: Value) -> Self {
        // Infallible: a Value's keys are strings and its numbers finite.
        let raw = serde_json::value::to_raw_value(&value).expect("a JSON value serializes");
        Self(Arc::new(DataInner {
            raw,
            parsed: OnceLock::from(value),
        }))
    }

    /// The data in `raw`, kept as written; an error when parsing it into a [`Value`]
    /// would fail (a number out of range, nesting deeper than 128, …).
    pub fn from_raw(raw: Box<RawValue>) -> serde_json::Result<Self> {
        check(raw.get())?;
        Ok(Self::checked(raw))
    }

    /// Text already checked, e.g. as part of the record around it.
    fn checked(raw: Box<RawValue>) -> Self {
        Self(Arc::new(DataInner {
            raw,
            parsed: OnceLock::new(),
        }))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.raw.get()
    }

    /// The JSON text as a raw value, to embed verbatim in a larger document.
    pub fn raw(&self) -> &RawValue {
        &self.0.raw
    }

    /// The parsed tree, built on the first call (by any copy) and kept.
    pub fn value(&self) -> &Value {
        self.0.parsed.get_or_init(|| {
            let parsed = serde_json::from_str(self.0.raw.get());
            // Checked when made, so it parses; null would only hide a bug.
            debug_assert!(parsed.is_ok(), "event data that does not parse");
            parsed.unwrap_or(Value::Null)
        })
    }

    /// Whether the tree has been built (or was given): for tests and diagnostics.
    pub fn is_parsed(&self) -> bool {
        self.0.parsed.get().is_some()
    }

    /// Whether `self` and `other` are copies of one another, sharing text and tree.
    pub fn shares_with(&self, other: &EventData) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<Value> for EventData {
    fn from(value: Value) -> Self {
        Self::from_value(value)
    }
}

impl Default for EventData {
    fn default() -> Self {
        Self::empty()
    }
}

/// Equal when the texts are: the same bytes to a receiver.
impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.shares_with(other) || self.get() == other.get()
    }
}

/// Equal when the parsed tree is `other`, whatever the formatting.
impl PartialEq<Value> for EventData {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventData({})", self.get())
    }
}

impl fmt::Display for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_raw(Box::<RawValue>::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// Checks that `text` parses into a [`Value`], without building one.
fn check(text: &str) -> serde_json::Result<()> {
    serde_json::from_str::<Checked>(text).map(|_| ())
}

/// A JSON value read and dropped as it is read. It asks the parser for what a
/// [`Value`] does (`deserialize_any` all the way down), so it is refused exactly where
/// a `Value` would be: the raw-value scan alone checks neither number range nor depth.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_none<E: de::Error>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Checked, D::Error> {
        Checked::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key::<Checked>()?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }
}

/// A record's envelope: every member but `data` parsed, `data` kept as text.
struct Envelope<'a> {
    fields: Map<String, Value>,
    data: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope {
            fields: Map::new(),
            data: None,
        };
        // A member given twice counts once, the last, as in a parsed Value.
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                envelope.data = Some(map.next_value()?);
            } else {
                let value = map.next_value()?;
                envelope.fields.insert(key, value);
            }
        }
        Ok(envelope)
    }
}

/// The full webhook body; fields in key order, as receivers have always got them.
#[derive(Serialize)]
struct FullBody<'a> {
    data: &'a RawValue,
    id: &'a str,
    tenant: &'a str,
    timestamp: String,
    #[serde(rename = "type")]
    event_type: &'a str,
}

/// The thin webhook body; fields in key order.
#[derive(Serialize)]
struct ThinBody<'a> {
    entity_id: Value,
    id: &'a str,
    tenant: &'a str,
    timestamp: String,
    #[serde(rename = "type")]
    event_type: &'a str,
}

/// Most channels on one event.
const MAX_CHANNELS: usize = 10;

/// A field of an event that failed validation, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the offending field, e.g. `type` or `[2].tenant`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, its field path placed under `prefix` (e.g. an array index).
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// Where a missing id or timestamp comes from when an event arrives without one.
#[derive(Debug, Clone, Copy)]
pub enum Defaults<'a> {
    /// Accepted over HTTP: a fresh id, and now.
    Fresh,
    /// Read from a topic: an id derived from the record's position and the record's
    /// timestamp, so that re-reading the record yields the same event.
    Record {
        /// Topic the record was read from.
        topic: &'a str,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its Kafka timestamp, if it has one.
        timestamp: Option<DateTime<Utc>>,
    },
}

impl Event {
    /// Builds an event from a JSON object, filling a missing `id` and `occurred_at`
    /// from `defaults`. Errors name the first offending field.
    pub fn from_json(value: Value, defaults: Defaults<'_>) -> Result<Self, FieldError> {
        let Value::Object(object) = value else {
            return Err(FieldError::new("$", "an event must be a JSON object"));
        };
        Self::from_members(object, None, defaults)
    }

    /// The event of an object's members; `data` is the object's own `data` member
    /// unless given (as text, by a caller that kept it out of the object).
    fn from_members(
        mut object: Map<String, Value>,
        data: Option<EventData>,
        defaults: Defaults<'_>,
    ) -> Result<Self, FieldError> {
        let event_type = take_name(&mut object, "type", true)?.unwrap_or_default();
        if event_type.contains('*') {
            return Err(FieldError::new("type", "must not contain '*'"));
        }
        let tenant = take_name(&mut object, "tenant", true)?.unwrap_or_default();
        let id = match take_name(&mut object, "id", false)? {
            Some(id) => EventId::from(id),
            None => match defaults {
                Defaults::Fresh => ids::new_event_id(),
                Defaults::Record {
                    topic,
                    partition,
                    offset,
                    ..
                } => ids::derived_event_id(topic, partition, offset),
            },
        };
        let occurred_at = match object.remove("occurred_at") {
            None | Some(Value::Null) => match defaults {
                Defaults::Record {
                    timestamp: Some(ts),
                    ..
                } => ts,
                _ => Utc::now(),
            },
            Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
                .map_err(|e| FieldError::new("occurred_at", format!("not RFC 3339: {e}")))?
                .with_timezone(&Utc),
            Some(_) => return Err(FieldError::new("occurred_at", "must be an RFC 3339 string")),
        };
        let data = match data {
            Some(data) => data,
            None => match object.remove("data") {
                None | Some(Value::Null) => EventData::empty(),
                Some(data) => EventData::from_value(data),
            },
        };
        let channels = parse_names("channels", object.remove("channels"), MAX_CHANNELS)?;
        Ok(Self {
            id,
            event_type,
            tenant,
            occurred_at,
            data,
            channels,
        })
    }

    /// Parses an event from a topic record's value. Its `data` is kept as the record
    /// spells it (checked, not parsed): see [`EventData`].
    pub fn from_record_value(bytes: &[u8], defaults: Defaults<'_>) -> Result<Self, FieldError> {
        let invalid = |e: serde_json::Error| FieldError::new("$", format!("not valid JSON: {e}"));
        // First read as a Value would be, for the same refusals and messages; then only
        // the envelope is built, `data` left as text.
        serde_json::from_slice::<Checked>(bytes).map_err(invalid)?;
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(FieldError::new("$", "an event must be a JSON object"));
        }
        let envelope: Envelope<'_> = serde_json::from_slice(bytes).map_err(invalid)?;
        let data = match envelope.data {
            None => EventData::empty(),
            Some(raw) if raw.get() == "null" => EventData::empty(),
            Some(raw) => EventData::checked(raw.to_owned()),
        };
        Self::from_members(envelope.fields, Some(data), defaults)
    }

    /// The JSON body POSTed to receivers:
    /// `{"data", "id", "tenant", "timestamp", "type"}` (keys in this order).
    pub fn webhook_body(&self) -> serde_json::Result<Vec<u8>> {
        // Serialized straight from the event's fields, `data` copied in as text.
        serde_json::to_vec(&FullBody {
            data: self.data.raw(),
            id: &self.id,
            tenant: &self.tenant,
            timestamp: self.timestamp(),
            event_type: &self.event_type,
        })
    }

    /// The thin body, for receivers that must not hold card or bank data:
    /// `{"entity_id", "id", "tenant", "timestamp", "type"}`; the receiver fetches the
    /// rest from the source system.
    pub fn thin_webhook_body(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&ThinBody {
            entity_id: self.entity_id(),
            id: &self.id,
            tenant: &self.tenant,
            timestamp: self.timestamp(),
            event_type: &self.event_type,
        })
    }

    /// The id of the entity the event is about: `data.id`, else `data.<resource>_id`
    /// where the resource is the type's first segment (`invoice.paid` →
    /// `data.invoice_id`), else null.
    pub fn entity_id(&self) -> Value {
        let resource = self.event_type.split('.').next().unwrap_or_default();
        let data = self.data.value();
        [data.get("id"), data.get(format!("{resource}_id"))]
            .into_iter()
            .flatten()
            .find(|v| v.is_string() || v.is_number())
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The key ingest writes the event under: `<tenant>/<entity id>` when the event
    /// names its entity, so one entity's events share a partition and keep their order;
    /// the event id otherwise.
    pub fn partition_key(&self) -> String {
        match self.entity_id() {
            Value::String(entity) => format!("{}/{entity}", self.tenant),
            Value::Number(entity) => format!("{}/{entity}", self.tenant),
            _ => self.id.to_string(),
        }
    }

    fn timestamp(&self) -> String {
        self.occurred_at
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// Removes `key` from `object` and checks it is a name: a non-empty string of at most
/// 128 characters without whitespace or control characters.
fn take_name(
    object: &mut Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<Option<String>, FieldError> {
    match object.remove(key) {
        None | Some(Value::Null) if required => Err(FieldError::new(key, "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            validate_name(&text).map_err(|message| FieldError::new(key, message))?;
            Ok(Some(text))
        }
        Some(_) => Err(FieldError::new(key, "must be a string")),
    }
}

/// Reads an optional array of names (channels), at most `max` of them.
pub fn parse_names(
    field: &str,
    value: Option<Value>,
    max: usize,
) -> Result<Vec<String>, FieldError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(FieldError::new(field, "must be an array of strings")),
    };
    if items.len() > max {
        return Err(FieldError::new(field, format!("at most {max} entries")));
    }
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::String(name) = item else {
            return Err(FieldError::new(format!("{field}[{i}]"), "must be a string"));
        };
        validate_name(&name).map_err(|m| FieldError::new(format!("{field}[{i}]"), m))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Checks that `text` is usable as a type, tenant or id.
pub fn validate_name(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("must not be empty");
    }
    if text.len() > MAX_NAME_LEN {
        return Err("must be at most 128 characters");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    Ok(())
}

/// Reads an ingest request body, already parsed as JSON: one event object or an array
/// of them. Errors on array elements carry the index, e.g. `[3].tenant`. (A body that
/// is not JSON at all is the caller's to report: it is not a field error.)
pub fn parse_batch(value: Value, max_events: usize) -> Result<Vec<Event>, FieldError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(FieldError::new("$", "the array holds no event"));
            }
            if items.len() > max_events {
                return Err(FieldError::new(
                    "$",
                    format!("at most {max_events} events per request"),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    Event::from_json(item, Defaults::Fresh).map_err(|e| e.within(&format!("[{i}]")))
                })
                .collect()
        }
        other => Ok(vec![Event::from_json(other, Defaults::Fresh)?]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::DeliveryTask;
    use serde_json::json;

    fn record_defaults(ts: Option<DateTime<Utc>>) -> Defaults<'static> {
        Defaults::Record {
            topic: "hookline.events",
            partition: 1,
            offset: 7,
            timestamp: ts,
        }
    }

    #[test]
    fn parses_a_full_event() {
        let event = Event::from_json(
            json!({"id": "evt_1", "type": "invoice.paid", "tenant": "acme",
                   "occurred_at": "2026-11-24T10:00:00+01:00", "data": {"amount": 12}}),
            Defaults::Fresh,
        )
        .unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.event_type, "invoice.paid");
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.occurred_at.to_rfc3339(), "2026-11-24T09:00:00+00:00");
        assert_eq!(event.data, json!({"amount": 12}));
    }

    #[test]
    fn record_without_id_gets_position_derived_id_and_record_time() {
        let ts = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let value = json!({"type": "payment.succeeded", "tenant": "acme"});
        let a = Event::from_json(value.clone(), record_defaults(Some(ts))).unwrap();
        let b = Event::from_json(value, record_defaults(Some(ts))).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id, ids::derived_event_id("hookline.events", 1, 7));
        assert_eq!(a.occurred_at, ts);
        assert_eq!(a.data, json!({}));
    }

    #[test]
    fn fresh_event_without_id_gets_a_new_id() {
        let value = json!({"type": "expense.created", "tenant": "acme"});
        let a = Event::from_json(value.clone(), Defaults::Fresh).unwrap();
        let b = Event::from_json(value, Defaults::Fresh).unwrap();
        assert!(a.id.starts_with("evt_"));
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"tenant": "acme"}), "type", "is required"),
            (json!({"type": "a.b"}), "tenant", "is required"),
            (
                json!({"type": "", "tenant": "acme"}),
                "type",
                "must not be empty",
            ),
            (
                json!({"type": 5, "tenant": "acme"}),
                "type",
                "must be a string",
            ),
            (
                json!({"type": "a.*", "tenant": "acme"}),
                "type",
                "must not contain '*'",
            ),
            (
                json!({"type": "a", "tenant": "ac me"}),
                "tenant",
                "must not contain whitespace or control characters",
            ),
            (
                json!({"type": "a", "tenant": "t", "occurred_at": "yesterday"}),
                "occurred_at",
                "",
            ),
            (
                json!({"type": "a", "tenant": "t", "occurred_at": 5}),
                "occurred_at",
                "must be an RFC 3339 string",
            ),
            (
                json!(["not", "an", "object"]),
                "$",
                "an event must be a JSON object",
            ),
        ];
        for (value, field, message) in cases {
            let err = Event::from_json(value.clone(), Defaults::Fresh).unwrap_err();
            assert_eq!(err.field, field, "{value}");
            assert!(err.message.starts_with(message), "{value}: {}", err.message);
        }
    }

    #[test]
    fn batch_errors_carry_the_index() {
        let body = json!([{"type": "a", "tenant": "t"}, {"type": "b"}]);
        let err = parse_batch(body, 100).unwrap_err();
        assert_eq!(err.field, "[1].tenant");
        assert_eq!(parse_batch(json!([]), 100).unwrap_err().field, "$");
        let too_many = json!(vec![json!({"type": "a", "tenant": "t"}); 3]);
        assert!(parse_batch(too_many.clone(), 2).is_err());
        assert_eq!(parse_batch(too_many, 3).unwrap().len(), 3);
    }

    #[test]
    fn webhook_body_has_the_contract_fields() {
        let event = Event::from_json(
            json!({"id": "evt_9", "type": "invoice.paid", "tenant": "acme",
                   "occurred_at": "2026-11-24T10:00:00Z", "data": {"invoice_id": "in_1"}}),
            Defaults::Fresh,
        )
        .unwrap();
        // Byte for byte what receivers got when the body was built as a JSON value.
        let expected = json!({"id": "evt_9", "type": "invoice.paid", "tenant": "acme",
                   "timestamp": "2026-11-24T10:00:00.000Z", "data": {"invoice_id": "in_1"}});
        assert_eq!(
            event.webhook_body().unwrap(),
            serde_json::to_vec(&expected).unwrap()
        );
    }

    #[test]
    fn thin_body_keeps_only_identifiers() {
        let event = Event::from_json(
            json!({"id": "evt_9", "type": "payment.succeeded", "tenant": "acme",
                   "occurred_at": "2026-11-24T10:00:00Z",
                   "data": {"payment_id": "pay_1", "card": {"last4": "4242"}, "iban": "DE89..."}}),
            Defaults::Fresh,
        )
        .unwrap();
        let expected = json!({"id": "evt_9", "type": "payment.succeeded", "tenant": "acme",
                   "timestamp": "2026-11-24T10:00:00.000Z", "entity_id": "pay_1"});
        assert_eq!(
            event.thin_webhook_body().unwrap(),
            serde_json::to_vec(&expected).unwrap()
        );
        let with_id = Event::from_json(
            json!({"type": "customer.changed", "tenant": "t", "data": {"id": 77, "customer_id": "c"}}),
            Defaults::Fresh,
        )
        .unwrap();
        assert_eq!(with_id.entity_id(), json!(77));
        let none = Event::from_json(
            json!({"type": "x.y", "tenant": "t", "id": "evt_3"}),
            Defaults::Fresh,
        )
        .unwrap();
        assert_eq!(none.entity_id(), Value::Null);
        assert_eq!(event.partition_key(), "acme/pay_1");
        assert_eq!(with_id.partition_key(), "t/77");
        assert_eq!(none.partition_key(), "evt_3");
    }

    #[test]
    fn channels_are_validated() {
        let ok = Event::from_json(
            json!({"type": "a.b", "tenant": "t", "channels": ["eu", "eu", "cards"]}),
            Defaults::Fresh,
        )
        .unwrap();
        assert_eq!(ok.channels, ["eu", "cards"]);
        let bad = Event::from_json(
            json!({"type": "a.b", "tenant": "t", "channels": ["ok", 5]}),
            Defaults::Fresh,
        );
        assert_eq!(bad.unwrap_err().field, "channels[1]");
        let bad = Event::from_json(
            json!({"type": "a.b", "tenant": "t", "channels": "eu"}),
            Defaults::Fresh,
        );
        assert_eq!(bad.unwrap_err().field, "channels");
    }

    /// The body as it was built before `data` was kept as text: the event's fields in
    /// a parsed JSON value, serialized.
    fn body_as_before(event: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "data": event["data"], "id": event["id"], "tenant": event["tenant"],
            "timestamp": "2026-11-24T10:00:00.000Z", "type": event["type"],
        }))
        .unwrap()
    }

    #[test]
    fn bodies_of_events_through_ingest_are_byte_for_byte_as_before() {
        let request = json!({"id": "evt_9", "type": "invoice.paid", "tenant": "acme",
            "occurred_at": "2026-11-24T10:00:00Z",
            "data": {"z": [1.5, -0.0, 1e21, 12345678901234567890u64, null],
                     "a": "caf\u{e9} \"q\" \\ \u{1} \u{2028}",
                     "invoice_id": "in_1", "nested": {"y": {}, "b": true, "a": []}, "big": 2.5e-8}});
        // Ingest: parsed from the request, written to the events topic.
        let accepted = Event::from_json(request.clone(), Defaults::Fresh).unwrap();
        let record = serde_json::to_vec(&accepted).unwrap();
        // The router: read from the record, a task per subscription written.
        let routed = Event::from_record_value(&record, record_defaults(None)).unwrap();
        let task = serde_json::to_vec(&DeliveryTask::new(routed, "sub_1", Utc::now())).unwrap();
        // Delivery: the task read, the body built.
        let delivered: DeliveryTask = serde_json::from_slice(&task).unwrap();
        assert!(!delivered.event.data.is_parsed());
        assert_eq!(
            delivered.event.webhook_body().unwrap(),
            body_as_before(&request)
        );
        assert_eq!(accepted.webhook_body().unwrap(), body_as_before(&request));
    }

    #[test]
    fn data_produced_straight_to_kafka_keeps_its_formatting() {
        let data = "{ \"b\" : 1.50,\n  \"a\": [\"caf\\u00e9\", 1E2], \"a\": 3 }";
        let record = format!(
            r#"{{"id": "evt_1", "type": "a.b", "tenant": "t", "occurred_at": "2026-11-24T10:00:00Z", "data": {data} }}"#
        );
        let event = Event::from_record_value(record.as_bytes(), record_defaults(None)).unwrap();
        assert_eq!(event.data.get(), data);
        assert!(!event.data.is_parsed(), "nothing read the tree");
        let body = String::from_utf8(event.webhook_body().unwrap()).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"data":{data},"id":"evt_1","tenant":"t","timestamp":"2026-11-24T10:00:00.000Z","type":"a.b"}}"#
            )
        );
        // Through a task and back, byte for byte.
        let task =
            serde_json::to_vec(&DeliveryTask::new(event.clone(), "sub_1", Utc::now())).unwrap();
        let again: DeliveryTask = serde_json::from_slice(&task).unwrap();
        assert_eq!(again.event.data.get(), data);
        assert_eq!(again.event, event);
        assert_eq!(again.event.webhook_body().unwrap(), body.as_bytes());
        // Its tree is the one a parse of the whole record gives (the last `a` wins).
        assert_eq!(event.data, json!({"a": 3, "b": 1.5}));
    }

    #[test]
    fn lazy_parse_equals_eager_parse() {
        let samples = [
            r#"{"amount": 12, "lines": [{"sku": "x", "qty": 2.25}], "note": "\u00e9\n"}"#,
            r#"[1, -2, 3.0, 18446744073709551615, -9223372036854775808, 1.7976931348623157e308]"#,
            r#""just a string""#,
            "42",
            "true",
            "null",
            "{}",
        ];
        for text in samples {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            let data = EventData::from_raw(raw).unwrap();
            assert!(!data.is_parsed(), "{text}");
            let eager: Value = serde_json::from_str(text).unwrap();
            assert_eq!(data.value(), &eager, "{text}");
            assert!(data.is_parsed());
            // A copy shares the tree already built.
            let copy = data.clone();
            assert!(copy.shares_with(&data) && copy.is_parsed());
            assert!(std::ptr::eq(copy.value(), data.value()));
            // Made from the tree: the text ingest writes, compact with sorted keys.
            let from_value = EventData::from_value(eager.clone());
            assert_eq!(from_value.get(), serde_json::to_string(&eager).unwrap());
            assert!(from_value.is_parsed());
        }
    }

    #[test]
    fn entity_id_and_partition_key_read_raw_data() {
        let record = br#"{"id": "evt_3", "type": "payment.succeeded", "tenant": "acme",
                          "data": {"card": {"last4": "4242"}, "payment_id": "pay_1"}}"#;
        let event = Event::from_record_value(record, record_defaults(None)).unwrap();
        assert_eq!(event.entity_id(), json!("pay_1"));
        assert_eq!(event.partition_key(), "acme/pay_1");
        let record = br#"{"type": "customer.changed", "tenant": "t", "data": {"id": 77}}"#;
        let event = Event::from_record_value(record, record_defaults(None)).unwrap();
        assert_eq!(event.partition_key(), "t/77");
    }

    #[test]
    fn data_is_refused_where_a_parsed_value_refused_it() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let mut cases: Vec<Vec<u8>> = [
            "1e400",
            "-1e400",
            r#""\ud800""#,
            r#""\udc00x""#,
            "\"tab\tinside\"",
            "[1,]",
            r#"{"a" 1}"#,
            "01",
            "1.",
            "nul",
        ]
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .collect();
        cases.push(b"\"\xff\xfe\"".to_vec());
        for depth in [126, 127, 128, 129, 200] {
            cases.push(nested(depth).into_bytes());
        }
        let mut refused = 0;
        for data in &cases {
            let mut record = br#"{"type": "a.b", "tenant": "t", "data": "#.to_vec();
            record.extend_from_slice(data);
            record.push(b'}');
            let before = serde_json::from_slice::<Value>(&record);
            let now = Event::from_record_value(&record, record_defaults(None));
            let shown = String::from_utf8_lossy(data);
            assert_eq!(now.is_ok(), before.is_ok(), "{shown}");
            if let (Err(before), Err(now)) = (before, now) {
                refused += 1;
                assert_eq!(now.field, "$", "{shown}");
                assert_eq!(now.message, format!("not valid JSON: {before}"), "{shown}");
            }
            // On its own, as a task carries it: refused where a Value refused it.
            if let Ok(text) = std::str::from_utf8(data) {
                let alone = serde_json::from_str::<EventData>(text);
                let value = serde_json::from_str::<Value>(text);
                assert_eq!(alone.is_ok(), value.is_ok(), "{shown}");
            }
        }
        // All refused but 126 levels, the deepest a record's data may nest (the parser
        // allows 127, the envelope being one).
        assert_eq!(refused, cases.len() - 1);
        assert!(EventData::from_raw(serde_json::from_str("1e400").unwrap()).is_err());
    }

    #[test]
    fn records_that_are_no_object_are_refused_as_before() {
        for record in [&b"[1, 2]"[..], b" \"evt\"", b"17", b"null"] {
            let err = Event::from_record_value(record, record_defaults(None)).unwrap_err();
            assert_eq!(err.message, "an event must be a JSON object");
        }
        let err = Event::from_record_value(br#"{"type": "a"} x"#, record_defaults(None));
        let message = err.unwrap_err().message;
        assert!(
            message.starts_with("not valid JSON: trailing characters"),
            "{message}"
        );
        for data in ["null", " null "] {
            let record = format!(r#"{{"type": "a.b", "tenant": "t", "data": {data}}}"#);
            let event = Event::from_record_value(record.as_bytes(), record_defaults(None));
            assert_eq!(event.unwrap().data.get(), "{}");
        }
    }

    #[test]
    fn envelope_round_trips_through_serde() {
        let event =
            Event::from_json(json!({"type": "a.b", "tenant": "t"}), Defaults::Fresh).unwrap();
        let bytes = serde_json::to_vec(&event).unwrap();
        let again = Event::from_record_value(&bytes, record_defaults(None)).unwrap();
        assert_eq!(event, again);
    }
}
