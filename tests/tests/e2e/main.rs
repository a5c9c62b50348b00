//! Hookline's end-to-end tests, in one test binary: a real Kafka broker, the three
//! binaries as child processes and real HTTP receivers (see the `hookline_e2e` harness).
//! Each module covers one area; a test's name is `module::name`, e.g.
//! `cargo test -p hookline-e2e -- delivery::` runs the delivery tests.
//!
//! The tests of every module share this process and run side by side: none may change
//! process-wide state (the environment, the working directory, global hooks). Each gets
//! its own topic prefix, consumer groups, receivers and ports.

mod api;
mod bookkeeping;
mod catalog;
mod cli;
mod cloudevents;
mod cold_start;
mod delivery;
mod egress;
mod harness;
mod idempotency;
mod jobs;
mod message_log;
mod observability;
mod openapi;
mod pipeline;
mod receivers;
mod router;
mod secrets;
mod subscriptions;
mod tenancy;
mod test_events;
mod traces;
