//! Harness for Hookline's end-to-end tests: the real binaries as child processes, a
//! real Kafka broker (started by `deploy/local/kafka.sh`), and real HTTP receivers.
//!
//! The broker address comes from `HOOKLINE_TEST_KAFKA_BROKERS` (default
//! `127.0.0.1:19092`, the port `scripts/test.sh` starts). Every test gets its own topic
//! prefix and consumer groups, so tests run side by side on one broker. A test that
//! needs a broker of its own (a cold start) starts one with [`Broker::launch`].
//!
//! The binaries see only the deployment's environment on top of the caller's (this
//! process's, or one given to [`Deployment::with_caller_env`]) minus every `HOOKLINE_*` and `OTEL_*`
//! variable (see [`is_stray`]): a setting exported in the developer's shell never
//! changes what a test runs.
//!
//! The tests themselves are one test binary, `tests/e2e` (a module per area), whose tests
//! share one process: the harness keeps no process-wide state.
//!
//! Modules:
//!
//! - [`ledger`]: a steady [`Load`] over the HTTP API and the [`Ledger`] that checks
//!   what the receivers got against what was accepted.
//! - [`process`]: a [`Deployment`] and its binaries as child processes ([`Proc`]):
//!   environment, readiness, logs, metrics.
//! - [`receiver`]: a real HTTP [`Receiver`] recording every request ([`Received`]) and
//!   answering as told ([`Behaviour`]).
//! - [`api`]: a client of ingest's HTTP API ([`Api`]).
//! - [`kafka`]: straight to the broker: producing, counting and reading records, a
//!   [`Broker`] of a test's own.
//! - [`cluster`]: the three-node [`Cluster`] of the fault tests: killing, pausing and
//!   restarting nodes, and who leads which partition.
//! - [`prometheus`]: `promtool check metrics` on a scrape, and a real Prometheus
//!   server ([`PrometheusServer`]) scraping a deployment, queried with PromQL.
//! - [`fixtures`]: the whole [`Pipeline`] of one test, and [`assert_same`].
//! - [`wait`]: [`eventually`], the one way to wait for something to happen.
//!
//! Everything a test uses is re-exported here.

#![warn(missing_docs)]

pub mod api;
pub mod cluster;
pub mod fixtures;
pub mod kafka;
pub mod ledger;
pub mod process;
pub mod prometheus;
pub mod receiver;
pub mod wait;

pub use api::Api;
pub use cluster::Cluster;
pub use fixtures::{assert_same, Pipeline};
pub use kafka::{
    brokers, client_config, client_config_on, create_topic_on, create_topics, create_topics_on,
    produce, producer, producer_on, read_all, read_all_on, record_count, record_count_on, Broker,
    Record, TopicSpec,
};
pub use ledger::{genuine, Answer, Ledger, Load, LoadReport, Refusal, Sent, Subscribed};
pub use process::{admin_client, binary, free_addr, is_stray, Deployment, Proc, ADMIN_TOKEN};
pub use prometheus::{
    dashboard_expressions, exported_names, promtool_check_metrics, referenced_names, scrape,
    PrometheusServer,
};
pub use receiver::{Behaviour, Received, Receiver};
pub use wait::eventually;
