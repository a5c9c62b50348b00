//! Ingest as a library: the HTTP API ([`api`]) with its error type ([`error`]) and
//! body handling ([`http`]), authentication ([`auth`]), tenant API key management
//! ([`keys`]) and per-tenant event rates ([`quota`]), the message log ([`attempts`], its routes in [`message_log`]), replay and redrive
//! ([`replay`]) and the background jobs that run them ([`jobs`]), its spans ([`trace`]). The binary wires them.
#![warn(missing_docs)]

pub mod api;
pub mod attempts;
pub mod auth;
pub mod error;
pub mod event_types;
pub mod http;
pub mod idempotency;
pub mod jobs;
pub mod keys;
pub mod message_log;
pub mod openapi;
pub mod quota;
pub mod replay;
pub mod trace;
