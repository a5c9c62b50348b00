//! `hookline-router`: consumes the events topic, matches each event against the
//! subscriptions view, and writes one delivery task per match to the deliveries topic.
//! An event's offset is stored for commit only after all its tasks are acknowledged.

mod router;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hookline_core::config::{KafkaArgs, LogArgs};
use hookline_core::kafka::{self, TopicSpec};
use hookline_core::telemetry::{self, Readiness};
use hookline_core::view::SubscriptionView;

/// Command line and environment settings.
#[derive(Debug, Parser)]
#[command(name = "hookline-router", version, about)]
struct Cli {
    /// Address of the operations endpoints.
    #[arg(long, env = "HOOKLINE_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    http_addr: SocketAddr,

    /// Consumer group shared by all routers.
    #[arg(long, env = "HOOKLINE_ROUTER_GROUP", default_value = "hookline-router")]
    group: String,

    /// Most events routed in one batch.
    #[arg(long, env = "HOOKLINE_ROUTER_BATCH", default_value_t = 1000)]
    batch_size: usize,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(&cli.log);
    let topics = cli.kafka.topics();
    kafka::ensure_topics(
        &cli.kafka,
        &[
            TopicSpec::plain(topics.events(), &cli.kafka),
            TopicSpec::plain(topics.events_dlq(), &cli.kafka),
            TopicSpec::plain(topics.deliveries(), &cli.kafka),
            TopicSpec::compacted(topics.subscriptions()),
        ],
        Duration::from_secs(60),
    )
    .await?;

    let registry = telemetry::registry("router");
    let readiness = Readiness::default();
    let view = SubscriptionView::start(&cli.kafka, "hookline-router-view", &registry)?;
    let router = router::Router::new(&cli.kafka, &cli.group, cli.batch_size, view, &registry)?;

    let stop = telemetry::stop_on_signal();
    let server = tokio::spawn(telemetry::serve_until(
        cli.http_addr,
        telemetry::ops_routes(registry, readiness.clone()),
        stop.clone(),
    ));
    router.run(readiness, stop).await?;
    server.await??;
    Ok(())
}
