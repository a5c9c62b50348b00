//! Subscriptions: who wants which events of a tenant, where, signed with which secret.
//!
//! They live as JSON records on the compacted subscriptions topic, keyed by id; a
//! tombstone (null value) deletes one. Signing secrets and custom header values are
//! sealed in the record ([`crate::sealing`]): only a process holding the operator's
//! keys (the API, delivery workers) can read them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::egress::UrlRules;
use crate::event::{parse_names, validate_name, Event, FieldError};
use crate::filter::Filter;
use crate::health::SubscriptionHealth;
use crate::ids::SubscriptionId;
use crate::sealing::{AtRest, Keyring, SealError};
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
/// Headers a subscription may not set: Hookline's own.
const RESERVED_HEADERS: [&str; 5] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "idempotency-key",
    "user-agent",
];
/// Headers that belong to the connection or to the message's framing, not to the
/// receiver: set by a subscription they could smuggle requests, reach a proxy or change
/// how the body is read.
const TRANSPORT_HEADERS: [&str; 16] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
    "content-type",
    "content-encoding",
    "host",
    "http2-settings",
    "forwarded",
];
/// Longest accepted overlap of a rotated secret.
const MAX_OVERLAP: chrono::TimeDelta = chrono::TimeDelta::days(30);
/// The overlap of a rotated secret when none is given.
pub const DEFAULT_OVERLAP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Where a subscription's secrets are sealed (the associated data): a value sealed for
/// one subscription or field does not open in another.
fn secret_context(id: &SubscriptionId) -> String {
    format!("{id}/secret")
}

fn header_context(id: &SubscriptionId, name: &str) -> String {
    format!("{id}/headers/{name}")
}

/// The secret a rotation replaced, still signing until `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// The replaced secret, sealed.
    secret: AtRest,
    /// End of the overlap window: deliveries after it carry only the new signature.
    until: DateTime<Utc>,
}

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
    /// Signing secret, sealed (in clear in records written before encryption at rest).
    secret: AtRest,
    /// The secret the last rotation replaced, while its overlap window lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_secret: Option<PreviousSecret>,
    /// Only events whose `data` satisfies this filter (see `docs/filters.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<Filter>,
    /// Only events published on one of these channels (all events when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    channels: Vec<String>,
    /// Full event or identifiers only.
    #[serde(default)]
    payload: PayloadMode,
    /// Extra headers sent with every delivery, their values sealed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, AtRest>,
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

    /// The current signing secret, opened with `keyring`.
    pub fn secret(&self, keyring: &Keyring) -> Result<WebhookSecret, SealError> {
        open_secret(keyring, &self.secret, &self.id)
    }

    /// The secrets deliveries are signed with at `now`: the current one, then the one
    /// a rotation replaced while its overlap window lasts.
    pub fn signing_secrets(
        &self,
        keyring: &Keyring,
        now: DateTime<Utc>,
    ) -> Result<Vec<WebhookSecret>, SealError> {
        let mut secrets = vec![self.secret(keyring)?];
        if let Some(previous) = self.previous_secret.as_ref().filter(|p| now < p.until) {
            secrets.push(open_secret(keyring, &previous.secret, &self.id)?);
        }
        Ok(secrets)
    }

    /// When the overlap window of the last rotation ends, while it has not ended at `now`.
    pub fn previous_secret_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.previous_secret
            .as_ref()
            .map(|p| p.until)
            .filter(|until| now < *until)
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

    /// The names of the extra headers sent with every delivery (their values are
    /// write-only: see [`open_headers`](Self::open_headers)).
    pub fn header_names(&self) -> impl Iterator<Item = &str> {
        self.headers.keys().map(String::as_str)
    }

    /// The extra headers sent with every delivery, their values opened with `keyring`.
    pub fn open_headers(&self, keyring: &Keyring) -> Result<Vec<(String, String)>, SealError> {
        self.headers
            .iter()
            .map(|(name, value)| {
                let value = keyring.open_text(value, &header_context(&self.id, name))?;
                Ok((name.clone(), value))
            })
            .collect()
    }

    /// Checks that every sealed value opens with `keyring` (a start-up check).
    pub fn opens_with(&self, keyring: &Keyring) -> Result<(), SealError> {
        self.signing_secrets(keyring, DateTime::<Utc>::MIN_UTC)?;
        self.open_headers(keyring).map(|_| ())
    }

    /// Whether any secret value of the record is stored in clear (a record written
    /// before encryption at rest).
    pub fn holds_clear_values(&self) -> bool {
        self.secret.is_clear()
            || self
                .previous_secret
                .as_ref()
                .is_some_and(|p| p.secret.is_clear())
            || self.headers.values().any(AtRest::is_clear)
    }

    /// This subscription with every secret value sealed with `keyring`'s first key (the
    /// API writes records this way, so a retired key or a value in clear goes away
    /// with the record's next change).
    pub fn resealed(&self, keyring: &Keyring) -> Result<Self, SealError> {
        let mut next = self.clone();
        next.secret = keyring.reseal(&self.secret, &secret_context(&self.id))?;
        if let Some(previous) = &mut next.previous_secret {
            previous.secret = keyring.reseal(&previous.secret, &secret_context(&self.id))?;
        }
        for (name, value) in &mut next.headers {
            *value = keyring.reseal(value, &header_context(&self.id, name))?;
        }
        Ok(next)
    }

    /// This subscription signing with `secret` from `now` on, the current secret still
    /// signing for `overlap` (none when zero); a rotation during an overlap window ends
    /// that window (only the two newest secrets sign).
    pub fn rotated(
        &self,
        secret: &WebhookSecret,
        overlap: std::time::Duration,
        now: DateTime<Utc>,
        keyring: &Keyring,
    ) -> Result<Self, FieldError> {
        let overlap = chrono::TimeDelta::from_std(overlap)
            .ok()
            .filter(|o| *o <= MAX_OVERLAP)
            .ok_or_else(|| FieldError::new("overlap", "must be at most 30 days"))?;
        let sealing = |e: SealError| FieldError::new("secret", e.to_string());
        let mut next = self.resealed(keyring).map_err(sealing)?;
        next.previous_secret = (overlap > chrono::TimeDelta::zero()).then(|| PreviousSecret {
            secret: next.secret.clone(),
            until: now + overlap,
        });
        next.secret = keyring.seal_text(&secret.expose(), &secret_context(&self.id));
        next.updated_at = now;
        Ok(next)
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

    /// An enabled subscription with a fresh secret and no options, created now. Its
    /// secret is stored in clear, as in records written before encryption at rest
    /// (tests and benchmarks; the API seals, see [`NewSubscription`]).
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
            secret: AtRest::Clear(WebhookSecret::generate().expose()),
            previous_secret: None,
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
        on_channel
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.matches(event.data.value()))
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

/// Opens a secret sealed for subscription `id`.
fn open_secret(
    keyring: &Keyring,
    value: &AtRest,
    id: &SubscriptionId,
) -> Result<WebhookSecret, SealError> {
    let text = keyring.open_text(value, &secret_context(id))?;
    WebhookSecret::parse(&text).map_err(|_| SealError::Malformed)
}

/// What saving a subscription needs besides the request: the operator's URL rules and
/// the keys its secrets are sealed with.
#[derive(Debug, Clone, Copy)]
pub struct Saving<'a> {
    /// Which URLs are accepted.
    pub rules: &'a UrlRules,
    /// Seals the secret and header values.
    pub keyring: &'a Keyring,
}

impl NewSubscription {
    /// Validates the request into a subscription with id `id`, created `now`, with its
    /// secret and header values sealed; returns it with its secret (shown once).
    pub fn into_subscription(
        self,
        id: SubscriptionId,
        now: DateTime<Utc>,
        saving: Saving<'_>,
    ) -> Result<(Subscription, WebhookSecret), FieldError> {
        let tenant = self
            .tenant
            .ok_or_else(|| FieldError::new("tenant", "is required"))?;
        validate_name(&tenant).map_err(|m| FieldError::new("tenant", m))?;
        let url = validate_url(
            self.url
                .as_deref()
                .ok_or_else(|| FieldError::new("url", "is required"))?,
            saving.rules,
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
        let headers = validate_headers(self.headers.unwrap_or_default())?;
        let subscription = Subscription {
            secret: saving
                .keyring
                .seal_text(&secret.expose(), &secret_context(&id)),
            previous_secret: None,
            headers: seal_headers(headers, &id, saving.keyring),
            id,
            tenant,
            url,
            event_types,
            enabled: self.enabled.unwrap_or(true),
            description: validate_description(self.description)?,
            filter: parse_filter(self.filter)?,
            channels: parse_names("channels", self.channels, MAX_CHANNELS)?,
            payload: self.payload.unwrap_or_default(),
            ordered: self.ordered.unwrap_or(false),
            max_in_flight: validate_limit("max_in_flight", self.max_in_flight)?,
            rate_limit: validate_limit("rate_limit", self.rate_limit)?,
            enabled_revision: 0,
            health: SubscriptionHealth::default(),
            created_at: now,
            updated_at: now,
        };
        Ok((subscription, secret))
    }
}

fn seal_headers(
    headers: BTreeMap<String, String>,
    id: &SubscriptionId,
    keyring: &Keyring,
) -> BTreeMap<String, AtRest> {
    headers
        .into_iter()
        .map(|(name, value)| {
            let sealed = keyring.seal_text(&value, &header_context(id, &name));
            (name, sealed)
        })
        .collect()
}

impl SubscriptionPatch {
    /// Applies the patch to `current`, validating every changed field; the result has
    /// every secret value sealed with the keyring's first key.
    pub fn apply(
        self,
        current: &Subscription,
        now: DateTime<Utc>,
        saving: Saving<'_>,
    ) -> Result<Subscription, FieldError> {
        let mut next = current
            .resealed(saving.keyring)
            .map_err(|e| FieldError::new("secret", e.to_string()))?;
        if let Some(url) = self.url {
            next.url = validate_url(&url, saving.rules)?;
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
            next.headers = seal_headers(validate_headers(headers)?, &next.id, saving.keyring);
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

fn validate_url(text: &str, rules: &UrlRules) -> Result<url::Url, FieldError> {
    let url =
        url::Url::parse(text).map_err(|e| FieldError::new("url", format!("invalid URL: {e}")))?;
    rules.check(&url).map_err(|m| FieldError::new("url", m))?;
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
        if TRANSPORT_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("proxy-") {
            return Err(FieldError::new(
                &field,
                "is a hop-by-hop or framing header and cannot be set",
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

    fn keyring() -> Keyring {
        Keyring::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn saving<'a>(rules: &'a UrlRules, keyring: &'a Keyring) -> Saving<'a> {
        Saving { rules, keyring }
    }

    fn new_sub(value: serde_json::Value) -> Result<Subscription, FieldError> {
        serde_json::from_value::<NewSubscription>(value)
            .unwrap()
            .into_subscription(
                "sub_1".into(),
                Utc::now(),
                saving(&UrlRules::default(), &keyring()),
            )
            .map(|(sub, _)| sub)
    }

    fn patch(sub: &Subscription, value: serde_json::Value) -> Result<Subscription, FieldError> {
        serde_json::from_value::<SubscriptionPatch>(value)
            .unwrap()
            .apply(sub, Utc::now(), saving(&UrlRules::default(), &keyring()))
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
        assert!(sub
            .secret(&keyring())
            .unwrap()
            .expose()
            .starts_with("whsec_"));
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
                json!({"tenant": "a", "url": "http://x.example", "event_types": ["*"]}),
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
            sub.open_headers(&keyring()).unwrap(),
            [("x-erp-tenant".to_owned(), "42".to_owned())]
        );
        assert_eq!(sub.header_names().collect::<Vec<_>>(), ["x-erp-tenant"]);
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
        let cleared = patch(&sub, json!({"filter": null, "payload": "full"})).unwrap();
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
        let next = patch(&sub, json!({"enabled": false})).unwrap();
        assert!(!next.enabled);
        assert_eq!(next.url, sub.url);
        assert_eq!(next.secret, sub.secret);
        assert!(!next.wants("acme", "a.b"));
        assert_eq!(
            patch(&sub, json!({"event_types": []})).unwrap_err().field,
            "event_types"
        );
        assert_eq!(
            patch(&sub, json!({"url": "http://erp.example/"}))
                .unwrap_err()
                .field,
            "url",
            "https only by default, on change too"
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
        assert!(
            !patch(&disabled, json!({"url": "https://erp2.example/hooks"}))
                .unwrap()
                .is_active()
        );
        // ... re-enabling starts a new generation that the old health does not touch.
        let enabled = patch(&disabled, json!({"enabled": true})).unwrap();
        assert_eq!(enabled.enabled_revision, sub.enabled_revision + 1);
        assert!(enabled.is_active());
        assert_eq!(enabled.failing_since(), None);
    }

    #[test]
    fn stored_form_round_trips_with_secret_and_header_values_sealed() {
        let sub = new_sub(json!({"tenant": "acme", "url": "https://erp.example/hooks",
            "event_types": ["invoice.*"], "headers": {"Authorization": "Bearer hunter2"}}))
        .unwrap();
        let secret = sub.secret(&keyring()).unwrap().expose();
        let stored = serde_json::to_string(&sub).unwrap();
        assert!(
            !stored.contains(&secret) && !stored.contains("hunter2"),
            "{stored}"
        );
        assert!(!format!("{sub:?}").contains("hunter2"));
        let back: Subscription = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, sub);
        assert!(back.opens_with(&keyring()).is_ok());
        let other = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        assert!(back.opens_with(&other).is_err(), "a wrong key is noticed");
    }

    #[test]
    fn records_in_clear_are_read_and_sealed_when_next_written() {
        // A record as versions before encryption at rest wrote it.
        let old = json!({"id": "sub_1", "tenant": "acme", "url": "https://erp.example/",
            "event_types": ["*"], "enabled": true,
            "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "headers": {"authorization": "Bearer hunter2"},
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"});
        let sub: Subscription = serde_json::from_value(old).unwrap();
        assert!(sub.holds_clear_values());
        assert_eq!(
            sub.secret(&keyring()).unwrap().expose(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
        let next = patch(&sub, json!({})).unwrap();
        assert!(!next.holds_clear_values());
        let stored = serde_json::to_string(&next).unwrap();
        assert!(!stored.contains("hunter2") && !stored.contains("MfKQ9r8"));
        assert_eq!(next.secret(&keyring()), sub.secret(&keyring()));
    }

    #[test]
    fn rotation_signs_with_both_secrets_until_the_window_ends() {
        let sub =
            new_sub(json!({"tenant": "acme", "url": "https://erp.example/", "event_types": ["*"]}))
                .unwrap();
        let (ring, now) = (keyring(), Utc::now());
        let old = sub.secret(&ring).unwrap();
        let new = WebhookSecret::generate();
        let day = std::time::Duration::from_secs(86_400);
        let rotated = sub.rotated(&new, day, now, &ring).unwrap();
        assert_eq!(
            rotated.signing_secrets(&ring, now).unwrap(),
            [new.clone(), old]
        );
        assert_eq!(
            rotated.previous_secret_until(now),
            Some(now + chrono::TimeDelta::days(1))
        );
        let after = now + chrono::TimeDelta::days(1);
        assert_eq!(
            rotated.signing_secrets(&ring, after).unwrap(),
            std::slice::from_ref(&new)
        );
        assert_eq!(rotated.previous_secret_until(after), None);
        // Rotating again keeps only the two newest; no overlap drops the old at once.
        let newest = WebhookSecret::generate();
        let again = rotated.rotated(&newest, day, now, &ring).unwrap();
        assert_eq!(
            again.signing_secrets(&ring, now).unwrap(),
            [newest.clone(), new]
        );
        let at_once = again
            .rotated(&newest, std::time::Duration::ZERO, now, &ring)
            .unwrap();
        assert_eq!(at_once.signing_secrets(&ring, now).unwrap(), [newest]);
        let too_long = std::time::Duration::from_secs(31 * 86_400);
        assert_eq!(
            sub.rotated(&WebhookSecret::generate(), too_long, now, &ring)
                .unwrap_err()
                .field,
            "overlap"
        );
    }

    #[test]
    fn hop_by_hop_and_framing_headers_are_refused() {
        for name in [
            "Connection",
            "TE",
            "Upgrade",
            "Keep-Alive",
            "Proxy-Authorization",
            "Proxy-Connection",
            "Proxy-Anything",
            "Expect",
            "Trailer",
            "Transfer-Encoding",
            "Content-Length",
            "Host",
            "Content-Encoding",
            "User-Agent",
        ] {
            let body = json!({"tenant": "a", "url": "https://x.example", "event_types": ["*"],
                "headers": {name: "x"}});
            let err = new_sub(body).unwrap_err();
            assert_eq!(err.field, format!("headers.{name}"));
        }
        assert!(new_sub(json!({"tenant": "a", "url": "https://x.example",
            "event_types": ["*"], "headers": {"Authorization": "Basic eA=="}}))
        .is_ok());
    }
}
