//! Ingest as a library: the HTTP API ([`api`]) with its error type ([`error`]) and
//! body handling ([`http`]), authentication ([`auth`]), tenant API key management
//! ([`keys`]) and per-tenant event rates ([`quota`]), the attempts log ([`attempts`]), replay and redrive
//! ([`replay`]), its spans ([`trace`]). The binary wires them.
#![warn(missing_docs)]

pub mod api;
pub mod attempts;
pub mod auth;
pub mod error;
pub mod http;
pub mod keys;
pub mod openapi;
pub mod quota;
pub mod replay;
pub mod trace;
