//! Hookline's shared library: the domain (event envelope, ids, subscriptions and
//! matching, Standard Webhooks signing, delivery tasks) and the wiring every binary
//! uses the same way (topics, configuration, Kafka clients, telemetry, API errors).
//!
//! The three binaries (`hookline-ingest`, `hookline-router`, `hookline-delivery`) are
//! thin: they talk to each other only through the Kafka topics named in [`topics`].
#![warn(missing_docs)]

pub mod attempt;
pub mod breaker;
pub mod cloudevents;
pub mod config;
pub mod decision;
pub mod egress;
pub mod error;
pub mod event;
pub mod filter;
pub mod health;
pub mod http;
pub mod ids;
pub mod kafka;
pub mod matching;
pub mod retry;
pub mod routing;
pub mod scan;
pub mod signing;
pub mod subscription;
pub mod task;
pub mod telemetry;
pub mod topics;
pub mod tracker;
pub mod view;
