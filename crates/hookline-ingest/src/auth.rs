//! Authentication of `/v1` requests: the admin token, or a tenant API key checked
//! against this instance's view of the API keys topic. The guard puts the request's
//! [`Principal`] into its extensions; each handler then checks scope itself.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use hookline_core::config::AuthMode;
use hookline_core::key_view::ApiKeyView;
use hookline_domain::access::{Denied, Principal};
use hookline_domain::api_key::key_id_of;
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};

/// What the guard needs: the mode, the keys, and how old a view it trusts.
pub struct Authenticator {
    /// The admin token; `None` when running without authentication.
    admin_token: Option<String>,
    keys: Arc<ApiKeyView>,
    max_staleness: Duration,
}

impl Authenticator {
    /// A guard for `mode`, honouring tenant keys on `keys` while it was confirmed up
    /// to date within `max_staleness`.
    pub fn new(mode: AuthMode, keys: Arc<ApiKeyView>, max_staleness: Duration) -> Self {
        let admin_token = match mode {
            AuthMode::AdminToken(token) => Some(token),
            AuthMode::Insecure => None,
        };
        Self {
            admin_token,
            keys,
            max_staleness,
        }
    }

    /// Who the request acts as, from its `Authorization` header.
    pub fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return match self.admin_token {
                None => Ok(Principal::Admin),
                Some(_) => Err(ApiError::unauthorized()),
            };
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        if let Some(token) = &self.admin_token {
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                return Ok(Principal::Admin);
            }
        }
        let id = key_id_of(presented).ok_or_else(ApiError::unauthorized)?;
        // A view not confirmed recently may still hold a key revoked since: refuse
        // rather than honour it, so that revocation has a bound on every instance.
        let staleness = self.keys.staleness();
        if staleness > self.max_staleness {
            return Err(ApiError::unavailable(format!(
                "API keys not confirmed up to date for over {:?}; retry",
                self.max_staleness
            )));
        }
        match self.keys.get(&id) {
            Some(record) if record.verifies(presented) => Ok(record.principal()),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// Middleware: authenticates the request and hands its [`Principal`] to the handler.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let principal = auth.principal(request.headers())?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// A refused scope check as the API answers it; `hidden` names what a
/// [`Denied::Hidden`] resource is answered as missing.
pub fn denied(denied: Denied, hidden: &str) -> ApiError {
    match denied {
        Denied::Hidden => ApiError::not_found(hidden),
        other => ApiError::new(ErrorKind::Forbidden, other.to_string()),
    }
}
