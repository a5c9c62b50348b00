//! One delivery task, worked to a durable end: delivered, handed to its retry tier,
//! dead-lettered, or dropped because its subscription is gone.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hookline_core::attempt::AttemptRecord;
use hookline_core::breaker::Admission;
use hookline_core::retry::{jittered, RetrySchedule};
use hookline_core::subscription::Subscription;
use hookline_core::task::DeliveryTask;
use hookline_core::topics::Topics;
use hookline_core::view::SubscriptionView;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use rdkafka::message::{Header, Message, OwnedMessage};
use rdkafka::producer::FutureProducer;

use crate::control::{self, produce_durably, produce_json};
use crate::limits::{Breakers, Limits};
use crate::sender::{Outcome, Sender};

/// Delivery metrics.
pub struct Metrics {
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    tasks: IntCounterVec,
    /// Tasks being worked on.
    pub in_flight: IntGauge,
    routed_to_delivered: Histogram,
    disabled: IntCounter,
}

impl Metrics {
    /// Registers the delivery metrics.
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_attempts_total",
                "Delivery attempts, by outcome class.",
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
                "Delivery tasks finished by this worker, by outcome \
                 (delivered, retry_scheduled, dead_lettered, skipped_deleted, invalid).",
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
                3600.0,
            ]),
        )?;
        let disabled = IntCounter::new(
            "hookline_delivery_subscriptions_disabled_total",
            "Subscriptions disabled by the pipeline (410 Gone or failing too long).",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(attempt_seconds.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(routed_to_delivered.clone()))?;
        registry.register(Box::new(disabled.clone()))?;
        Ok(Self {
            attempts,
            attempt_seconds,
            tasks,
            in_flight,
            routed_to_delivered,
            disabled,
        })
    }

    fn task(&self, outcome: &str) {
        self.tasks.with_label_values(&[outcome]).inc();
    }
}

/// What every delivery task shares.
pub struct Context {
    /// Producer for retry tiers, the DLQ, attempts and control writes.
    pub producer: FutureProducer,
    /// Subscriptions view (URL, secret, enabled, limits).
    pub view: Arc<SubscriptionView>,
    /// HTTP sender.
    pub sender: Sender,
    /// Topic names.
    pub topics: Topics,
    /// Retry schedule.
    pub schedule: RetrySchedule,
    /// A subscription failing this long without a success is disabled.
    pub disable_after: Duration,
    /// Per-subscription limits.
    pub limits: Limits,
    /// Per-endpoint circuit breakers.
    pub breakers: Breakers,
    /// Metrics.
    pub metrics: Metrics,
}

impl Context {
    /// Counts a subscription disabled by the pipeline.
    pub fn metrics_disabled(&self) {
        self.metrics.disabled.inc();
    }
}

/// How a failed attempt waits for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPath {
    /// Hand the task to its retry tier and finish (the default: never blocks).
    Tier,
    /// Run from a subscription's lane: when the subscription is ordered, wait and retry
    /// here, holding the lane (nothing behind the task is delivered before it);
    /// otherwise as `Tier`.
    Lane,
}

/// What one attempt (or skipped attempt) leads to.
enum Next {
    Done,
    RetryAfter(Duration, String),
}

/// Works one record to a durable end.
pub async fn process(context: &Context, message: OwnedMessage, path: RetryPath) {
    let task: DeliveryTask = match message.payload().map(serde_json::from_slice) {
        Some(Ok(task)) => task,
        Some(Err(err)) => {
            context.metrics.task("invalid");
            tracing::warn!(topic = message.topic(), offset = message.offset(), %err, "unreadable delivery task");
            dead_letter(context, &message, &format!("unreadable task: {err}"), None).await;
            return;
        }
        None => {
            context.metrics.task("invalid");
            dead_letter(context, &message, "task record has no value", None).await;
            return;
        }
    };
    let Some(subscription) = find_subscription(context, &task.subscription_id).await else {
        context.metrics.task("skipped_deleted");
        tracing::info!(message_id = %task.message_id, subscription = %task.subscription_id, "subscription deleted; task dropped");
        return;
    };
    if subscription.tenant != task.event.tenant {
        context.metrics.task("invalid");
        dead_letter(
            context,
            &message,
            "task tenant differs from its subscription's",
            None,
        )
        .await;
        return;
    }
    let mut task = task;
    loop {
        // Re-read each round: an in-place retry may outlive a subscription change.
        let subscription = context
            .view
            .get(&subscription.id)
            .unwrap_or_else(|| Arc::clone(&subscription));
        if !subscription.enabled {
            context.metrics.task("dead_lettered");
            dead_letter(context, &message, "subscription disabled", None).await;
            return;
        }
        let next = attempt_once(context, &message, &subscription, &mut task).await;
        let Next::RetryAfter(delay, error) = next else {
            return;
        };
        if path == RetryPath::Lane && subscription.ordered {
            tokio::time::sleep(delay).await;
        } else {
            reschedule(context, &subscription, task, delay, error).await;
            return;
        }
    }
}

/// One attempt at `task` (or its skip while the endpoint's circuit is open), with
/// everything that follows from its outcome except the wait before a retry.
async fn attempt_once(
    context: &Context,
    message: &OwnedMessage,
    subscription: &Subscription,
    task: &mut DeliveryTask,
) -> Next {
    let _slot = context.limits.acquire(subscription).await;
    let endpoint = Breakers::endpoint(&subscription.url);
    let started_at = Utc::now();
    let (outcome, elapsed) = match context.breakers.admit(&endpoint) {
        Admission::Reject => {
            // Skipped, not attempted: the task keeps its attempt count.
            context
                .metrics
                .attempts
                .with_label_values(&["circuit_open"])
                .inc();
            let wait = context.breakers.remaining_cooldown(&endpoint);
            return Next::RetryAfter(wait.max(Duration::from_millis(100)), "circuit open".into());
        }
        Admission::Allow | Admission::Probe => {
            let (outcome, elapsed) = context.sender.attempt(subscription, task).await;
            context
                .breakers
                .record(&endpoint, matches!(outcome, Outcome::Delivered { .. }));
            (outcome, elapsed)
        }
    };
    let attempt = task.attempts + 1;
    let class = outcome.class();
    context.metrics.attempts.with_label_values(&[class]).inc();
    context
        .metrics
        .attempt_seconds
        .with_label_values(&[class])
        .observe(elapsed.as_secs_f64());
    record_attempt(context, task, attempt, &outcome, elapsed, started_at).await;

    match outcome {
        Outcome::Delivered { status, .. } => {
            context.metrics.task("delivered");
            let since_routed = (Utc::now() - task.routed_at)
                .num_microseconds()
                .unwrap_or(0);
            context
                .metrics
                .routed_to_delivered
                .observe(since_routed as f64 / 1e6);
            tracing::debug!(message_id = %task.message_id, status, attempt, "delivered");
            control::mark_healthy(context, subscription).await;
            Next::Done
        }
        Outcome::Failed {
            status: Some(410), ..
        } => {
            control::disable(context, subscription, "endpoint answered 410 Gone").await;
            context.metrics.task("dead_lettered");
            dead_letter(
                context,
                message,
                "subscription disabled: endpoint answered 410 Gone",
                Some(410),
            )
            .await;
            Next::Done
        }
        Outcome::Failed {
            status,
            detail,
            retry_after,
            ..
        } => {
            tracing::info!(message_id = %task.message_id, subscription = %subscription.id, attempt, %detail, "attempt failed");
            let now = Utc::now();
            let failing_for = subscription.failing_since.map_or(Duration::ZERO, |since| {
                (now - since).to_std().unwrap_or_default()
            });
            if subscription.failing_since.is_some() && failing_for >= context.disable_after {
                let reason = format!(
                    "endpoint failing for {}s without a success",
                    failing_for.as_secs()
                );
                control::disable(context, subscription, &reason).await;
                context.metrics.task("dead_lettered");
                dead_letter(
                    context,
                    message,
                    &format!("subscription disabled: {reason}; last: {detail}"),
                    status,
                )
                .await;
                return Next::Done;
            }
            control::mark_failing(context, subscription, now).await;
            task.attempts = attempt;
            match context.schedule.delay_after(attempt) {
                Some(delay) => {
                    // 429 and 503 may say when to come back; the schedule bounds it.
                    let delay = match (status, retry_after) {
                        (Some(429 | 503), Some(hint)) => context.schedule.clamp(hint),
                        _ => jittered(delay),
                    };
                    Next::RetryAfter(delay, detail)
                }
                None => {
                    context.metrics.task("dead_lettered");
                    let reason = format!("{attempt} attempts failed; last: {detail}");
                    dead_letter(context, message, &reason, status).await;
                    Next::Done
                }
            }
        }
    }
}

/// Hands the task to the retry tier for `delay`, due after `delay`.
async fn reschedule(
    context: &Context,
    subscription: &Subscription,
    mut task: DeliveryTask,
    delay: Duration,
    error: String,
) {
    let tier = context.schedule.tier_for(delay);
    task.not_before = Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
    task.last_error = Some(error);
    let topic = context.topics.deliveries_retry(tier);
    if produce_json(&context.producer, &topic, &subscription.id, &task).await {
        context.metrics.task("retry_scheduled");
    }
}

async fn record_attempt(
    context: &Context,
    task: &DeliveryTask,
    attempt: u32,
    outcome: &Outcome,
    elapsed: Duration,
    at: chrono::DateTime<Utc>,
) {
    let (status, error, body) = match outcome {
        Outcome::Delivered { status, body } => (Some(*status), None, Some(body.clone())),
        Outcome::Failed {
            status,
            detail,
            body,
            ..
        } => (*status, Some(detail.clone()), body.clone()),
    };
    let record = AttemptRecord {
        message_id: task.message_id.clone(),
        subscription_id: task.subscription_id.clone(),
        event_id: task.event.id.clone(),
        event_type: task.event.event_type.clone(),
        attempt,
        outcome: outcome.class().to_owned(),
        status,
        error,
        response_body: body.filter(|b| !b.is_empty()),
        duration_ms: elapsed.as_millis() as u64,
        at,
    };
    let topic = context.topics.attempts();
    produce_json(&context.producer, &topic, &task.subscription_id, &record).await;
}

/// The subscription of a task. A miss may be a view lagging behind a new
/// subscription, so the view catches up once before the miss counts as a deletion.
pub async fn find_subscription(context: &Context, id: &str) -> Option<Arc<Subscription>> {
    if let Some(found) = context.view.get(id) {
        return Some(found);
    }
    if let Err(err) = context.view.catch_up(Duration::from_secs(10)).await {
        tracing::warn!(%err, "subscriptions view lagging");
    }
    context.view.get(id)
}

/// Copies the record to the deliveries DLQ with the reason; done once acknowledged.
async fn dead_letter(context: &Context, message: &OwnedMessage, reason: &str, status: Option<u16>) {
    let status = status.map(|s| s.to_string());
    let failed_at = Utc::now().to_rfc3339();
    let mut headers = hookline_core::kafka::dead_letter_headers(message, reason).insert(Header {
        key: "hookline-failed-at",
        value: Some(&failed_at),
    });
    if let Some(status) = &status {
        headers = headers.insert(Header {
            key: "hookline-last-status",
            value: Some(status),
        });
    }
    tracing::warn!(
        topic = message.topic(),
        offset = message.offset(),
        reason,
        "task dead-lettered"
    );
    produce_durably(
        &context.producer,
        &context.topics.deliveries_dlq(),
        message.key().unwrap_or_default(),
        message.payload(),
        Some(headers),
    )
    .await;
}

/// When a held retry record falls due.
pub fn due_in(task: &DeliveryTask) -> Duration {
    task.not_before
        .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
        .unwrap_or_default()
}
