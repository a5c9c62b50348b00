//! Hookline's domain, with no Kafka, HTTP server, CLI or metrics in it: the event
//! envelope and its CloudEvents mapping, ids, subscriptions and their matching and
//! filters, Standard Webhooks signing, secrets sealed at rest, delivery tasks, test events and attempt records, background jobs (replay, redrive), and the
//! delivery policy (retry schedule and tiers, circuit breaker, offset tracking, egress
//! policy, and the delivery decision), and access control (roles, tenant API keys,
//! per-tenant quotas). Everything here is pure: effects live in the
//! binaries and in `hookline-core`'s Kafka wiring.
#![warn(missing_docs)]

pub mod access;
pub mod api_key;
pub mod attempt;
pub mod backoff;
pub mod breaker;
pub mod catalog;
pub mod cloudevents;
pub mod decision;
pub mod duration;
pub mod egress;
pub mod event;
pub mod filter;
pub mod health;
pub mod idempotency;
pub mod ids;
pub mod job;
pub mod matching;
pub mod message_log;
pub mod position;
pub mod quota;
pub mod retry;
pub mod routing;
pub mod sealing;
pub mod signing;
pub mod subscription;
pub mod task;
pub mod test_event;
pub mod tracker;
