//! `/v1/event-types`: the event catalog. Any valid credential reads it (it is the same
//! for every tenant); the admin credential alone adds, replaces and deletes types.
//! Types are written to the compacted event types topic (keyed by name, a deletion is
//! a tombstone) by this API only, and a call answers once this instance's catalog
//! view shows the change; every other ingest instance and every router follows the
//! same topic.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use hookline_domain::access::Principal;
use hookline_domain::catalog::{EventTypeRecord, EventTypeRequest, Source};
use serde_json::{json, Value};

use crate::api::{write_record, AppState, VIEW_TIMEOUT};
use crate::auth::denied;
use crate::error::{ApiError, ErrorKind};
use crate::http::{ApiJson, ApiPath};

/// `GET /v1/event-types`: every known type with its schema, by name.
#[utoipa::path(get, path = "/v1/event-types", tag = "event types",
    responses((status = 200, description = "The known event types, by name, with their JSON Schemas.", body = crate::openapi::EventTypeList)))]
pub async fn list_event_types(State(state): State<AppState>) -> Json<Value> {
    let catalog = state.catalog.current();
    let types: Vec<&hookline_domain::catalog::EventType> = catalog.types().collect();
    Json(json!({ "data": types }))
}

/// `GET /v1/event-types/{type}`: one type with its schema, or `404`.
#[utoipa::path(get, path = "/v1/event-types/{type}", tag = "event types",
    params(("type" = String, Path, description = "e.g. `invoice.paid`")),
    responses((status = 200, description = "The type with its JSON Schema.", body = crate::openapi::EventType)))]
pub async fn get_event_type(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .catalog
        .current()
        .get(&name)
        .map(|shown| Json(json!(shown)))
        .ok_or_else(|| ApiError::not_found("event type"))
}

/// `POST /v1/event-types` (admin): adds a type; `409` when one of that name exists
/// (`PUT` replaces it).
#[utoipa::path(post, path = "/v1/event-types", tag = "event types",
    request_body = crate::openapi::EventTypeRequest,
    responses(
        (status = 201, description = "Added; every ingest instance and router checks its events from now on.", body = crate::openapi::EventType),
        (status = 409, description = "A type of that name exists.", body = crate::openapi::ErrorBody),
    ))]
pub async fn create_event_type(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<EventTypeRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal
        .require_admin()
        .map_err(|d| denied(d, "event type"))?;
    let (record, _) = request.into_record(None, Utc::now())?;
    if let Some(existing) = state.catalog.current().get(&record.name) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!(
                "event type {:?} exists ({}): PUT /v1/event-types/{} replaces it",
                record.name,
                source_name(existing.source),
                record.name
            ),
        )
        .at("type"));
    }
    let shown = write_type(&state, &record.name, Some(&record)).await?;
    tracing::info!(event_type = %record.name, "event type created");
    Ok((StatusCode::CREATED, Json(shown)))
}

/// `PUT /v1/event-types/{type}` (admin): adds or replaces the type (a built-in or file
/// type of that name is laid over until the API's is deleted).
#[utoipa::path(put, path = "/v1/event-types/{type}", tag = "event types",
    params(("type" = String, Path, description = "e.g. `ledger.closed`")),
    request_body = crate::openapi::EventTypeRequest,
    responses((status = 200, description = "Stored; the new schema applies from now on.", body = crate::openapi::EventType)))]
pub async fn put_event_type(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<EventTypeRequest>,
) -> Result<Json<Value>, ApiError> {
    principal
        .require_admin()
        .map_err(|d| denied(d, "event type"))?;
    let (record, _) = request.into_record(Some(&name), Utc::now())?;
    let shown = write_type(&state, &record.name, Some(&record)).await?;
    tracing::info!(event_type = %record.name, "event type stored");
    Ok(Json(shown))
}

/// `DELETE /v1/event-types/{type}` (admin): deletes a type the API added (`204`; a
/// built-in or file type it replaced applies again). Built-in and file types cannot be
/// deleted (`409`); unknown ones are `404`.
#[utoipa::path(delete, path = "/v1/event-types/{type}", tag = "event types",
    params(("type" = String, Path, description = "e.g. `ledger.closed`")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "A built-in or file type: it cannot be deleted.", body = crate::openapi::ErrorBody),
    ))]
pub async fn delete_event_type(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    principal
        .require_admin()
        .map_err(|d| denied(d, "event type"))?;
    let source = state.catalog.current().get(&name).map(|t| t.source);
    match source {
        None => return Err(ApiError::not_found("event type")),
        Some(Source::Api) => {}
        Some(other) => {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "event type {name:?} is {}: it cannot be deleted (PUT replaces its schema, \
                     `validate: false` stops checking it)",
                    source_name(other)
                ),
            ))
        }
    }
    write_type(&state, &name, None).await?;
    tracing::info!(event_type = %name, "event type deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Builtin => "built in",
        Source::File => "from the operator's file",
        Source::Api => "added through the API",
    }
}

/// Writes a type record (or a tombstone), waits until this instance's view shows it,
/// and answers the type as now listed (`null` once deleted).
async fn write_type(
    state: &AppState,
    name: &str,
    record: Option<&EventTypeRecord>,
) -> Result<Value, ApiError> {
    let payload = record
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let offset = write_record(
        state,
        state.topics.event_types(),
        name,
        payload,
        "event type",
    )
    .await?;
    state
        .catalog
        .wait_for_offset(offset, VIEW_TIMEOUT)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(json!(state.catalog.current().get(name)))
}
