//! HTTP pieces the APIs share: bearer-token guard and JSON body reading with errors
//! in the API's own shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};

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
        let kind = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorKind::PayloadTooLarge
        } else {
            ErrorKind::BadRequest
        };
        ApiError::new(kind, rejection.body_text())
    })
}

/// Decodes a JSON body into `T`: 400 for malformed JSON, 422 for a wrong shape.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| {
        use serde_json::error::Category;
        match err.classify() {
            Category::Data => {
                ApiError::new(ErrorKind::InvalidField, format!("invalid body: {err}"))
            }
            _ => ApiError::new(ErrorKind::MalformedJson, format!("malformed JSON: {err}")),
        }
        .at("$")
    })
}

/// A JSON body extractor that rejects with the API's own error type (400 malformed,
/// 413 too large, 422 wrong shape) instead of axum's plain-text rejections.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(Bytes::from_request(request, state).await)?;
        decode_json(&bytes).map(ApiJson)
    }
}
