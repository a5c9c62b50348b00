//! Subscriptions: who wants which events of a tenant, where, signed with which secret.
//!
//! They live as JSON records on the compacted subscriptions topic, keyed by id; a
//! tombstone (null value) deletes one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::event::{parse_names, validate_name, Event, FieldError};
use crate::filter::Filter;
use crate::health::SubscriptionHealth;
use crate::ids::SubscriptionId;
use crate::signing::WebhookSecret;

/// Longest accepted description.
const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most patterns one subscription may hold.
const MAX_PATTERNS: usize = 64;
/// Most channels one subscription may name.
const MAX_CHANNELS: usize = 32;
/// Most custom headers, and their total size.
const MAX_HEADERS: usize = 20;
const MAX_HEADER_BYTES: usize = 4096;
/// Headers a subscription may not set: Hookline's own and the transport's.
const RESERVED_HEADERS: [&str; 9] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "idempotency-key",
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
];

/// What a delivery's body holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// The whole event.
    #[default]
    Full,
    /// Identifiers only (`id`, `type`, `tenant`, `timestamp`, `entity_id`), for
    /// receivers that must not hold card or bank data.
    Thin,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Which event types a subscription receives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventTypePattern {
    /// Exactly this type, e.g. `payment.succeeded`.
    Exact(String),
    /// Every type below a dotted prefix: `invoice.*` holds `invoice` and matches
    /// `invoice.paid` and `invoice.payment.failed`, not `invoice` itself.
    Prefix(String),
    /// `*`: every type.
    All,
}

impl EventTypePattern {
    /// Parses `*`, `prefix.*` or an exact type.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        let (body, is_prefix) = match text.strip_suffix(".*") {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        validate_name(body).map_err(|m| format!("pattern {text:?} {m}"))?;
        if body.contains('*') {
            return Err(format!(
                "pattern {text:?}: '*' is allowed only alone or as a final \".*\""
            ));
        }
        Ok(if is_prefix {
            Self::Prefix(body.to_owned())
        } else {
            Self::Exact(body.to_owned())
        })
    }

    /// Whether an event of `event_type` matches.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Self::All => true,
            Self::Exact(exact) => exact == event_type,
            Self::Prefix(prefix) => event_type
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.starts_with('.')),
        }
    }
}

impl std::fmt::Display for EventTypePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Exact(exact) => f.write_str(exact),
            Self::Prefix(prefix) => write!(f, "{prefix}.*"),
        }
    }
}

impl Serialize for EventTypePattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventTypePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn serialize_secret<S: Serializer>(secret: &WebhookSecret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&secret.expose())
}

fn deserialize_secret<'de, D: Deserializer<'de>>(d: D) -> Result<WebhookSecret, D::Error> {
    let text = String::deserialize(d)?;
    WebhookSecret::parse(&text).map_err(serde::de::Error::custom)
}

/// A subscription as stored on the subscriptions topic. Fields are private: a
/// subscription is made only by validation ([`NewSubscription::into_subscription`],
/// [`SubscriptionPatch::apply`]) or [`Subscription::basic`], and read through its
/// accessors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// `sub_…` id.
    id: SubscriptionId,
    /// Tenant whose events it receives.
    tenant: String,
    /// Receiver endpoint.
    url: url::Url,
    /// Event types it receives.
    event_types: Vec<EventTypePattern>,
    /// Disabled subscriptions receive nothing.
    enabled: bool,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// Signing secret (see the docs: stored in the topic as-is until encryption at rest).
    #[serde(
        serialize_with = "serialize_secret",
        deserialize_with = "deserialize_secret"
    )]
    secret: WebhookSecret,
    /// Only events whose `data` satisfies this filter (see `docs/filters.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<Filter>,
    /// Only events published on one of these channels (all events when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    channels: Vec<String>,
    /// Full event or identifiers only.
    #[serde(default)]
    payload: PayloadMode,
    /// Extra headers sent with every delivery.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    /// Deliver one at a time, in routing order, retrying in place (see the docs).
    #[serde(default, skip_serializing_if = "is_false")]
    ordered: bool,
    /// Most requests in flight to this subscription at once (worker default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<u32>,
    /// Most requests per second to this subscription (unlimited when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<u32>,
    /// Enable generation: starts at 0 and grows each time an operator enables the
    /// subscription, which voids delivery health recorded for earlier generations (an
    /// automatic disable, the failure clock).
    #[serde(default)]
    enabled_revision: u64,
    /// Delivery health, merged in by the subscriptions view from the health topic;
    /// never part of the configuration record (workers own it, the API does not).
    #[serde(skip)]
    health: SubscriptionHealth,
    /// Creation time.
    created_at: DateTime<Utc>,
    /// Last change.
    updated_at: DateTime<Utc>,
}

impl Subscription {
    /// Its id.
    pub fn id(&self) -> &SubscriptionId {
        &self.id
    }

    /// The tenant whose events it receives.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The receiver endpoint, parsed once when the subscription was validated.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The event types it receives.
    pub fn event_types(&self) -> &[EventTypePattern] {
        &self.event_types
    }

    /// Whether its operator enabled it (see [`is_active`](Self::is_active) for whether
    /// it receives deliveries).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Free text for operators.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The signing secret.
    pub fn secret(&self) -> &WebhookSecret {
        &self.secret
    }

    /// Its payload filter, if any.
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_ref()
    }

    /// The channels it listens on (all when empty).
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// Full event or identifiers only.
    pub fn payload(&self) -> PayloadMode {
        self.payload
    }

    /// Extra headers sent with every delivery.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// Whether it is delivered one task at a time, in order.
    pub fn ordered(&self) -> bool {
        self.ordered
    }

    /// Its own limit of requests in flight, if it sets one.
    pub fn max_in_flight(&self) -> Option<u32> {
        self.max_in_flight
    }

    /// Its own limit of requests per second, if it sets one.
    pub fn rate_limit(&self) -> Option<u32> {
        self.rate_limit
    }

    /// Its enable generation (see the field's documentation).
    pub fn enabled_revision(&self) -> u64 {
        self.enabled_revision
    }

    /// When it was created.
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// When its configuration last changed.
    pub fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }

    /// This subscription with `health` merged in (the view does this; health is never
    /// part of the configuration record).
    pub fn with_health(mut self, health: SubscriptionHealth) -> Self {
        self.health = health;
        self
    }

    /// This subscription with `filter` (tests and benchmarks; the API validates
    /// filters through [`NewSubscription`]).
    pub fn with_filter(mut self, filter: Option<Filter>) -> Self {
        self.filter = filter;
        self
    }

    /// This subscription enabled or disabled by its operator.
    pub fn with_enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// An enabled subscription with a fresh secret and no options, created now.
    pub fn basic(
        id: &str,
        tenant: &str,
        url: url::Url,
        event_types: Vec<EventTypePattern>,
    ) -> Self {
        let now = Utc::now();
        Self {
            id: SubscriptionId::from(id),
            tenant: tenant.to_owned(),
            url,
            event_types,
            enabled: true,
            description: None,
            secret: WebhookSecret::generate(),
            filter: None,
            channels: Vec::new(),
            payload: PayloadMode::Full,
            headers: BTreeMap::new(),
            ordered: false,
            max_in_flight: None,
            rate_limit: None,
            enabled_revision: 0,
            health: SubscriptionHealth::default(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The delivery health that holds for the current enable generation, if any.
    pub fn current_health(&self) -> Option<&SubscriptionHealth> {
        Some(&self.health).filter(|h| h.applies_to(self.enabled_revision))
    }

    /// Since when its endpoint has been failing without a success, if it is.
    pub fn failing_since(&self) -> Option<DateTime<Utc>> {
        self.current_health().and_then(|h| h.failing_since)
    }

    /// Why the pipeline disabled it, if it did (and no operator re-enabled it since).
    pub fn disabled_reason(&self) -> Option<&str> {
        self.current_health()
            .and_then(|h| h.disabled.as_ref())
            .map(|d| d.reason.as_str())
    }

    /// Whether it receives deliveries: enabled by its operator and not disabled by the
    /// pipeline.
    pub fn is_active(&self) -> bool {
        self.enabled && self.disabled_reason().is_none()
    }

    /// Whether this subscription receives an event of `tenant` and `event_type`
    /// (its type patterns only; see [`accepts`](Self::accepts)).
    pub fn wants(&self, tenant: &str, event_type: &str) -> bool {
        self.is_active()
            && self.tenant == tenant
            && self.event_types.iter().any(|p| p.matches(event_type))
    }

    /// Whether the event's content passes this subscription's channels and filter.
    pub fn accepts_content(&self, event: &Event) -> bool {
        let on_channel =
            self.channels.is_empty() || event.channels.iter().any(|c| self.channels.contains(c));
        on_channel && self.filter.as_ref().is_none_or(|f| f.matches(&event.data))
    }

    /// Whether this subscription receives `event`: enabled, same tenant, a matching
    /// type pattern, one of its channels, and its filter.
    pub fn accepts(&self, event: &Event) -> bool {
        self.wants(&event.tenant, &event.event_type) && self.accepts_content(event)
    }
}

/// The fields a client sets when creating a subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// Tenant.
    pub tenant: Option<String>,
    /// Endpoint URL.
    pub url: Option<String>,
    /// Patterns.
    pub event_types: Option<Vec<String>>,
    /// Defaults to true.
    pub enabled: Option<bool>,
    /// Free text.
    pub description: Option<String>,
    /// A client-chosen secret (`whsec_…`); generated when absent.
    pub secret: Option<String>,
    /// Most concurrent requests.
    pub max_in_flight: Option<u32>,
    /// Most requests per second.
    pub rate_limit: Option<u32>,
    /// Payload filter.
    pub filter: Option<Value>,
    /// Channels.
    pub channels: Option<Value>,
    /// `full` (default) or `thin`.
    pub payload: Option<PayloadMode>,
    /// Custom headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Ordered delivery.
    pub ordered: Option<bool>,
}

/// The fields a client may change; absent fields keep their value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// New endpoint URL.
    pub url: Option<String>,
    /// New patterns.
    pub event_types: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New description.
    pub description: Option<String>,
    /// New concurrency limit.
    pub max_in_flight: Option<u32>,
    /// New rate limit.
    pub rate_limit: Option<u32>,
    /// New filter; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    pub filter: Option<Value>,
    /// New channels.
    pub channels: Option<Value>,
    /// New payload mode.
    pub payload: Option<PayloadMode>,
    /// New custom headers (replacing all).
    pub headers: Option<BTreeMap<String, String>>,
    /// Ordered delivery on or off.
    pub ordered: Option<bool>,
}

/// Keeps an explicit `null` as `Some(Value::Null)`, so a patch can remove a field.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl NewSubscription {
    /// Validates the request into a subscription with id `id`, created `now`.
    pub fn into_subscription(
        self,
        id: SubscriptionId,
        now: DateTime<Utc>,
    ) -> Result<Subscription, FieldError> {
        let tenant = self
            .tenant
            .ok_or_else(|| FieldError::new("tenant", "is required"))?;
        validate_name(&tenant).map_err(|m| FieldError::new("tenant", m))?;
        let url = validate_url(
            self.url
                .as_deref()
                .ok_or_else(|| FieldError::new("url", "is required"))?,
        )?;
        let event_types = validate_patterns(
            self.event_types
                .ok_or_else(|| FieldError::new("event_types", "is required"))?,
        )?;
        let secret = match self.secret {
            Some(text) => {
                WebhookSecret::parse(&text).map_err(|e| FieldError::new("secret", e.to_string()))?
            }
            None => WebhookSecret::generate(),
        };
        Ok(Subscription {
            id,
            tenant,
            url,
            event_types,
            enabled: self.enabled.unwrap_or(true),
            description: validate_description(self.description)?,
            secret,
            filter: parse_filter(self.filter)?,
            channels: parse_names("channels", self.channels, MAX_CHANNELS)?,
            payload: self.payload.unwrap_or_default(),
            headers: validate_headers(self.headers.unwrap_or_default())?,
            ordered: self.ordered.unwrap_or(false),
            max_in_flight: validate_limit("max_in_flight", self.max_in_flight)?,
            rate_limit: validate_limit("rate_limit", self.rate_limit)?,
            enabled_revision: 0,
            health: SubscriptionHealth::default(),
            created_at: now,
            updated_at: now,
        })
    }
}

impl SubscriptionPatch {
    /// Applies the patch to `current`, validating every changed field.
    pub fn apply(
        self,
        current: &Subscription,
        now: DateTime<Utc>,
    ) -> Result<Subscription, FieldError> {
        let mut next = current.clone();
        if let Some(url) = self.url {
            next.url = validate_url(&url)?;
        }
        if let Some(patterns) = self.event_types {
            next.event_types = validate_patterns(patterns)?;
        }
        if let Some(enabled) = self.enabled {
            next.enabled = enabled;
            if enabled {
                // A new enable generation: an automatic disable and the failure clock of
                // the previous one no longer hold.
                next.enabled_revision = current.enabled_revision + 1;
            }
        }
        if self.max_in_flight.is_some() {
            next.max_in_flight = validate_limit("max_in_flight", self.max_in_flight)?;
        }
        if self.rate_limit.is_some() {
            next.rate_limit = validate_limit("rate_limit", self.rate_limit)?;
        }
        if let Some(filter) = self.filter {
            next.filter = parse_filter(Some(filter))?;
        }
        if let Some(channels) = self.channels {
            next.channels = parse_names("channels", Some(channels), MAX_CHANNELS)?;
        }
        if let Some(payload) = self.payload {
            next.payload = payload;
        }
        if let Some(headers) = self.headers {
            next.headers = validate_headers(headers)?;
        }
        if let Some(ordered) = self.ordered {
            next.ordered = ordered;
        }
        if self.description.is_some() {
            next.description = validate_description(self.description)?;
        }
        next.updated_at = now;
        Ok(next)
    }
}

fn validate_url(text: &str) -> Result<url::Url, FieldError> {
    let url =
        url::Url::parse(text).map_err(|e| FieldError::new("url", format!("invalid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(FieldError::new("url", "scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FieldError::new("url", "must have a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldError::new("url", "must not carry credentials"));
    }
    Ok(url)
}

fn validate_patterns(patterns: Vec<String>) -> Result<Vec<EventTypePattern>, FieldError> {
    if patterns.is_empty() {
        return Err(FieldError::new(
            "event_types",
            "must hold at least one pattern",
        ));
    }
    if patterns.len() > MAX_PATTERNS {
        return Err(FieldError::new(
            "event_types",
            format!("at most {MAX_PATTERNS} patterns"),
        ));
    }
    let mut parsed: Vec<EventTypePattern> = Vec::with_capacity(patterns.len());
    for (i, text) in patterns.iter().enumerate() {
        let pattern = EventTypePattern::parse(text)
            .map_err(|m| FieldError::new(format!("event_types[{i}]"), m))?;
        if !parsed.contains(&pattern) {
            parsed.push(pattern);
        }
    }
    Ok(parsed)
}

fn parse_filter(value: Option<Value>) -> Result<Option<Filter>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Filter::parse(&value).map(Some),
    }
}

fn validate_headers(
    headers: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, FieldError> {
    if headers.len() > MAX_HEADERS {
        return Err(FieldError::new(
            "headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    let total: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_HEADER_BYTES {
        return Err(FieldError::new(
            "headers",
            format!("at most {MAX_HEADER_BYTES} bytes in all"),
        ));
    }
    let mut normalized = BTreeMap::new();
    for (name, value) in headers {
        let field = format!("headers.{name}");
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| FieldError::new(&field, "not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("webhook-") {
            return Err(FieldError::new(
                &field,
                "is set by Hookline and cannot be overridden",
            ));
        }
        http::HeaderValue::from_str(&value)
            .map_err(|_| FieldError::new(&field, "not a valid header value"))?;
        normalized.insert(header.as_str().to_owned(), value);
    }
    Ok(normalized)
}

fn validate_limit(field: &str, limit: Option<u32>) -> Result<Option<u32>, FieldError> {
    match limit {
        Some(0) => Err(FieldError::new(field, "must be at least 1")),
        Some(n) if n > 100_000 => Err(FieldError::new(field, "must be at most 100000")),
        other => Ok(other),
    }
}

fn validate_description(description: Option<String>) -> Result<Option<String>, FieldError> {
    match description {
        Some(text) if text.len() > MAX_DESCRIPTION_LEN => Err(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_LEN} bytes"),
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn new_sub(value: serde_json::Value) -> Result<Subscription, FieldError> {
        serde_json::from_value::<NewSubscription>(value)
            .unwrap()
            .into_subscription("sub_1".into(), Utc::now())
    }

    #[test]
    fn patterns_match_exact_prefix_and_all() {
        let p = |t| EventTypePattern::parse(t).unwrap();
        assert!(p("invoice.paid").matches("invoice.paid"));
        assert!(!p("invoice.paid").matches("invoice.paid.late"));
        assert!(p("invoice.*").matches("invoice.paid"));
        assert!(p("invoice.*").matches("invoice.payment.failed"));
        assert!(!p("invoice.*").matches("invoice"));
        assert!(!p("invoice.*").matches("invoices.paid"));
        assert!(p("*").matches("anything.at.all"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        for bad in ["", "inv*", "*.paid", "a.*.b", "a.**", "a b"] {
            assert!(EventTypePattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(EventTypePattern::parse("a.*").unwrap().to_string(), "a.*");
    }

    #[test]
    fn creates_a_subscription_with_a_generated_secret() {
        let sub = new_sub(json!({"tenant": "acme", "url": "https://erp.example/hooks",
            "event_types": ["invoice.*", "payment.succeeded", "invoice.*"]}))
        .unwrap();
        assert_eq!(sub.event_types.len(), 2, "duplicate patterns collapse");
        assert!(sub.enabled);
        assert!(sub.secret.expose().starts_with("whsec_"));
        assert!(sub.wants("acme", "invoice.paid"));
        assert!(!sub.wants("other", "invoice.paid"));
        assert!(!sub.wants("acme", "expense.created"));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (
                json!({"url": "https://x.example", "event_types": ["*"]}),
                "tenant",
            ),
            (json!({"tenant": "a", "event_types": ["*"]}), "url"),
            (
                json!({"tenant": "a", "url": "not a url", "event_types": ["*"]}),
                "url",
            ),
            (
                json!({"tenant": "a", "url": "ftp://x.example", "event_types": ["*"]}),
                "url",
            ),
            (
                json!({"tenant": "a", "url": "https://x.example"}),
                "event_types",
            ),
            (
                json!({"tenant": "a", "url": "https://x.example", "event_types": []}),
                "event_types",
            ),
            (
                json!({"tenant": "a", "url": "https://x.example", "event_types": ["ok", "b*d"]}),
                "event_types[1]",
            ),
            (
                json!({"tenant": "a", "url": "https://x.example", "event_types": ["*"], "secret": "nope"}),
                "secret",
            ),
        ];
        for (value, field) in cases {
            assert_eq!(new_sub(value.clone()).unwrap_err().field, field, "{value}");
        }
    }

    #[test]
    fn rich_fields_are_validated_and_applied() {
        let sub = new_sub(json!({"tenant": "acme", "url": "https://erp.example/hooks",
            "event_types": ["payment.*"], "payload": "thin", "ordered": true,
            "channels": ["eu"], "headers": {"X-Erp-Tenant": "42"},
            "filter": {"all": [{"field": "amount", "op": "gte", "value": 10000},
                               {"field": "currency", "op": "in", "value": ["EUR", "USD"]}]}}))
        .unwrap();
        assert_eq!(sub.payload, PayloadMode::Thin);
        assert!(sub.ordered);
        assert_eq!(
            sub.headers.get("x-erp-tenant").map(String::as_str),
            Some("42")
        );
        let event = |data: serde_json::Value, channels: &[&str]| {
            let mut e = Event::from_json(
                json!({"type": "payment.succeeded", "tenant": "acme", "data": data}),
                crate::event::Defaults::Fresh,
            )
            .unwrap();
            e.channels = channels.iter().map(|c| c.to_string()).collect();
            e
        };
        assert!(sub.accepts(&event(json!({"amount": 12000, "currency": "EUR"}), &["eu"])));
        assert!(!sub.accepts(&event(json!({"amount": 12000, "currency": "GBP"}), &["eu"])));
        assert!(!sub.accepts(&event(json!({"amount": 900, "currency": "EUR"}), &["eu"])));
        assert!(!sub.accepts(&event(json!({"amount": 12000, "currency": "EUR"}), &["us"])));
        assert!(!sub.accepts(&event(json!({"amount": 12000, "currency": "EUR"}), &[])));
        let stored = serde_json::to_vec(&sub).unwrap();
        assert_eq!(
            serde_json::from_slice::<Subscription>(&stored).unwrap(),
            sub
        );

        let bad = [
            (
                json!({"filter": {"all": [{"field": "amount", "op": "between", "value": 1}]}}),
                "filter.all[0].op",
            ),
            (
                json!({"headers": {"webhook-id": "x"}}),
                "headers.webhook-id",
            ),
            (
                json!({"headers": {"Content-Type": "text/plain"}}),
                "headers.Content-Type",
            ),
            (
                json!({"headers": {"bad header": "x"}}),
                "headers.bad header",
            ),
            (json!({"channels": ["ok", ""]}), "channels[1]"),
        ];
        for (extra, field) in bad {
            let mut body = json!({"tenant": "a", "url": "https://x.example", "event_types": ["*"]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            assert_eq!(new_sub(body.clone()).unwrap_err().field, field, "{body}");
        }
        let patch: SubscriptionPatch =
            serde_json::from_value(json!({"filter": null, "payload": "full"})).unwrap();
        let cleared = patch.apply(&sub, Utc::now()).unwrap();
        assert!(cleared.filter.is_none());
        assert_eq!(cleared.payload, PayloadMode::Full);
        assert!(cleared.ordered, "untouched fields stay");
    }

    #[test]
    fn patch_changes_only_given_fields() {
        let sub = new_sub(
            json!({"tenant": "acme", "url": "https://erp.example/hooks", "event_types": ["*"]}),
        )
        .unwrap();
        let patch: SubscriptionPatch = serde_json::from_value(json!({"enabled": false})).unwrap();
        let next = patch.apply(&sub, Utc::now()).unwrap();
        assert!(!next.enabled);
        assert_eq!(next.url, sub.url);
        assert_eq!(next.secret, sub.secret);
        assert!(!next.wants("acme", "a.b"));
        let bad: SubscriptionPatch = serde_json::from_value(json!({"event_types": []})).unwrap();
        assert_eq!(
            bad.apply(&sub, Utc::now()).unwrap_err().field,
            "event_types"
        );
    }

    #[test]
    fn health_holds_for_its_enable_generation_only() {
        let sub = new_sub(
            json!({"tenant": "acme", "url": "https://erp.example/hooks", "event_types": ["*"]}),
        )
        .unwrap();
        let now = Utc::now();
        let mut disabled = sub.clone();
        disabled.health =
            SubscriptionHealth::failing(sub.enabled_revision, now).disabled("gone", now);
        assert!(!disabled.is_active());
        assert!(!disabled.wants("acme", "a.b"));
        assert_eq!(disabled.disabled_reason(), Some("gone"));
        assert_eq!(disabled.failing_since(), Some(now));
        // The health record is not part of the stored configuration.
        let stored = serde_json::to_value(&disabled).unwrap();
        assert!(stored.get("health").is_none() && stored.get("failing_since").is_none());

        // An edit that does not enable keeps the automatic disable ...
        let edit: SubscriptionPatch =
            serde_json::from_value(json!({"url": "https://erp2.example/hooks"})).unwrap();
        assert!(!edit.apply(&disabled, now).unwrap().is_active());
        // ... re-enabling starts a new generation that the old health does not touch.
        let enable: SubscriptionPatch = serde_json::from_value(json!({"enabled": true})).unwrap();
        let enabled = enable.apply(&disabled, now).unwrap();
        assert_eq!(enabled.enabled_revision, sub.enabled_revision + 1);
        assert!(enabled.is_active());
        assert_eq!(enabled.failing_since(), None);
    }

    #[test]
    fn stored_form_round_trips_with_secret() {
        let sub = new_sub(json!({"tenant": "acme", "url": "https://erp.example/hooks", "event_types": ["invoice.*"]})).unwrap();
        let stored = serde_json::to_vec(&sub).unwrap();
        let back: Subscription = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back, sub);
    }
}
