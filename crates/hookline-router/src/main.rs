//! `hookline-router`: consumes the events topic, matches each event against the
//! subscriptions view, and writes one delivery task per match to the deliveries topic.
//! Each batch is one Kafka transaction (tasks and consumer offsets together), so
//! routing is exactly-once for `read_committed` readers.

/// mimalloc rather than the system allocator: less CPU per allocation across many
/// threads, and freed memory handed back instead of kept in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hookline_router::router;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hookline_core::catalog_view::CatalogView;
use hookline_core::config::{
    parse_duration, CatalogArgs, CloudEventsArgs, KafkaArgs, LogArgs, ProgressArgs,
};
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

    /// This router's stable name (e.g. a pod name). Its transactional id is
    /// `<group>-<instance id>` and it joins the group as a static member: a restarted
    /// router with the same name fences the transaction its predecessor left open and
    /// takes its partitions back at once. Random (dynamic membership) when unset.
    #[arg(long, env = "HOOKLINE_ROUTER_INSTANCE_ID")]
    instance_id: Option<String>,

    /// How batches are made durable: `exactly-once` (the default: each batch is one
    /// Kafka transaction with its consumer offsets) or `at-least-once` (tasks produced
    /// idempotently, offsets stored once they are acknowledged; a router crash may write
    /// a batch's tasks twice, with the same webhook-ids, for one less round trip per
    /// batch and no transaction markers for readers to wait on).
    #[arg(long, env = "HOOKLINE_ROUTER_ROUTING", value_enum, default_value_t = router::Routing::ExactlyOnce)]
    routing: router::Routing,

    /// Most events routed in one batch (one transaction).
    #[arg(long, env = "HOOKLINE_ROUTER_BATCH", default_value_t = 1000)]
    batch_size: usize,

    /// Largest delivery task, in bytes (keep it under the deliveries topic's
    /// `max.message.bytes`); an event whose tasks would be larger goes to the events DLQ.
    #[arg(
        long,
        env = "HOOKLINE_ROUTER_MAX_TASK_BYTES",
        default_value_t = 1_000_000
    )]
    max_task_bytes: usize,

    /// How long a batch waits for the subscriptions view to reach the topic's end
    /// (humantime, e.g. `500ms`, `5s`). A batch whose view is not caught up by then is
    /// not routed: it is rewound and tried again, so that no event misses a
    /// subscription acknowledged before it.
    #[arg(
        long,
        env = "HOOKLINE_ROUTER_VIEW_PATIENCE",
        value_parser = parse_duration,
        default_value = "5s"
    )]
    view_patience: Duration,

    /// Trust the `hookline-validated` header ingest puts on the events it checked:
    /// such a record is not checked again when the header names the version of its
    /// type this router holds. Any producer allowed to write the events topic could set
    /// the header; `false` checks every record (one to two microseconds each).
    #[arg(
        long,
        env = "HOOKLINE_ROUTER_TRUST_INGEST_VALIDATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    trust_ingest_validation: bool,

    #[command(flatten)]
    catalog: CatalogArgs,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    progress: ProgressArgs,

    #[command(flatten)]
    cloudevents: CloudEventsArgs,

    #[command(flatten)]
    log: LogArgs,
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts any thread.
    hookline_core::memory::release_large_buffers();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Held to the end of `run`: dropping it exports the spans still buffered.
    let _traces = telemetry::init_logging(&cli.log, "hookline-router")?;
    let topics = cli.kafka.topics();
    kafka::ensure_topics(
        &cli.kafka,
        &[
            TopicSpec::plain(topics.events(), &cli.kafka),
            TopicSpec::plain(topics.events_dlq(), &cli.kafka),
            TopicSpec::plain(topics.deliveries(), &cli.kafka),
            TopicSpec::compacted(topics.subscriptions()),
            TopicSpec::compacted(topics.subscription_health()),
            TopicSpec::compacted(topics.event_types()),
        ],
        Duration::from_secs(60),
    )
    .await?;

    let registry = telemetry::registry("router");
    let readiness = Readiness::default();
    let view = SubscriptionView::start(&cli.kafka, "hookline-router-view", &registry)?;
    let base = cli
        .catalog
        .base_catalog()
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    tracing::info!(
        validation = cli.catalog.event_validation,
        unknown = ?cli.catalog.event_types_unknown,
        trust_ingest_validation = cli.trust_ingest_validation,
        "checking records produced straight to Kafka against the event catalog"
    );
    let catalog = CatalogView::start(&cli.kafka, "hookline-router-view-types", base, &registry)?;
    let instance = cli
        .instance_id
        .clone()
        .unwrap_or_else(|| ulid::Ulid::new().to_string().to_lowercase());
    let transactional_id = format!("{}-{instance}", cli.group);
    match cli.routing {
        router::Routing::ExactlyOnce => {
            tracing::info!(%transactional_id, "routing exactly once, with Kafka transactions")
        }
        router::Routing::AtLeastOnce => tracing::info!(
            "routing at least once: a crash may write a batch's tasks twice (same webhook-ids)"
        ),
    }
    let settings = router::Settings {
        routing: cli.routing,
        group: cli.group.clone(),
        instance_id: cli.instance_id.clone(),
        transactional_id,
        batch_size: cli.batch_size,
        max_task_bytes: cli.max_task_bytes,
        view_patience: cli.view_patience,
        cloudevents: cli.cloudevents.config(),
        stall: cli.progress.stall_after,
        trust_validated: cli.trust_ingest_validation,
    };
    let router = router::Router::new(&cli.kafka, settings, view, catalog, &registry)?;
    // Ready once the view caught up (set by the router) and the group assigned the
    // router its partitions: before that it routes nothing.
    let serving = readiness
        .and(&router.assigned())
        .and_progressing(&router.progress())
        .and_beating(&router.heartbeat());
    tokio::spawn(
        router
            .heartbeat()
            .watch("routing", cli.progress.wedged_exit_after),
    );

    let stop = telemetry::stop_on_signal();
    let server = tokio::spawn(telemetry::serve_until(
        cli.http_addr,
        telemetry::ops_routes(registry, serving),
        stop.clone(),
    ));
    router.run(readiness, stop).await?;
    server.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_patience_is_a_human_duration_defaulting_to_five_seconds() {
        let cli = Cli::try_parse_from(["hookline-router"]).unwrap();
        assert_eq!(cli.view_patience, Duration::from_secs(5));
        let cli = Cli::try_parse_from(["hookline-router", "--view-patience", "50ms"]).unwrap();
        assert_eq!(cli.view_patience, Duration::from_millis(50));
        assert!(Cli::try_parse_from(["hookline-router", "--view-patience", "soon"]).is_err());
    }
}
