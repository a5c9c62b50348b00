//! `hookline-ingest`: the HTTP front door. Accepts finance events and writes them to
//! the events topic; serves the control plane (subscriptions, attempts, replay,
//! dead-letter redrive) over Kafka topics.

/// mimalloc rather than the system allocator: less CPU per allocation across many
/// threads, and freed memory handed back instead of kept in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hookline_ingest::{api, attempts, auth, idempotency, jobs, quota, replay};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use hookline_core::catalog_view::CatalogView;
use hookline_core::config::{
    parse_duration, ApiArgs, AuthMode, CatalogArgs, CloudEventsArgs, KafkaArgs, LogArgs,
    ProgressArgs, SecretsArgs, TenantQuotaArgs, UrlArgs,
};
use hookline_core::idempotency_view::IdempotencyView;
use hookline_core::kafka::{self, TopicSpec};
use hookline_core::key_view::ApiKeyView;
use hookline_core::progress::Progress;
use hookline_core::telemetry::{self, Readiness};
use hookline_core::view::SubscriptionView;

/// Command line and environment settings.
#[derive(Debug, Parser)]
#[command(name = "hookline-ingest", version, about)]
struct Cli {
    /// Address of the API and operations endpoints.
    #[arg(long, env = "HOOKLINE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "HOOKLINE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    max_body_bytes: usize,

    /// Most events in one `POST /v1/events` array.
    #[arg(long, env = "HOOKLINE_MAX_BATCH_EVENTS", default_value_t = 1000)]
    max_batch_events: usize,

    /// How long a write waits for Kafka's acknowledgement (humantime) before the request
    /// is answered `503` with `Retry-After`: a partition without leader, or a cluster
    /// without the in-sync replicas to take the write, is refused within this time.
    #[arg(
        long,
        env = "HOOKLINE_INGEST_PRODUCE_TIMEOUT",
        value_parser = parse_duration,
        default_value = "5s"
    )]
    produce_timeout: Duration,

    /// How long `POST /v1/subscriptions/{id}/test` waits for the test event's attempt
    /// when the request gives no `wait` (humantime, at most 60s).
    #[arg(
        long,
        env = "HOOKLINE_SUBSCRIPTION_TEST_WAIT",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    test_event_wait: Duration,

    /// Which `event_types` a subscription may name: `known` (known types, or
    /// patterns matching at least one; else `422` naming the entry) or `any`. Unset:
    /// `known` when `HOOKLINE_EVENT_TYPES_UNKNOWN=refuse` (events of other types cannot
    /// arrive), else `any`.
    #[arg(long, env = "HOOKLINE_SUBSCRIPTION_EVENT_TYPES")]
    subscription_event_types: Option<hookline_domain::catalog::SubscriptionTypes>,

    #[command(flatten)]
    catalog: CatalogArgs,

    /// How long an `Idempotency-Key` (or a producer-supplied event id) of
    /// `POST /v1/events` is remembered (humantime, at least 1m): a retry within it
    /// answers the same ids and writes nothing again. Also the retention of the
    /// idempotency topic when ingest creates it.
    #[arg(
        long,
        env = "HOOKLINE_IDEMPOTENCY_WINDOW",
        value_parser = parse_idempotency_window,
        default_value = "24h"
    )]
    idempotency_window: Duration,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    progress: ProgressArgs,

    #[command(flatten)]
    jobs: hookline_ingest::jobs::JobArgs,

    #[command(flatten)]
    api: ApiArgs,

    #[command(flatten)]
    quotas: TenantQuotaArgs,

    #[command(flatten)]
    cloudevents: CloudEventsArgs,

    #[command(flatten)]
    urls: UrlArgs,

    #[command(flatten)]
    secrets: SecretsArgs,

    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

/// One-off operations; without one, the server runs.
#[derive(Debug, Subcommand)]
enum Command {
    /// Put dead-lettered deliveries back into the pipeline, then exit.
    Redrive {
        /// Only this subscription's dead letters.
        #[arg(long)]
        subscription_id: Option<String>,
        /// Only dead letters written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Only dead letters written at or before this time (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
    },
}

fn main() -> anyhow::Result<()> {
    // Before the runtime starts any thread.
    hookline_core::memory::release_large_buffers();
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Held to the end of `run`: dropping it exports the spans still buffered.
    let _traces = telemetry::init_logging(&cli.log, "hookline-ingest")?;
    // Only the server seals and opens secrets; a one-off redrive does not need the keys.
    let keyring = match cli.command {
        None => Some(Arc::new(cli.secrets.keyring()?)),
        Some(_) => None,
    };
    let topics = cli.kafka.topics();
    let serving = cli.command.is_none();
    // Settings are checked before anything touches Kafka; the redrive command serves
    // no API and needs no credential.
    let auth_mode = match cli.api.auth_mode() {
        Ok(mode) => Some(mode),
        Err(_) if !serving => None,
        Err(reason) => anyhow::bail!("refusing to start: {reason}"),
    };
    if cli.api.api_keys_max_staleness < MIN_KEYS_STALENESS {
        anyhow::bail!(
            "refusing to start: HOOKLINE_API_KEYS_MAX_STALENESS must be at least {MIN_KEYS_STALENESS:?} \
             (the API keys view confirms its freshness about every second)"
        );
    }
    cli.jobs
        .check()
        .map_err(|reason| anyhow::anyhow!("refusing to start: {reason}"))?;
    let quotas = cli
        .quotas
        .quotas()
        .map_err(|reason| anyhow::anyhow!("refusing to start: {reason}"))?;
    kafka::ensure_topics(
        &cli.kafka,
        &[
            TopicSpec::plain(topics.events(), &cli.kafka),
            TopicSpec::plain(topics.deliveries(), &cli.kafka),
            TopicSpec::plain(topics.deliveries_dlq(), &cli.kafka),
            TopicSpec::plain(topics.attempts(), &cli.kafka),
            TopicSpec::compacted(topics.subscriptions()),
            TopicSpec::compacted(topics.subscription_health()),
            TopicSpec::compacted(topics.api_keys()),
            // Retention past the window by a claim's lifetime and a margin: a record
            // still counts until it is older than the window.
            TopicSpec::ordered_log(
                topics.idempotency(),
                cli.idempotency_window + Duration::from_secs(3600),
            ),
            TopicSpec::compacted(topics.event_types()),
            TopicSpec::compacted(topics.jobs()),
        ],
        Duration::from_secs(60),
    )
    .await?;
    let producer =
        kafka::renewing_low_latency_producer(&cli.kafka, "hookline-ingest", cli.produce_timeout)?;
    let event_producer = kafka::renewing_low_latency_producer(
        &cli.kafka,
        "hookline-ingest-events",
        kafka::DELIVERY_TIMEOUT.max(cli.produce_timeout),
    )?;

    let requeuing = replay::Requeuing {
        kafka: cli.kafka.clone(),
        topics: topics.clone(),
        producer: producer.clone(),
        cloudevents: cli.cloudevents.config(),
        max_rate: cli.jobs.max_rate(),
    };
    if let Some(Command::Redrive {
        subscription_id,
        since,
        until,
    }) = cli.command
    {
        let request = replay::RedriveRequest {
            subscription_id,
            since,
            until,
        };
        let report = replay::run_to_end(&requeuing, replay::Work::Redrive(request)).await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }

    let keyring = keyring.ok_or_else(|| anyhow::anyhow!("no secrets keys"))?;
    let base = cli
        .catalog
        .base_catalog()
        .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))?;
    let subscription_types =
        cli.subscription_event_types
            .unwrap_or(match cli.catalog.event_types_unknown {
                hookline_domain::catalog::UnknownTypes::Refuse => {
                    hookline_domain::catalog::SubscriptionTypes::Known
                }
                hookline_domain::catalog::UnknownTypes::Allow => {
                    hookline_domain::catalog::SubscriptionTypes::Any
                }
            });
    let registry = telemetry::registry("ingest");
    let catalog = CatalogView::start(&cli.kafka, "hookline-ingest-view-types", base, &registry)?;
    let readiness = Readiness::default();
    let view = SubscriptionView::start(&cli.kafka, "hookline-ingest-view", &registry)?;
    let keys = ApiKeyView::start(&cli.kafka, "hookline-ingest-view-keys", &registry)?;
    let idempotency_view = IdempotencyView::start(
        &cli.kafka,
        "hookline-ingest-view-idempotency",
        cli.idempotency_window,
        &registry,
    )?;
    let idempotency = Arc::new(idempotency::Idempotency::new(
        Arc::clone(&idempotency_view),
        producer.clone(),
        topics.idempotency(),
        cli.idempotency_window,
        cli.produce_timeout,
        &registry,
    )?);
    match &auth_mode {
        Some(AuthMode::AdminToken(_)) => tracing::info!(
            auth = "admin-token",
            keys_max_staleness = ?cli.api.api_keys_max_staleness,
            "authentication: admin token and tenant API keys"
        ),
        Some(AuthMode::Insecure) | None => tracing::warn!(
            auth = "insecure-no-auth",
            "authentication: NONE (HOOKLINE_INSECURE_NO_AUTH=true): anyone who reaches \
             this API acts as the admin; never run it like this outside a local demo"
        ),
    }
    let jobs = jobs::Jobs::new(
        jobs::JobView::start(&cli.kafka, "hookline-ingest-view-jobs")?,
        requeuing,
        cli.jobs.job_lease,
        cli.produce_timeout,
    );
    let auth = Arc::new(auth::Authenticator::new(
        auth_mode.unwrap_or(AuthMode::Insecure),
        Arc::clone(&keys),
        cli.api.api_keys_max_staleness,
    ));
    let progress = Progress::new(cli.progress.stall_after);
    let state = api::AppState {
        producer,
        event_producer,
        produce_timeout: cli.produce_timeout,
        progress: progress.clone(),
        view: Arc::clone(&view),
        keys: Arc::clone(&keys),
        event_rate: Arc::new(quota::EventRate::new(&quotas)),
        quotas,
        topics,
        max_batch_events: cli.max_batch_events,
        kafka: cli.kafka.clone(),
        cloudevents: cli.cloudevents.config(),
        attempts: attempts::AttemptLog::start(&cli.kafka)?,
        metrics: api::Metrics::register(&registry)?,
        rules: Arc::new(cli.urls.rules()),
        keyring: Arc::clone(&keyring),
        test_event_wait: cli.test_event_wait,
        catalog: Arc::clone(&catalog),
        subscription_types,
        idempotency,
        jobs,
    };
    tracing::info!(
        types = catalog.base().types().count(),
        validation = cli.catalog.event_validation,
        unknown = ?cli.catalog.event_types_unknown,
        exempt_tenants = ?cli.catalog.event_validation_exempt_tenants,
        subscriptions = ?subscription_types,
        "event catalog (built-in and file types; the admin API's follow from the event types topic)"
    );
    tracing::info!(
        allow_http = cli.urls.delivery_allow_http,
        keys = ?keyring.ids(),
        "subscription URL rules and secrets keys"
    );
    let starting = Starting {
        view,
        keys,
        idempotency: idempotency_view,
        catalog: Arc::clone(&catalog),
        producer: state.event_producer.current(),
        events: state.topics.events(),
        attempts: state.attempts.assigned(),
        log_caught_up: state.attempts.caught_up(),
    };
    // Not ready before the keys are known to open every stored secret; a key that
    // does not stops ingest at start-up.
    let keys_opened = Readiness::default();
    let app = api::routes(state, cli.max_body_bytes, auth).merge(telemetry::ops_routes(
        registry,
        readiness.and(&keys_opened).and_progressing(&progress),
    ));
    let checking = Arc::clone(&starting.view);
    tokio::spawn(starting.wait_then_set(readiness));
    let check_keys = async {
        checking.check_keys(&keyring).await?;
        keys_opened.set(true);
        std::future::pending::<anyhow::Result<()>>().await
    };
    tokio::select! {
        served = telemetry::serve_until(cli.http_addr, app, telemetry::stop_on_signal()) => served,
        Err(err) = check_keys => Err(err),
    }
}

/// `HOOKLINE_IDEMPOTENCY_WINDOW`: a duration of at least a minute (a claim lives 30 s;
/// a shorter window would forget a request while retries of it still run).
fn parse_idempotency_window(text: &str) -> Result<Duration, String> {
    let window = parse_duration(text)?;
    if window < Duration::from_secs(60) {
        return Err(format!(
            "HOOKLINE_IDEMPOTENCY_WINDOW `{text}` must be at least 1m"
        ));
    }
    Ok(window)
}

/// Shortest accepted `HOOKLINE_API_KEYS_MAX_STALENESS`.
const MIN_KEYS_STALENESS: Duration = Duration::from_secs(2);

/// What ingest waits for before it is ready: the subscriptions, API keys, event types and
/// idempotency views caught up, the producer seeing the events topic with leaders, and
/// the message log consuming and caught up with what its topics held at start.
struct Starting {
    view: Arc<SubscriptionView>,
    keys: Arc<ApiKeyView>,
    catalog: Arc<CatalogView>,
    idempotency: Arc<IdempotencyView>,
    producer: hookline_core::kafka::Producer,
    events: String,
    attempts: Readiness,
    /// The message log read what the topics held at start (or gave up waiting).
    log_caught_up: Readiness,
}

impl Starting {
    async fn wait_then_set(self, ready: Readiness) {
        while let Err(err) = self.view.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view");
            // Some failures are immediate (a partition whose leader is still starting).
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while let Err(err) = self.keys.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the API keys view");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while let Err(err) = self.catalog.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the event types view");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Not needed for correctness (a claim waits for the view to reach it), but a
        // first request after a start would otherwise wait for the whole window's log.
        while let Err(err) = self.idempotency.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the idempotency view");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            let (producer, topics) = (self.producer.clone(), vec![self.events.clone()]);
            let problems = tokio::task::spawn_blocking(move || {
                use rdkafka::producer::Producer as _;
                kafka::topic_problems(producer.client(), &topics, Duration::from_secs(5))
            })
            .await
            .unwrap_or_else(|err| vec![err.to_string()]);
            if problems.is_empty() {
                break;
            }
            tracing::warn!(problems = %problems.join(", "), "waiting for the producer's metadata");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        while !self.attempts.get() || !self.log_caught_up.get() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ready.set(true);
        tracing::info!("ready");
    }
}
