//! The message log routes: an event and its deliveries, one delivery and its attempts,
//! a subscription's attempts (filtered, paged), and resending one delivery. They read
//! the [`AttemptLog`](crate::attempts::AttemptLog) index and fetch full records from
//! Kafka by offset. Another tenant's event or delivery is answered `404`, exactly as a
//! missing one.

use crate::api::{find, write_task, AppState};
use crate::attempts::DeliveryView;
use crate::auth::denied;
use crate::error::{ApiError, ErrorKind};
use crate::http::{ApiPath, ApiQuery};
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use hookline_domain::access::{Principal, Role};
use hookline_domain::message_log::{AttemptQuery, AttemptQueryText};
use hookline_domain::task::DeliveryTask;
use serde::Deserialize;
use serde_json::{json, Value};

/// The query of the attempts list, as text: [`AttemptQuery::parse`] names the
/// parameter at fault.
#[derive(Deserialize)]
pub(crate) struct AttemptsParams {
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    event_type: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/subscriptions/{id}/attempts`: every attempt the attempts topic still holds,
/// newest first, filtered and paged by an opaque cursor.
#[utoipa::path(get, path = "/v1/subscriptions/{id}/attempts", tag = "subscriptions",
    params(("id" = String, Path, description = "`sub_…`"),
        ("status" = Option<String>, Query, description = "Only attempts that ended so: an outcome (`success`, `http_5xx`, `timeout`, …) or `failed` (any but `success`)."),
        ("since" = Option<String>, Query, description = "RFC 3339: only attempts started at or after."),
        ("until" = Option<String>, Query, description = "RFC 3339: only attempts started at or before."),
        ("event_type" = Option<String>, Query, description = "Only attempts at events of this exact type."),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (with the same filters)."),
        ("limit" = Option<usize>, Query, description = "Page size, 1 to 100 (default 50).")),
    responses((status = 200, description = "One page of attempts, newest first.", body = schema::AttemptPage)))]
pub(crate) async fn list_attempts(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<AttemptsParams>,
) -> Result<Json<Value>, ApiError> {
    find(&state, &principal, Role::AttemptsRead, &id)?;
    let query = AttemptQuery::parse(&AttemptQueryText {
        status: params.status.as_deref(),
        since: params.since.as_deref(),
        until: params.until.as_deref(),
        event_type: params.event_type.as_deref(),
        cursor: params.cursor.as_deref(),
        limit: params.limit,
    })?;
    let found = state.attempts.attempts(&id, &query);
    let data = state.attempts.full(found.items).await;
    Ok(Json(json!({
        "data": data,
        "has_more": found.next.is_some(),
        "next_cursor": found.next.map(|k| k.cursor()),
    })))
}

/// The tenant of `delivery`: its event's, or (before a task of it was read) its
/// subscription's.
fn tenant_of(state: &AppState, delivery: &DeliveryView) -> Option<String> {
    delivery.tenant.clone().or_else(|| {
        state
            .view
            .get(&delivery.subscription_id)
            .map(|s| s.tenant().to_owned())
    })
}

fn visible(state: &AppState, principal: &Principal, delivery: &DeliveryView) -> bool {
    match tenant_of(state, delivery) {
        Some(tenant) => principal.sees(&tenant),
        None => principal.is_admin(),
    }
}

/// The delivery `id`, when `principal` holds `role` and may see it (else `404`).
fn find_delivery(
    state: &AppState,
    principal: &Principal,
    role: Role,
    id: &str,
) -> Result<DeliveryView, ApiError> {
    principal.require(role).map_err(|d| denied(d, "delivery"))?;
    state
        .attempts
        .delivery(id)
        .filter(|d| visible(state, principal, d))
        .ok_or_else(|| ApiError::not_found("delivery"))
}

/// A delivery's status line, as the event shows it.
fn summary(delivery: &DeliveryView) -> Value {
    let last = delivery.attempts.last().map(|a| {
        json!({
            "attempt": a.record.attempt,
            "outcome": a.record.outcome,
            "status": a.record.status,
            "at": a.record.at,
        })
    });
    json!({
        "message_id": delivery.message_id,
        "subscription_id": delivery.subscription_id,
        "status": delivery.status,
        "attempts": delivery.attempts.len(),
        "last_attempt": last,
        "routed_at": delivery.routed_at,
        "delivered_at": delivery.delivered_at,
        "dead_lettered_at": delivery.dead_lettered_at,
    })
}

/// `GET /v1/events/{id}`: the event, as its latest held task carries it, and each of
/// its deliveries (one per matched subscription) with its status.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "message log",
    params(("id" = String, Path, description = "The event's id.")),
    responses((status = 200, description = "The event and its deliveries, by subscription id.", body = schema::EventLog)))]
pub(crate) async fn get_event(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    principal
        .require(Role::AttemptsRead)
        .map_err(|d| denied(d, "event"))?;
    let mut deliveries: Vec<(String, DeliveryView)> = state
        .attempts
        .event(&id)
        .into_iter()
        .filter_map(|d| tenant_of(&state, &d).map(|t| (t, d)))
        .filter(|(tenant, _)| principal.sees(tenant))
        .collect();
    // Event ids are the producers': should two tenants share one, the admin sees the
    // first tenant's (a tenant key only ever its own).
    let Some(tenant) = deliveries.first().map(|(t, _)| t.clone()) else {
        return Err(ApiError::not_found("event"));
    };
    deliveries.retain(|(t, _)| *t == tenant);
    let mut event = Value::Null;
    for (_, delivery) in &deliveries {
        if let Some(at) = delivery.task {
            if let Some(task) = state.attempts.task(at).await {
                event = json!(task.event);
                break;
            }
        }
    }
    let event_type = deliveries
        .first()
        .map(|(_, d)| d.event_type.clone())
        .unwrap_or_default();
    Ok(Json(json!({
        "id": id,
        "type": event_type,
        "tenant": tenant,
        "event": event,
        "deliveries": deliveries.iter().map(|(_, d)| summary(d)).collect::<Vec<_>>(),
    })))
}

/// `GET /v1/deliveries/{id}`: one delivery (event × subscription) by its `webhook-id`,
/// with every attempt and its answer, oldest first.
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "message log",
    params(("id" = String, Path, description = "The `webhook-id` (`msg_…`).")),
    responses((status = 200, description = "The delivery and its attempts, oldest first.", body = schema::DeliveryLog)))]
pub(crate) async fn get_delivery(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let delivery = find_delivery(&state, &principal, Role::AttemptsRead, &id)?;
    let tenant = tenant_of(&state, &delivery);
    let mut shown = summary(&delivery);
    let attempts = state.attempts.full(delivery.attempts).await;
    shown["event_id"] = json!(delivery.event_id);
    shown["event_type"] = json!(delivery.event_type);
    shown["tenant"] = json!(tenant);
    shown["attempts"] = json!(attempts);
    Ok(Json(shown))
}

/// `POST /v1/deliveries/{id}/resend`: the delivery's event queued again for its
/// subscription alone, with the same `webhook-id`; its attempt shows in the log as a new
/// one (numbered from 1: it is a fresh task, with the whole retry schedule).
#[utoipa::path(post, path = "/v1/deliveries/{id}/resend", tag = "message log",
    params(("id" = String, Path, description = "The `webhook-id` (`msg_…`).")),
    responses(
        (status = 202, description = "Queued for delivery.", body = schema::Resent),
        (status = 409, description = "The subscription is disabled or deleted, or the deliveries topic no longer holds the event (retention).", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn resend_delivery(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery = find_delivery(&state, &principal, Role::SubscriptionsManage, &id)?;
    let Some(subscription) = state.view.get(&delivery.subscription_id) else {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "the subscription was deleted: its messages are not sent again",
        ));
    };
    if !subscription.is_active() {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "the subscription is disabled: enable it (PATCH {\"enabled\": true}) to resend",
        ));
    }
    let gone = || {
        ApiError::new(
            ErrorKind::Conflict,
            "the deliveries topic no longer holds this message's event (retention)",
        )
    };
    let held = delivery.task.ok_or_else(gone)?;
    let original = state.attempts.task(held).await.ok_or_else(gone)?;
    let task = DeliveryTask::new(original.event, subscription.id(), Utc::now());
    if task.message_id != id.as_str() {
        return Err(ApiError::internal(
            "the held task does not derive this webhook-id",
        ));
    }
    write_task(&state, &task, "resent message").await?;
    tracing::info!(message_id = %id, subscription = %task.subscription_id, "message resent");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "message_id": task.message_id,
            "subscription_id": task.subscription_id,
            "event_id": task.event.id,
            "status": "queued",
        })),
    ))
}

/// The OpenAPI schemas of the answers above.
pub(crate) mod schema {
    // The document's types are only ever read by utoipa's derives.
    #![allow(dead_code)]

    use chrono::Utc;
    use utoipa::ToSchema;

    /// One page of attempts, newest first.
    #[derive(ToSchema)]
    pub(crate) struct AttemptPage {
        data: Vec<crate::openapi::Attempt>,
        /// Whether more attempts pass the filters.
        has_more: bool,
        /// With `has_more`: the `cursor` of the next page.
        next_cursor: Option<String>,
    }

    /// Where a delivery stands.
    #[derive(ToSchema)]
    #[schema(as = DeliveryStatus, rename_all = "snake_case")]
    pub(crate) enum DeliveryStatusSchema {
        /// Queued, not attempted yet.
        Pending,
        /// The latest attempt succeeded.
        Delivered,
        /// The latest attempt failed; a retry is due (or the dead letter is being written).
        Retrying,
        /// Dead-lettered after its latest attempt.
        DeadLettered,
    }

    /// The latest attempt of a delivery.
    #[derive(ToSchema)]
    pub(crate) struct LastAttempt {
        attempt: u32,
        outcome: crate::openapi::AttemptOutcome,
        /// HTTP status, when there was an answer.
        status: Option<u16>,
        at: chrono::DateTime<Utc>,
    }

    /// One delivery (event × subscription).
    #[derive(ToSchema)]
    pub(crate) struct DeliverySummary {
        /// Its `webhook-id`.
        message_id: String,
        subscription_id: String,
        status: DeliveryStatusSchema,
        /// How many attempts were made.
        attempts: usize,
        last_attempt: Option<LastAttempt>,
        /// When it was first queued.
        routed_at: Option<chrono::DateTime<Utc>>,
        /// Its first successful attempt's start.
        delivered_at: Option<chrono::DateTime<Utc>>,
        /// Its latest dead letter.
        dead_lettered_at: Option<chrono::DateTime<Utc>>,
    }

    /// An event and its deliveries.
    #[derive(ToSchema)]
    pub(crate) struct EventLog {
        id: String,
        #[schema(rename = "type")]
        event_type: String,
        tenant: String,
        /// The event as delivered (`null` when the deliveries topic no longer holds it).
        event: Option<Object>,
        /// One per matched subscription, by subscription id.
        deliveries: Vec<DeliverySummary>,
    }

    /// Any JSON object.
    #[derive(ToSchema)]
    pub(crate) struct Object {}

    /// One delivery with its attempts.
    #[derive(ToSchema)]
    pub(crate) struct DeliveryLog {
        /// Its `webhook-id`.
        message_id: String,
        subscription_id: String,
        event_id: String,
        event_type: String,
        tenant: Option<String>,
        status: DeliveryStatusSchema,
        last_attempt: Option<LastAttempt>,
        routed_at: Option<chrono::DateTime<Utc>>,
        delivered_at: Option<chrono::DateTime<Utc>>,
        dead_lettered_at: Option<chrono::DateTime<Utc>>,
        /// Every attempt the attempts topic holds, oldest first, with its answer.
        attempts: Vec<crate::openapi::Attempt>,
    }

    /// A resent message.
    #[derive(ToSchema)]
    pub(crate) struct Resent {
        /// The same `webhook-id`.
        message_id: String,
        subscription_id: String,
        event_id: String,
        /// `queued`.
        status: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_domain::message_log::DeliveryStatus;

    #[test]
    fn the_status_schema_names_every_status_of_the_domain() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(schema::DeliveryStatusSchema::schema()).unwrap();
        for status in [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Retrying,
            DeliveryStatus::DeadLettered,
        ] {
            let name = serde_json::to_value(status).unwrap();
            assert!(
                schema["enum"].as_array().unwrap().contains(&name),
                "{name} missing from {schema}"
            );
        }
    }
}
