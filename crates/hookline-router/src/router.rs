//! The routing loop. Each batch of event records becomes one Kafka transaction: its
//! delivery tasks (and dead letters) and the consumer offsets past it commit together
//! or not at all, so a router killed at any moment neither duplicates nor loses a task
//! for `read_committed` readers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use hookline_core::cloudevents::CloudEventsConfig;
use hookline_core::config::KafkaArgs;
use hookline_core::event::FieldError;
use hookline_core::kafka;
use hookline_core::routing::{route_record, EventRecord, RecordPosition};
use hookline_core::task::DeliveryTask;
use hookline_core::telemetry::Readiness;
use hookline_core::topics::Topics;
use hookline_core::view::SubscriptionView;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

/// How long a batch waits for more records after its first one.
const BATCH_LINGER: Duration = Duration::from_millis(5);
/// How long routing waits for the subscriptions view before routing anyway.
const VIEW_PATIENCE: Duration = Duration::from_secs(5);

struct Metrics {
    events: IntCounterVec,
    tasks: IntCounter,
    batch_seconds: Histogram,
}

impl Metrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "hookline_router_events_total",
                "Event records consumed, by outcome (routed, unmatched, invalid).",
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
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(batch_seconds.clone()))?;
        Ok(Self {
            events,
            tasks,
            batch_seconds,
        })
    }
}

/// A record to produce within the batch's transaction.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// How long one transactional call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The router of one process.
pub struct Router {
    consumer: StreamConsumer<kafka::AssignmentContext>,
    producer: FutureProducer,
    view: Arc<SubscriptionView>,
    topics: Topics,
    batch_size: usize,
    max_task_bytes: usize,
    cloudevents: CloudEventsConfig,
    metrics: Metrics,
}

/// How one router joins its group and routes.
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// How CloudEvents records are read.
    pub cloudevents: CloudEventsConfig,
}

impl Router {
    /// Builds the group consumer and the transactional producer.
    pub fn new(
        args: &KafkaArgs,
        settings: Settings,
        view: Arc<SubscriptionView>,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let mut consumer_config =
            kafka::group_consumer_config(args, "hookline-router", &settings.group);
        // Offsets are committed inside each transaction, never on their own.
        consumer_config.set("enable.auto.commit", "false");
        if let Some(instance) = &settings.instance_id {
            // Static membership: a restarted instance takes its partitions back without
            // a rebalance of the whole group.
            consumer_config.set("group.instance.id", instance);
        }
        let consumer: StreamConsumer<kafka::AssignmentContext> =
            consumer_config.create_with_context(kafka::AssignmentContext::new("events"))?;
        let topics = args.topics();
        consumer.subscribe(&[&topics.events()])?;
        let producer =
            kafka::transactional_producer(args, "hookline-router", &settings.transactional_id)?;
        Ok(Self {
            consumer,
            producer,
            view,
            topics,
            batch_size: settings.batch_size.max(1),
            max_task_bytes: settings.max_task_bytes,
            cloudevents: settings.cloudevents,
            metrics: Metrics::register(registry)?,
        })
    }

    /// True once the group gave this router its first assignment (it really consumes).
    pub fn assigned(&self) -> Readiness {
        self.consumer.context().readiness()
    }

    /// Routes until `stop` turns true; the batch in progress then completes.
    pub async fn run(
        self,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.init_transactions(TXN_TIMEOUT)).await??;
        while let Err(err) = self.view.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view");
        }
        readiness.set(true);
        tracing::info!("ready");
        loop {
            let batch = tokio::select! {
                batch = self.next_batch() => batch,
                _ = stop.wait_for(|s| *s) => break,
            };
            let timer = self.metrics.batch_seconds.start_timer();
            self.route_batch(&batch).await?;
            timer.observe_duration();
            if *stop.borrow() {
                break;
            }
        }
        Ok(())
    }

    async fn next_batch(&self) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    batch.push(message.detach());
                    break;
                }
                Err(err) => {
                    tracing::warn!(%err, "events topic read failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.len() < self.batch_size {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => batch.push(message.detach()),
                Ok(Err(err)) => {
                    tracing::warn!(%err, "events topic read failed");
                    break;
                }
                Err(_) => break,
            }
        }
        batch
    }

    /// Routes one batch in one transaction. An abortable failure aborts it and rewinds
    /// the consumer to the batch's start, so the next batch routes the same records.
    async fn route_batch(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        // Any subscription change acknowledged before this batch began applies to it.
        if let Err(err) = self.view.catch_up(VIEW_PATIENCE).await {
            tracing::warn!(%err, "routing with a possibly stale subscriptions view");
        }
        let (outgoing, counts) = self.route(batch);
        match self.transact(batch, &outgoing).await {
            Ok(()) => {
                for (outcome, n) in counts {
                    self.metrics.events.with_label_values(&[outcome]).inc_by(n);
                }
                let tasks = outgoing.iter().filter(|o| o.headers.is_none()).count();
                self.metrics.tasks.inc_by(tasks as u64);
                Ok(())
            }
            Err(err) if is_abortable(&err) => {
                tracing::warn!(%err, "transaction aborted; routing the batch again");
                let producer = self.producer.clone();
                tokio::task::spawn_blocking(move || producer.abort_transaction(TXN_TIMEOUT))
                    .await??;
                self.rewind(batch)?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(())
            }
            Err(err) => Err(anyhow::anyhow!("fatal transaction error: {err}")),
        }
    }

    /// Matches every record; returns what to produce and the outcome counts.
    fn route(&self, batch: &[OwnedMessage]) -> (Vec<Outgoing>, HashMap<&'static str, u64>) {
        let now = Utc::now();
        let deliveries = self.topics.deliveries();
        let mut outgoing = Vec::new();
        let mut counts: HashMap<&'static str, u64> = HashMap::new();
        let index = self.view.read();
        for message in batch {
            let position = RecordPosition::of(message);
            let headers = kafka::record_headers(message);
            let record = EventRecord {
                position,
                headers: &headers,
                payload: message.payload(),
            };
            let routed = route_record(record, &self.cloudevents, &index, now)
                .and_then(|(_, tasks)| self.encode(tasks, &deliveries));
            match routed {
                Ok(tasks) => {
                    let outcome = if tasks.is_empty() {
                        "unmatched"
                    } else {
                        "routed"
                    };
                    *counts.entry(outcome).or_default() += 1;
                    outgoing.extend(tasks);
                }
                Err(err) => {
                    *counts.entry("invalid").or_default() += 1;
                    tracing::warn!(
                        partition = position.partition,
                        offset = position.offset,
                        reason = %err,
                        "invalid event record; sent to the dead-letter topic"
                    );
                    outgoing.push(self.dead_letter(message, &err.to_string()));
                }
            }
        }
        (outgoing, counts)
    }

    /// Serializes the tasks of one event. A task over the size limit would fail its
    /// transaction again and again, so the event counts as invalid instead.
    fn encode(&self, tasks: Vec<DeliveryTask>, topic: &str) -> Result<Vec<Outgoing>, FieldError> {
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
                    topic: topic.to_owned(),
                    key: Some(task.subscription_id.into_bytes()),
                    payload: Some(payload),
                    headers: None,
                })
            })
            .collect()
    }

    fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> Outgoing {
        let headers = kafka::dead_letter_headers(message, reason);
        Outgoing {
            topic: self.topics.events_dlq(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: Some(headers),
        }
    }

    /// Begin, produce everything, add the offsets past the batch, commit.
    async fn transact(
        &self,
        batch: &[OwnedMessage],
        outgoing: &[Outgoing],
    ) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        blocking(move || producer.begin_transaction()).await?;
        let results = join_all(outgoing.iter().map(|out| {
            let mut record = FutureRecord::<[u8], [u8]>::to(&out.topic);
            if let Some(key) = &out.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &out.payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(headers) = &out.headers {
                record = record.headers(headers.clone());
            }
            self.producer.send(record, Timeout::After(TXN_TIMEOUT))
        }))
        .await;
        if let Some(Err((err, _))) = results.into_iter().find(Result::is_err) {
            return Err(err);
        }
        let events = self.topics.events();
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in next_offsets(batch) {
            offsets.add_partition_offset(&events, partition, Offset::Offset(next))?;
        }
        // Always present for a subscribed group consumer.
        let metadata = self.consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        let producer = self.producer.clone();
        blocking(move || producer.send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT))
            .await?;
        let producer = self.producer.clone();
        blocking(move || producer.commit_transaction(TXN_TIMEOUT)).await
    }

    /// Points the consumer back at the first record of the batch in each partition.
    fn rewind(&self, batch: &[OwnedMessage]) -> anyhow::Result<()> {
        let mut first: HashMap<i32, i64> = HashMap::new();
        for message in batch {
            let entry = first.entry(message.partition()).or_insert(message.offset());
            *entry = (*entry).min(message.offset());
        }
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

/// The offset after the last record of each partition in the batch.
fn next_offsets(batch: &[OwnedMessage]) -> HashMap<i32, i64> {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for message in batch {
        let entry = next.entry(message.partition()).or_insert(0);
        *entry = (*entry).max(message.offset() + 1);
    }
    next
}

/// Whether a transactional failure can be handled by aborting and trying again.
fn is_abortable(err: &KafkaError) -> bool {
    match err {
        KafkaError::Transaction(txn) => txn.txn_requires_abort() || txn.is_retriable(),
        // A produce that failed inside the transaction: abort and route again.
        _ => !matches!(err, KafkaError::Canceled),
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<F>(call: F) -> Result<(), KafkaError>
where
    F: FnOnce() -> Result<(), KafkaError> + Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}
