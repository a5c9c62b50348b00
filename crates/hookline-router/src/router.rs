//! The routing loop. Each batch of event records becomes one Kafka transaction: its
//! delivery tasks (and dead letters) and the consumer offsets past it commit together
//! or not at all, so a router killed at any moment neither duplicates nor loses a task
//! for `read_committed` readers.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::end_probe::EndProbe;
use crate::fetch_watch::{FetchWatch, Sample, Verdict};
use chrono::Utc;
use futures::FutureExt;
use hookline_core::catalog_view::CatalogView;
use hookline_core::config::KafkaArgs;
use hookline_core::heartbeat::Heartbeat;
use hookline_core::kafka;
use hookline_core::produce::{send_all, OutRecord};
use hookline_core::progress::Progress;
use hookline_core::telemetry::Readiness;
use hookline_core::topics::Topics;
use hookline_core::trace;
use hookline_core::view::{NotCaughtUp, SubscriptionView};
use hookline_domain::backoff::Backoff;
use hookline_domain::catalog::{Catalog, VALIDATED_HEADER};
use hookline_domain::cloudevents::CloudEventsConfig;
use hookline_domain::event::{Event, FieldError};
use hookline_domain::routing::{route_record, EventRecord};
use hookline_domain::task::DeliveryTask;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;

/// First wait before routing a held-back or aborted batch again; it doubles per retry.
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between two tries of the same batch.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest `hookline-dlq-reason` of a dead letter whose payload is left out.
const MINIMAL_REASON_BYTES: usize = 1024;
/// Longest key a dead letter whose payload is left out keeps.
const MINIMAL_KEY_BYTES: usize = 256;
/// Remedies are forgotten once their records commit; this only bounds what partitions
/// revoked mid-way could leave behind.
const MAX_REMEDIES: usize = 10_000;

struct Metrics {
    events: IntCounterVec,
    tasks: IntCounter,
    batch_seconds: Histogram,
    view_stale: IntCounter,
    view_moved: IntCounter,
    producers_renewed: IntCounter,
    consumers_renewed: IntCounter,
    fetch_stalls: IntCounter,
    skipped: IntCounterVec,
    stages: prometheus::HistogramVec,
    /// Transactions by result (`committed`, `aborted`, `abort_failed`).
    transactions: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "hookline_router_events_total",
                "Event records consumed, by outcome (routed, unmatched, invalid, skipped).",
            ),
            &["outcome"],
        )?;
        let tasks = IntCounter::new(
            "hookline_router_tasks_total",
            "Delivery tasks written to the deliveries topic.",
        )?;
        let batch_seconds = Histogram::with_opts(HistogramOpts::new(
            "hookline_router_batch_duration_seconds",
            "Time to route one batch, from its first record to its offsets stored.",
        ))?;
        let view_stale = IntCounter::new(
            "hookline_router_view_stale_total",
            "Batches held back (rewound, not routed) because the subscriptions view did not \
             catch up within the view patience.",
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "hookline_router_records_skipped_total",
                "Event records committed without any output because not even a dead letter \
                 without payload could be produced, by the produce error.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        registry.register(Box::new(view_stale.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        let view_moved = IntCounter::new(
            "hookline_router_view_moved_total",
            "Transactions aborted and routed again because a subscription change landed \
             while their batch was being routed.",
        )?;
        registry.register(Box::new(view_moved.clone()))?;
        let producers_renewed = IntCounter::new(
            "hookline_router_producers_renewed_total",
            "Producers closed and created again because librdkafka declared them unusable \
             (a fatal error, or an abort that failed); their batch is routed again from \
             the last committed offsets.",
        )?;
        registry.register(Box::new(producers_renewed.clone()))?;
        let consumers_renewed = IntCounter::new(
            "hookline_router_consumers_renewed_total",
            "Consumers closed and built again, so that routing goes on from the group's \
             committed offsets: after a Kafka failure of a batch, a fatal consumer error, \
             or a consumer the fetch watch found not fetching.",
        )?;
        registry.register(Box::new(consumers_renewed.clone()))?;
        let fetch_stalls = IntCounter::new(
            "hookline_router_fetch_stalls_total",
            "Times the fetch watch found the events consumer not fetching (partitions with \
             records to route and none handed over for HOOKLINE_STALL_AFTER, no partition \
             for long while the topic grew, or the topic's ends unreadable for long with no \
             record) and built it again.",
        )?;
        registry.register(Box::new(fetch_stalls.clone()))?;
        let stages = hookline_core::telemetry::stage_histogram(
            registry,
            "hookline_router_stage_duration_seconds",
            "Duration of the router's stages: produced_to_routed (an event record's \
             timestamp to its batch being routed) and routed_to_committed (a batch \
             routed to its transaction committed).",
        )?;
        let transactions = IntCounterVec::new(
            Opts::new(
                "hookline_router_transactions_total",
                "Routing transactions (exactly-once routing), by result: committed, \
                 aborted, abort_failed (the producer is then built again).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(transactions.clone()))?;
        Ok(Self {
            transactions,
            events,
            tasks,
            batch_seconds,
            view_stale,
            view_moved,
            producers_renewed,
            consumers_renewed,
            fetch_stalls,
            skipped,
            stages,
        })
    }
}

/// One debug line per task (or one for an event no subscription wants), with the ids
/// that follow the event through ingest, router and delivery logs. A batch routed again
/// after an abort logs its tasks again.
fn log_routed(event: &hookline_domain::event::Event, tasks: &[DeliveryTask]) {
    if tasks.is_empty() {
        tracing::debug!(event_id = %event.id, tenant = %event.tenant, event_type = %event.event_type, "event matched no subscription");
    }
    for task in tasks {
        tracing::debug!(
            event_id = %event.id,
            message_id = %task.message_id,
            subscription = %task.subscription_id,
            "task routed"
        );
    }
}

/// The span of routing one event record: a child of the span that produced it (its
/// `traceparent`), or the root of a new trace for a record produced without one. None
/// while traces are off.
fn route_span(message: &OwnedMessage) -> tracing::Span {
    let span = trace::span(|| {
        tracing::info_span!(
            parent: None,
            "route event",
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.destination.name = message.topic(),
            messaging.kafka.partition = message.partition(),
            messaging.kafka.offset = message.offset(),
            event_id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            tenant = tracing::field::Empty,
            matches = tracing::field::Empty,
            batch = tracing::field::Empty,
        )
    });
    trace::continue_from(&span, message);
    span
}

/// Notes the routed event and how many subscriptions it matched on its span.
fn record_routed(span: &tracing::Span, event: &hookline_domain::event::Event, matches: usize) {
    if span.is_disabled() {
        return;
    }
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.event_type.as_str());
    span.record("tenant", event.tenant.as_str());
    span.record("matches", matches);
}

/// What a record to produce is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A delivery task on the deliveries topic.
    Task,
    /// A copy (or a stand-in) of the event record on the events DLQ.
    DeadLetter,
}

/// What routing a batch comes to: the records to produce, the outcome counts, the skip
/// reason of every record skipped, and the records' routing spans (empty while traces
/// are off), which end once the batch is committed or undone.
struct Plan {
    outgoing: Vec<Outgoing>,
    counts: HashMap<&'static str, u64>,
    skipped: Vec<&'static str>,
    spans: Vec<tracing::Span>,
}

/// Notes on every routing span of a batch how the batch ended.
fn record_batch(spans: &[tracing::Span], ended: &str) {
    for span in spans {
        span.record("batch", ended);
    }
}

/// A record to produce within the batch's transaction.
struct Outgoing {
    /// Index in the batch of the event record this comes from.
    source: usize,
    kind: Kind,
    /// Produced on its own (nothing else in flight), so that a refusal is its own.
    isolated: bool,
    record: OutRecord,
}

/// One event record routed: its outcome and what to produce for it.
struct Routed {
    outcome: &'static str,
    outputs: Vec<Outgoing>,
    /// Why it was dead-lettered, when it was.
    invalid: Option<String>,
    /// The record's routing span, ended once its batch committed or was undone.
    span: tracing::Span,
}

/// What to do instead with an event record whose outputs the broker refused for good
/// (e.g. over `max.message.bytes`); each step costs one aborted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Remedy {
    /// Refused along with other records' outputs, possibly because they shared one
    /// produce batch: produce each of its outputs on its own to tell which is at fault.
    Isolate,
    /// Replace its outputs with a dead letter that leaves the payload out.
    Minimal {
        /// The refusal, for the dead letter's reason.
        refused: String,
    },
    /// Even that was refused: produce nothing for it; its offset commits with the batch.
    Skip {
        /// Metric label of the refusal.
        reason: &'static str,
    },
}

/// A produce refusal of one outgoing record that no retry can fix.
#[derive(Debug, Clone)]
struct Refusal {
    /// Index of the outgoing record.
    outgoing: usize,
    /// Metric label, e.g. `message_too_large`.
    reason: &'static str,
    /// The error, as text.
    error: String,
}

/// A transaction that failed, with the records the broker refused for good, if any.
#[derive(Debug)]
struct TxnFailure {
    error: KafkaError,
    refused: Vec<Refusal>,
}

/// Why a batch's transaction did not commit.
#[derive(Debug)]
enum Failure {
    /// Kafka failed it.
    Kafka(TxnFailure),
    /// A subscription change landed between the view the batch was routed with and the
    /// barrier: routed again, after a catch-up.
    ViewMoved,
    /// The barrier could not read the subscriptions topic's end.
    ViewUnreachable(NotCaughtUp),
}

impl From<KafkaError> for Failure {
    fn from(error: KafkaError) -> Self {
        Self::Kafka(error.into())
    }
}

impl From<KafkaError> for TxnFailure {
    fn from(error: KafkaError) -> Self {
        Self {
            error,
            refused: Vec::new(),
        }
    }
}

/// What the routing loop does after one batch.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The batch committed; go on.
    Continue,
    /// The batch was rewound; route it again after this wait.
    RetryAfter(Duration),
}

/// Calls of a timed-out abort before the router gives up on it.
const ABORT_CALLS: u32 = 3;

/// Transactional producers per router, taking turns. A transaction that begins right
/// after its producer's previous one committed finds the coordinator still writing that
/// one's commit markers: its first records then wait out librdkafka's fixed 20 ms retry
/// of `CONCURRENT_TRANSACTIONS`. Taking turns gives each producer's coordinator state a
/// whole transaction's time to settle. Their transactions never overlap: one commits or
/// aborts before the next begins, so tasks and offsets keep their order.
const PRODUCERS: usize = 2;

/// The client id of the client that reads the events topic's ends for the fetch watch.
const PROBE_CLIENT_ID: &str = "hookline-router-probe";

/// How often the router looks whether its consumer still fetches every partition (and
/// reads the events topic's ends for it, in the background).
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a consumer being replaced may take to leave the group before the router
/// goes on without waiting.
const CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one transactional call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the router waits for a transactional call before it gives up on it and on
/// its producer (see [`blocking`]).
const CALL_BOUND: Duration = Duration::from_secs(20);

/// How long the routing loop may go without beginning a step before it counts as
/// wedged (see [`Heartbeat`]): every step is bounded, the longest by [`CALL_BOUND`].
const LOOP_BOUND: Duration = Duration::from_secs(60);

/// The router of one process.
pub struct Router {
    consumer: StreamConsumer<kafka::AssignmentContext>,
    /// What `consumer` was built from, to build it again.
    consumer_config: ClientConfig,
    routing: Routing,
    /// Transactional producers taking turns, one transaction each (see [`PRODUCERS`]);
    /// one plain idempotent producer when routing at least once.
    producers: Vec<kafka::Producer>,
    /// Index in `producers` of the one whose transaction is open or last was.
    turn: AtomicUsize,
    /// The transactional id of each of `producers` (empty routing at least once).
    transactional_ids: Vec<String>,
    /// What the producers are built from, to build one again.
    args: KafkaArgs,
    /// Batches taken on and committed, for `/readyz`.
    progress: Progress,
    /// Beaten at every step of the loop, for `/healthz`.
    heartbeat: Heartbeat,
    /// Whether the consumer still fetches every partition it is assigned.
    watch: FetchWatch,
    /// When `watch` last looked.
    watched_at: Instant,
    /// Reads the events topic's ends for `watch`, in the background.
    ends: EndProbe,
    view: Arc<SubscriptionView>,
    /// The event catalog records produced straight to the events topic are checked
    /// against.
    catalog: Arc<CatalogView>,
    /// Skip the schema check of records ingest marked checked against the version the
    /// catalog holds (see [`VALIDATED_HEADER`]).
    trust_validated: bool,
    topics: Topics,
    batch_size: usize,
    max_task_bytes: usize,
    view_patience: Duration,
    cloudevents: CloudEventsConfig,
    metrics: Metrics,
    /// Remedies of event records by (partition, offset), kept across the aborts and
    /// rewinds of their batch and forgotten once it commits.
    remedies: HashMap<(i32, i64), Remedy>,
    backoff: Backoff,
    /// Catch the view up before routing the next batch (after the view moved under a
    /// batch), instead of checking it in the background of the transaction.
    catch_up_first: bool,
}

/// How a router makes a batch durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    /// Each batch is one Kafka transaction: its tasks, dead letters and consumer
    /// offsets commit together or not at all.
    ExactlyOnce,
    /// Tasks are produced idempotently and the offsets past them stored once Kafka
    /// acknowledged them all; after a crash or a lost partition, the batches since the
    /// last offset commit are routed again, so their tasks may be written twice (same
    /// webhook-ids).
    AtLeastOnce,
}

/// How one router joins its group and routes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How batches are made durable.
    pub routing: Routing,
    /// Consumer group shared by all routers.
    pub group: String,
    /// Static member name; a restarted instance with the same name takes its
    /// partitions back without a group-wide rebalance.
    pub instance_id: Option<String>,
    /// Transactional id, stable per instance, so a restarted router fences the
    /// transaction its predecessor left open.
    pub transactional_id: String,
    /// Most records per batch (one transaction).
    pub batch_size: usize,
    /// Largest delivery task; an event whose tasks would be larger is dead-lettered.
    pub max_task_bytes: usize,
    /// How long a batch waits for the subscriptions view to catch up before it is held
    /// back (rewound and retried, never routed with a stale view).
    pub view_patience: Duration,
    /// How CloudEvents records are read.
    pub cloudevents: CloudEventsConfig,
    /// How long a batch may go without committing before `/readyz` says not ready.
    pub stall: Duration,
    /// Whether the `hookline-validated` header of ingest is trusted (the schema check
    /// of such a record skipped when it names the type's current version).
    pub trust_validated: bool,
}

impl Router {
    /// Builds the group consumer and the transactional producer.
    pub fn new(
        args: &KafkaArgs,
        settings: Settings,
        view: Arc<SubscriptionView>,
        catalog: Arc<CatalogView>,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let consumer_config = consumer_config(args, &settings);
        let topics = args.topics();
        let consumer = subscribe(
            &consumer_config,
            &topics,
            kafka::AssignmentContext::new("events"),
        )?;
        let transactional_ids: Vec<String> = match settings.routing {
            Routing::AtLeastOnce => Vec::new(),
            Routing::ExactlyOnce => (0..PRODUCERS)
                .map(|n| match n {
                    0 => settings.transactional_id.clone(),
                    n => format!("{}.{n}", settings.transactional_id),
                })
                .collect(),
        };
        let producers = match settings.routing {
            Routing::AtLeastOnce => vec![new_producer(args, None)?],
            Routing::ExactlyOnce => transactional_ids
                .iter()
                .map(|id| new_producer(args, Some(id)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Self {
            consumer,
            consumer_config,
            routing: settings.routing,
            producers,
            transactional_ids,
            args: args.clone(),
            progress: Progress::new(settings.stall),
            heartbeat: Heartbeat::new(LOOP_BOUND),
            watch: FetchWatch::new(settings.stall),
            watched_at: Instant::now(),
            ends: EndProbe::spawn(args, PROBE_CLIENT_ID, topics.events(), WATCH_INTERVAL)?,
            turn: AtomicUsize::new(0),
            view,
            catalog,
            trust_validated: settings.trust_validated,
            topics,
            batch_size: settings.batch_size.max(1),
            max_task_bytes: settings.max_task_bytes,
            view_patience: settings.view_patience,
            cloudevents: settings.cloudevents,
            metrics: Metrics::register(registry)?,
            remedies: HashMap::new(),
            backoff: Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX),
            catch_up_first: false,
        })
    }

    /// True once the group gave this router its first assignment (it really consumes).
    pub fn assigned(&self) -> Readiness {
        self.consumer.context().readiness()
    }

    /// Batches taken on and committed: stalled while one has waited longer than the
    /// stall threshold without committing.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Beaten at every step of the routing loop: silent while it is wedged.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Routes until `stop` turns true; the batch in progress then completes.
    pub async fn run(
        mut self,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        if self.routing == Routing::ExactlyOnce {
            for producer in &self.producers {
                self.heartbeat.beat("initializing transactions");
                let producer = producer.clone();
                blocking(move || producer.init_transactions(TXN_TIMEOUT)).await?;
            }
        }
        self.heartbeat.beat("loading the subscriptions view");
        while let Err(err) = self.view.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view");
            self.heartbeat.beat("loading the subscriptions view");
        }
        self.heartbeat.beat("loading the event types view");
        while let Err(err) = self.catalog.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the event types view");
            self.heartbeat.beat("loading the event types view");
        }
        readiness.set(true);
        tracing::info!("ready");
        loop {
            let batch = tokio::select! {
                batch = self.next_batch() => batch,
                _ = stop.wait_for(|s| *s) => break,
            };
            let timer = self.metrics.batch_seconds.start_timer();
            self.progress.started();
            let next = self.route_batch(&batch, &readiness).await?;
            // Only batches that committed: a held-back try says nothing of routing time.
            if next == Next::Continue {
                self.progress.succeeded();
                timer.observe_duration();
            } else {
                self.progress.failed();
                timer.stop_and_discard();
            }
            if let Next::RetryAfter(wait) = next {
                self.heartbeat.beat("waiting to route a batch again");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            if *stop.borrow() {
                break;
            }
        }
        Ok(())
    }

    /// Waits for one record, then takes every record already fetched, up to the batch
    /// size, without waiting for more: at a low rate a record is routed at once, and
    /// under load records pile up while the previous transaction commits, so batches
    /// grow by themselves.
    ///
    /// Every few seconds, whether records come or not, it looks whether the consumer
    /// still fetches every partition it is assigned (see [`FetchWatch`]), and builds it
    /// again if not, as it does on a fatal consumer error.
    async fn next_batch(&mut self) -> Vec<OwnedMessage> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = loop {
            self.watch_fetching().await;
            self.heartbeat.beat("waiting for events");
            let waited = tokio::select! {
                result = self.consumer.recv() => Some(result.map(|message| message.detach())),
                _ = tokio::time::sleep(WATCH_INTERVAL) => None,
            };
            match waited {
                Some(Ok(message)) => break message,
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    tracing::error!(%code, "fatal consumer error; building the consumer again");
                    self.renew_consumer().await;
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, "events topic read failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                None => {}
            }
        };
        let mut batch = vec![first];
        while batch.len() < self.batch_size {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(message.detach()),
                Some(Err(err)) => {
                    tracing::warn!(%err, "events topic read failed");
                    break;
                }
                None => break,
            }
        }
        self.watch.fetched(batch.iter().map(|m| m.partition()));
        batch
    }

    /// Looks, at most every [`WATCH_INTERVAL`], whether the consumer fetches every
    /// partition it is assigned, and builds it again if not. Reads nothing from a
    /// broker on the way (the ends come from [`EndProbe`]), except the group's committed
    /// offsets for the warning when it acts.
    async fn watch_fetching(&mut self) {
        if self.watched_at.elapsed() < WATCH_INTERVAL {
            return;
        }
        self.watched_at = Instant::now();
        self.heartbeat.beat("checking that the consumer fetches");
        let ends = self.ends.latest();
        let report = self.consumer.context().fetching();
        let events = self.topics.events();
        let Ok(assignment) = self.consumer.assignment() else {
            tracing::warn!("the consumer's assignment is not known");
            return;
        };
        let positions = self.consumer.position().unwrap_or_default();
        let offset = |list: &TopicPartitionList, partition: i32| {
            list.elements()
                .iter()
                .find(|e| e.partition() == partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                })
        };
        let samples: Vec<Sample> = assignment
            .elements()
            .iter()
            .map(|element| {
                let partition = element.partition();
                let fetch = report.partitions.get(&(events.clone(), partition));
                Sample {
                    partition,
                    position: offset(&positions, partition),
                    committed: fetch
                        .map(|f| f.committed_offset)
                        .filter(|offset| *offset >= 0),
                    end: ends.by_partition.get(&partition).copied(),
                    queued: fetch.is_some_and(|f| f.queued > 0),
                }
            })
            .collect();
        let verdict = self.watch.look(&samples, ends.total(), ends.read_at);
        let why = match &verdict {
            Verdict::Fetching => return,
            Verdict::Stalled(_) => {
                "the consumer fetches nothing from partitions with records to route"
            }
            Verdict::Unassigned => {
                "the consumer has had no partition for a minute while the events topic grew"
            }
            Verdict::Blind => {
                "the events topic's ends could not be read for a minute, and no record came"
            }
        };
        let stalled = match &verdict {
            Verdict::Stalled(partitions) => partitions.clone(),
            _ => Vec::new(),
        };
        let described: Vec<String> = samples
            .iter()
            .map(|sample| {
                let fetch = report.partitions.get(&(events.clone(), sample.partition));
                describe(sample, fetch, stalled.contains(&sample.partition))
            })
            .collect();
        tracing::warn!(
            partitions = %described.join(" "),
            group = %report.group,
            committed = %self.committed_offsets(),
            "{why}; building it again"
        );
        self.metrics.fetch_stalls.inc();
        self.renew_consumer().await;
    }

    /// The group's committed offsets of the assigned partitions as the coordinator
    /// answers now (`partition:offset`, or the partition's error, such as a pending
    /// transactional commit): what a consumer that does not fetch is waiting on, for
    /// the warning. Blocks this thread up to 5 s; only called on that rare path.
    fn committed_offsets(&self) -> String {
        let answer =
            tokio::task::block_in_place(|| self.consumer.committed(Duration::from_secs(5)));
        match answer {
            Err(err) => format!("unknown ({err})"),
            Ok(list) => {
                let described: Vec<String> = list
                    .elements()
                    .iter()
                    .map(|element| match element.error() {
                        Err(err) => format!("{}:{err}", element.partition()),
                        Ok(()) => format!("{}:{:?}", element.partition(), element.offset()),
                    })
                    .collect();
                described.join(" ")
            }
        }
    }

    /// Routes one batch in one transaction. An abortable failure aborts it and rewinds
    /// the consumer to the batch's start, so the next batch routes the same records; so
    /// does a subscriptions view that is not caught up.
    ///
    /// Any subscription change acknowledged before the batch began applies to it:
    /// routing with a view that may miss one would leave its events unmatched. The
    /// barrier that ensures it costs no wait while the subscriptions topic stands
    /// still: the batch is routed with the view as it is, and the topic's end is read
    /// while the transaction's records are in flight; the transaction commits only if
    /// the view had applied everything up to that end, and is otherwise aborted and the
    /// batch routed again after a catch-up.
    async fn route_batch(
        &mut self,
        batch: &[OwnedMessage],
        readiness: &Readiness,
    ) -> anyhow::Result<Next> {
        self.heartbeat.beat("routing a batch");
        let routed_at = Utc::now();
        // After a catch-up the barrier holds already: the batch began before it. Routing
        // at least once, what is produced cannot be taken back: always catch up first.
        let caught_up = self.catch_up_first || self.routing == Routing::AtLeastOnce;
        if caught_up {
            if let Err(err) = self.view.catch_up(self.view_patience).await {
                return self.hold_back(batch, readiness, &err);
            }
        }
        self.catch_up_catalog(batch).await;
        // Read before the index: everything below it is in what `plan` matches against.
        let applied = self.view.applied();
        let Plan {
            outgoing,
            counts,
            skipped,
            spans,
        } = self.plan(batch);
        let asked_at = std::time::Instant::now();
        let barrier = async {
            if caught_up {
                return Ok(true);
            }
            let end = self.view.end_offset(self.view_patience).await?;
            Ok::<bool, NotCaughtUp>(end <= applied)
        };
        let transacted = self.transact(batch, &outgoing, barrier).await;
        // A batch undone is routed again, with new spans: each try is in the trace.
        record_batch(
            &spans,
            if transacted.is_ok() {
                "committed"
            } else {
                "undone, routed again"
            },
        );
        drop(spans);
        match transacted {
            Ok(()) => {
                if !caught_up {
                    // The barrier saw the view hold the topic's end as of `asked_at`.
                    self.view.confirm_fresh(asked_at);
                }
                readiness.set(true);
                self.catch_up_first = false;
                let committed = Utc::now();
                if self.routing == Routing::ExactlyOnce {
                    self.metrics
                        .transactions
                        .with_label_values(&["committed"])
                        .inc();
                }
                self.observe_stages(batch, routed_at, committed);
                for (outcome, n) in counts {
                    self.metrics.events.with_label_values(&[outcome]).inc_by(n);
                }
                for reason in skipped {
                    self.metrics.skipped.with_label_values(&[reason]).inc();
                }
                let tasks = outgoing.iter().filter(|o| o.kind == Kind::Task).count();
                self.metrics.tasks.inc_by(tasks as u64);
                self.forget_remedies(batch);
                self.backoff.reset();
                Ok(Next::Continue)
            }
            Err(Failure::ViewMoved) => {
                self.metrics.view_moved.inc();
                self.recover(batch, None).await?;
                self.catch_up_first = true;
                Ok(Next::RetryAfter(Duration::ZERO))
            }
            Err(Failure::ViewUnreachable(err)) => {
                self.recover(batch, None).await?;
                self.hold_back(batch, readiness, &err)
            }
            Err(Failure::Kafka(failure)) => {
                tracing::warn!(err = %failure.error, "transaction failed; routing the batch again");
                self.recover(batch, Some(&failure.error)).await?;
                // A new remedy changes what the retry produces: no reason to wait. Anything
                // else (timeouts, a broker or leader away) is retried as is, with backoff:
                // skipping records then would lose events during an outage.
                let wait = if self.remedy(batch, &outgoing, &failure.refused) {
                    Duration::ZERO
                } else {
                    self.backoff.next_delay()
                };
                Ok(Next::RetryAfter(wait))
            }
        }
    }

    /// Undoes a batch that did not commit, so that it is routed again: aborts its
    /// transaction, or closes the producer and builds it again when librdkafka declared
    /// it unusable (a fatal error, an abort that failed), then points the consumer back
    /// at the batch's start.
    ///
    /// After a Kafka failure (`failure`) the consumer is closed and built again, so
    /// that it starts from the group's committed offsets, as a restarted router would:
    /// a commit that failed may have landed all the same (routing its batch again would
    /// write its tasks twice), and a consumer pointed back with `seek` while partition
    /// leaders were moving was seen to fetch nothing more, for good.
    async fn recover(
        &mut self,
        batch: &[OwnedMessage],
        failure: Option<&KafkaError>,
    ) -> anyhow::Result<()> {
        let unusable = if failure.is_some_and(gave_up) {
            // The producer is stuck in a call: no abort would get through it.
            Some("a transactional call did not return".to_owned())
        } else {
            match self.abort().await {
                Ok(()) => self
                    .producer()
                    .client()
                    .fatal_error()
                    .map(|(_, reason)| reason),
                Err(err) => Some(err.to_string()),
            }
        };
        if let Some(reason) = unusable {
            self.renew_producer(&reason).await;
        }
        if failure.is_some() {
            self.renew_consumer().await;
            Ok(())
        } else {
            self.rewind(batch)
        }
    }

    /// Closes the consumer (it leaves the group; routing at least once, it commits the
    /// offsets stored for batches that were acknowledged) and builds and subscribes a new
    /// one, which the group assigns partitions from their committed offsets. The first
    /// assignment's readiness carries over. Retries with backoff until it works.
    async fn renew_consumer(&mut self) {
        let mut backoff = Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX);
        let fresh = loop {
            self.heartbeat.beat("building the consumer");
            let context = kafka::AssignmentContext::sharing("events", self.assigned());
            match self.consumer_config.create_with_context(context) {
                Ok(consumer) => break consumer,
                Err(err) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%err, retry_in = ?wait, "could not build the consumer again");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let old = std::mem::replace(&mut self.consumer, fresh);
        // The old one leaves the group before the new one joins, so the group need not
        // wait for it. Closing waits for the coordinator if it can: off the async threads,
        // and not for ever while the cluster is away (the group then waits for the old
        // member's session to time out).
        self.heartbeat.beat("closing the old consumer");
        let closing = tokio::task::spawn_blocking(move || drop(old));
        if tokio::time::timeout(CONSUMER_CLOSE_TIMEOUT, closing)
            .await
            .is_err()
        {
            tracing::warn!("old consumer still closing; going on without it");
        }
        self.heartbeat.beat("subscribing the consumer");
        while let Err(err) = self.consumer.subscribe(&[&self.topics.events()]) {
            let wait = backoff.next_delay();
            tracing::warn!(%err, retry_in = ?wait, "could not subscribe again");
            tokio::time::sleep(wait).await;
        }
        self.metrics.consumers_renewed.inc();
        self.watch.reset();
        tracing::info!("consumer built again; routing from the committed offsets");
    }

    /// Closes the producer whose turn it is and builds it again with the same
    /// transactional id; its `init_transactions` fences the old one and completes or
    /// aborts whatever transaction it left open. Retries with backoff until it works.
    async fn renew_producer(&mut self, reason: &str) {
        let turn = self.turn.load(Ordering::Relaxed) % self.producers.len();
        let id = self.transactional_ids.get(turn).cloned();
        tracing::warn!(%reason, transactional_id = id.as_deref().unwrap_or(""), "producer unusable; building it again");
        let mut backoff = Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX);
        let producer = loop {
            self.heartbeat.beat("building a producer");
            match self.build_producer(id.as_deref()).await {
                Ok(producer) => break producer,
                Err(err) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%err, retry_in = ?wait, "could not build the producer again");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        if let Some(slot) = self.producers.get_mut(turn) {
            let old = std::mem::replace(slot, producer);
            // Dropping a producer purges and waits for its queue: off the async threads.
            tokio::task::spawn_blocking(move || drop(old));
        }
        self.metrics.producers_renewed.inc();
    }

    async fn build_producer(
        &self,
        transactional_id: Option<&str>,
    ) -> anyhow::Result<kafka::Producer> {
        let producer = new_producer(&self.args, transactional_id)?;
        if transactional_id.is_some() {
            let init = producer.clone();
            blocking(move || init.init_transactions(TXN_TIMEOUT)).await?;
        }
        Ok(producer)
    }

    /// The producer whose turn it is.
    fn producer(&self) -> &kafka::Producer {
        // `turn` is always an index of `producers`, which is never empty.
        &self.producers[self.turn.load(Ordering::Relaxed) % self.producers.len()]
    }

    /// Holds the batch back (rewound, not routed) because the view could not be
    /// confirmed caught up; the router is not ready meanwhile.
    fn hold_back(
        &mut self,
        batch: &[OwnedMessage],
        readiness: &Readiness,
        err: &NotCaughtUp,
    ) -> anyhow::Result<Next> {
        self.metrics.view_stale.inc();
        readiness.set(false);
        self.rewind(batch)?;
        self.catch_up_first = true;
        let wait = self.backoff.next_delay();
        tracing::warn!(
            %err,
            records = batch.len(),
            retry_in = ?wait,
            "subscriptions view not caught up; batch held back, not routed"
        );
        Ok(Next::RetryAfter(wait))
    }

    /// Each record's wait from its timestamp (its producer's) to being routed, and the
    /// batch's time from routed to committed.
    fn observe_stages(
        &self,
        batch: &[OwnedMessage],
        routed_at: chrono::DateTime<Utc>,
        committed: chrono::DateTime<Utc>,
    ) {
        let waited = self
            .metrics
            .stages
            .with_label_values(&["produced_to_routed"]);
        for message in batch {
            // The reference of the consumer's lag in seconds.
            hookline_core::kafka_stats::record_taken(
                message.topic(),
                message.partition(),
                message.timestamp().to_millis(),
            );
            if let Some(at) = message.timestamp().to_millis() {
                let ms = routed_at.timestamp_millis().saturating_sub(at).max(0);
                waited.observe(ms as f64 / 1e3);
            }
        }
        let took = (committed - routed_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        self.metrics
            .stages
            .with_label_values(&["routed_to_committed"])
            .observe(took as f64 / 1e6);
    }

    /// Aborts the open transaction. A timed-out abort is resumed by calling it again, a
    /// few times; after that, or on a fatal error, the producer is unusable (see
    /// [`recover`](Self::recover)).
    async fn abort(&self) -> Result<(), KafkaError> {
        if self.routing == Routing::AtLeastOnce {
            // Nothing to abort: what was produced stays, and is routed again.
            return Ok(());
        }
        let mut calls = 0;
        loop {
            calls += 1;
            self.heartbeat.beat("aborting a transaction");
            let producer = self.producer().clone();
            match blocking(move || producer.abort_transaction(TXN_TIMEOUT)).await {
                Ok(()) => {
                    self.metrics
                        .transactions
                        .with_label_values(&["aborted"])
                        .inc();
                    return Ok(());
                }
                Err(KafkaError::Transaction(err)) if err.is_retriable() && calls < ABORT_CALLS => {
                    tracing::warn!(%err, "abort not finished; calling it again");
                }
                Err(err) => {
                    self.metrics
                        .transactions
                        .with_label_values(&["abort_failed"])
                        .inc();
                    return Err(err);
                }
            }
        }
    }

    /// Routes the batch and applies the remedies of its records (see [`Plan`]).
    fn plan(&self, batch: &[OwnedMessage]) -> Plan {
        let mut outgoing = Vec::new();
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        let mut skipped = Vec::new();
        let mut spans = Vec::new();
        for (index, routed) in self.route(batch).into_iter().enumerate() {
            let Some(message) = batch.get(index) else {
                continue;
            };
            if !routed.span.is_disabled() {
                spans.push(routed.span);
            }
            let remedy = self.remedies.get(&(message.partition(), message.offset()));
            let (outcome, outputs) = match remedy {
                None => (routed.outcome, routed.outputs),
                Some(Remedy::Isolate) => {
                    let outputs = routed
                        .outputs
                        .into_iter()
                        .map(|o| Outgoing {
                            isolated: true,
                            ..o
                        })
                        .collect();
                    (routed.outcome, outputs)
                }
                Some(Remedy::Minimal { refused }) => {
                    let reason = minimal_reason(routed.invalid.as_deref(), refused);
                    (
                        "invalid",
                        vec![self.minimal_dead_letter(index, message, &reason)],
                    )
                }
                Some(Remedy::Skip { reason }) => {
                    skipped.push(*reason);
                    ("skipped", Vec::new())
                }
            };
            *counts.entry(outcome).or_default() += 1;
            outgoing.extend(outputs);
        }
        Plan {
            outgoing,
            counts,
            skipped,
            spans,
        }
    }

    /// Takes the next remedy step for the event records whose outputs were refused for
    /// good; returns whether any changed. One refused record steps on (isolated or not,
    /// the refusal is its own: librdkafka fails a whole produce batch together, so a
    /// single failure had no company); several are first produced one by one.
    fn remedy(
        &mut self,
        batch: &[OwnedMessage],
        outgoing: &[Outgoing],
        refused: &[Refusal],
    ) -> bool {
        let sources = refusals_by_source(outgoing, refused);
        let alone = sources.len() == 1;
        let mut changed = false;
        for (source, refusal) in sources {
            let Some(message) = batch.get(source) else {
                continue;
            };
            let key = (message.partition(), message.offset());
            let Some(next) = next_remedy(self.remedies.get(&key), alone, refusal) else {
                continue;
            };
            match &next {
                Remedy::Isolate => tracing::warn!(
                    partition = key.0,
                    offset = key.1,
                    error = %refusal.error,
                    "output refused with others; producing them one by one"
                ),
                Remedy::Minimal { .. } => tracing::warn!(
                    partition = key.0,
                    offset = key.1,
                    error = %refusal.error,
                    "output refused; dead-lettering the record with its payload left out"
                ),
                Remedy::Skip { .. } => tracing::error!(
                    partition = key.0,
                    offset = key.1,
                    error = %refusal.error,
                    "not even a dead letter without payload could be produced; \
                     skipping the record (it stays on the events topic)"
                ),
            }
            self.remedies.insert(key, next);
            changed = true;
        }
        if self.remedies.len() > MAX_REMEDIES {
            // Only partitions revoked in the middle of remedies leave entries behind.
            self.remedies.clear();
        }
        changed
    }

    /// Drops the remedies of the records the batch committed.
    fn forget_remedies(&mut self, batch: &[OwnedMessage]) {
        if self.remedies.is_empty() {
            return;
        }
        let next = next_offsets(batch);
        self.remedies
            .retain(|(partition, offset), _| next.get(partition).is_none_or(|next| offset >= next));
    }

    /// Catches the catalog view up when a record of the batch was checked by ingest
    /// against a type version this router's catalog does not hold yet (a type changed
    /// a moment ago): else it would check it against the version before.
    async fn catch_up_catalog(&self, batch: &[OwnedMessage]) {
        if !self.trust_validated {
            return;
        }
        let catalog = self.catalog.current();
        let newer = batch.iter().any(|message| {
            validated_version(message).is_some_and(|version| !catalog.holds_version(version))
        });
        if newer {
            self.heartbeat.beat("catching up the event types view");
            if let Err(err) = self.catalog.catch_up(self.view_patience).await {
                tracing::warn!(%err, "event types view not caught up; checking with the catalog as it is");
            }
        }
    }

    /// Checks an event against the catalog (trusting ingest's header when told to):
    /// an event that breaks its schema, or of an unknown type refused, is invalid, its
    /// reason naming the path and the rule.
    fn conform(
        &self,
        catalog: &Catalog,
        event: &Event,
        validated: Option<&str>,
    ) -> Result<(), FieldError> {
        let validated = validated.filter(|_| self.trust_validated);
        catalog
            .check_trusting(event, validated)
            .map(|_| ())
            .map_err(|violation| {
                let message = if violation.message.contains(&violation.rule) {
                    violation.message
                } else {
                    format!("{} (rule `{}`)", violation.message, violation.rule)
                };
                FieldError::new(violation.field, message)
            })
    }

    /// Matches every record; returns, per record of the batch, what to produce.
    fn route(&self, batch: &[OwnedMessage]) -> Vec<Routed> {
        let index = self.view.read();
        let context = BatchContext {
            now: Utc::now(),
            deliveries: self.topics.deliveries(),
            catalog: self.catalog.current(),
            index: &index,
        };
        batch
            .iter()
            .enumerate()
            .map(|(source, message)| {
                let span = route_span(message);
                let mut routed = span.in_scope(|| self.route_one(source, message, &span, &context));
                routed.span = span;
                routed
            })
            .collect()
    }

    /// Routes one record of the batch (at `source`), inside its span.
    fn route_one(
        &self,
        source: usize,
        message: &OwnedMessage,
        span: &tracing::Span,
        context: &BatchContext<'_>,
    ) -> Routed {
        let BatchContext {
            now,
            deliveries,
            catalog,
            index,
        } = context;
        let position = kafka::record_position(message);
        let headers = kafka::record_headers(message);
        let record = EventRecord {
            position,
            headers: &headers,
            payload: message.payload(),
        };
        let routed =
            route_record(record, &self.cloudevents, index, *now).and_then(|(event, tasks)| {
                self.conform(catalog, &event, validated_version(message))?;
                log_routed(&event, &tasks);
                record_routed(span, &event, tasks.len());
                self.encode(source, tasks, deliveries, span)
            });
        match routed {
            Ok(tasks) => Routed {
                outcome: if tasks.is_empty() {
                    "unmatched"
                } else {
                    "routed"
                },
                outputs: tasks,
                invalid: None,
                span: tracing::Span::none(),
            },
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                tracing::warn!(
                    partition = position.partition,
                    offset = position.offset,
                    reason = %err,
                    "invalid event record; sent to the dead-letter topic"
                );
                let reason = err.to_string();
                Routed {
                    outcome: "invalid",
                    outputs: vec![self.dead_letter(source, message, &reason)],
                    invalid: Some(reason),
                    span: tracing::Span::none(),
                }
            }
        }
    }

    /// Serializes the tasks of one event. A task over the size limit would fail its
    /// transaction again and again, so the event counts as invalid instead.
    fn encode(
        &self,
        source: usize,
        tasks: Vec<DeliveryTask>,
        topic: &str,
        span: &tracing::Span,
    ) -> Result<Vec<Outgoing>, FieldError> {
        tasks
            .into_iter()
            .map(|task| {
                let payload =
                    serde_json::to_vec(&task).map_err(|e| FieldError::new("$", e.to_string()))?;
                if payload.len() > self.max_task_bytes {
                    return Err(FieldError::new(
                        "$",
                        format!(
                            "its delivery task would be {} bytes, over the {}-byte limit",
                            payload.len(),
                            self.max_task_bytes
                        ),
                    ));
                }
                Ok(Outgoing {
                    source,
                    kind: Kind::Task,
                    isolated: false,
                    // The routing span is the parent of the task's attempts.
                    record: trace::with_span_context(
                        OutRecord::new(topic, task.subscription_id.as_str(), Some(payload)),
                        span,
                    ),
                })
            })
            .collect()
    }

    fn dead_letter(&self, source: usize, message: &OwnedMessage, reason: &str) -> Outgoing {
        let headers = kafka::dead_letter_headers(message, reason);
        Outgoing {
            source,
            kind: Kind::DeadLetter,
            isolated: false,
            record: OutRecord {
                topic: self.topics.events_dlq(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers: Some(headers),
            },
        }
    }

    /// A dead letter as small as it gets: the reason and the source position, no
    /// payload (the record itself stays on the events topic) and no oversized key.
    fn minimal_dead_letter(&self, source: usize, message: &OwnedMessage, reason: &str) -> Outgoing {
        Outgoing {
            source,
            kind: Kind::DeadLetter,
            isolated: true,
            record: OutRecord {
                topic: self.topics.events_dlq(),
                key: message
                    .key()
                    .filter(|key| key.len() <= MINIMAL_KEY_BYTES)
                    .map(<[u8]>::to_vec),
                payload: None,
                headers: Some(kafka::dead_letter_headers(message, reason)),
            },
        }
    }

    /// Begin, produce everything (the view barrier is read meanwhile), add the offsets
    /// past the batch, check the barrier, commit. Outputs are produced in order, all at
    /// once except the isolated ones, each of which is produced alone once everything
    /// before it is acknowledged.
    async fn transact(
        &self,
        batch: &[OwnedMessage],
        outgoing: &[Outgoing],
        barrier: impl std::future::Future<Output = Result<bool, NotCaughtUp>>,
    ) -> Result<(), Failure> {
        if self.routing == Routing::AtLeastOnce {
            return self.produce_then_store(batch, outgoing).await;
        }
        // The next producer's turn: its last transaction ended a whole transaction ago.
        let turn = (self.turn.load(Ordering::Relaxed) + 1) % self.producers.len();
        self.turn.store(turn, Ordering::Relaxed);
        self.heartbeat.beat("beginning a transaction");
        let producer = self.producer().clone();
        blocking(move || producer.begin_transaction()).await?;
        let offsets = self.offsets_past(batch)?;
        // Always present for a subscribed group consumer.
        let metadata = self.consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        self.heartbeat.beat("producing a batch's tasks");
        let (produced, current) = tokio::join!(self.produce(outgoing), barrier);
        produced?;
        // Not alongside the records: the coordinator would answer the second of two
        // concurrent requests with CONCURRENT_TRANSACTIONS, retried 20 ms later.
        self.heartbeat.beat("adding offsets to a transaction");
        let producer = self.producer().clone();
        blocking(move || producer.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT))
            .await?;
        match current {
            Ok(true) => {}
            Ok(false) => return Err(Failure::ViewMoved),
            Err(err) => return Err(Failure::ViewUnreachable(err)),
        }
        self.heartbeat.beat("committing a transaction");
        let producer = self.producer().clone();
        Ok(blocking(move || producer.commit_transaction(TXN_TIMEOUT)).await?)
    }

    /// At least once: produces everything, then stores the offsets past the batch
    /// (committed in the background and on revocation).
    async fn produce_then_store(
        &self,
        batch: &[OwnedMessage],
        outgoing: &[Outgoing],
    ) -> Result<(), Failure> {
        self.produce(outgoing).await?;
        self.consumer.store_offsets(&self.offsets_past(batch)?)?;
        Ok(())
    }

    /// The events topic's offsets just past the batch, per partition: what commits
    /// with it.
    fn offsets_past(&self, batch: &[OwnedMessage]) -> Result<TopicPartitionList, KafkaError> {
        let events = self.topics.events();
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in next_offsets(batch) {
            offsets.add_partition_offset(&events, partition, Offset::Offset(next))?;
        }
        Ok(offsets)
    }

    /// Produces `outgoing` in its groups, each once the one before is acknowledged.
    /// Bounded on our clock like every transactional call: librdkafka times records out
    /// itself, but a producer wedged after a broker failure must not hold the loop.
    async fn produce(&self, outgoing: &[Outgoing]) -> Result<(), Failure> {
        match tokio::time::timeout(CALL_BOUND, self.produce_groups(outgoing)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Kafka(GAVE_UP.into())),
        }
    }

    async fn produce_groups(&self, outgoing: &[Outgoing]) -> Result<(), Failure> {
        for group in produce_groups(outgoing) {
            let start = group.start;
            let Some(records) = outgoing.get(group) else {
                continue;
            };
            let results = send_all(
                self.producer(),
                records.iter().map(|out| &out.record),
                TXN_TIMEOUT,
            )
            .await;
            let mut first = None;
            let mut refused = Vec::new();
            for (offset, result) in results.into_iter().enumerate() {
                if let Err(err) = result {
                    if let Some(reason) = permanent_refusal(&err) {
                        refused.push(Refusal {
                            outgoing: start + offset,
                            reason,
                            error: err.to_string(),
                        });
                    }
                    first.get_or_insert(err);
                }
            }
            if let Some(error) = first {
                return Err(Failure::Kafka(TxnFailure { error, refused }));
            }
        }
        Ok(())
    }

    /// Points the consumer back at the first record of the batch in each partition.
    fn rewind(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut first: HashMap<i32, i64> = HashMap::new();
        for message in batch {
            let entry = first.entry(message.partition()).or_insert(message.offset());
            *entry = (*entry).min(message.offset());
        }
        self.heartbeat.beat("rewinding the consumer");
        let events = self.topics.events();
        for (partition, offset) in first {
            self.consumer.seek(
                &events,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )?;
        }
        Ok(())
    }
}

/// The type version ingest checked the record against, from its header.
fn validated_version(message: &OwnedMessage) -> Option<&str> {
    message
        .headers()?
        .iter()
        .find(|header| header.key == VALIDATED_HEADER)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// The offset after the last record of each partition in the batch.
fn next_offsets(batch: &[OwnedMessage]) -> HashMap<i32, i64> {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for message in batch {
        let entry = next.entry(message.partition()).or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    next
}

/// Consecutive ranges of `outgoing` produced together: runs of outputs that are not
/// isolated, and each isolated output on its own.
fn produce_groups(outgoing: &[Outgoing]) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (index, out) in outgoing.iter().enumerate() {
        if out.isolated {
            if start < index {
                groups.push(start..index);
            }
            groups.push(index..index + 1);
            start = index + 1;
        }
    }
    if start < outgoing.len() {
        groups.push(start..outgoing.len());
    }
    groups
}

/// The metric label of a produce error that the same record meets on every try (it is
/// too large, or malformed for the broker), or `None` for an error a retry may clear:
/// timeouts, a broker or partition leader away, the transaction's own state.
fn permanent_refusal(err: &KafkaError) -> Option<&'static str> {
    let KafkaError::MessageProduction(code) = err else {
        return None;
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge => Some("message_too_large"),
        RDKafkaErrorCode::InvalidMessageSize => Some("invalid_message_size"),
        RDKafkaErrorCode::MessageBatchTooLarge => Some("record_list_too_large"),
        RDKafkaErrorCode::InvalidRecord => Some("invalid_record"),
        RDKafkaErrorCode::InvalidMessage => Some("invalid_message"),
        _ => None,
    }
}

/// The first refusal of each event record refused: one remedy step per record and try,
/// since several of its outputs refused at once are one piece of evidence, not several.
fn refusals_by_source<'a>(
    outgoing: &[Outgoing],
    refused: &'a [Refusal],
) -> BTreeMap<usize, &'a Refusal> {
    let mut sources = BTreeMap::new();
    for refusal in refused {
        if let Some(out) = outgoing.get(refusal.outgoing) {
            sources.entry(out.source).or_insert(refusal);
        }
    }
    sources
}

/// The remedy after `current` for a record whose output met `refusal`; `alone` tells
/// whether it was the only record refused in that try. `None`: nothing more to do.
fn next_remedy(current: Option<&Remedy>, alone: bool, refusal: &Refusal) -> Option<Remedy> {
    match current {
        None if !alone => Some(Remedy::Isolate),
        None | Some(Remedy::Isolate) => Some(Remedy::Minimal {
            refused: refusal.error.clone(),
        }),
        Some(Remedy::Minimal { .. }) => Some(Remedy::Skip {
            reason: refusal.reason,
        }),
        Some(Remedy::Skip { .. }) => None,
    }
}

/// The reason of a dead letter whose payload is left out, at most
/// [`MINIMAL_REASON_BYTES`] long.
fn minimal_reason(invalid: Option<&str>, refused: &str) -> String {
    // Each part is cut on its own, so the reason always says what happened.
    let refused = truncate(refused.to_owned(), MINIMAL_REASON_BYTES / 4);
    let reason = match invalid {
        Some(invalid) => format!(
            "{}; its dead-letter copy was refused ({refused}): payload left out, read the \
             record at its source position",
            truncate(invalid.to_owned(), MINIMAL_REASON_BYTES / 2)
        ),
        None => format!(
            "its delivery tasks were refused ({refused}): payload left out, read the record \
             at its source position"
        ),
    };
    truncate(reason, MINIMAL_REASON_BYTES)
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One assigned partition for the fetch watch's warning: `partition:position/end`
/// (`-` when unknown), `stalled` when it is one the watch acts on, then what the
/// consumer's latest statistics said of it (`committed=`, librdkafka's fetch state,
/// its next fetch offset, its leader, records queued).
fn describe(sample: &Sample, fetch: Option<&kafka::PartitionFetch>, stalled: bool) -> String {
    let known = |offset: Option<i64>| offset.map_or_else(|| "-".to_owned(), |o| o.to_string());
    let mut text = format!(
        "{}:{}/{}",
        sample.partition,
        known(sample.position),
        known(sample.end)
    );
    if stalled {
        text.push_str(",stalled");
    }
    if let Some(fetch) = fetch {
        text.push_str(&format!(
            ",committed={},state={},next={},leader={},queued={}",
            fetch.committed_offset, fetch.state, fetch.next_offset, fetch.leader, fetch.queued
        ));
    }
    text
}

/// The configuration of the router's group consumer of the events topic.
fn consumer_config(args: &KafkaArgs, settings: &Settings) -> ClientConfig {
    let mut config = kafka::group_consumer_config(args, "hookline-router", &settings.group);
    if settings.routing == Routing::ExactlyOnce {
        // Offsets are committed inside each transaction, never on their own.
        config.set("enable.auto.commit", "false");
    }
    // An eager assignor, not the cooperative-sticky one of other group consumers: a
    // cooperative rebalance hands revoked partitions over in a second round that
    // the revoking member's rejoin starts, and a router that replaces its consumer
    // rejoins as the same static member, which the coordinator answers with the
    // stored assignment and no rebalance. Seen in the chaos ledger: a group stuck
    // for good at `r1=[] r2=[2,3]`, partitions 0 and 1 assigned to no one, through
    // every rebuilt consumer and a restarted process. An eager round assigns every
    // partition at once.
    if args.property("partition.assignment.strategy").is_none() {
        config.set("partition.assignment.strategy", "range");
    }
    if let Some(instance) = &settings.instance_id {
        // Static membership: a restarted instance takes its partitions back without
        // a rebalance of the whole group.
        config.set("group.instance.id", instance);
    }
    config
}

/// A consumer of the events topic built from `config`, subscribed.
fn subscribe(
    config: &ClientConfig,
    topics: &Topics,
    context: kafka::AssignmentContext,
) -> Result<StreamConsumer<kafka::AssignmentContext>, KafkaError> {
    let consumer: StreamConsumer<kafka::AssignmentContext> = config.create_with_context(context)?;
    consumer.subscribe(&[&topics.events()])?;
    Ok(consumer)
}

/// The router's producer: transactional with `transactional_id`, else idempotent.
fn new_producer(
    args: &KafkaArgs,
    transactional_id: Option<&str>,
) -> Result<kafka::Producer, KafkaError> {
    match transactional_id {
        Some(id) => kafka::transactional_producer(args, "hookline-router", id),
        None => kafka::low_latency_producer(args, "hookline-router", kafka::DELIVERY_TIMEOUT),
    }
}

/// Runs a blocking librdkafka call off the async threads.
///
/// Gives up on it after [`CALL_BOUND`], whatever timeout the call itself was given:
/// `send_offsets_to_transaction` was seen to wait for ever for an operation librdkafka
/// never completed (after a broker failure). A call given up on leaves its thread
/// blocked and fails with [`GAVE_UP`]; its producer is built again.
async fn blocking<F>(call: F) -> Result<(), KafkaError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    match tokio::time::timeout(CALL_BOUND, tokio::task::spawn_blocking(call)).await {
        Ok(joined) => joined.unwrap_or(Err(KafkaError::Canceled)),
        Err(_) => Err(GAVE_UP),
    }
}

/// The error of a transactional call given up on (see [`blocking`]).
const GAVE_UP: KafkaError = KafkaError::Global(RDKafkaErrorCode::OperationTimedOut);

/// Whether `err` says a transactional call was given up on, its producer stuck.
fn gave_up(err: &KafkaError) -> bool {
    matches!(err, KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
}

/// What every record of one batch is routed against: one clock reading, the
/// subscriptions and the catalog as they were when the batch began.
struct BatchContext<'a> {
    now: chrono::DateTime<Utc>,
    deliveries: String,
    catalog: Arc<Catalog>,
    index: &'a hookline_domain::matching::SubscriptionIndex,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(instance_id: Option<&str>) -> Settings {
        Settings {
            routing: Routing::ExactlyOnce,
            group: "g".into(),
            instance_id: instance_id.map(str::to_owned),
            transactional_id: "t".into(),
            batch_size: 1,
            max_task_bytes: 1,
            view_patience: Duration::ZERO,
            cloudevents: CloudEventsConfig::default(),
            stall: Duration::ZERO,
            trust_validated: true,
        }
    }

    fn kafka_args(properties: &[(&str, &str)]) -> KafkaArgs {
        KafkaArgs {
            brokers: "127.0.0.1:1".into(),
            topic_prefix: "t.".into(),
            topic_partitions: 1,
            topic_replication: hookline_core::config::Replication::Auto,
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            statistics_interval: Duration::from_secs(5),
        }
    }

    #[test]
    fn routers_assign_eagerly_unless_the_operator_chose() {
        let config = consumer_config(&kafka_args(&[]), &settings(Some("r1")));
        assert_eq!(config.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(config.get("group.instance.id"), Some("r1"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        let chosen = kafka_args(&[("partition.assignment.strategy", "roundrobin")]);
        let config = consumer_config(&chosen, &settings(None));
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("roundrobin")
        );
        assert_eq!(config.get("group.instance.id"), None);
    }

    fn out(source: usize, isolated: bool) -> Outgoing {
        Outgoing {
            source,
            kind: Kind::Task,
            isolated,
            record: OutRecord {
                topic: "t".into(),
                key: None,
                payload: None,
                headers: None,
            },
        }
    }

    fn refusal() -> Refusal {
        Refusal {
            outgoing: 0,
            reason: "message_too_large",
            error: "Broker: Message size too large".into(),
        }
    }

    #[test]
    fn isolated_outputs_are_produced_alone_and_in_order() {
        let outgoing = [
            out(0, false),
            out(1, false),
            out(2, true),
            out(2, true),
            out(3, false),
        ];
        assert_eq!(produce_groups(&outgoing), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(produce_groups(&[out(0, false), out(1, false)]), vec![0..2]);
        assert_eq!(produce_groups(&[out(0, true)]), vec![0..1]);
        assert!(produce_groups(&[]).is_empty());
    }

    #[test]
    fn only_errors_of_the_record_itself_are_permanent() {
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidMessageSize,
            RDKafkaErrorCode::MessageBatchTooLarge,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::InvalidMessage,
        ] {
            assert!(
                permanent_refusal(&KafkaError::MessageProduction(code)).is_some(),
                "{code:?}"
            );
        }
        // An outage must be waited out, never turned into skipped records.
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::BrokerNotAvailable,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::PurgeQueue,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::TopicAuthorizationFailed,
        ] {
            assert_eq!(
                permanent_refusal(&KafkaError::MessageProduction(code)),
                None,
                "{code:?}"
            );
        }
        assert_eq!(permanent_refusal(&KafkaError::Canceled), None);
    }

    #[test]
    fn a_poison_record_costs_at_most_three_aborts() {
        let refused = refusal();
        // Refused along with others: first isolated, then cut down, then skipped.
        let mut remedy = None;
        let mut steps = 0;
        let mut alone = false;
        while let Some(next) = next_remedy(remedy.as_ref(), alone, &refused) {
            remedy = Some(next);
            steps += 1;
            alone = true;
        }
        assert_eq!(steps, 3);
        assert_eq!(
            remedy,
            Some(Remedy::Skip {
                reason: "message_too_large"
            })
        );
        // Refused alone: the refusal is its own, no isolating step.
        assert!(matches!(
            next_remedy(None, true, &refused),
            Some(Remedy::Minimal { .. })
        ));
        assert_eq!(next_remedy(None, false, &refused), Some(Remedy::Isolate));
    }

    #[test]
    fn a_record_with_several_outputs_refused_steps_once() {
        let outgoing = [out(4, false), out(4, false), out(7, false)];
        let refused: Vec<Refusal> = [0, 1]
            .into_iter()
            .map(|outgoing| Refusal {
                outgoing,
                ..refusal()
            })
            .collect();
        let sources = refusals_by_source(&outgoing, &refused);
        assert_eq!(sources.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(sources[&4].outgoing, 0);
        let with_other = [
            refused[0].clone(),
            Refusal {
                outgoing: 2,
                ..refusal()
            },
        ];
        assert_eq!(refusals_by_source(&outgoing, &with_other).len(), 2);
    }

    #[test]
    fn a_minimal_reason_says_why_and_stays_short() {
        let reason = minimal_reason(Some("$: not valid JSON"), "Broker: Message size too large");
        assert!(reason.starts_with("$: not valid JSON; its dead-letter copy was refused"));
        assert!(reason.contains("Message size too large"));
        assert!(reason.contains("payload left out"));
        let tasks = minimal_reason(None, "Broker: Message size too large");
        assert!(tasks.starts_with("its delivery tasks were refused"));

        let long = "é".repeat(5000);
        let reason = minimal_reason(Some(&long), &long);
        assert!(reason.len() <= MINIMAL_REASON_BYTES);
        assert!(reason.contains("payload left out"), "{reason}");
        assert_eq!(truncate("aé".into(), 2), "a");
    }
}
