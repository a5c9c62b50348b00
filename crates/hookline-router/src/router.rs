//! The routing loop: batch, catch the subscriptions view up, route, produce, await
//! acknowledgements, then store offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use hookline_core::routing::{route_record, RecordPosition};
use hookline_core::telemetry::Readiness;
use hookline_core::topics::Topics;
use hookline_core::view::SubscriptionView;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
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

/// A record to produce, owned so that it can be sent again after a failure.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// The router of one process.
pub struct Router {
    consumer: StreamConsumer,
    producer: FutureProducer,
    view: Arc<SubscriptionView>,
    topics: Topics,
    batch_size: usize,
    metrics: Metrics,
    /// Highest offset stored per partition of the events topic.
    stored: HashMap<i32, i64>,
}

impl Router {
    /// Builds the consumer (group `group`) and producer.
    pub fn new(
        args: &KafkaArgs,
        group: &str,
        batch_size: usize,
        view: Arc<SubscriptionView>,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka::group_consumer(args, "hookline-router", group)?;
        let topics = args.topics();
        consumer.subscribe(&[&topics.events()])?;
        Ok(Self {
            consumer,
            producer: kafka::producer(args, "hookline-router")?,
            view,
            topics,
            batch_size: batch_size.max(1),
            metrics: Metrics::register(registry)?,
            stored: HashMap::new(),
        })
    }

    /// Routes until `stop` turns true, then commits what is done.
    pub async fn run(
        mut self,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
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
            self.route_batch(&batch).await;
            timer.observe_duration();
            if *stop.borrow() {
                break;
            }
        }
        self.commit_stored();
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

    async fn route_batch(&mut self, batch: &[OwnedMessage]) {
        // Any subscription change acknowledged before this batch began applies to it.
        if let Err(err) = self.view.catch_up(VIEW_PATIENCE).await {
            tracing::warn!(%err, "routing with a possibly stale subscriptions view");
        }
        let now = Utc::now();
        let deliveries = self.topics.deliveries();
        let mut outgoing = Vec::new();
        {
            let index = self.view.read();
            for message in batch {
                let position = RecordPosition {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    timestamp: message
                        .timestamp()
                        .to_millis()
                        .and_then(DateTime::<Utc>::from_timestamp_millis),
                };
                match route_record(position, message.payload(), &index, now) {
                    Ok((_, tasks)) => {
                        let outcome = if tasks.is_empty() {
                            "unmatched"
                        } else {
                            "routed"
                        };
                        self.metrics.events.with_label_values(&[outcome]).inc();
                        self.metrics.tasks.inc_by(tasks.len() as u64);
                        for task in tasks {
                            match serde_json::to_vec(&task) {
                                Ok(payload) => outgoing.push(Outgoing {
                                    topic: deliveries.clone(),
                                    key: Some(task.subscription_id.into_bytes()),
                                    payload: Some(payload),
                                    headers: None,
                                }),
                                Err(err) => tracing::error!(%err, "task not serializable"),
                            }
                        }
                    }
                    Err(err) => {
                        self.metrics.events.with_label_values(&["invalid"]).inc();
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
        }
        self.produce_all(outgoing).await;
        self.store_offsets(batch);
    }

    fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> Outgoing {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "hookline-dlq-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "hookline-source-topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "hookline-source-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "hookline-source-offset",
                value: Some(&offset),
            });
        Outgoing {
            topic: self.topics.events_dlq(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: Some(headers),
        }
    }

    /// Sends every record and waits for all acknowledgements; a failed record is sent
    /// again until Kafka takes it (the batch's offsets wait for it).
    async fn produce_all(&self, mut pending: Vec<Outgoing>) {
        let mut backoff = Duration::from_millis(100);
        while !pending.is_empty() {
            let results = join_all(pending.iter().map(|out| {
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
                self.producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
            }))
            .await;
            let failures: Vec<bool> = results.iter().map(Result::is_err).collect();
            if let Some(Err((err, _))) = results.into_iter().find(Result::is_err) {
                tracing::error!(%err, "produce failed; retrying the unacknowledged records");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let mut failed = failures.into_iter();
            pending.retain(|_| failed.next().unwrap_or(false));
        }
    }

    fn store_offsets(&mut self, batch: &[OwnedMessage]) {
        let mut highest: HashMap<i32, i64> = HashMap::new();
        for message in batch {
            let entry = highest.entry(message.partition()).or_insert(-1);
            *entry = (*entry).max(message.offset());
        }
        for (partition, offset) in highest {
            // Fails for a partition revoked meanwhile: its new owner routes again from
            // the last commit (at-least-once).
            match self
                .consumer
                .store_offset(&self.topics.events(), partition, offset)
            {
                Ok(()) => {
                    self.stored.insert(partition, offset);
                }
                Err(err) => tracing::debug!(%err, partition, "offset not stored"),
            }
        }
    }

    /// Commits the stored offsets of the partitions still assigned, before exiting.
    fn commit_stored(&self) {
        let assigned = self.consumer.assignment().unwrap_or_default();
        let events = self.topics.events();
        let mut list = TopicPartitionList::new();
        for (partition, offset) in &self.stored {
            if assigned.find_partition(&events, *partition).is_none() {
                continue;
            }
            let _ = list.add_partition_offset(&events, *partition, Offset::Offset(offset + 1));
        }
        if list.count() > 0 {
            if let Err(err) = self.consumer.commit(&list, CommitMode::Sync) {
                tracing::warn!(%err, "final commit failed; uncommitted events will be routed again");
            }
        }
    }
}
