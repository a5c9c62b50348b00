//! The one error type of the HTTP APIs, built from an [`ErrorKind`] that fixes its
//! status and code, with a message and, for validation errors, the offending field.
//! Rendered as `{"error": {"code", "message", "field"?}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use hookline_domain::event::FieldError;

/// The machine-readable error codes; each decides the answer's HTTP status.
// Also the `ErrorCode` schema of the OpenAPI document, under the names `code` gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = ErrorCode, rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the body is not JSON.
    MalformedJson,
    /// 400: the request could not be read.
    BadRequest,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: the credential may not do this (a role it lacks, another tenant, an
    /// admin-only call).
    Forbidden,
    /// 404: no such resource (or one of another tenant).
    NotFound,
    /// 409: a tenant quota would be exceeded (e.g. its most subscriptions).
    QuotaExceeded,
    /// 409: the resource is not in a state that allows the call (e.g. testing a
    /// disabled subscription).
    Conflict,
    /// 409: another request under the same idempotency key is still in progress;
    /// answered with `Retry-After`.
    IdempotencyInProgress,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 422: a field failed validation.
    InvalidField,
    /// 422: the idempotency key (or producer-supplied event id) was used with a
    /// different request body within the idempotency window.
    IdempotencyKeyReused,
    /// 429: the tenant publishes faster than its quota; answered with `Retry-After`.
    RateLimited,
    /// 500: a bug on our side.
    Internal,
    /// 503: Kafka (or another dependency) did not take the write.
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::QuotaExceeded | Self::Conflict | Self::IdempotencyInProgress => {
                StatusCode::CONFLICT
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidField | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code, e.g. `invalid_field`.
    pub fn code(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Conflict => "conflict",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidField => "invalid_field",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }
}

/// An API error, ready to become a response.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ApiError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// More members of the error object, e.g. the ids of events that were not written.
    pub details: Vec<(&'static str, serde_json::Value)>,
    /// `Retry-After` in seconds, for errors other than 503 (which always carries
    /// [`RETRY_AFTER_SECS`]).
    pub retry_after: Option<u64>,
}

/// `Retry-After` of a 503, in seconds: about the time Kafka takes to elect a new
/// partition leader once a broker has gone.
pub const RETRY_AFTER_SECS: u64 = 2;

impl ApiError {
    /// An error of `kind` without a field.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            field: None,
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// The same error with one more member in its error object.
    pub fn with(mut self, key: &'static str, value: serde_json::Value) -> Self {
        self.details.push((key, value));
        self
    }

    /// The same error, blaming `field`.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 404 for a missing resource.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} not found"))
    }

    /// 503: Kafka (or another dependency) did not take the write; answered with
    /// `Retry-After` ([`RETRY_AFTER_SECS`]).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// 500: something that cannot fail did.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// 401: missing or wrong bearer token.
    pub fn unauthorized() -> Self {
        Self::new(ErrorKind::Unauthorized, "missing or invalid bearer token")
    }

    /// 429: over the tenant's event rate; retry after `retry_after_secs`.
    pub fn rate_limited(message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut err = Self::new(ErrorKind::RateLimited, message)
            .with("retry_after_seconds", json!(retry_after_secs));
        err.retry_after = Some(retry_after_secs);
        err
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }
}

/// A validation error is a 422 naming the field.
impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        Self::new(ErrorKind::InvalidField, err.message).at(err.field)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut error = json!({"code": self.kind.code(), "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        for (key, value) in self.details {
            error[key] = value;
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        let retry_after = match self.kind {
            ErrorKind::Unavailable => Some(RETRY_AFTER_SECS),
            _ => self.retry_after,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.kind == ErrorKind::Unauthorized {
            // RFC 6750: say which scheme the API expects.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_schema_names_every_code() {
        use utoipa::PartialSchema;
        // Exhaustive: a new kind does not compile until it is listed here.
        let listed = |kind: ErrorKind| match kind {
            ErrorKind::MalformedJson
            | ErrorKind::BadRequest
            | ErrorKind::Unauthorized
            | ErrorKind::Forbidden
            | ErrorKind::NotFound
            | ErrorKind::QuotaExceeded
            | ErrorKind::Conflict
            | ErrorKind::IdempotencyInProgress
            | ErrorKind::PayloadTooLarge
            | ErrorKind::InvalidField
            | ErrorKind::IdempotencyKeyReused
            | ErrorKind::RateLimited
            | ErrorKind::Internal
            | ErrorKind::Unavailable => kind.code(),
        };
        let all = [
            ErrorKind::MalformedJson,
            ErrorKind::BadRequest,
            ErrorKind::Unauthorized,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::QuotaExceeded,
            ErrorKind::Conflict,
            ErrorKind::IdempotencyInProgress,
            ErrorKind::PayloadTooLarge,
            ErrorKind::InvalidField,
            ErrorKind::IdempotencyKeyReused,
            ErrorKind::RateLimited,
            ErrorKind::Internal,
            ErrorKind::Unavailable,
        ];
        let schema = serde_json::to_value(ErrorKind::schema()).expect("schema as JSON");
        let named: Vec<&str> = schema["enum"]
            .as_array()
            .expect("a string enum")
            .iter()
            .filter_map(|name| name.as_str())
            .collect();
        let codes: Vec<&str> = all.into_iter().map(listed).collect();
        assert_eq!(named, codes);
    }

    #[test]
    fn kinds_decide_status_and_code() {
        let err = ApiError::from(FieldError::new("url", "must have a host"));
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.kind.code(), "invalid_field");
        assert_eq!(err.field.as_deref(), Some("url"));
        let err = ApiError::new(ErrorKind::MalformedJson, "expected value").at("$");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.kind.code(), "malformed_json");
        assert_eq!(
            ApiError::not_found("subscription").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::unavailable("x").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn unavailable_says_when_to_retry_and_carries_its_details() {
        let response = ApiError::unavailable("not acknowledged")
            .with("ids", json!(["evt_1"]))
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(RETRY_AFTER_SECS))
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(body["error"]["ids"], json!(["evt_1"]));
        let response = ApiError::not_found("subscription").into_response();
        assert_eq!(response.headers().get(header::RETRY_AFTER), None);
    }

    #[test]
    fn unauthorized_names_the_scheme_the_api_expects() {
        let response = ApiError::unauthorized().into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE),
            Some(&HeaderValue::from_static("Bearer"))
        );
        let response = ApiError::not_found("subscription").into_response();
        assert_eq!(response.headers().get(header::WWW_AUTHENTICATE), None);
    }

    #[tokio::test]
    async fn rate_limited_says_when_to_retry() {
        let response = ApiError::rate_limited("slow down", 3).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(3))
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(body["error"]["retry_after_seconds"], 3);
        assert_eq!(
            ApiError::new(ErrorKind::Forbidden, "x").status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ApiError::new(ErrorKind::QuotaExceeded, "x").status(),
            StatusCode::CONFLICT
        );
    }
}
