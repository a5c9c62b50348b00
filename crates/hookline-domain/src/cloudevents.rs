//! CloudEvents 1.0 over the Kafka protocol binding: turns a record that carries a
//! CloudEvent, in binary or structured content mode, into an [`Event`].
//!
//! - **Structured mode**: the `content-type` header is `application/cloudevents+json`
//!   (parameters such as `; charset=utf-8` allowed) and the record value is the JSON
//!   event format: `specversion`, `id`, `source`, `type`, optional `time`,
//!   `datacontenttype`, `data` or `data_base64`, and extensions at the top level.
//! - **Binary mode**: a `ce_specversion` header is present; every attribute is a
//!   `ce_<name>` header, the `content-type` header is the data's media type and the
//!   record value is the data itself.
//!
//! The event id is derived from `source` and `id` (see [`from_record`]), so the same
//! CloudEvent read twice yields the same [`Event::id`] and two producers that reuse an
//! id under different sources never collide.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::event::{validate_name, Event, FieldError};
use crate::ids;
use crate::position::RecordPosition;

/// The only CloudEvents `specversion` accepted.
pub const SPEC_VERSION: &str = "1.0";

/// The extension attribute that holds the tenant unless configured otherwise.
pub const DEFAULT_TENANT_ATTRIBUTE: &str = "tenant";

/// Media type (without parameters) that marks a structured-mode record.
const STRUCTURED_JSON: &str = "application/cloudevents+json";

/// Prefix of every CloudEvents media type; the ones other than
/// [`STRUCTURED_JSON`] (other formats, batches) are not supported.
const CLOUDEVENTS_MEDIA_PREFIX: &str = "application/cloudevents";

/// Header that holds the content type (the event format in structured mode, the
/// data's media type in binary mode).
const CONTENT_TYPE: &str = "content-type";

/// Prefix of attribute headers in binary mode.
const HEADER_PREFIX: &str = "ce_";

/// How CloudEvents map onto Hookline events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventsConfig {
    /// Which record attribute holds the tenant: the extension attribute of that name
    /// in structured mode, the header `ce_<name>` in binary mode. Default `tenant`.
    pub tenant_attribute: String,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        Self {
            tenant_attribute: DEFAULT_TENANT_ATTRIBUTE.to_owned(),
        }
    }
}

/// Reads a Kafka record as a CloudEvent.
///
/// Returns `None` when the record is not a CloudEvent (neither a structured
/// `content-type` nor a `ce_specversion` header): the caller then treats it as a native
/// envelope. Returns `Some(Err(_))` when it is a CloudEvent but unusable; the error
/// names the attribute as the record spells it (`ce_type` in binary mode, `type` in
/// structured mode; tenant errors always name `tenant`).
///
/// Mapping: the id is `evt_` and the first 128 bits (hex) of SHA-256 over the
/// length-prefixed `source` and `id`; the type is `type`; the tenant is the configured
/// tenant attribute (required); `occurred_at` is `time`, else the record timestamp,
/// else now; data is the CloudEvent's data (`{}` when it has none).
pub fn from_record(
    headers: &[(String, Vec<u8>)],
    value: Option<&[u8]>,
    position: RecordPosition<'_>,
    config: &CloudEventsConfig,
) -> Option<Result<Event, FieldError>> {
    if let Some(content_type) =
        header(headers, CONTENT_TYPE).and_then(|v| std::str::from_utf8(v).ok())
    {
        let essence = media_essence(content_type);
        if essence == STRUCTURED_JSON {
            return Some(structured(value, position, config));
        }
        if essence.starts_with(CLOUDEVENTS_MEDIA_PREFIX) {
            return Some(Err(FieldError::new(
                CONTENT_TYPE,
                format!("unsupported CloudEvents content type `{essence}`: only {STRUCTURED_JSON} (one event per record) is supported"),
            )));
        }
    }
    let specversion_header = format!("{HEADER_PREFIX}specversion");
    header(headers, &specversion_header)?;
    Some(binary(headers, value, position, config))
}

/// Where the attributes come from, which decides how errors name them.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// `ce_<name>` headers.
    Binary,
    /// Top-level members of the JSON envelope.
    Structured,
}

impl Mode {
    /// The name of `attribute` as this mode's records spell it.
    fn field(self, attribute: &str) -> String {
        match self {
            Mode::Binary => format!("{HEADER_PREFIX}{attribute}"),
            Mode::Structured => attribute.to_owned(),
        }
    }

    /// Where `attribute` is expected, for messages.
    fn describe(self, attribute: &str) -> String {
        match self {
            Mode::Binary => format!("header `{}`", self.field(attribute)),
            Mode::Structured => format!("attribute `{attribute}`"),
        }
    }
}

/// A binary-mode record: attributes in `ce_` headers, the value is the data.
fn binary(
    headers: &[(String, Vec<u8>)],
    value: Option<&[u8]>,
    position: RecordPosition<'_>,
    config: &CloudEventsConfig,
) -> Result<Event, FieldError> {
    let lookup = |attribute: &str| -> Result<Option<String>, FieldError> {
        let name = Mode::Binary.field(attribute);
        match header(headers, &name) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| FieldError::new(name, "must be UTF-8")),
        }
    };
    let data = || {
        let content_type = match header(headers, CONTENT_TYPE) {
            None => None,
            Some(bytes) => Some(
                std::str::from_utf8(bytes)
                    .map_err(|_| FieldError::new(CONTENT_TYPE, "must be UTF-8"))?,
            ),
        };
        decode_data(value.unwrap_or_default(), content_type, "data")
    };
    build(Mode::Binary, lookup, data, position, config)
}

/// A structured-mode record: the value is the JSON event format.
fn structured(
    value: Option<&[u8]>,
    position: RecordPosition<'_>,
    config: &CloudEventsConfig,
) -> Result<Event, FieldError> {
    let bytes = match value {
        Some(bytes) if !bytes.is_empty() => bytes,
        _ => return Err(FieldError::new("$", "record has no value")),
    };
    let parsed: Value = serde_json::from_slice(bytes)
        .map_err(|e| FieldError::new("$", format!("not valid JSON: {e}")))?;
    let Value::Object(object) = parsed else {
        return Err(FieldError::new("$", "a CloudEvent must be a JSON object"));
    };
    let lookup = |attribute: &str| string_member(&object, attribute);
    let data = || structured_data(&object);
    build(Mode::Structured, lookup, data, position, config)
}

/// The data of a structured CloudEvent: `data` as is, or `data_base64` decoded.
fn structured_data(object: &Map<String, Value>) -> Result<Value, FieldError> {
    let content_type = string_member(object, "datacontenttype")?;
    let data = object.get("data").filter(|v| !v.is_null());
    let data_base64 = object.get("data_base64").filter(|v| !v.is_null());
    match (data, data_base64) {
        (Some(_), Some(_)) => Err(FieldError::new(
            "data_base64",
            "must not be present together with data",
        )),
        (Some(data), None) => Ok(data.clone()),
        (None, Some(Value::String(encoded))) => {
            let bytes = BASE64
                .decode(encoded)
                .map_err(|e| FieldError::new("data_base64", format!("not valid base64: {e}")))?;
            decode_data(&bytes, content_type.as_deref(), "data_base64")
        }
        (None, Some(_)) => Err(FieldError::new("data_base64", "must be a base64 string")),
        (None, None) => Ok(Value::Object(Map::new())),
    }
}

/// The common mapping of both modes. `lookup` yields an attribute's string value
/// (`None` when absent); `data` yields the payload and runs only once every attribute
/// is valid.
fn build(
    mode: Mode,
    lookup: impl Fn(&str) -> Result<Option<String>, FieldError>,
    data: impl FnOnce() -> Result<Value, FieldError>,
    position: RecordPosition<'_>,
    config: &CloudEventsConfig,
) -> Result<Event, FieldError> {
    let specversion = required(mode, "specversion", lookup("specversion")?)?;
    if specversion != SPEC_VERSION {
        return Err(FieldError::new(
            mode.field("specversion"),
            format!("unsupported specversion `{specversion}`: only {SPEC_VERSION} is supported"),
        ));
    }
    let ce_id = required(mode, "id", lookup("id")?)?;
    let source = required(mode, "source", lookup("source")?)?;

    let event_type = required(mode, "type", lookup("type")?)?;
    validate_name(&event_type).map_err(|message| FieldError::new(mode.field("type"), message))?;
    if event_type.contains('*') {
        return Err(FieldError::new(mode.field("type"), "must not contain '*'"));
    }

    let tenant_attribute = config.tenant_attribute.as_str();
    let tenant = lookup(tenant_attribute)?.ok_or_else(|| {
        FieldError::new(
            "tenant",
            format!(
                "is required: expected the CloudEvents {}",
                mode.describe(tenant_attribute)
            ),
        )
    })?;
    validate_name(&tenant).map_err(|message| {
        FieldError::new(
            "tenant",
            format!("{message} (from the {})", mode.describe(tenant_attribute)),
        )
    })?;

    let occurred_at = match lookup("time")? {
        Some(text) => DateTime::parse_from_rfc3339(&text)
            .map_err(|e| FieldError::new(mode.field("time"), format!("not RFC 3339: {e}")))?
            .with_timezone(&Utc),
        None => position.timestamp.unwrap_or_else(Utc::now),
    };

    Ok(Event {
        id: ids::cloudevent_id(&source, &ce_id),
        event_type,
        tenant,
        occurred_at,
        // Built from the parsed value: written as compact JSON with sorted keys, the
        // same bytes whatever the producer's formatting.
        data: data()?.into(),
        channels: Vec::new(),
    })
}

/// Checks that a required attribute is present and not empty.
fn required(mode: Mode, attribute: &str, value: Option<String>) -> Result<String, FieldError> {
    match value {
        None => Err(FieldError::new(mode.field(attribute), "is required")),
        Some(text) if text.is_empty() => {
            Err(FieldError::new(mode.field(attribute), "must not be empty"))
        }
        Some(text) => Ok(text),
    }
}

/// A top-level member of the JSON envelope that must be a string when present (JSON
/// `null` counts as absent).
fn string_member(object: &Map<String, Value>, key: &str) -> Result<Option<String>, FieldError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(FieldError::new(key, "must be a string")),
    }
}

/// Turns raw data bytes into the event's data: JSON when the content type is absent or
/// JSON-like (`null` and empty give `{}`), else a (lossy) UTF-8 string. Errors name
/// `field`.
fn decode_data(bytes: &[u8], content_type: Option<&str>, field: &str) -> Result<Value, FieldError> {
    if bytes.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match content_type {
        Some(content_type) if !is_json_media_type(content_type) => {
            Ok(Value::String(String::from_utf8_lossy(bytes).into_owned()))
        }
        _ => match serde_json::from_slice(bytes) {
            Ok(Value::Null) => Ok(Value::Object(Map::new())),
            Ok(value) => Ok(value),
            Err(e) => Err(FieldError::new(
                field,
                format!(
                    "not valid JSON (content type {}): {e}",
                    content_type.unwrap_or("absent, so application/json")
                ),
            )),
        },
    }
}

/// Whether a media type denotes JSON: `application/json`, `text/json` or any `+json`
/// structured syntax suffix.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = media_essence(content_type);
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// A media type without its parameters, trimmed and lowercased.
fn media_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The value of the first header called `name` (compared case-insensitively).
fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SOURCE: &str = "/payments/eu-1";
    const TYPE: &str = "com.stripe.payment.succeeded";

    fn position(timestamp: Option<DateTime<Utc>>) -> RecordPosition<'static> {
        RecordPosition {
            topic: "hookline.events",
            partition: 2,
            offset: 41,
            timestamp,
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// Headers to replace (`Some`) or remove (`None`).
    type Overrides<'a> = &'a [(&'a str, Option<&'a str>)];

    /// A complete binary-mode payment event, with `overrides` replacing or (value
    /// `None`) removing headers.
    fn binary_headers(overrides: &[(&str, Option<&str>)]) -> Vec<(String, Vec<u8>)> {
        let mut pairs = vec![
            ("ce_specversion", "1.0"),
            ("ce_id", "pi_3PqR8x2eZvKYlo2C1"),
            ("ce_source", SOURCE),
            ("ce_type", TYPE),
            ("ce_time", "2026-03-14T09:26:53.589Z"),
            ("ce_tenant", "acme"),
            ("content-type", "application/json"),
        ];
        for (name, value) in overrides {
            pairs.retain(|(k, _)| k != name);
            if let Some(value) = value {
                pairs.push((name, value));
            }
        }
        headers(&pairs)
    }

    fn structured_headers() -> Vec<(String, Vec<u8>)> {
        headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )])
    }

    fn payment_envelope() -> Value {
        json!({
            "specversion": "1.0",
            "id": "pi_3PqR8x2eZvKYlo2C1",
            "source": SOURCE,
            "type": TYPE,
            "time": "2026-03-14T10:26:53.589+01:00",
            "datacontenttype": "application/json",
            "tenant": "acme",
            "data": {"payment_intent": "pi_3PqR8x2eZvKYlo2C1", "amount": 129900, "currency": "eur"}
        })
    }

    fn read(
        headers: &[(String, Vec<u8>)],
        value: Option<&[u8]>,
        timestamp: Option<DateTime<Utc>>,
    ) -> Option<Result<Event, FieldError>> {
        from_record(
            headers,
            value,
            position(timestamp),
            &CloudEventsConfig::default(),
        )
    }

    fn read_structured(envelope: &Value) -> Result<Event, FieldError> {
        let bytes = serde_json::to_vec(envelope).unwrap();
        read(&structured_headers(), Some(&bytes), None).expect("a CloudEvent")
    }

    fn read_binary(overrides: &[(&str, Option<&str>)], value: &[u8]) -> Result<Event, FieldError> {
        read(&binary_headers(overrides), Some(value), None).expect("a CloudEvent")
    }

    #[test]
    fn binary_mode_payment_event() {
        let value =
            br#"{"payment_intent": "pi_3PqR8x2eZvKYlo2C1", "amount": 129900, "currency": "eur"}"#;
        let event = read_binary(&[], value).unwrap();
        assert_eq!(event.id, ids::cloudevent_id(SOURCE, "pi_3PqR8x2eZvKYlo2C1"));
        assert!(event.id.starts_with("evt_"));
        assert_eq!(event.id.len(), 4 + 32);
        assert_eq!(event.event_type, TYPE);
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.occurred_at, at("2026-03-14T09:26:53.589Z"));
        assert_eq!(
            event.data,
            json!({"payment_intent": "pi_3PqR8x2eZvKYlo2C1", "amount": 129900, "currency": "eur"})
        );
    }

    #[test]
    fn structured_mode_payment_event() {
        let event = read_structured(&payment_envelope()).unwrap();
        assert_eq!(event.id, ids::cloudevent_id(SOURCE, "pi_3PqR8x2eZvKYlo2C1"));
        assert_eq!(event.event_type, TYPE);
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.occurred_at, at("2026-03-14T09:26:53.589Z"));
        assert_eq!(event.data.value()["amount"], json!(129900));
    }

    #[test]
    fn both_modes_of_one_cloudevent_give_the_same_event() {
        let value =
            br#"{"payment_intent": "pi_3PqR8x2eZvKYlo2C1", "amount": 129900, "currency": "eur"}"#;
        assert_eq!(
            read_binary(&[], value).unwrap(),
            read_structured(&payment_envelope()).unwrap()
        );
    }

    #[test]
    fn header_names_and_content_type_are_case_insensitive() {
        let bytes = serde_json::to_vec(&payment_envelope()).unwrap();
        let event = read(
            &headers(&[(
                "Content-Type",
                "Application/CloudEvents+JSON ; charset=UTF-8",
            )]),
            Some(&bytes),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(event.tenant, "acme");

        let event = read(
            &headers(&[
                ("CE_SpecVersion", "1.0"),
                ("ce_id", "inv_1"),
                ("ce_source", "/billing"),
                ("ce_type", "invoice.paid"),
                ("ce_Tenant", "globex"),
            ]),
            Some(b"{}"),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(event.tenant, "globex");
    }

    #[test]
    fn tenant_attribute_is_configurable() {
        let config = CloudEventsConfig {
            tenant_attribute: "merchantid".into(),
        };
        let mut envelope = payment_envelope();
        envelope.as_object_mut().unwrap().remove("tenant");
        envelope["merchantid"] = json!("acct_1Nv0FG");
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let event = from_record(&structured_headers(), Some(&bytes), position(None), &config)
            .unwrap()
            .unwrap();
        assert_eq!(event.tenant, "acct_1Nv0FG");

        let headers = binary_headers(&[("ce_tenant", None), ("ce_merchantid", Some("acct_9"))]);
        let event = from_record(&headers, Some(b"{}"), position(None), &config)
            .unwrap()
            .unwrap();
        assert_eq!(event.tenant, "acct_9");

        // The default attribute is not consulted any more.
        let headers = binary_headers(&[]);
        let err = from_record(&headers, Some(b"{}"), position(None), &config)
            .unwrap()
            .unwrap_err();
        assert_eq!(err.field, "tenant");
        assert!(err.message.contains("`ce_merchantid`"), "{}", err.message);
    }

    #[test]
    fn missing_tenant_names_the_expected_attribute() {
        let err = read_binary(&[("ce_tenant", None)], b"{}").unwrap_err();
        assert_eq!(err.field, "tenant");
        assert!(err.message.starts_with("is required"), "{}", err.message);
        assert!(
            err.message.contains("header `ce_tenant`"),
            "{}",
            err.message
        );

        let mut envelope = payment_envelope();
        envelope.as_object_mut().unwrap().remove("tenant");
        let err = read_structured(&envelope).unwrap_err();
        assert_eq!(err.field, "tenant");
        assert!(err.message.starts_with("is required"), "{}", err.message);
        assert!(
            err.message.contains("attribute `tenant`"),
            "{}",
            err.message
        );

        let err = read_binary(&[("ce_tenant", Some("acme corp"))], b"{}").unwrap_err();
        assert_eq!(err.field, "tenant");
        assert!(err.message.starts_with("must not contain whitespace"));
    }

    #[test]
    fn wrong_specversion_is_an_error() {
        let err = read_binary(&[("ce_specversion", Some("0.3"))], b"{}").unwrap_err();
        assert_eq!(err.field, "ce_specversion");
        assert!(err.message.contains("0.3"), "{}", err.message);

        let mut envelope = payment_envelope();
        envelope["specversion"] = json!("0.3");
        assert_eq!(read_structured(&envelope).unwrap_err().field, "specversion");

        envelope.as_object_mut().unwrap().remove("specversion");
        let err = read_structured(&envelope).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            ("specversion", "is required")
        );
    }

    #[test]
    fn errors_name_the_attribute_as_the_record_spells_it() {
        let binary_cases: [(Overrides, &str, &str); 6] = [
            (&[("ce_type", None)], "ce_type", "is required"),
            (
                &[("ce_type", Some("payment.*"))],
                "ce_type",
                "must not contain '*'",
            ),
            (&[("ce_type", Some(""))], "ce_type", "must not be empty"),
            (&[("ce_id", None)], "ce_id", "is required"),
            (&[("ce_source", Some(""))], "ce_source", "must not be empty"),
            (&[("ce_time", Some("yesterday"))], "ce_time", "not RFC 3339"),
        ];
        for (overrides, field, message) in binary_cases {
            let err = read_binary(overrides, b"{}").unwrap_err();
            assert_eq!(err.field, field, "{overrides:?}");
            assert!(
                err.message.starts_with(message),
                "{overrides:?}: {}",
                err.message
            );
        }

        let structured_cases = [
            ("type", json!(null), "type", "is required"),
            ("type", json!(42), "type", "must be a string"),
            (
                "type",
                json!("payment succeeded"),
                "type",
                "must not contain whitespace",
            ),
            ("id", json!(""), "id", "must not be empty"),
            ("source", json!(null), "source", "is required"),
            ("time", json!("14/03/2026"), "time", "not RFC 3339"),
            ("time", json!(1710408413), "time", "must be a string"),
            (
                "datacontenttype",
                json!(7),
                "datacontenttype",
                "must be a string",
            ),
        ];
        for (key, value, field, message) in structured_cases {
            let mut envelope = payment_envelope();
            envelope[key] = value;
            let err = read_structured(&envelope).unwrap_err();
            assert_eq!(err.field, field, "{key}");
            assert!(err.message.starts_with(message), "{key}: {}", err.message);
        }

        let mut headers = binary_headers(&[("ce_id", None)]);
        headers.push(("ce_id".into(), vec![0xff, 0xfe]));
        let err = read(&headers, Some(b"{}"), None).unwrap().unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.message.as_str()),
            ("ce_id", "must be UTF-8")
        );
    }

    #[test]
    fn malformed_structured_records_are_errors_on_the_whole_value() {
        for value in [
            Some(&b"{\"specversion\": "[..]),
            Some(&b"[1, 2]"[..]),
            Some(&b""[..]),
            None,
        ] {
            let err = read(&structured_headers(), value, None)
                .unwrap()
                .unwrap_err();
            assert_eq!(err.field, "$", "{value:?}");
        }
    }

    #[test]
    fn unsupported_cloudevents_formats_are_errors() {
        let batch = headers(&[("content-type", "application/cloudevents-batch+json")]);
        let err = read(&batch, Some(b"[]"), None).unwrap().unwrap_err();
        assert_eq!(err.field, "content-type");
    }

    #[test]
    fn data_base64_is_decoded_by_its_content_type() {
        let mut envelope = payment_envelope();
        let object = envelope.as_object_mut().unwrap();
        object.remove("data");
        object.insert(
            "data_base64".into(),
            json!(BASE64.encode(br#"{"refund_id": "re_1", "amount": 5000}"#)),
        );
        assert_eq!(
            read_structured(&envelope).unwrap().data,
            json!({"refund_id": "re_1", "amount": 5000})
        );

        // Absent datacontenttype means JSON, as in the JSON event format.
        envelope.as_object_mut().unwrap().remove("datacontenttype");
        assert_eq!(
            read_structured(&envelope).unwrap().data.value()["amount"],
            json!(5000)
        );

        let camt = "<Document><BkToCstmrStmt><Id>STMT-2026-03-14</Id></BkToCstmrStmt></Document>";
        envelope["datacontenttype"] = json!("application/xml");
        envelope["data_base64"] = json!(BASE64.encode(camt));
        assert_eq!(read_structured(&envelope).unwrap().data, json!(camt));

        envelope["data_base64"] = json!(BASE64.encode([b'o', b'k', 0xff]));
        envelope["datacontenttype"] = json!("application/octet-stream");
        assert_eq!(
            read_structured(&envelope).unwrap().data,
            json!("ok\u{fffd}")
        );

        envelope["data_base64"] = json!("not base64!");
        assert_eq!(read_structured(&envelope).unwrap_err().field, "data_base64");

        envelope["datacontenttype"] = json!("application/json");
        envelope["data_base64"] = json!(BASE64.encode("{oops"));
        assert_eq!(read_structured(&envelope).unwrap_err().field, "data_base64");

        envelope["data"] = json!({"amount": 1});
        let err = read_structured(&envelope).unwrap_err();
        assert_eq!(err.field, "data_base64");
        assert!(err.message.contains("together with data"));
    }

    #[test]
    fn non_json_binary_data_is_kept_as_text() {
        let csv = b"payout_id,amount,currency\npo_1,250000,eur\n";
        let event = read_binary(&[("content-type", Some("text/csv; charset=utf-8"))], csv).unwrap();
        assert_eq!(
            event.data,
            json!("payout_id,amount,currency\npo_1,250000,eur\n")
        );

        let event = read_binary(
            &[("content-type", Some("application/octet-stream"))],
            &[0x50, 0x4b, 0xff],
        )
        .unwrap();
        assert_eq!(event.data, json!("PK\u{fffd}"));
    }

    #[test]
    fn json_like_binary_data_is_parsed() {
        let value = br#"{"ledger": "gl-4000"}"#;
        for content_type in [
            Some("application/json; charset=utf-8"),
            Some("application/vnd.acme.ledger+json"),
            Some("text/json"),
            None,
        ] {
            let event = read_binary(&[("content-type", content_type)], value).unwrap();
            assert_eq!(event.data, json!({"ledger": "gl-4000"}), "{content_type:?}");
        }
        let err = read_binary(&[], b"{oops").unwrap_err();
        assert_eq!(err.field, "data");
    }

    #[test]
    fn missing_data_is_an_empty_object() {
        for value in [None, Some(&b""[..]), Some(&b"null"[..])] {
            let event = read(&binary_headers(&[]), value, None).unwrap().unwrap();
            assert_eq!(event.data, json!({}), "{value:?}");
        }
        let mut envelope = payment_envelope();
        envelope.as_object_mut().unwrap().remove("data");
        assert_eq!(read_structured(&envelope).unwrap().data, json!({}));
        envelope["data"] = Value::Null;
        assert_eq!(read_structured(&envelope).unwrap().data, json!({}));
    }

    #[test]
    fn time_falls_back_to_the_record_timestamp_then_now() {
        let record_time = at("2026-03-14T09:27:00Z");
        let headers = binary_headers(&[("ce_time", None)]);
        let event = read(&headers, Some(b"{}"), Some(record_time))
            .unwrap()
            .unwrap();
        assert_eq!(event.occurred_at, record_time);

        let mut envelope = payment_envelope();
        envelope.as_object_mut().unwrap().remove("time");
        let bytes = serde_json::to_vec(&envelope).unwrap();
        let event = read(&structured_headers(), Some(&bytes), Some(record_time))
            .unwrap()
            .unwrap();
        assert_eq!(event.occurred_at, record_time);

        let before = Utc::now();
        let event = read(&headers, Some(b"{}"), None).unwrap().unwrap();
        assert!(event.occurred_at >= before && event.occurred_at <= Utc::now());

        // An explicit time wins over the record timestamp.
        let event = read(&binary_headers(&[]), Some(b"{}"), Some(record_time))
            .unwrap()
            .unwrap();
        assert_eq!(event.occurred_at, at("2026-03-14T09:26:53.589Z"));
    }

    #[test]
    fn ids_depend_on_source_and_id_only() {
        let first = read_binary(&[], b"{}").unwrap();
        // Redelivered at another position, later: same event id.
        let redelivered = from_record(
            &binary_headers(&[]),
            Some(b"{}"),
            RecordPosition {
                topic: "hookline.events",
                partition: 5,
                offset: 9000,
                timestamp: Some(Utc::now()),
            },
            &CloudEventsConfig::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(first.id, redelivered.id);

        let other_source = read_binary(&[("ce_source", Some("/payments/us-1"))], b"{}").unwrap();
        assert_ne!(first.id, other_source.id);
        let other_id = read_binary(&[("ce_id", Some("pi_3PqR8x2eZvKYlo2C2"))], b"{}").unwrap();
        assert_ne!(first.id, other_id.id);

        // The same length-prefixed SHA-256 scheme as the ids module.
        assert_eq!(
            first.id,
            crate::ids::operational_event_id(SOURCE, "pi_3PqR8x2eZvKYlo2C1")
        );
        // Length prefixes keep the parts apart.
        assert_ne!(
            ids::cloudevent_id("/payments/eu-1", "a"),
            ids::cloudevent_id("/payments/eu-", "1a")
        );
    }

    #[test]
    fn records_that_are_not_cloudevents_are_none() {
        let native = br#"{"type": "invoice.paid", "tenant": "acme", "data": {}}"#;
        assert!(read(&[], Some(native), None).is_none());
        assert!(read(&[], None, None).is_none());
        let json = headers(&[("content-type", "application/json")]);
        assert!(read(&json, Some(native), None).is_none());
        let unrelated = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert!(read(&unrelated, Some(native), None).is_none());
    }
}
