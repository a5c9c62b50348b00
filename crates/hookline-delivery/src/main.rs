//! `hookline-delivery`: consumes delivery tasks and POSTs signed webhooks to the
//! subscribers' endpoints. Scale out by starting more workers in the same group.

mod sender;
mod worker;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hookline_core::config::{parse_duration, KafkaArgs, LogArgs};
use hookline_core::egress::EgressPolicy;
use hookline_core::kafka::{self, TopicSpec};
use hookline_core::telemetry::{self, Readiness};
use hookline_core::view::SubscriptionView;

/// Command line and environment settings.
#[derive(Debug, Parser)]
#[command(name = "hookline-delivery", version, about)]
struct Cli {
    /// Address of the operations endpoints.
    #[arg(long, env = "HOOKLINE_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    http_addr: SocketAddr,

    /// Consumer group shared by all delivery workers.
    #[arg(
        long,
        env = "HOOKLINE_DELIVERY_GROUP",
        default_value = "hookline-delivery"
    )]
    group: String,

    /// Most deliveries in flight in this process.
    #[arg(long, env = "HOOKLINE_DELIVERY_CONCURRENCY", default_value_t = 512)]
    concurrency: usize,

    /// Timeout of one HTTP attempt.
    #[arg(long, env = "HOOKLINE_DELIVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,

    /// Attempts before a task goes to the dead-letter topic.
    #[arg(long, env = "HOOKLINE_DELIVERY_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,

    /// Delay before the second attempt (doubling after that).
    #[arg(long, env = "HOOKLINE_DELIVERY_RETRY_BASE", default_value = "1s", value_parser = parse_duration)]
    retry_base: Duration,

    /// Longest delay between attempts.
    #[arg(long, env = "HOOKLINE_DELIVERY_RETRY_MAX", default_value = "60s", value_parser = parse_duration)]
    retry_max: Duration,

    /// Non-public address ranges deliveries may reach anyway (CIDRs, comma separated),
    /// e.g. `127.0.0.0/8` for a local demo. Empty: public addresses only.
    #[arg(long, env = "HOOKLINE_DELIVERY_ALLOW_CIDRS", default_value = "")]
    allow_cidrs: String,

    /// How long shutdown waits for in-flight deliveries.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(&cli.log);
    let allow = EgressPolicy::parse_allow_list(&cli.allow_cidrs).map_err(anyhow::Error::msg)?;
    let topics = cli.kafka.topics();
    kafka::ensure_topics(
        &cli.kafka,
        &[
            TopicSpec::plain(topics.deliveries(), &cli.kafka),
            TopicSpec::plain(topics.deliveries_dlq(), &cli.kafka),
            TopicSpec::compacted(topics.subscriptions()),
        ],
        Duration::from_secs(60),
    )
    .await?;

    let registry = telemetry::registry("delivery");
    let readiness = Readiness::default();
    let context = worker::Context {
        producer: kafka::producer(&cli.kafka, "hookline-delivery")?,
        view: SubscriptionView::start(&cli.kafka, "hookline-delivery-view", &registry)?,
        sender: sender::Sender::new(EgressPolicy::new(allow), cli.timeout)?,
        topics,
        retry: worker::RetryPolicy {
            max_attempts: cli.max_attempts.max(1),
            base_delay: cli.retry_base,
            max_delay: cli.retry_max,
        },
        metrics: worker::Metrics::register(&registry)?,
    };
    let worker = worker::Worker::new(
        &cli.kafka,
        &cli.group,
        cli.concurrency,
        cli.shutdown_grace,
        context,
    )?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ops = telemetry::ops_routes(registry, readiness.clone());
    let server = tokio::spawn(telemetry::serve(cli.http_addr, ops, {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }));
    tokio::spawn(async move {
        telemetry::shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    worker.run(readiness, stop_rx).await?;
    server.await??;
    Ok(())
}
