//! The delivery loop: consume tasks, run many at once, store each partition's offset
//! only up to its contiguous done prefix, hand undeliverable tasks to the DLQ.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hookline_core::kafka;
use hookline_core::subscription::Subscription;
use hookline_core::task::DeliveryTask;
use hookline_core::telemetry::Readiness;
use hookline_core::topics::Topics;
use hookline_core::tracker::OffsetTracker;
use hookline_core::view::SubscriptionView;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use rand::Rng;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::sender::{Outcome, Sender};

/// Retry settings of the in-process retry loop.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before a task goes to the DLQ.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time (with jitter).
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Delay before attempt `next` (2-based), exponential with ±20 % jitter.
    fn delay(&self, next: u32, hint: Option<Duration>) -> Duration {
        let exponential = self
            .base_delay
            .saturating_mul(1u32 << (next.saturating_sub(2)).min(20))
            .min(self.max_delay);
        let jittered = exponential.mul_f64(rand::rng().random_range(0.8..1.2));
        hint.map_or(jittered, |h| h.clamp(self.base_delay, self.max_delay))
    }
}

/// Delivery metrics.
pub struct Metrics {
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    tasks: IntCounterVec,
    in_flight: IntGauge,
    routed_to_delivered: Histogram,
}

impl Metrics {
    /// Registers the delivery metrics.
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_attempts_total",
                "HTTP attempts, by outcome class.",
            ),
            &["outcome"],
        )?;
        let attempt_seconds = HistogramVec::new(
            HistogramOpts::new(
                "hookline_delivery_attempt_duration_seconds",
                "Duration of one HTTP attempt, by outcome class.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0,
            ]),
            &["outcome"],
        )?;
        let tasks = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_tasks_total",
                "Delivery tasks finished, by outcome (delivered, dead_lettered, skipped_deleted, invalid).",
            ),
            &["outcome"],
        )?;
        let in_flight = IntGauge::new(
            "hookline_delivery_in_flight",
            "Delivery tasks being worked on.",
        )?;
        let routed_to_delivered = Histogram::with_opts(
            HistogramOpts::new(
                "hookline_delivery_routed_to_delivered_seconds",
                "Time from the router writing a task to its successful delivery.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(attempt_seconds.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(routed_to_delivered.clone()))?;
        Ok(Self {
            attempts,
            attempt_seconds,
            tasks,
            in_flight,
            routed_to_delivered,
        })
    }
}

/// What every delivery task shares.
pub struct Context {
    /// DLQ producer.
    pub producer: FutureProducer,
    /// Subscriptions view (URL, secret, enabled).
    pub view: Arc<SubscriptionView>,
    /// HTTP sender.
    pub sender: Sender,
    /// Topic names.
    pub topics: Topics,
    /// Retry settings.
    pub retry: RetryPolicy,
    /// Metrics.
    pub metrics: Metrics,
}

/// A finished record: partition, offset, tracker generation.
type Done = (i32, i64, u64);

/// The consumer side of one delivery process.
pub struct Worker {
    consumer: StreamConsumer,
    context: Arc<Context>,
    trackers: HashMap<i32, OffsetTracker>,
    limit: Arc<Semaphore>,
    grace: Duration,
}

impl Worker {
    /// Subscribes to the deliveries topic in consumer group `group`.
    pub fn new(
        args: &hookline_core::config::KafkaArgs,
        group: &str,
        concurrency: usize,
        grace: Duration,
        context: Context,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka::group_consumer(args, "hookline-delivery", group)?;
        consumer.subscribe(&[&context.topics.deliveries()])?;
        Ok(Self {
            consumer,
            context: Arc::new(context),
            trackers: HashMap::new(),
            limit: Arc::new(Semaphore::new(concurrency.max(1))),
            grace,
        })
    }

    /// Delivers until `stop` turns true, then lets in-flight work finish (up to the
    /// grace period) and commits what is done.
    pub async fn run(
        mut self,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        while let Err(err) = self.context.view.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view");
        }
        readiness.set(true);
        tracing::info!("ready");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        loop {
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => self.on_done(done),
                _ = stop.wait_for(|s| *s) => break,
                received = self.consumer.recv(), if self.limit.available_permits() > 0 => match received {
                    Ok(message) => self.start(message.detach(), done_tx.clone()),
                    Err(err) => {
                        tracing::warn!(%err, "deliveries topic read failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        tracing::info!(
            in_flight = self.context.metrics.in_flight.get(),
            "draining in-flight deliveries"
        );
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.trackers.values().any(|t| t.in_flight() > 0) {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => self.on_done(done),
                _ => break,
            }
        }
        self.commit_assigned();
        Ok(())
    }

    fn start(&mut self, message: OwnedMessage, done: mpsc::UnboundedSender<Done>) {
        let Ok(permit) = Arc::clone(&self.limit).try_acquire_owned() else {
            unreachable!("only this loop takes permits, and it checked one is free");
        };
        let (partition, offset) = (message.partition(), message.offset());
        let generation = self.trackers.entry(partition).or_default().begin(offset);
        let context = Arc::clone(&self.context);
        context.metrics.in_flight.inc();
        tokio::spawn(async move {
            process(&context, message).await;
            context.metrics.in_flight.dec();
            // Free the slot before reporting, so the loop sees it when it wakes.
            drop(permit);
            let _ = done.send((partition, offset, generation));
        });
    }

    fn on_done(&mut self, (partition, offset, generation): Done) {
        let Some(tracker) = self.trackers.get_mut(&partition) else {
            return;
        };
        if let Some(committable) = tracker.complete(offset, generation) {
            if let Err(err) = self.consumer.store_offset(
                &self.context.topics.deliveries(),
                partition,
                committable,
            ) {
                // The partition was revoked: its new owner redelivers from the last commit.
                tracing::debug!(%err, partition, "offset not stored");
            }
        }
    }

    fn commit_assigned(&self) {
        let topic = self.context.topics.deliveries();
        let assigned = self.consumer.assignment().unwrap_or_default();
        let mut list = TopicPartitionList::new();
        for (partition, tracker) in &self.trackers {
            if let (Some(offset), Some(_)) = (
                tracker.committable(),
                assigned.find_partition(&topic, *partition),
            ) {
                let _ = list.add_partition_offset(&topic, *partition, Offset::Offset(offset + 1));
            }
        }
        if list.count() > 0 {
            match self.consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = list.count(), "offsets committed"),
                Err(err) => {
                    tracing::warn!(%err, "final commit failed; those tasks will be delivered again")
                }
            }
        }
    }
}

/// Works one record to a durable end: delivered, dead-lettered, or skipped.
async fn process(context: &Context, message: OwnedMessage) {
    let metrics = &context.metrics;
    let task: DeliveryTask = match message.payload().map(serde_json::from_slice) {
        Some(Ok(task)) => task,
        Some(Err(err)) => {
            metrics.tasks.with_label_values(&["invalid"]).inc();
            tracing::warn!(offset = message.offset(), %err, "unreadable delivery task; sent to the DLQ");
            dead_letter(context, &message, &format!("unreadable task: {err}"), None).await;
            return;
        }
        None => {
            metrics.tasks.with_label_values(&["invalid"]).inc();
            dead_letter(context, &message, "task record has no value", None).await;
            return;
        }
    };
    let Some(subscription) = find_subscription(context, &task.subscription_id).await else {
        metrics.tasks.with_label_values(&["skipped_deleted"]).inc();
        tracing::info!(message_id = %task.message_id, subscription = %task.subscription_id, "subscription deleted; task dropped");
        return;
    };
    if subscription.tenant != task.event.tenant {
        metrics.tasks.with_label_values(&["invalid"]).inc();
        dead_letter(
            context,
            &message,
            "task tenant differs from its subscription's",
            None,
        )
        .await;
        return;
    }
    if !subscription.enabled {
        metrics.tasks.with_label_values(&["dead_lettered"]).inc();
        dead_letter(context, &message, "subscription disabled", None).await;
        return;
    }
    let mut last_error = String::new();
    let mut last_status = None;
    for attempt in 1..=context.retry.max_attempts {
        let (outcome, elapsed) = context.sender.attempt(&subscription, &task).await;
        match outcome {
            Outcome::Delivered { status } => {
                metrics.attempts.with_label_values(&["success"]).inc();
                metrics
                    .attempt_seconds
                    .with_label_values(&["success"])
                    .observe(elapsed.as_secs_f64());
                metrics.tasks.with_label_values(&["delivered"]).inc();
                let since_routed = chrono::Utc::now() - task.routed_at;
                metrics
                    .routed_to_delivered
                    .observe(since_routed.num_microseconds().unwrap_or(0) as f64 / 1e6);
                tracing::debug!(message_id = %task.message_id, status, attempt, "delivered");
                return;
            }
            Outcome::Failed {
                class,
                status,
                detail,
                retry_after,
            } => {
                metrics.attempts.with_label_values(&[class]).inc();
                metrics
                    .attempt_seconds
                    .with_label_values(&[class])
                    .observe(elapsed.as_secs_f64());
                tracing::info!(
                    message_id = %task.message_id,
                    subscription = %task.subscription_id,
                    attempt,
                    %detail,
                    "attempt failed"
                );
                last_error = detail;
                last_status = status;
                if attempt < context.retry.max_attempts {
                    tokio::time::sleep(context.retry.delay(attempt + 1, retry_after)).await;
                }
            }
        }
    }
    metrics.tasks.with_label_values(&["dead_lettered"]).inc();
    let reason = format!(
        "{} attempts failed; last: {last_error}",
        context.retry.max_attempts
    );
    dead_letter(context, &message, &reason, last_status).await;
}

/// The subscription of a task. A miss may be a view lagging behind a new
/// subscription, so the view catches up once before the miss counts as a deletion.
async fn find_subscription(context: &Context, id: &str) -> Option<Arc<Subscription>> {
    if let Some(found) = context.view.get(id) {
        return Some(found);
    }
    if let Err(err) = context.view.catch_up(Duration::from_secs(10)).await {
        tracing::warn!(%err, "subscriptions view lagging");
    }
    context.view.get(id)
}

/// Copies the record to the deliveries DLQ with the reason, retrying until Kafka
/// acknowledges it: only then is the record's work done.
async fn dead_letter(context: &Context, message: &OwnedMessage, reason: &str, status: Option<u16>) {
    let topic = context.topics.deliveries_dlq();
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let status = status.map(|s| s.to_string());
    let failed_at = chrono::Utc::now().to_rfc3339();
    let mut headers = OwnedHeaders::new()
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
        })
        .insert(Header {
            key: "hookline-failed-at",
            value: Some(&failed_at),
        });
    if let Some(status) = &status {
        headers = headers.insert(Header {
            key: "hookline-last-status",
            value: Some(status),
        });
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers.clone());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(payload) = message.payload() {
            record = record.payload(payload);
        }
        match context
            .producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((err, _)) => {
                tracing::error!(%err, "DLQ write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
