//! The event envelope: what producers send, what sits on the events topic, and the
//! body a receiver gets.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
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
    /// The event's payload.
    pub data: Value,
    /// Channels the event is published on (subscriptions with channels receive only
    /// events on one of them). Empty: no channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// The full webhook body; fields in key order, as receivers have always got them.
#[derive(Serialize)]
struct FullBody<'a> {
    data: &'a Value,
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
        let Value::Object(mut object) = value else {
            return Err(FieldError::new("$", "an event must be a JSON object"));
        };
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
        let data = match object.remove("data") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(data) => data,
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

    /// Parses an event from a topic record's value.
    pub fn from_record_value(bytes: &[u8], defaults: Defaults<'_>) -> Result<Self, FieldError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| FieldError::new("$", format!("not valid JSON: {e}")))?;
        Self::from_json(value, defaults)
    }

    /// The JSON body POSTed to receivers:
    /// `{"data", "id", "tenant", "timestamp", "type"}` (keys in this order).
    pub fn webhook_body(&self) -> serde_json::Result<Vec<u8>> {
        // Serialized straight from the event's fields: no copy of `data` on the way.
        serde_json::to_vec(&FullBody {
            data: &self.data,
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
        [self.data.get("id"), self.data.get(format!("{resource}_id"))]
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

    #[test]
    fn envelope_round_trips_through_serde() {
        let event =
            Event::from_json(json!({"type": "a.b", "tenant": "t"}), Defaults::Fresh).unwrap();
        let bytes = serde_json::to_vec(&event).unwrap();
        let again = Event::from_record_value(&bytes, record_defaults(None)).unwrap();
        assert_eq!(event, again);
    }
}
