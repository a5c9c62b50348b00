//! HTTP pieces the APIs share: JSON body reading with errors in the API's own shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorKind};

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
