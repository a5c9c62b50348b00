//! The OpenAPI 3.1 document of ingest's HTTP API, generated from the code: every `/v1`
//! route is registered through `utoipa_axum` from its handler's `#[utoipa::path]`
//! ([`crate::api::routes`]), so a route cannot exist without its entry nor an entry
//! without its route; the operations endpoints, served by `hookline-core`, are listed
//! here and checked against their router by a test. Served at `GET /openapi.json`; a
//! copy is kept in `docs/openapi.json` (a test keeps it equal to what the code makes).
//!
//! The schema types below describe the JSON the handlers read and write. They are
//! for the document only: requests are parsed and validated by the domain's own types,
//! whose errors name the field (a `422`), so the schemas carry the documented limits
//! but the domain remains the judge.

// The document's types are only ever read by utoipa's derives.
#![allow(dead_code)]

use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

use crate::error::ErrorKind;

/// `{"error": {...}}`: every error answer of the API.
#[derive(ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody {
    error: ErrorObject,
}

/// What went wrong.
#[derive(ToSchema)]
pub(crate) struct ErrorObject {
    /// Machine-readable: `malformed_json`, `bad_request`, `unauthorized`,
    /// `forbidden`, `not_found`, `quota_exceeded`, `conflict`, `payload_too_large`,
    /// `invalid_field`, `rate_limited`, `internal`, `unavailable`.
    code: ErrorKind,
    /// Human-readable explanation.
    message: String,
    /// The request field at fault (`$` for the whole body), when one is.
    field: Option<String>,
    /// `429`: when the tenant's events fit again.
    retry_after_seconds: Option<u64>,
    /// `503` on `POST /v1/events`: the request's event ids, in order.
    ids: Option<Vec<String>>,
    /// `503` on `POST /v1/events`: the ids Kafka did not acknowledge.
    not_acknowledged: Option<Vec<String>>,
    /// `422` for an event breaking its type's schema: the rule (JSON Schema keyword)
    /// broken, e.g. `required`, `minimum`; `known_type` for a refused unknown type.
    rule: Option<String>,
}

/// One event as a producer sends it.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct EventIn {
    /// Dotted name, e.g. `invoice.paid`; no `*`, no whitespace.
    #[schema(
        rename = "type",
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\s*]+$",
        example = "invoice.paid"
    )]
    event_type: String,
    /// The customer the event belongs to.
    #[schema(min_length = 1, max_length = 128, pattern = r"^\S+$", example = "acme")]
    tenant: String,
    /// Any JSON; `{}` when absent.
    data: Option<Value>,
    /// Your id for the event (generated `evt_<ULID>` when absent); send your own if
    /// you may retry.
    #[schema(min_length = 1, max_length = 128)]
    id: Option<String>,
    /// RFC 3339; the time of acceptance when absent.
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Up to 10 channel names.
    #[schema(max_items = 10)]
    channels: Option<Vec<String>>,
}

/// One event, or an array of them.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum EventsRequest {
    /// One event.
    One(EventIn),
    /// A batch, validated whole before any of it is written.
    Many(Vec<EventIn>),
}

/// Where an event type comes from.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum EventTypeSource {
    /// Shipped with Hookline.
    Builtin,
    /// The operator's catalog file.
    File,
    /// The admin API (`POST`/`PUT /v1/event-types`).
    Api,
}

/// A known event type.
#[derive(ToSchema)]
pub(crate) struct EventType {
    /// Its name, e.g. `invoice.paid`.
    #[schema(rename = "type")]
    name: String,
    description: String,
    source: EventTypeSource,
    /// Whether its events are checked against the schema.
    validate: bool,
    /// Fingerprint of the schema and `validate`: changes with either.
    version: String,
    /// The JSON Schema its `data` must satisfy.
    schema: Value,
}

/// An event type the admin creates (`POST`, with `type`) or replaces (`PUT`, the type
/// in the path).
#[derive(ToSchema)]
pub(crate) struct EventTypeRequest {
    /// Its name (`POST`; for `PUT` optional, and then the path's).
    #[schema(rename = "type")]
    name: Option<String>,
    description: Option<String>,
    /// A valid JSON Schema (2020-12 unless `$schema` says otherwise) of its `data`.
    schema: Value,
    /// Check its events against the schema (default true).
    validate: Option<bool>,
}

/// The event catalog.
#[derive(ToSchema)]
pub(crate) struct EventTypeList {
    data: Vec<EventType>,
}

/// `202`: the events' ids in request order, once Kafka acknowledged every one.
#[derive(ToSchema)]
pub(crate) struct Accepted {
    ids: Vec<String>,
}

/// How much of the event a delivery carries.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum PayloadMode {
    /// The whole event.
    Full,
    /// Identifiers only.
    Thin,
}

/// A new subscription.
#[derive(ToSchema)]
pub(crate) struct NewSubscription {
    /// Required with the admin token; a tenant key's own tenant when absent.
    tenant: Option<String>,
    /// `https` (or `http` where the operator allows it) endpoint, no credentials.
    #[schema(
        pattern = r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9/_-]*)?$",
        example = "https://erp.example/hooks"
    )]
    url: String,
    /// Type patterns: an exact type, a dotted prefix (`invoice.*`) or `*`.
    #[schema(min_items = 1, max_items = 64, example = json!(["invoice.*"]))]
    event_types: Vec<String>,
    /// Default `true`.
    enabled: Option<bool>,
    /// At most 1 KiB.
    description: Option<String>,
    /// Your own secret, `whsec_` + base64 of 24–64 bytes; generated when absent.
    secret: Option<String>,
    /// Most concurrent requests, 1–100000.
    #[schema(minimum = 1, maximum = 100000)]
    max_in_flight: Option<u32>,
    /// Most requests per second.
    rate_limit: Option<u32>,
    /// A payload filter on `data` (docs/filters.md).
    filter: Option<Value>,
    /// Up to 32 channel names.
    channels: Option<Vec<String>>,
    /// `full` (default) or `thin`.
    payload: Option<PayloadMode>,
    /// Up to 20 extra request headers; values are write-only.
    headers: Option<std::collections::BTreeMap<String, String>>,
    /// Deliver one at a time, in order (default `false`).
    ordered: Option<bool>,
}

/// A change to a subscription; absent fields keep their value.
#[derive(ToSchema)]
pub(crate) struct SubscriptionPatch {
    #[schema(pattern = r"^https?://[a-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9/_-]*)?$")]
    url: Option<String>,
    #[schema(min_items = 1, max_items = 64)]
    event_types: Option<Vec<String>>,
    /// `true` re-enables (a new generation: clears the pipeline's disable).
    enabled: Option<bool>,
    description: Option<String>,
    #[schema(minimum = 1, maximum = 100000)]
    max_in_flight: Option<u32>,
    rate_limit: Option<u32>,
    /// `null` removes the filter.
    filter: Option<Value>,
    channels: Option<Vec<String>>,
    payload: Option<PayloadMode>,
    /// Replaces the whole set.
    headers: Option<std::collections::BTreeMap<String, String>>,
    ordered: Option<bool>,
}

/// A subscription as the API shows it: never its secret (but in the answers to a
/// creation and a rotation), custom headers by name only.
#[derive(ToSchema)]
pub(crate) struct Subscription {
    /// `sub_…`.
    id: String,
    tenant: String,
    url: String,
    event_types: Vec<String>,
    /// `false` when disabled by a client or by the pipeline.
    enabled: bool,
    description: Option<String>,
    filter: Option<Value>,
    channels: Option<Vec<String>>,
    payload: PayloadMode,
    /// Names only: the values are write-only.
    headers: Option<Vec<String>>,
    ordered: Option<bool>,
    max_in_flight: Option<u32>,
    rate_limit: Option<u32>,
    /// Times it was enabled.
    enabled_revision: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    /// While the last rotation's overlap window lasts.
    previous_secret_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its endpoint has failed since then without a success.
    failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the pipeline disabled it.
    disabled_reason: Option<String>,
    /// Only in the answers to a creation and a rotation: the signing secret.
    secret: Option<String>,
}

/// A list of subscriptions, ordered by id.
#[derive(ToSchema)]
pub(crate) struct SubscriptionList {
    data: Vec<Subscription>,
}

/// A subscription's current signing secret.
#[derive(ToSchema)]
pub(crate) struct SecretOut {
    /// `whsec_…`.
    secret: String,
}

/// A rotation's options.
#[derive(ToSchema)]
pub(crate) struct RotateRequest {
    /// How long the replaced secret keeps signing (humantime, default `24h`, at most
    /// `30d`, `0s` for none).
    #[schema(example = "24h")]
    overlap: Option<String>,
}

/// How an attempt ended.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum AttemptOutcome {
    Success,
    #[schema(rename = "http_3xx")]
    Http3xx,
    #[schema(rename = "http_4xx")]
    Http4xx,
    #[schema(rename = "http_5xx")]
    Http5xx,
    HttpOther,
    Timeout,
    Connect,
    Blocked,
    Error,
    CircuitOpen,
}

/// One delivery attempt.
#[derive(ToSchema)]
pub(crate) struct Attempt {
    /// The `webhook-id`.
    message_id: String,
    subscription_id: String,
    event_id: String,
    event_type: String,
    /// From 1.
    attempt: u32,
    outcome: AttemptOutcome,
    /// HTTP status, when there was an answer.
    status: Option<u16>,
    /// Error detail of a failure.
    error: Option<String>,
    /// Start of the response body (at most 4 KiB).
    response_body: Option<String>,
    duration_ms: u64,
    /// When the attempt started.
    at: chrono::DateTime<chrono::Utc>,
}

/// Which events to deliver again.
#[derive(ToSchema)]
pub(crate) struct ReplayRequest {
    /// The subscription's events written since then.
    since: chrono::DateTime<chrono::Utc>,
}

/// Which dead letters to redrive; at least one of `subscription_id` and `since`
/// (tenant keys: `subscription_id` always).
#[derive(ToSchema)]
pub(crate) struct RedriveRequest {
    subscription_id: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
}

/// A test's options.
#[derive(ToSchema)]
pub(crate) struct TestRequest {
    /// How long to wait for the attempt (humantime, default `10s`, at most `60s`;
    /// `0s`: answer at once).
    #[schema(example = "10s")]
    wait: Option<String>,
}

/// Whether the test event was attempted yet.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum TestStatus {
    /// Attempted: see `attempt`.
    Attempted,
    /// Queued, not attempted within the wait.
    Pending,
}

/// A test event and, once made, its first attempt.
#[derive(ToSchema)]
pub(crate) struct TestOutcome {
    /// Its `webhook-id`.
    message_id: String,
    event_id: String,
    /// `webhook.test`.
    event_type: String,
    status: TestStatus,
    /// Whether the first attempt succeeded (`attempted` only).
    delivered: Option<bool>,
    /// The first attempt (`attempted` only).
    attempt: Option<Attempt>,
}

/// A role of a tenant API key.
#[derive(ToSchema)]
pub(crate) enum Role {
    #[schema(rename = "events:publish")]
    EventsPublish,
    #[schema(rename = "subscriptions:manage")]
    SubscriptionsManage,
    #[schema(rename = "attempts:read")]
    AttemptsRead,
}

/// A new tenant API key.
#[derive(ToSchema)]
pub(crate) struct NewApiKey {
    #[schema(min_items = 1)]
    roles: Vec<Role>,
    /// At most 1 KiB.
    description: Option<String>,
}

/// A tenant API key as listed: never the key.
#[derive(ToSchema)]
pub(crate) struct ApiKey {
    /// `key_…`.
    id: String,
    tenant: String,
    roles: Vec<Role>,
    created_at: chrono::DateTime<chrono::Utc>,
    description: Option<String>,
    /// Only in the answer to its creation: `hk_…`, shown this once.
    key: Option<String>,
}

/// A tenant's keys, ordered by id.
#[derive(ToSchema)]
pub(crate) struct ApiKeyList {
    data: Vec<ApiKey>,
}

/// Process liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process runs.", body = String, content_type = "text/plain")))]
fn healthz() {}

/// Readiness: the views caught up, Kafka reachable, work progressing.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Ready.", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready (yet).", body = String, content_type = "text/plain"),
    ))]
fn readyz() {}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain"),
        (status = 500, description = "The metrics could not be encoded.", body = String, content_type = "text/plain")))]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)))]
fn openapi_json() {}

/// The parts of the document not taken from the `/v1` handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hookline ingest API",
        description = "Webhook fan-out for finance events: publish events, manage \
            subscriptions, tenants' API keys and deliveries. See docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(healthz, readyz, metrics, openapi_json),
    components(schemas(ErrorBody, ErrorObject, ErrorKind)),
    tags(
        (name = "events", description = "Publishing events"),
        (name = "event types", description = "The event catalog: known types and their schemas"),
        (name = "subscriptions", description = "Subscriptions, their secrets, attempts, tests, replays"),
        (name = "message log", description = "Events, deliveries and their attempts; resending one message"),
        (name = "dead letters", description = "Redriving dead-lettered deliveries"),
        (name = "api keys", description = "Tenants' API keys (admin token only)"),
        (name = "operations", description = "Unauthenticated operations endpoints"),
    ),
)]
pub struct Base;

/// The operations paths, served by `hookline_core::telemetry::ops_routes` and ingest.
pub const OPERATIONS_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// An error answer's entry in the document.
fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// Completes the document made from the handlers: the bearer scheme, and the error
/// answers every `/v1` route shares (authentication, roles, bodies, Kafka), so that
/// each handler's annotation lists only what is its own.
pub fn complete(mut doc: Value) -> Value {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The admin token (HOOKLINE_ADMIN_TOKEN) or a tenant API key (hk_…)."
        }
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            operation.insert("security".into(), json!([{"bearer": []}]));
            let has_body = operation.contains_key("requestBody");
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let mut shared = vec![
                ("400", "Malformed JSON, or a request that cannot be read (e.g. a path not UTF-8)."),
                ("401", "Missing, unknown, revoked or wrong credential (`WWW-Authenticate: Bearer`)."),
                ("403", "The credential lacks the role, names another tenant, or the call is the admin's."),
                ("422", "A field or query parameter is missing or wrong; `field` names it."),
                ("500", "A fault on Hookline's side."),
                ("503", "Kafka did not take the write in time, or this instance cannot confirm its view of the API keys; retry after `Retry-After`."),
            ];
            if has_body {
                shared.push(("413", "The body is over HOOKLINE_MAX_BODY_BYTES."));
            }
            if path.contains("{id}") || path.contains("{key_id}") || path.contains("{type}") {
                shared.push(("404", "No such resource, or one of another tenant."));
            }
            for (status, description) in shared {
                responses
                    .entry(status)
                    .or_insert_with(|| error_response(description));
            }
        }
    }
    doc
}

/// Links from the answers that create a resource to the operations on it, so that
/// clients (and schemathesis's stateful phase) can follow an id they were given.
fn link_created_resources(doc: &mut Value) {
    let mut links = |from: (&str, &str, &str), under: &str, parameters: Value| {
        let mut found = serde_json::Map::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                if !path.starts_with(under) {
                    continue;
                }
                for operation in item.as_object().into_iter().flat_map(|o| o.values()) {
                    if let Some(id) = operation["operationId"].as_str() {
                        found.insert(
                            id.to_owned(),
                            json!({"operationId": id, "parameters": parameters}),
                        );
                    }
                }
            }
        }
        let (path, method, status) = from;
        if let Some(response) = doc["paths"][path][method]["responses"][status].as_object_mut() {
            response.insert("links".into(), Value::Object(found));
        }
    };
    links(
        ("/v1/subscriptions", "post", "201"),
        "/v1/subscriptions/{id}",
        json!({"id": "$response.body#/id"}),
    );
    links(
        ("/v1/tenants/{tenant}/api-keys", "post", "201"),
        "/v1/tenants/{tenant}/api-keys/{key_id}",
        json!({"tenant": "$response.body#/tenant", "key_id": "$response.body#/id"}),
    );
}

/// The whole document, as served and as kept in `docs/openapi.json`.
pub fn document() -> Value {
    let (_, api) = crate::api::documented_routes().split_for_parts();
    let mut doc = Base::openapi();
    doc.merge(api);
    let mut doc = complete(serde_json::to_value(&doc).unwrap_or_else(|_| json!({})));
    link_created_resources(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the repository keeps its copy, from this crate's directory.
    const KEPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    #[test]
    fn the_attempt_outcome_schema_names_every_outcome_of_the_domain() {
        use utoipa::PartialSchema;
        // The domain crate stays free of schema types; this mirror must not drift.
        let schema = serde_json::to_value(AttemptOutcome::schema()).expect("schema as JSON");
        let named: Vec<&str> = schema["enum"]
            .as_array()
            .expect("a string enum")
            .iter()
            .filter_map(|name| name.as_str())
            .collect();
        let outcomes: Vec<&str> = hookline_domain::attempt::AttemptOutcome::ALL
            .into_iter()
            .map(|outcome| outcome.as_str())
            .collect();
        assert_eq!(named, outcomes);
    }

    #[test]
    fn the_document_kept_in_the_repository_is_the_one_the_code_makes() {
        let made = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("HOOKLINE_WRITE_OPENAPI").is_some() {
            std::fs::write(KEPT, &made).unwrap();
        }
        let kept = std::fs::read_to_string(KEPT).unwrap_or_default();
        assert!(
            kept == made,
            "docs/openapi.json is not what the code generates: run \
             `HOOKLINE_WRITE_OPENAPI=1 cargo test -p hookline-ingest openapi` and commit it"
        );
    }

    #[test]
    fn it_is_openapi_3_1_with_every_route_and_shared_errors() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/v1/events",
            "/v1/event-types",
            "/v1/subscriptions",
            "/v1/subscriptions/{id}",
            "/v1/subscriptions/{id}/secret",
            "/v1/subscriptions/{id}/rotate-secret",
            "/v1/subscriptions/{id}/attempts",
            "/v1/subscriptions/{id}/replay",
            "/v1/subscriptions/{id}/test",
            "/v1/events/{id}",
            "/v1/deliveries/{id}",
            "/v1/deliveries/{id}/resend",
            "/v1/dlq/redrive",
            "/v1/tenants/{tenant}/api-keys",
            "/v1/tenants/{tenant}/api-keys/{key_id}",
        ]
        .into_iter()
        .chain(OPERATIONS_PATHS)
        {
            assert!(paths.contains_key(path), "{path} missing");
        }
        let create = &doc["paths"]["/v1/subscriptions"]["post"];
        assert_eq!(create["security"], json!([{"bearer": []}]));
        for status in ["201", "400", "401", "403", "409", "413", "422", "503"] {
            assert!(create["responses"].get(status).is_some(), "{status}");
        }
        assert!(doc["paths"]["/healthz"]["get"]["security"] == json!([{}]));
        assert!(doc["components"]["schemas"]["Error"].is_object());
    }

    /// The operations paths are not routed through utoipa: each must answer on the
    /// router that serves them (a path in the document without its route is a 404).
    #[tokio::test]
    async fn every_operations_path_in_the_document_is_served() {
        use tower::ServiceExt as _;
        let registry = prometheus::Registry::new();
        let readiness = hookline_core::telemetry::Readiness::default();
        readiness.set(true);
        let app = hookline_core::telemetry::ops_routes(registry, readiness)
            .merge(crate::api::openapi_route());
        let doc = document();
        let documented: Vec<&String> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|p| !p.starts_with("/v1/"))
            .collect();
        assert_eq!(documented.len(), OPERATIONS_PATHS.len(), "{documented:?}");
        for path in documented {
            let request = axum::http::Request::get(path.as_str())
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }
}
