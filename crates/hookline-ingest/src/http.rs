//! HTTP pieces the APIs share: bearer-token guard and JSON body reading with errors
//! in the API's own shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use hookline_domain::event::FieldError;

/// Middleware: when a token is configured, requests need `Authorization: Bearer <token>`.
pub async fn require_bearer(
    State(token): State<Option<std::sync::Arc<str>>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            return Err(ApiError::unauthorized());
        }
    }
    Ok(next.run(request).await)
}

/// The request body, or a JSON error (413 when over the limit).
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "payload_too_large", rejection.body_text())
        } else {
            ApiError::new(status, "bad_request", rejection.body_text())
        }
    })
}

/// Decodes a JSON body into `T`: 400 for malformed JSON, 422 for a wrong shape.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body_bytes(body)?;
    serde_json::from_slice(&bytes).map_err(|err| {
        use serde_json::error::Category;
        let prefix = match err.classify() {
            Category::Data => "invalid body",
            _ => "malformed JSON",
        };
        ApiError::invalid(FieldError::new("$", format!("{prefix}: {err}")))
    })
}
