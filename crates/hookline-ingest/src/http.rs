//! HTTP pieces the APIs share: JSON body reading with errors in the API's own shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
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

/// A query string extractor that rejects with the API's own error type (`422` naming
/// the parameter's problem) instead of axum's plain-text rejection.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                ApiError::new(ErrorKind::InvalidField, rejection.body_text()).at("query")
            })
    }
}

/// A path parameters extractor that rejects with the API's own error type (`400`, e.g.
/// for a segment that is not UTF-8 once percent-decoded) instead of axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::new(ErrorKind::BadRequest, rejection.body_text()))
    }
}
