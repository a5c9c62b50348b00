//! `hookline-delivery`: consumes delivery tasks and POSTs signed webhooks to the
//! subscribers' endpoints, with non-blocking retries through delay-tier topics.
//! Scale out by starting more workers in the same consumer group.

/// mimalloc rather than the system allocator: less CPU per allocation across many
/// threads, and freed memory handed back instead of kept in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hookline_delivery::{control, limits, pipeline, sender, worker};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hookline_core::config::{
    parse_duration, KafkaArgs, LogArgs, ProgressArgs, SecretsArgs, UrlArgs,
};
use hookline_core::kafka::{self, TopicSpec};
use hookline_core::progress::Progress;
use hookline_core::telemetry::{self, Readiness};
use hookline_core::view::SubscriptionView;
use hookline_domain::egress::EgressPolicy;
use hookline_domain::retry::RetrySchedule;

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

    /// Most tasks in flight in this process.
    #[arg(long, env = "HOOKLINE_DELIVERY_CONCURRENCY", default_value_t = 4096)]
    concurrency: usize,

    /// Most tasks in flight per partition (a full partition is paused).
    #[arg(
        long,
        env = "HOOKLINE_DELIVERY_PARTITION_WINDOW",
        default_value_t = 512
    )]
    partition_window: usize,

    /// Default most concurrent requests per subscription (a subscription may set its own).
    #[arg(
        long,
        env = "HOOKLINE_DELIVERY_SUBSCRIPTION_CONCURRENCY",
        default_value_t = 8
    )]
    subscription_concurrency: u32,

    /// Timeout of one HTTP attempt.
    #[arg(long, env = "HOOKLINE_DELIVERY_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,

    /// Delays between attempts after the immediate first one (Standard Webhooks'
    /// recommendation by default); one retry topic per distinct delay.
    #[arg(
        long,
        env = "HOOKLINE_RETRY_SCHEDULE",
        default_value = "5s,5m,30m,2h,5h,10h,14h,20h,24h",
        value_parser = RetrySchedule::parse
    )]
    retry_schedule: RetrySchedule,

    /// Consecutive failures that open an endpoint's circuit breaker.
    #[arg(long, env = "HOOKLINE_BREAKER_THRESHOLD", default_value_t = 10)]
    breaker_threshold: u32,

    /// How long an open circuit skips requests before a probe.
    #[arg(long, env = "HOOKLINE_BREAKER_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    breaker_cooldown: Duration,

    /// The longest an open circuit stays open: each failed probe doubles the cooldown,
    /// up to this.
    #[arg(long, env = "HOOKLINE_BREAKER_MAX_COOLDOWN", default_value = "5m", value_parser = parse_duration)]
    breaker_max_cooldown: Duration,

    /// A subscription whose endpoint fails this long without a success is disabled.
    #[arg(long, env = "HOOKLINE_DISABLE_AFTER", default_value = "5d", value_parser = parse_duration)]
    disable_after: Duration,

    /// Non-public address ranges deliveries may reach anyway (CIDRs, comma separated),
    /// e.g. `127.0.0.0/8` for a local demo. Empty: public addresses only.
    #[arg(long, env = "HOOKLINE_DELIVERY_ALLOW_CIDRS", default_value = "")]
    allow_cidrs: String,

    /// An egress proxy every delivery goes through (`http://host:port`). Without it,
    /// deliveries connect directly and `HTTP(S)_PROXY`/`ALL_PROXY` are ignored. The
    /// proxy's own address is not judged by the egress policy; see docs/security.md.
    #[arg(long, env = "HOOKLINE_DELIVERY_EGRESS_PROXY", hide_env_values = true)]
    egress_proxy: Option<url::Url>,

    /// Send the W3C `traceparent` (and `tracestate`) of each attempt's span to the
    /// receiver, so that its own spans join the event's trace. Off by default: the
    /// header tells the receiver the trace id. Takes effect only while traces are on.
    #[arg(
        long,
        env = "HOOKLINE_DELIVERY_PROPAGATE_TRACE_CONTEXT",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    propagate_trace_context: bool,

    #[command(flatten)]
    urls: UrlArgs,

    #[command(flatten)]
    secrets: SecretsArgs,

    /// How long one catch-up of the subscriptions view may take before a task whose
    /// subscription the view does not show is held and the catch-up tried again.
    #[arg(long, env = "HOOKLINE_DELIVERY_VIEW_PATIENCE", default_value = "10s", value_parser = parse_duration)]
    view_patience: Duration,

    /// A subscriptions view not confirmed caught up for this long is caught up before
    /// the next attempt: how long a deleted or changed subscription may still be acted
    /// on when the view stops following the topic.
    #[arg(long, env = "HOOKLINE_DELIVERY_VIEW_MAX_STALENESS", default_value = "5s", value_parser = parse_duration)]
    view_max_staleness: Duration,

    /// Tenants that get a label of their own in
    /// `hookline_delivery_tenant_attempts_total` (the first this many seen; later ones
    /// share `_other`). 0, the default, keeps per-tenant series off.
    #[arg(long, env = "HOOKLINE_METRICS_TENANT_LABELS", default_value_t = 0)]
    metrics_tenant_labels: usize,

    /// How long shutdown waits for in-flight deliveries.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    progress: ProgressArgs,

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
    let _traces = telemetry::init_logging(&cli.log, "hookline-delivery")?;
    let allow = EgressPolicy::parse_allow_list(&cli.allow_cidrs).map_err(anyhow::Error::msg)?;
    let keyring = cli.secrets.keyring()?;
    let topics = cli.kafka.topics();
    let mut specs = vec![
        TopicSpec::plain(topics.deliveries(), &cli.kafka),
        TopicSpec::plain(topics.deliveries_dlq(), &cli.kafka),
        TopicSpec::plain(topics.attempts(), &cli.kafka),
        TopicSpec::plain(topics.events(), &cli.kafka),
        TopicSpec::compacted(topics.subscriptions()),
        TopicSpec::compacted(topics.subscription_health()),
    ];
    specs.extend(
        cli.retry_schedule
            .tiers()
            .iter()
            .map(|tier| TopicSpec::plain(topics.deliveries_retry(*tier), &cli.kafka)),
    );
    kafka::ensure_topics(&cli.kafka, &specs, Duration::from_secs(60)).await?;

    let registry = telemetry::registry("delivery");
    let readiness = Readiness::default();
    let producer = kafka::renewing_producer(&cli.kafka, "hookline-delivery")?;
    let progress = Progress::new(cli.progress.stall_after);
    let view = SubscriptionView::start(&cli.kafka, "hookline-delivery-view", &registry)?;
    let mut sending = sender::SenderConfig::new(
        EgressPolicy::new(allow),
        cli.urls.rules(),
        keyring.clone(),
        cli.timeout,
    );
    sending.proxy = cli.egress_proxy.clone();
    sending.propagate_trace_context = cli.propagate_trace_context;
    if cli.propagate_trace_context && !hookline_core::trace::enabled() {
        tracing::warn!(
            "HOOKLINE_DELIVERY_PROPAGATE_TRACE_CONTEXT=true has no effect while traces are \
             off (no OTEL_EXPORTER_OTLP_ENDPOINT): no traceparent is sent"
        );
    }
    tracing::info!(
        allow_http = cli.urls.delivery_allow_http,
        proxy = cli.egress_proxy.is_some(),
        propagate_trace_context = cli.propagate_trace_context,
        "egress settings"
    );
    let context = pipeline::Context {
        progress: progress.clone(),
        health: control::HealthWriter::new(producer.clone(), topics.clone(), &registry)?,
        producer,
        view: std::sync::Arc::clone(&view),
        view_patience: cli.view_patience,
        view_max_staleness: cli.view_max_staleness,
        sender: sender::Sender::new(sending)?,
        topics,
        schedule: cli.retry_schedule.clone(),
        due_clock: Default::default(),
        disable_after: cli.disable_after,
        limits: limits::Limits::new(cli.subscription_concurrency),
        breakers: limits::Breakers::new(
            cli.breaker_threshold,
            cli.breaker_cooldown,
            cli.breaker_max_cooldown,
            &registry,
        )?,
        metrics: pipeline::Metrics::register(&registry, cli.metrics_tenant_labels)?,
    };
    let sizing = worker::WorkerLimits {
        concurrency: cli.concurrency.max(1),
        partition_window: cli.partition_window.max(1),
        grace: cli.shutdown_grace,
    };
    let worker = worker::Worker::new(&cli.kafka, &cli.group, sizing, context, &registry)?;
    // Ready once the view caught up (set by the worker) and the group assigned the
    // worker its partitions: before that it consumes nothing.
    // Not ready before the keys are known to open every stored secret.
    let keys_opened = Readiness::default();
    let serving = readiness
        .and(&worker.assigned())
        .and(&keys_opened)
        .and_progressing(&progress)
        .and_beating(&worker.heartbeat());
    tokio::spawn(
        worker
            .heartbeat()
            .watch("delivery", cli.progress.wedged_exit_after),
    );
    let stop = telemetry::stop_on_signal();
    let server = tokio::spawn(telemetry::serve_until(
        cli.http_addr,
        telemetry::ops_routes(registry, serving),
        stop.clone(),
    ));
    // A key that does not open the stored secrets stops the worker at start-up.
    let check_keys = async {
        view.check_keys(&keyring).await?;
        keys_opened.set(true);
        std::future::pending::<anyhow::Result<()>>().await
    };
    tokio::select! {
        ran = worker.run(readiness, stop) => ran?,
        Err(err) = check_keys => return Err(err),
    }
    server.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_goes_to_receivers_only_when_asked() {
        let cli = Cli::try_parse_from(["hookline-delivery"]).unwrap();
        assert!(!cli.propagate_trace_context, "off by default");
        let cli = Cli::try_parse_from(["hookline-delivery", "--propagate-trace-context", "true"])
            .unwrap();
        assert!(cli.propagate_trace_context);
        assert!(
            Cli::try_parse_from(["hookline-delivery", "--propagate-trace-context", "yes"]).is_err()
        );
    }
}
