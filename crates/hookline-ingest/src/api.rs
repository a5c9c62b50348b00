//! The `/v1` API: events in, subscriptions managed.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;
use crate::http::{body_bytes, decode_json, require_bearer, ApiJson};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use chrono::Utc;
use hookline_core::config::KafkaArgs;
use hookline_core::produce::{send_all, OutRecord};
use hookline_core::progress::Progress;
use hookline_core::telemetry;
use hookline_core::topics::Topics;
use hookline_core::view::SubscriptionView;
use hookline_domain::egress::UrlRules;
use hookline_domain::event::{parse_batch, Event};
use hookline_domain::ids;
use hookline_domain::sealing::Keyring;
use hookline_domain::signing::WebhookSecret;
use hookline_domain::subscription::{
    NewSubscription, Saving, Subscription, SubscriptionPatch, DEFAULT_OVERLAP,
};
use prometheus::{HistogramVec, IntCounterVec, Opts, Registry};
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long a subscription write waits to be visible in this process's view.
const VIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Ingest's metrics.
#[derive(Clone)]
pub struct Metrics {
    events: IntCounterVec,
    requests: IntCounterVec,
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
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        let stages = telemetry::stage_histogram(
            registry,
            "hookline_ingest_stage_duration_seconds",
            "Duration of ingest's stages: accepted_to_acknowledged (a request's events \
             parsed, to Kafka acknowledging all of them).",
        )?;
        Ok(Self {
            events,
            requests,
            stages,
        })
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
    /// Idempotent, `acks=all` producer, giving up on a record after `produce_timeout`.
    pub producer: FutureProducer,
    /// How long a write waits for Kafka's acknowledgement before answering 503.
    pub produce_timeout: Duration,
    /// Writes taken on and acknowledged, for `/readyz`.
    pub progress: Progress,
    /// This process's view of the subscriptions topic.
    pub view: Arc<SubscriptionView>,
    /// Topic names.
    pub topics: Topics,
    /// Most events in one request.
    pub max_batch_events: usize,
    /// Kafka settings, for scans (replay, redrive).
    pub kafka: KafkaArgs,
    /// How CloudEvents records are read (replay).
    pub cloudevents: hookline_domain::cloudevents::CloudEventsConfig,
    /// Recent delivery attempts.
    pub attempts: Arc<crate::attempts::AttemptLog>,
    /// Metrics.
    pub metrics: Metrics,
    /// Which subscription URLs are accepted.
    pub rules: Arc<UrlRules>,
    /// Seals (and, for `GET …/secret`, opens) signing secrets and header values.
    pub keyring: Arc<Keyring>,
}

impl AppState {
    fn saving(&self) -> Saving<'_> {
        Saving {
            rules: &self.rules,
            keyring: &self.keyring,
        }
    }
}

/// The `/v1` routes, behind the bearer-token guard and the body limit.
pub fn routes(state: AppState, max_body_bytes: usize, admin_token: Option<String>) -> Router {
    let token: Option<Arc<str>> = admin_token.map(Arc::from);
    Router::new()
        .route("/v1/events", post(post_events))
        .route(
            "/v1/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(get_subscription)
                .patch(patch_subscription)
                .delete(delete_subscription),
        )
        .route("/v1/subscriptions/{id}/secret", get(get_secret))
        .route("/v1/subscriptions/{id}/rotate-secret", post(rotate_secret))
        .route("/v1/subscriptions/{id}/attempts", get(list_attempts))
        .route("/v1/subscriptions/{id}/replay", post(replay_subscription))
        .route("/v1/dlq/redrive", post(redrive_dlq))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(token, require_bearer))
        .with_state(state)
}

/// Answers `202 {"ids": [...]}` once Kafka acknowledged every event of the request.
async fn post_events(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let outcome = accept_events(&state, body).await;
    let status = outcome
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::ACCEPTED);
    state.metrics.request("events", status);
    outcome.map(|ids| (StatusCode::ACCEPTED, Json(json!({ "ids": ids }))))
}

async fn accept_events(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<String>, ApiError> {
    let bytes = body_bytes(body)?;
    let events = decode_json(&bytes)
        .and_then(|body| Ok(parse_batch(body, state.max_batch_events)?))
        .inspect_err(|_| {
            state.metrics.events.with_label_values(&["invalid"]).inc();
        })?;
    let topic = state.topics.events();
    let records: Vec<OutRecord> = events
        .iter()
        .map(|event| OutRecord::json(&topic, event.partition_key(), event))
        .collect::<Result<_, serde_json::Error>>()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let accepted = std::time::Instant::now();
    state.progress.started();
    let results = send_within(&state.producer, &records, state.produce_timeout).await;
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
            .events
            .with_label_values(&["failed"])
            .inc_by(failed as u64);
        tracing::error!(%err, failed, "events not acknowledged by Kafka");
        // Some of the events may be written (and will be delivered); sent again with the
        // same ids, they are delivered with the same webhook-ids, which receivers
        // de-duplicate.
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let not_acknowledged: Vec<&str> = events
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
    Ok(events.into_iter().map(|e: Event| e.id.into()).collect())
}

/// How long past the produce timeout a request waits for librdkafka to report its
/// records before it is answered without their reports.
const REPORT_SLACK: Duration = Duration::from_secs(1);

/// [`send_all`], answered within `timeout` plus [`REPORT_SLACK`] whatever librdkafka
/// does: the producer gives up on a record after `timeout` (`message.timeout.ms`), but
/// one already sent waits for its broker's answer; records not reported by then count as
/// not acknowledged (they may still be written, as any timed-out record may).
async fn send_within(
    producer: &FutureProducer,
    records: &[OutRecord],
    timeout: Duration,
) -> Vec<Result<(i32, i64), rdkafka::error::KafkaError>> {
    match tokio::time::timeout(timeout + REPORT_SLACK, send_all(producer, records, timeout)).await {
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
    let record = OutRecord::new(state.topics.subscriptions(), id, payload);
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
        .map_err(|err| ApiError::unavailable(format!("subscription not stored: {err}")))?;
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

async fn create_subscription(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<NewSubscription>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (subscription, secret) =
        request.into_subscription(ids::new_subscription_id(), Utc::now(), state.saving())?;
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

async fn list_subscriptions(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Json<Value> {
    let mut found: Vec<Arc<Subscription>> = state
        .view
        .read()
        .iter()
        .filter(|s| query.tenant.as_ref().is_none_or(|t| s.tenant() == t))
        .cloned()
        .collect();
    found.sort_by(|a, b| a.id().cmp(b.id()));
    Json(json!({ "data": found.iter().map(|s| public(s)).collect::<Vec<_>>() }))
}

fn find(state: &AppState, id: &str) -> Result<Arc<Subscription>, ApiError> {
    state
        .view
        .get(id)
        .ok_or_else(|| ApiError::not_found("subscription"))
}

async fn get_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(public(find(&state, &id)?.as_ref())))
}

async fn get_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let secret = find(&state, &id)?
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
async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
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
    let current = resealed(&state, find(&state, &id)?.as_ref())?;
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

async fn patch_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<SubscriptionPatch>,
) -> Result<Json<Value>, ApiError> {
    let current = resealed(&state, find(&state, &id)?.as_ref())?;
    let next = patch.apply(&current, Utc::now(), state.saving())?;
    write_subscription(&state, &id, Some(&next)).await?;
    tracing::info!(%id, "subscription updated");
    Ok(Json(public(&next)))
}

async fn delete_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    find(&state, &id)?;
    write_subscription(&state, &id, None).await?;
    tracing::info!(%id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AttemptsQuery {
    limit: Option<usize>,
}

async fn list_attempts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<AttemptsQuery>,
) -> Result<Json<Value>, ApiError> {
    find(&state, &id)?;
    let limit = query
        .limit
        .unwrap_or(50)
        .min(crate::attempts::KEPT_PER_SUBSCRIPTION);
    Ok(Json(json!({ "data": state.attempts.recent(&id, limit) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    since: chrono::DateTime<Utc>,
}

async fn replay_subscription(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<Json<Value>, ApiError> {
    let subscription = find(&state, &id)?;
    let report = crate::replay::replay(
        &state.kafka,
        &state.topics,
        &state.producer,
        &subscription,
        request.since,
        &state.cloudevents,
    )
    .await
    .map_err(|e| ApiError::unavailable(e.to_string()))?;
    tracing::info!(%id, since = %request.since, requeued = report.requeued, "subscription replayed");
    Ok(Json(json!(report)))
}

async fn redrive_dlq(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<crate::replay::RedriveRequest>,
) -> Result<Json<Value>, ApiError> {
    if request.subscription_id.is_none() && request.since.is_none() {
        return Err(hookline_domain::event::FieldError::new(
            "subscription_id",
            "give a subscription_id, a since, or both",
        )
        .into());
    }
    let report = crate::replay::redrive(&state.kafka, &state.topics, &state.producer, request)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    tracing::info!(requeued = report.requeued, "dead letters redriven");
    Ok(Json(json!(report)))
}
