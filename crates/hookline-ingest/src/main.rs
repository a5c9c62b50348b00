//! `hookline-ingest`: the HTTP front door. Accepts finance events and writes them to
//! the events topic; serves the control plane (subscriptions, attempts, replay,
//! dead-letter redrive) over Kafka topics.

/// mimalloc rather than the system allocator: less CPU per allocation across many
/// threads, and freed memory handed back instead of kept in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use hookline_ingest::{api, attempts, auth, quota, replay};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use hookline_core::config::{
    parse_duration, ApiArgs, AuthMode, CloudEventsArgs, KafkaArgs, LogArgs, ProgressArgs,
    SecretsArgs, TenantQuotaArgs, UrlArgs,
};
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

    /// Check each HTTP event's `data` against its type's JSON Schema in the event
    /// catalog (`422` naming the path and the rule when it breaks it).
    #[arg(
        long,
        env = "HOOKLINE_EVENT_VALIDATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    event_validation: bool,

    /// Events of a type the catalog does not know: `allow` (unchecked) or `refuse`
    /// (`422` naming `type`).
    #[arg(long, env = "HOOKLINE_EVENT_TYPES_UNKNOWN", default_value = "allow")]
    event_types_unknown: hookline_domain::catalog::UnknownTypes,

    /// A JSON file of the operator's own event types and schemas,
    /// `{"types": [{"type", "description", "schema"}]}`, added to the built-in
    /// catalog (a type of the same name replaces the built-in one).
    #[arg(long, env = "HOOKLINE_EVENT_TYPES_FILE")]
    event_types_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    progress: ProgressArgs,

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
        let report = replay::redrive(&cli.kafka, &topics, &producer, request).await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }

    let keyring = keyring.ok_or_else(|| anyhow::anyhow!("no secrets keys"))?;
    let catalog = event_catalog(&cli)?;
    let registry = telemetry::registry("ingest");
    let readiness = Readiness::default();
    let view = SubscriptionView::start(&cli.kafka, "hookline-ingest-view", &registry)?;
    let keys = ApiKeyView::start(&cli.kafka, "hookline-ingest-view-keys", &registry)?;
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
    };
    tracing::info!(
        types = catalog.types().count(),
        validation = cli.event_validation,
        unknown = ?cli.event_types_unknown,
        "event catalog"
    );
    tracing::info!(
        allow_http = cli.urls.delivery_allow_http,
        keys = ?keyring.ids(),
        "subscription URL rules and secrets keys"
    );
    let starting = Starting {
        view,
        keys,
        producer: state.event_producer.current(),
        events: state.topics.events(),
        attempts: state.attempts.assigned(),
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

/// The event catalog: built-in types and the operator's file, validators compiled
/// once; a file that does not read or holds an invalid schema stops ingest here.
fn event_catalog(cli: &Cli) -> anyhow::Result<Arc<hookline_domain::catalog::Catalog>> {
    let file = match &cli.event_types_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "refusing to start: HOOKLINE_EVENT_TYPES_FILE {}: {e}",
                path.display()
            )
        })?),
        None => None,
    };
    hookline_domain::catalog::Catalog::new(
        file.as_deref(),
        cli.event_types_unknown,
        cli.event_validation,
    )
    .map(Arc::new)
    .map_err(|e| anyhow::anyhow!("refusing to start: {e}"))
}

/// Shortest accepted `HOOKLINE_API_KEYS_MAX_STALENESS`.
const MIN_KEYS_STALENESS: Duration = Duration::from_secs(2);

/// What ingest waits for before it is ready: the subscriptions and API keys views caught up, the
/// producer seeing the events topic with leaders, and the attempts log consuming.
struct Starting {
    view: Arc<SubscriptionView>,
    keys: Arc<ApiKeyView>,
    producer: hookline_core::kafka::Producer,
    events: String,
    attempts: Readiness,
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
        while !self.attempts.get() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ready.set(true);
        tracing::info!("ready");
    }
}
