//! Hookline's infrastructure, shared by the binaries: topic names, Kafka clients and
//! topic creation, the live subscriptions, API keys and event types views, topic scans, shared settings and
//! telemetry. The domain it carries is `hookline-domain`'s.
//!
//! The three binaries (`hookline-ingest`, `hookline-router`, `hookline-delivery`) talk
//! to each other only through the Kafka topics named in [`topics`].
#![warn(missing_docs)]

pub mod catalog_view;
pub mod config;
pub mod freshness;
pub mod heartbeat;
pub mod idempotency_view;
pub mod kafka;
pub mod kafka_stats;
pub mod key_view;
pub mod memory;
pub mod produce;
pub mod progress;
pub mod scan;
pub mod telemetry;
pub mod topics;
pub mod trace;
pub mod view;
