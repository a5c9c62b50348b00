//! The `/v1` API: events in, subscriptions managed, tenants' API keys managed
//! ([`crate::keys`]). Every handler checks the request's [`Principal`] before it acts:
//! the role it needs, and the tenant of what it touches (another tenant's subscription
//! is answered as missing).

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{authenticate, denied, Authenticator};
use crate::error::{ApiError, ErrorKind};
use crate::http::{body_bytes, decode_json, ApiJson, ApiPath, ApiQuery};
use crate::quota::EventRate;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{middleware, Json, Router};
use chrono::Utc;
use hookline_core::config::KafkaArgs;
use hookline_core::key_view::ApiKeyView;
use hookline_core::produce::{OutRecord, RenewingProducer};
use hookline_core::progress::Progress;
use hookline_core::telemetry;
use hookline_core::topics::Topics;
use hookline_core::view::SubscriptionView;
use hookline_domain::access::{Principal, Role};
use hookline_domain::attempt::AttemptOutcome;
use hookline_domain::egress::UrlRules;
use hookline_domain::event::{parse_batch, Event, FieldError};
use hookline_domain::ids;
use hookline_domain::quota::QuotaPlan;
use hookline_domain::sealing::Keyring;
use hookline_domain::signing::WebhookSecret;
use hookline_domain::subscription::{
    NewSubscription, Saving, Subscription, SubscriptionPatch, DEFAULT_OVERLAP,
};
use hookline_domain::test_event::{test_task, TestRequest};
use prometheus::{HistogramVec, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long a subscription or API key write waits to be visible in this process's view.
pub const VIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Ingest's metrics.
#[derive(Clone)]
pub struct Metrics {
    events: IntCounterVec,
    requests: IntCounterVec,
    /// Event requests refused, by error code.
    rejected: IntCounterVec,
    /// Bytes of event request bodies, by outcome.
    event_bytes: IntCounterVec,
    /// `accepted_to_acknowledged`: from a request's events parsed to Kafka's last
    /// acknowledgement of them (a batch is observed once).
    stages: HistogramVec,
}

impl Metrics {
    /// Registers ingest's metrics.
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "hookline_ingest_events_total",
                "Events received over HTTP, by outcome.",
            ),
            &["outcome"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "hookline_ingest_requests_total",
                "API requests, by route and status.",
            ),
            &["route", "status"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "hookline_ingest_event_requests_rejected_total",
                "POST /v1/events requests refused, by reason (the error code of the \
                 answer: malformed_json, invalid_field, payload_too_large, forbidden, \
                 rate_limited, ...).",
            ),
            &["reason"],
        )?;
        let event_bytes = IntCounterVec::new(
            Opts::new(
                "hookline_ingest_event_bytes_total",
                "Bytes of POST /v1/events request bodies, by outcome: accepted \
                 (acknowledged by Kafka), rejected (refused before Kafka), failed (not \
                 acknowledged by Kafka in time).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(event_bytes.clone()))?;
        let stages = telemetry::stage_histogram(
            registry,
            "hookline_ingest_stage_duration_seconds",
            "Duration of ingest's stages: accepted_to_acknowledged (a request's events \
             parsed, to Kafka acknowledging all of them).",
        )?;
        Ok(Self {
            events,
            requests,
            rejected,
            event_bytes,
            stages,
        })
    }

    fn rejected(&self, kind: ErrorKind, bytes: usize) {
        self.rejected.with_label_values(&[kind.code()]).inc();
        self.event_bytes
            .with_label_values(&["rejected"])
            .inc_by(bytes as u64);
    }

    fn request(&self, route: &str, status: StatusCode) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Idempotent, `acks=all` producer of control records (subscriptions, redrives),
    /// giving up on a record after `produce_timeout`: a write answered `503` is then
    /// almost never written after all.
    pub producer: RenewingProducer,
    /// Idempotent, `acks=all` producer of events. It keeps trying a record for
    /// [`kafka::DELIVERY_TIMEOUT`](hookline_core::kafka::DELIVERY_TIMEOUT), longer than
    /// the request waits for it: a record that times out inside librdkafka makes an
    /// idempotent producer drain and bump its epoch, which holds back every partition,
    /// and so one partition without a leader would slow requests for all the others.
    pub event_producer: RenewingProducer,
    /// How long a write waits for Kafka's acknowledgement before answering 503.
    pub produce_timeout: Duration,
    /// Writes taken on and acknowledged, for `/readyz`.
    pub progress: Progress,
    /// This process's view of the subscriptions topic.
    pub view: Arc<SubscriptionView>,
    /// This process's view of the API keys topic.
    pub keys: Arc<ApiKeyView>,
    /// What tenant API keys may do at most, per tenant.
    pub quotas: QuotaPlan,
    /// The event rate of each tenant publishing with its keys.
    pub event_rate: Arc<EventRate>,
    /// Topic names.
    pub topics: Topics,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Kafka settings, for scans (replay, redrive).
    pub kafka: KafkaArgs,
    /// How CloudEvents records are read (replay).
    pub cloudevents: hookline_domain::cloudevents::CloudEventsConfig,
    /// The message log: deliveries and their attempts, indexed from the topics.
    pub attempts: Arc<crate::attempts::AttemptLog>,
    /// Metrics.
    pub metrics: Metrics,
    /// Which subscription URLs are accepted.
    pub rules: Arc<UrlRules>,
    /// Seals (and, for `GET …/secret`, opens) signing secrets and header values.
    pub keyring: Arc<Keyring>,
    /// How long `POST /v1/subscriptions/{id}/test` waits for the attempt when the
    /// request does not say.
    pub test_event_wait: Duration,
    /// The known event types and their compiled schemas, live (the event types topic).
    pub catalog: Arc<hookline_core::catalog_view::CatalogView>,
    /// Which `event_types` a subscription may name.
    pub subscription_types: hookline_domain::catalog::SubscriptionTypes,
    /// Idempotency keys of event requests (`Idempotency-Key`, producer event ids).
    pub idempotency: Arc<crate::idempotency::Idempotency>,
    /// Background jobs (replay, redrive).
    pub jobs: Arc<crate::jobs::Jobs>,
}

impl AppState {
    fn saving(&self) -> Saving<'_> {
        Saving {
            rules: &self.rules,
            keyring: &self.keyring,
        }
    }
}

/// The `/v1` routes, each registered with its OpenAPI entry (so the document lists
/// exactly the routes served), not yet given their state or layers.
pub fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_events))
        .routes(routes!(
            crate::event_types::list_event_types,
            crate::event_types::create_event_type
        ))
        .routes(routes!(
            crate::event_types::get_event_type,
            crate::event_types::put_event_type,
            crate::event_types::delete_event_type
        ))
        .routes(routes!(create_subscription, list_subscriptions))
        .routes(routes!(
            get_subscription,
            patch_subscription,
            delete_subscription
        ))
        .routes(routes!(get_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(crate::message_log::list_attempts))
        .routes(routes!(crate::message_log::get_event))
        .routes(routes!(crate::message_log::get_delivery))
        .routes(routes!(crate::message_log::resend_delivery))
        .routes(routes!(replay_subscription))
        .routes(routes!(test_subscription))
        .routes(routes!(redrive_dlq))
        .routes(routes!(crate::keys::create_key, crate::keys::list_keys))
        .routes(routes!(crate::keys::revoke_key))
        .routes(routes!(crate::jobs::list_jobs))
        .routes(routes!(crate::jobs::get_job))
        .routes(routes!(crate::jobs::cancel_job))
}

/// `GET /openapi.json`: the document ([`crate::openapi::document`]), made once. Open
/// to anyone, like the operations endpoints: it describes the API, it holds no data.
pub fn openapi_route() -> Router {
    let document = Arc::new(crate::openapi::document());
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = Arc::clone(&document);
            async move { Json(document.as_ref().clone()) }
        }),
    )
}

/// The `/v1` routes, behind the authentication guard and the body limit, and
/// `/openapi.json`.
pub fn routes(state: AppState, max_body_bytes: usize, auth: Arc<Authenticator>) -> Router {
    let (api, _) = documented_routes()
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(auth, authenticate))
        .layer(middleware::from_fn(crate::trace::request_span))
        .with_state(state)
        .split_for_parts();
    api.merge(openapi_route())
}

/// Answers `202 {"ids": [...]}` once Kafka acknowledged every event of the request.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request idempotent for HOOKLINE_IDEMPOTENCY_WINDOW (default 24h), per tenant: a retry with the same key and body answers the same ids and writes nothing again. 1 to 255 visible ASCII characters. See docs/api.md.")),
    request_body(content = crate::openapi::EventsRequest, description = "One event or an array of up to HOOKLINE_MAX_BATCH_EVENTS."),
    responses(
        (status = 202, description = "Every event acknowledged by Kafka; ids in request order. Also the answer to a retry under the same Idempotency-Key (or producer event ids) with the same body: the same ids, nothing written again.", body = crate::openapi::Accepted),
        (status = 409, description = "`idempotency_in_progress`: another request under the same idempotency key is still being written; `Retry-After` says when to ask again.", body = crate::openapi::ErrorBody),
        (status = 422, description = "Invalid event (`invalid_field`), or `idempotency_key_reused`: the Idempotency-Key (or a producer event id) was used with a different body within the window.", body = crate::openapi::ErrorBody),
        (status = 429, description = "Over the tenant's event rate; `Retry-After` says when its events fit.", body = crate::openapi::ErrorBody),
    ))]
async fn post_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let outcome = accept_events(&state, &principal, &headers, body).await;
    let status = outcome
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::ACCEPTED);
    state.metrics.request("events", status);
    outcome.map(|ids| (StatusCode::ACCEPTED, Json(json!({ "ids": ids }))))
}

async fn accept_events(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<String>, ApiError> {
    principal
        .require(Role::EventsPublish)
        .map_err(|d| denied(d, "event"))
        .inspect_err(|err| state.metrics.rejected(err.kind, 0))?;
    // The whole request, keys and events, is answered within the produce timeout.
    let deadline = tokio::time::Instant::now() + state.produce_timeout;
    let bytes = body_bytes(body).inspect_err(|err| state.metrics.rejected(err.kind, 0))?;
    let mut versions = Vec::new();
    let (mut events, shape) = decode_json::<Value>(&bytes)
        .and_then(|body| {
            let batch = body.is_array();
            let shape = crate::idempotency::Shape::of(&body);
            let events = parse_batch(body, state.max_batch_events)?;
            versions = conform(&state.catalog.current(), &events, batch)?;
            Ok((admit_events(state, principal, events, batch)?, shape))
        })
        .inspect_err(|err| {
            let outcome = match err.kind {
                ErrorKind::Forbidden | ErrorKind::RateLimited => "refused",
                _ => "invalid",
            };
            state.metrics.events.with_label_values(&[outcome]).inc();
            state.metrics.rejected(err.kind, bytes.len());
        })?;
    // Claims the request's idempotency keys: what was written before is not again.
    let plan = state
        .idempotency
        .plan(principal, headers, &shape, &mut events, deadline)
        .await
        .map_err(|err| match err.kind {
            // Nothing was sent: every event of the request is still to be sent, with
            // these ids, as after a failed event write.
            ErrorKind::Unavailable => {
                let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                err.with("ids", json!(ids))
                    .with("not_acknowledged", json!(ids))
            }
            _ => err,
        })
        .inspect_err(|err| state.metrics.rejected(err.kind, bytes.len()))?;
    if let Some(ids) = plan.replayed() {
        return Ok(ids.to_vec());
    }
    let topic = state.topics.events();
    // Each event to write, with the catalog version it was validated against.
    let (written, written_versions): (Vec<&Event>, Vec<&Option<String>>) = events
        .iter()
        .zip(&versions)
        .enumerate()
        .filter(|(i, _)| plan.writes(*i))
        .map(|(_, pair)| pair)
        .unzip();
    let records: Vec<OutRecord> = written
        .iter()
        .zip(written_versions)
        .map(|(event, version)| {
            let record = OutRecord::json(&topic, event.partition_key(), event)?;
            // The router need not check this event again (see VALIDATED_HEADER).
            Ok(match version {
                Some(version) => record.with_headers(validated_header(version)),
                None => record,
            })
        })
        .collect::<Result<_, serde_json::Error>>()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let (records, spans) = crate::trace::produce_spans(&events, records);
    let accepted = std::time::Instant::now();
    state.progress.started();
    let results = send_by(&state.event_producer, &records, deadline).await;
    crate::trace::record_produced(&spans, &results);
    state
        .metrics
        .stages
        .with_label_values(&["accepted_to_acknowledged"])
        .observe(accepted.elapsed().as_secs_f64());
    let failed = results.iter().filter(|r| r.is_err()).count();
    state
        .metrics
        .events
        .with_label_values(&["accepted"])
        .inc_by((results.len() - failed) as u64);
    if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
        state.progress.failed();
        state
            .metrics
            .event_bytes
            .with_label_values(&["failed"])
            .inc_by(bytes.len() as u64);
        state
            .metrics
            .events
            .with_label_values(&["failed"])
            .inc_by(failed as u64);
        tracing::error!(%err, failed, "events not acknowledged by Kafka");
        state.idempotency.abandon(&plan);
        // Some of the events may be written (and will be delivered); sent again with the
        // same ids, they are delivered with the same webhook-ids, which receivers
        // de-duplicate.
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let not_acknowledged: Vec<&str> = written
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_err())
            .map(|(e, _)| e.id.as_str())
            .collect();
        return Err(ApiError::unavailable(format!(
            "{failed} of {} events were not acknowledged by Kafka within {:?} ({err}); \
             send the request again with the same event ids (`ids`, in request order)",
            results.len(),
            state.produce_timeout
        ))
        .with("ids", json!(ids))
        .with("not_acknowledged", json!(not_acknowledged)));
    }
    state.progress.succeeded();
    state.idempotency.complete(&plan, &events);
    for event in &events {
        // Per event, so debug: the first line of an event's trail through the binaries.
        tracing::debug!(event_id = %event.id, tenant = %event.tenant, event_type = %event.event_type, "event accepted");
    }
    state
        .metrics
        .event_bytes
        .with_label_values(&["accepted"])
        .inc_by(bytes.len() as u64);
    Ok(events.into_iter().map(|e: Event| e.id.into()).collect())
}

/// Every event's `data` satisfies its type's schema (and unknown types are allowed):
/// else a `422` naming the path (`data.amount`, `[3].data.amount` in a batch) and the
/// rule, with `rule` in the error object too. The whole request is refused. Answers,
/// per event, the type version it was checked against (`None`: not checked).
fn conform(
    catalog: &hookline_domain::catalog::Catalog,
    events: &[Event],
    batch: bool,
) -> Result<Vec<Option<String>>, ApiError> {
    let mut versions = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        match catalog.check(event) {
            Ok(version) => versions.push(version.map(str::to_owned)),
            Err(violation) => {
                let field = if batch {
                    format!("[{i}].{}", violation.field)
                } else {
                    violation.field
                };
                return Err(ApiError::new(ErrorKind::InvalidField, violation.message)
                    .at(field)
                    .with("rule", json!(violation.rule)));
            }
        }
    }
    Ok(versions)
}

/// The header marking an event record ingest checked against type `version`.
fn validated_header(version: &str) -> rdkafka::message::OwnedHeaders {
    rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
        key: hookline_domain::catalog::VALIDATED_HEADER,
        value: Some(version),
    })
}

/// A tenant key's batch: every event of its own tenant, within the tenant's batch
/// limit and event rate. The admin credential is not limited.
fn admit_events(
    state: &AppState,
    principal: &Principal,
    events: Vec<Event>,
    batch: bool,
) -> Result<Vec<Event>, ApiError> {
    let Some(tenant) = principal.tenant() else {
        return Ok(events);
    };
    for (i, event) in events.iter().enumerate() {
        let field = if batch {
            format!("[{i}].tenant")
        } else {
            "tenant".to_owned()
        };
        principal
            .act_for(&event.tenant)
            .map_err(|d| denied(d, "event").at(field))?;
    }
    state
        .quotas
        .of(tenant)
        .allow_batch(events.len())
        .map_err(|e| ApiError::new(ErrorKind::InvalidField, e.to_string()).at("$"))?;
    state.event_rate.admit(tenant, events.len())?;
    Ok(events)
}

/// How long past the produce timeout a request waits for librdkafka to report its
/// records before it is answered without their reports.
const REPORT_SLACK: Duration = Duration::from_secs(1);

/// [`send_all`], answered within `timeout` plus [`REPORT_SLACK`] whatever librdkafka
/// does: records not reported by then count as not acknowledged. They may still be
/// written, as any timed-out record may; an event surely, if Kafka takes it within
/// the event producer's delivery timeout.
pub(crate) async fn send_within(
    producer: &RenewingProducer,
    records: &[OutRecord],
    timeout: Duration,
) -> Vec<Result<(i32, i64), rdkafka::error::KafkaError>> {
    send_by(producer, records, tokio::time::Instant::now() + timeout).await
}

/// [`send_within`] the time left until `deadline`: answered by `deadline` plus
/// [`REPORT_SLACK`], so that several writes of one request share one bound.
pub(crate) async fn send_by(
    producer: &RenewingProducer,
    records: &[OutRecord],
    deadline: tokio::time::Instant,
) -> Vec<Result<(i32, i64), rdkafka::error::KafkaError>> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let reported = producer.send_all(records, left);
    match tokio::time::timeout_at(deadline + REPORT_SLACK, reported).await {
        Ok(results) => results,
        Err(_) => records
            .iter()
            .map(|_| {
                Err(rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                ))
            })
            .collect(),
    }
}

/// Writes one record (`None`: a tombstone) to a compacted topic of the API's and
/// returns its offset once Kafka acknowledged it; `what` names it in errors.
pub async fn write_record(
    state: &AppState,
    topic: String,
    key: &str,
    payload: Option<Vec<u8>>,
    what: &str,
) -> Result<i64, ApiError> {
    let record = OutRecord::new(topic, key, payload);
    let results = send_within(
        &state.producer,
        std::slice::from_ref(&record),
        state.produce_timeout,
    )
    .await;
    let (_, offset) = results
        .into_iter()
        .next()
        .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
        .map_err(|err| ApiError::unavailable(format!("{what} not stored: {err}")))?;
    Ok(offset)
}

/// Writes one delivery task to the deliveries topic, keyed by its subscription (a test
/// event, a resend); `what` names it in the error.
pub(crate) async fn write_task(
    state: &AppState,
    task: &hookline_domain::task::DeliveryTask,
    what: &str,
) -> Result<i64, ApiError> {
    let payload = serde_json::to_vec(task).map_err(|e| ApiError::internal(e.to_string()))?;
    write_record(
        state,
        state.topics.deliveries(),
        &task.subscription_id,
        Some(payload),
        what,
    )
    .await
}

/// Writes a subscription record (or a tombstone) and waits until this process's view
/// shows it, so that a read right after the write sees it.
async fn write_subscription(
    state: &AppState,
    id: &str,
    subscription: Option<&Subscription>,
) -> Result<(), ApiError> {
    let payload = subscription
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let offset = write_record(
        state,
        state.topics.subscriptions(),
        id,
        payload,
        "subscription",
    )
    .await?;
    state
        .view
        .wait_for_offset(offset, VIEW_TIMEOUT)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// A subscription as the API shows it: no secret, custom headers by name only (their
/// values are write-only), with its delivery health merged in (`enabled` is false once
/// the pipeline disabled it).
fn public(subscription: &Subscription) -> Value {
    let mut value = serde_json::to_value(subscription).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        object.remove("secret");
        object.remove("previous_secret");
        if object.contains_key("headers") {
            let names: Vec<&str> = subscription.header_names().collect();
            object.insert("headers".into(), json!(names));
        }
        if let Some(until) = subscription.previous_secret_until(Utc::now()) {
            object.insert("previous_secret_expires_at".into(), json!(until));
        }
        object.insert("enabled".into(), json!(subscription.is_active()));
        if let Some(since) = subscription.failing_since() {
            object.insert("failing_since".into(), json!(since));
        }
        if let Some(reason) = subscription.disabled_reason() {
            object.insert("disabled_reason".into(), json!(reason));
        }
    }
    value
}

#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions",
    request_body = crate::openapi::NewSubscription,
    responses(
        (status = 201, description = "Created; the answer carries its signing secret.", body = crate::openapi::Subscription),
        (status = 409, description = "The tenant holds its most subscriptions.", body = crate::openapi::ErrorBody),
    ))]
async fn create_subscription(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(mut request): ApiJson<NewSubscription>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal
        .require(Role::SubscriptionsManage)
        .map_err(|d| denied(d, "subscription"))?;
    if let Some(patterns) = &request.event_types {
        state
            .catalog
            .current()
            .check_patterns(patterns, state.subscription_types)?;
    }
    if let Some(own) = principal.tenant() {
        // A tenant key may leave the tenant out: it can only be its own.
        let tenant = request.tenant.get_or_insert_with(|| own.to_owned());
        principal
            .act_for(tenant)
            .map_err(|d| denied(d, "subscription").at("tenant"))?;
    }
    let (subscription, secret) =
        request.into_subscription(ids::new_subscription_id(), Utc::now(), state.saving())?;
    if !principal.is_admin() {
        let tenant = subscription.tenant();
        let existing = state
            .view
            .read()
            .iter()
            .filter(|s| s.tenant() == tenant)
            .count();
        state
            .quotas
            .of(tenant)
            .allow_new_subscription(tenant, existing)
            .map_err(|e| ApiError::new(ErrorKind::QuotaExceeded, e.to_string()))?;
    }
    write_subscription(&state, subscription.id(), Some(&subscription)).await?;
    tracing::info!(id = %subscription.id(), tenant = %subscription.tenant(), "subscription created");
    let mut shown = public(&subscription);
    shown["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, Json(shown)))
}

#[derive(Deserialize)]
struct ListQuery {
    tenant: Option<String>,
}

/// With a tenant key, only that tenant's subscriptions are listed, whatever `tenant`
/// asks for.
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions",
    params(("tenant" = Option<String>, Query, description = "Only this tenant's (a tenant key sees its own only).")),
    responses((status = 200, description = "Subscriptions, ordered by id, without secrets.", body = crate::openapi::SubscriptionList)))]
async fn list_subscriptions(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    principal
        .require(Role::SubscriptionsManage)
        .map_err(|d| denied(d, "subscription"))?;
    let mut found: Vec<Arc<Subscription>> = state
        .view
        .read()
        .iter()
        .filter(|s| principal.sees(s.tenant()))
        .filter(|s| query.tenant.as_ref().is_none_or(|t| s.tenant() == t))
        .cloned()
        .collect();
    found.sort_by(|a, b| a.id().cmp(b.id()));
    Ok(Json(
        json!({ "data": found.iter().map(|s| public(s)).collect::<Vec<_>>() }),
    ))
}

/// The subscription `id`, when `principal` holds `role` (else `403`) and may see it:
/// another tenant's subscription is answered `404`, exactly as a missing one.
pub(crate) fn find(
    state: &AppState,
    principal: &Principal,
    role: Role,
    id: &str,
) -> Result<Arc<Subscription>, ApiError> {
    principal
        .require(role)
        .map_err(|d| denied(d, "subscription"))?;
    state
        .view
        .get(id)
        .filter(|s| principal.sees(s.tenant()))
        .ok_or_else(|| ApiError::not_found("subscription"))
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    responses((status = 200, description = "The subscription, without its secret.", body = crate::openapi::Subscription)))]
async fn get_subscription(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let subscription = find(&state, &principal, Role::SubscriptionsManage, &id)?;
    Ok(Json(public(&subscription)))
}

#[utoipa::path(get, path = "/v1/subscriptions/{id}/secret", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    responses((status = 200, description = "The current signing secret.", body = crate::openapi::SecretOut)))]
async fn get_secret(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let secret = find(&state, &principal, Role::SubscriptionsManage, &id)?
        .secret(&state.keyring)
        .map_err(|e| ApiError::internal(format!("the subscription's secret: {e}")))?;
    Ok(Json(json!({ "secret": secret.expose() })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the replaced secret keeps signing (humantime, e.g. `24h`; `0s`: none).
    overlap: Option<String>,
}

/// Replaces the signing secret; the replaced one keeps signing beside it for the
/// overlap window, so receivers can switch without losing a delivery.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/rotate-secret", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    request_body(content = Option<crate::openapi::RotateRequest>, description = "Optional."),
    responses((status = 200, description = "Rotated; the answer carries the new secret.", body = crate::openapi::Subscription)))]
async fn rotate_secret(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = body_bytes(body)?;
    // The body is optional: none (or whitespace) means the default overlap.
    let request: RotateRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        decode_json(&bytes)?
    };
    let overlap = match request.overlap.as_deref() {
        None => DEFAULT_OVERLAP,
        Some(text) => hookline_domain::duration::parse_duration(text)
            .map_err(|e| hookline_domain::event::FieldError::new("overlap", e))?,
    };
    let current = resealed(
        &state,
        find(&state, &principal, Role::SubscriptionsManage, &id)?.as_ref(),
    )?;
    let secret = WebhookSecret::generate();
    let next = current.rotated(&secret, overlap, Utc::now(), &state.keyring)?;
    write_subscription(&state, &id, Some(&next)).await?;
    tracing::info!(%id, ?overlap, "subscription secret rotated");
    let mut shown = public(&next);
    shown["secret"] = json!(secret.expose());
    Ok(Json(shown))
}

/// `subscription` with its secret values sealed with the first key: a value this
/// instance's keys cannot open is the operator's problem (500), not the client's.
fn resealed(state: &AppState, subscription: &Subscription) -> Result<Subscription, ApiError> {
    subscription.resealed(&state.keyring).map_err(|e| {
        tracing::error!(id = %subscription.id(), %e, "subscription's secrets do not open");
        ApiError::internal(format!("the subscription's stored secrets: {e}"))
    })
}

#[utoipa::path(patch, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    request_body = crate::openapi::SubscriptionPatch,
    responses((status = 200, description = "The subscription as changed.", body = crate::openapi::Subscription)))]
async fn patch_subscription(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<SubscriptionPatch>,
) -> Result<Json<Value>, ApiError> {
    let current = resealed(
        &state,
        find(&state, &principal, Role::SubscriptionsManage, &id)?.as_ref(),
    )?;
    if let Some(patterns) = &patch.event_types {
        state
            .catalog
            .current()
            .check_patterns(patterns, state.subscription_types)?;
    }
    let next = patch.apply(&current, Utc::now(), state.saving())?;
    write_subscription(&state, &id, Some(&next)).await?;
    tracing::info!(%id, "subscription updated");
    Ok(Json(public(&next)))
}

#[utoipa::path(delete, path = "/v1/subscriptions/{id}", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    responses((status = 204, description = "Deleted.")))]
async fn delete_subscription(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    find(&state, &principal, Role::SubscriptionsManage, &id)?;
    write_subscription(&state, &id, None).await?;
    tracing::info!(%id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a `webhook.test` event to the subscription through the delivery pipeline and
/// answers with its first attempt: `200` once an attempt is recorded within the wait
/// (whatever its outcome), `202` when none is yet (the workers are busy or down; the
/// attempt shows in the attempts list later).
#[utoipa::path(post, path = "/v1/subscriptions/{id}/test", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    request_body(content = Option<crate::openapi::TestRequest>, description = "Optional."),
    responses(
        (status = 200, description = "Attempted within the wait (whatever the outcome).", body = crate::openapi::TestOutcome),
        (status = 202, description = "Queued, not attempted within the wait.", body = crate::openapi::TestOutcome),
        (status = 409, description = "The subscription is disabled.", body = crate::openapi::ErrorBody),
    ))]
async fn test_subscription(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let subscription = find(&state, &principal, Role::SubscriptionsManage, &id)?;
    let bytes = body_bytes(body)?;
    // The body is optional: none (or whitespace) means the default wait.
    let request: TestRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        TestRequest::default()
    } else {
        decode_json(&bytes)?
    };
    let wait = request.wait(state.test_event_wait)?;
    if !subscription.is_active() {
        // Workers dead-letter a disabled subscription's tasks without an attempt.
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "the subscription is disabled: enable it (PATCH {\"enabled\": true}) to test it",
        ));
    }
    let task = test_task(&subscription, Utc::now());
    write_task(&state, &task, "test event").await?;
    tracing::info!(%id, message_id = %task.message_id, "test event sent");
    let mut answer = json!({
        "message_id": task.message_id,
        "event_id": task.event.id,
        "event_type": task.event.event_type,
    });
    match state.attempts.wait_for(&id, &task.message_id, wait).await {
        Some(attempt) => {
            answer["status"] = json!("attempted");
            answer["delivered"] = json!(attempt.outcome == AttemptOutcome::Success);
            answer["attempt"] = json!(attempt);
            Ok((StatusCode::OK, Json(answer)))
        }
        None => {
            answer["status"] = json!("pending");
            Ok((StatusCode::ACCEPTED, Json(answer)))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    since: chrono::DateTime<Utc>,
}

/// The answer of a request that started a job.
type JobAccepted = (
    StatusCode,
    [(axum::http::header::HeaderName, String); 1],
    Json<Value>,
);

/// Starts a background job routing the subscription's events since `since` again, to
/// it alone (same `webhook-id`s); answers `202` with the job to poll.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/replay", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`")),
    request_body = crate::openapi::ReplayRequest,
    responses((status = 202, description = "A replay job started; poll it at `Location` (`/v1/jobs/{id}`).", body = crate::jobs::JobSchema,
        headers(("Location" = String, description = "`/v1/jobs/{id}` of the job.")))))]
async fn replay_subscription(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<JobAccepted, ApiError> {
    let subscription = find(&state, &principal, Role::SubscriptionsManage, &id)?;
    let job = hookline_domain::job::Job::queued(
        hookline_domain::job::new_job_id(),
        hookline_domain::job::JobKind::Replay,
        Some(subscription.tenant().to_owned()),
        Some(id.clone()),
        json!({ "subscription_id": id, "since": request.since }),
        Utc::now(),
    );
    let work = crate::replay::Work::Replay {
        subscription: Box::new(subscription.as_ref().clone()),
        since: request.since,
    };
    let shown = state.jobs.submit(job, work).await?;
    tracing::info!(%id, since = %request.since, job = %shown["id"], "subscription replay started");
    Ok(crate::jobs::accepted(shown))
}

/// A tenant key redrives one of its own subscriptions at a time: dead letters of
/// every tenant sit in one topic. Starts a background job; answers `202` with it.
#[utoipa::path(post, path = "/v1/dlq/redrive", tag = "dead letters",
    request_body = crate::openapi::RedriveRequest,
    responses(
        (status = 202, description = "A redrive job started; poll it at `Location` (`/v1/jobs/{id}`).", body = crate::jobs::JobSchema,
            headers(("Location" = String, description = "`/v1/jobs/{id}` of the job."))),
        (status = 404, description = "A tenant key named a subscription that is not one of its tenant's.", body = crate::openapi::ErrorBody),
    ))]
async fn redrive_dlq(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<crate::replay::RedriveRequest>,
) -> Result<JobAccepted, ApiError> {
    principal
        .require(Role::SubscriptionsManage)
        .map_err(|d| denied(d, "subscription"))?;
    match &request.subscription_id {
        None if request.since.is_none() => {
            return Err(FieldError::new(
                "subscription_id",
                "give a subscription_id, a since, or both",
            )
            .into());
        }
        None if !principal.is_admin() => {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "a tenant API key redrives one subscription at a time: give its subscription_id",
            )
            .at("subscription_id"));
        }
        // The admin may redrive a subscription deleted since (its dead letters stay).
        Some(id) if !principal.is_admin() => {
            find(&state, &principal, Role::SubscriptionsManage, id)?;
        }
        _ => {}
    }
    // The job belongs to the subscription's tenant when it is known; a redrive across
    // subscriptions (or of one deleted since) is the admin's alone.
    let tenant = request
        .subscription_id
        .as_ref()
        .and_then(|id| state.view.get(id))
        .map(|s| s.tenant().to_owned());
    let job = hookline_domain::job::Job::queued(
        hookline_domain::job::new_job_id(),
        hookline_domain::job::JobKind::Redrive,
        tenant,
        request.subscription_id.clone(),
        json!(request),
        Utc::now(),
    );
    let shown = state
        .jobs
        .submit(job, crate::replay::Work::Redrive(request))
        .await?;
    tracing::info!(job = %shown["id"], "dead-letter redrive started");
    Ok(crate::jobs::accepted(shown))
}
