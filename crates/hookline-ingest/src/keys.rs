//! `/v1/tenants/{tenant}/api-keys`: the admin credential creates, lists and revokes a
//! tenant's API keys. Keys are written to the compacted API keys topic (keyed by key
//! id, a revocation is a tombstone) and the call answers once this instance's view
//! shows the change.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use hookline_domain::access::Principal;
use hookline_domain::api_key::{ApiKeyRecord, NewApiKey};
use serde_json::{json, Value};

use crate::api::{write_record, AppState, VIEW_TIMEOUT};
use crate::auth::denied;
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};

/// A key record as the API shows it: never the key, never its hash.
fn public(record: &ApiKeyRecord) -> Value {
    let mut shown = json!({
        "id": record.id,
        "tenant": record.tenant,
        "roles": record.roles,
        "created_at": record.created_at,
    });
    if let Some(description) = &record.description {
        shown["description"] = json!(description);
    }
    shown
}

async fn write_key(
    state: &AppState,
    id: &str,
    record: Option<&ApiKeyRecord>,
) -> Result<(), ApiError> {
    let payload = record
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let offset = write_record(state, state.topics.api_keys(), id, payload, "API key").await?;
    state
        .keys
        .wait_for_offset(offset, VIEW_TIMEOUT)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// `POST /v1/tenants/{tenant}/api-keys`: `201` with the key, shown this once.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/api-keys", tag = "api keys",
    params(("tenant" = String, Path)),
    request_body = crate::openapi::NewApiKey,
    responses((status = 201, description = "Created; the key is in this answer only.", body = crate::openapi::ApiKey)))]
pub async fn create_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(tenant): ApiPath<String>,
    ApiJson(request): ApiJson<NewApiKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    principal
        .require_admin()
        .map_err(|d| denied(d, "API key"))?;
    let (key, record) = request.into_key(&tenant, Utc::now())?;
    write_key(&state, &record.id, Some(&record)).await?;
    tracing::info!(id = %record.id, %tenant, roles = ?record.roles, "API key created");
    let mut shown = public(&record);
    shown["key"] = json!(key.expose());
    Ok((StatusCode::CREATED, Json(shown)))
}

/// `GET /v1/tenants/{tenant}/api-keys`: the tenant's live keys, without the keys.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/api-keys", tag = "api keys",
    params(("tenant" = String, Path)),
    responses((status = 200, description = "The tenant's live keys, never the keys themselves.", body = crate::openapi::ApiKeyList)))]
pub async fn list_keys(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(tenant): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    principal
        .require_admin()
        .map_err(|d| denied(d, "API key"))?;
    let keys: Vec<Value> = state
        .keys
        .of_tenant(&tenant)
        .iter()
        .map(|r| public(r))
        .collect();
    Ok(Json(json!({ "data": keys })))
}

/// `DELETE /v1/tenants/{tenant}/api-keys/{key_id}`: revokes the key (`204`), or `404`.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/api-keys/{key_id}", tag = "api keys",
    params(("tenant" = String, Path), ("key_id" = String, Path, description = "`key_…`")),
    responses((status = 204, description = "Revoked.")))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath((tenant, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    principal
        .require_admin()
        .map_err(|d| denied(d, "API key"))?;
    match state.keys.get(&id) {
        Some(record) if record.tenant == tenant => {}
        _ => return Err(ApiError::not_found("API key")),
    }
    write_key(&state, &id, None).await?;
    tracing::info!(%id, %tenant, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
