//! One delivery task, worked to a durable end: delivered, handed to its retry tier,
//! dead-lettered, or dropped because a caught-up view shows its subscription deleted.
//! What follows from an attempt is decided by the pure
//! [`decide`](hookline_domain::decision::decide); this module carries out its effects.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use hookline_core::topics::Topics;
use hookline_core::trace;
use hookline_core::view::SubscriptionView;
use hookline_domain::attempt::{AttemptOutcome, AttemptRecord, TaskOutcome};
use hookline_domain::backoff::Backoff;
use hookline_domain::breaker::Admission;
use hookline_domain::decision::{decide, AttemptResult, Circumstances, Decision};
use hookline_domain::retry::{tier_name, DueClock, OpenCircuit, RetrySchedule, Wait};
use hookline_domain::subscription::Subscription;
use hookline_domain::task::DeliveryTask;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use tracing::Instrument as _;

use crate::control::HealthWriter;
use crate::limits::{Breakers, Limits, Slot};
use crate::sender::{Outcome, Sender};
use hookline_core::produce::{produce_durably, produce_json, OutRecord, RenewingProducer};
use hookline_core::progress::Progress;

/// Delivery metrics.
pub struct Metrics {
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    tasks: IntCounterVec,
    /// Tasks being worked on.
    pub in_flight: IntGauge,
    routed_to_delivered: Histogram,
    view_lagging: IntCounter,
    stages: HistogramVec,
    end_to_end: HistogramVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    tenant_attempts: IntCounterVec,
    /// Which tenants get a label of their own in `tenant_attempts`.
    tenants: hookline_core::telemetry::BoundedLabel,
}

impl Metrics {
    /// Registers the delivery metrics; at most `tenant_labels` tenants get a label of
    /// their own in `hookline_delivery_tenant_attempts_total` (0: none, the metric
    /// stays empty).
    pub fn register(registry: &Registry, tenant_labels: usize) -> anyhow::Result<Self> {
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
        let view_lagging = IntCounter::new(
            "hookline_delivery_view_lagging_total",
            "Tasks held because the subscriptions view could not confirm it was caught up \
             (a missing subscription counts as deleted only in a caught-up view).",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(attempt_seconds.clone()))?;
        registry.register(Box::new(tasks.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(routed_to_delivered.clone()))?;
        registry.register(Box::new(view_lagging.clone()))?;
        let stages = hookline_core::telemetry::stage_histogram(
            registry,
            "hookline_delivery_stage_duration_seconds",
            "Duration of delivery's stages for tasks fresh from the router: routed_to_fetched \
             (the router writing the task, through its transaction's commit, to this worker \
             reading it), fetched_to_response (read, to the endpoint's answer: waiting for a \
             slot, signing, the request) and response_to_recorded (the answer, to the \
             attempt record and its follow-up acknowledged by Kafka; the offset is stored \
             right after).",
        )?;
        let end_to_end = HistogramVec::new(
            HistogramOpts::new(
                "hookline_delivery_end_to_end_seconds",
                "Time from an event's acceptance (the timestamp of its record on the events \
                 topic, written by ingest when it accepted it) to a 2xx from the endpoint, \
                 by attempt: first (delivered on its first attempt) or retry.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                3600.0, 7200.0, 18000.0, 43200.0, 86400.0, 172800.0, 432000.0,
            ]),
            &["attempt"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_retries_scheduled_total",
                "Tasks handed to a retry tier, by tier (its delay, as in the topic name) \
                 and kind: retry (after a failed attempt, or an open circuit) or deferred \
                 (not attempted: the endpoint stalled).",
            ),
            &["tier", "kind"],
        )?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_dead_lettered_total",
                "Tasks written to the deliveries DLQ, by reason: attempts_exhausted, gone \
                 (410, the subscription is disabled), failing_too_long (disabled), \
                 subscription_disabled, tenant_mismatch, invalid_task.",
            ),
            &["reason"],
        )?;
        let tenant_attempts = IntCounterVec::new(
            Opts::new(
                "hookline_delivery_tenant_attempts_total",
                "Delivery attempts by tenant and outcome class; only with \
                 HOOKLINE_METRICS_TENANT_LABELS above 0, for at most that many tenants \
                 (the others as tenant=\"_other\").",
            ),
            &["tenant", "outcome"],
        )?;
        registry.register(Box::new(end_to_end.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(dead_lettered.clone()))?;
        registry.register(Box::new(tenant_attempts.clone()))?;
        Ok(Self {
            end_to_end,
            retries,
            dead_lettered,
            tenant_attempts,
            tenants: hookline_core::telemetry::BoundedLabel::new(tenant_labels),
            stages,
            attempts,
            attempt_seconds,
            tasks,
            in_flight,
            routed_to_delivered,
            view_lagging,
        })
    }

    fn task(&self, outcome: TaskOutcome) {
        self.tasks.with_label_values(&[outcome.as_str()]).inc();
    }

    fn stage(&self, stage: &str, seconds: f64) {
        self.stages.with_label_values(&[stage]).observe(seconds);
    }

    fn attempt(&self, outcome: AttemptOutcome, tenant: &str) {
        self.attempts.with_label_values(&[outcome.as_str()]).inc();
        if let Some(tenant) = self.tenants.label(tenant) {
            self.tenant_attempts
                .with_label_values(&[&tenant, outcome.as_str()])
                .inc();
        }
    }

    fn dead_lettered(&self, reason: DlqReason) {
        self.dead_lettered
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

/// What every delivery task shares.
pub struct Context {
    /// Producer for retry tiers, the DLQ, attempts and health writes.
    pub producer: RenewingProducer,
    /// Attempt, retry and dead-letter writes taken on and acknowledged, for `/readyz`.
    pub progress: Progress,
    /// Subscriptions view (URL, secret, enabled, limits, health).
    pub view: Arc<SubscriptionView>,
    /// How long one catch-up of the view may take before the task is held and the
    /// catch-up tried again.
    pub view_patience: Duration,
    /// A view not confirmed caught up for this long is caught up before an attempt:
    /// the bound on how long a deleted or changed subscription can still be acted on.
    pub view_max_staleness: Duration,
    /// HTTP sender.
    pub sender: Sender,
    /// Topic names.
    pub topics: Topics,
    /// Retry schedule.
    pub schedule: RetrySchedule,
    /// Due times handed out per retry tier, never decreasing.
    pub due_clock: Mutex<DueClock>,
    /// A subscription failing this long without a success is disabled.
    pub disable_after: Duration,
    /// Per-subscription limits.
    pub limits: Limits,
    /// Per-endpoint circuit breakers.
    pub breakers: Breakers,
    /// Subscription health writes.
    pub health: HealthWriter,
    /// Metrics.
    pub metrics: Metrics,
}

/// How a failed attempt waits for the next one.
#[derive(Clone, Copy)]
pub enum RetryPath<'a> {
    /// Hand the task to its retry tier and finish (the default: never blocks).
    Tier,
    /// Run from a subscription's lane: when the subscription is ordered, wait and retry
    /// here, holding the lane (nothing behind the task is delivered before it), for as
    /// long as `still_owned` says the task's partition is still this worker's;
    /// otherwise as `Tier`.
    Lane {
        /// Whether the task's partition is still assigned to this worker.
        still_owned: &'a (dyn Fn() -> bool + Sync),
    },
}

/// A record of the deliveries topic or a retry tier, its task read once.
pub struct TaskRecord {
    /// The record.
    pub message: OwnedMessage,
    /// Its task, or why it could not be read.
    pub task: Result<DeliveryTask, String>,
    /// When the worker read it from Kafka.
    pub fetched: Instant,
}

impl TaskRecord {
    /// Reads the task of `message`.
    pub fn read(message: OwnedMessage) -> Self {
        let task = match message
            .payload()
            .map(serde_json::from_slice::<DeliveryTask>)
        {
            Some(Ok(task)) => Ok(task),
            Some(Err(err)) => Err(format!("unreadable task: {err}")),
            None => Err("task record has no value".to_owned()),
        };
        Self {
            message,
            task,
            fetched: Instant::now(),
        }
    }

    /// How long until the task is due (zero when it is, or cannot be read).
    pub fn due_in(&self) -> Duration {
        self.task.as_ref().map_or(Duration::ZERO, due_in)
    }
}

/// Works one record to a durable end.
pub async fn process(context: &Context, record: TaskRecord, path: RetryPath<'_>) {
    let TaskRecord {
        message,
        task,
        fetched,
    } = record;
    let task = match task {
        Ok(task) => task,
        Err(reason) => {
            context.metrics.task(TaskOutcome::Invalid);
            tracing::warn!(topic = message.topic(), offset = message.offset(), %reason, "unreadable delivery task");
            dead_letter(context, &message, &reason, None, DlqReason::InvalidTask).await;
            return;
        }
    };
    let mut task = task;
    // Stages are observed for tasks fresh from the router, on their first attempt here.
    let mut timing = (task.attempts == 0 && task.not_before.is_none()).then(|| {
        let routed = (Utc::now() - task.routed_at)
            .num_microseconds()
            .unwrap_or(0);
        context
            .metrics
            .stage("routed_to_fetched", routed.max(0) as f64 / 1e6);
        Timing {
            fetched,
            answered: None,
        }
    });
    // The task record's context (the router's span): every attempt at the task, here
    // or from a retry tier, is a span of that trace.
    let parent = trace::enabled().then(|| trace::extract_kafka(message.headers()));
    loop {
        let span = attempt_span(parent.as_ref(), &task);
        let step = attempt_once(context, &message, &mut task, timing.as_mut())
            .instrument(span)
            .await;
        if let Some(Timing {
            fetched,
            answered: Some(answered),
        }) = timing.take()
        {
            let metrics = &context.metrics;
            metrics.stage("fetched_to_response", (answered - fetched).as_secs_f64());
            metrics.stage("response_to_recorded", answered.elapsed().as_secs_f64());
        }
        let (wait, error, ordered) = match step {
            Step::Finished => return,
            Step::Deleted => return skip_deleted(context, &task).await,
            Step::Retry {
                wait,
                error,
                ordered,
            } => (wait, error, ordered),
        };
        match path {
            RetryPath::Lane { still_owned } if ordered => {
                tokio::time::sleep(wait.delay()).await;
                if !still_owned() {
                    // Revoked meanwhile: the new owner delivers it from the last commit.
                    return;
                }
            }
            _ => {
                let trace = trace::copy_trace_headers(&message, OwnedHeaders::new());
                reschedule(context, task, wait, error, trace).await;
                return;
            }
        }
    }
}

/// The span of one attempt at `task`, a child of `parent` (none while traces are off).
/// Its outcome and HTTP status are recorded by [`call_endpoint`].
fn attempt_span(parent: Option<&trace::Context>, task: &DeliveryTask) -> tracing::Span {
    let Some(parent) = parent else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        parent: None,
        "delivery attempt",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        event_id = %task.event.id,
        event_type = %task.event.event_type,
        tenant = %task.event.tenant,
        subscription_id = %task.subscription_id,
        webhook_id = %task.message_id,
        attempt = task.attempts + 1,
        outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    trace::continue_with(&span, parent);
    span
}

/// When a fresh task was read, and when its first attempt was answered.
struct Timing {
    fetched: Instant,
    answered: Option<Instant>,
}

/// How one attempt ended for the task.
enum Step {
    /// Durably done: delivered, dead-lettered, or its subscription disabled.
    Finished,
    /// A caught-up view shows the subscription deleted.
    Deleted,
    /// To be tried again after `wait` (in place when the subscription is `ordered`).
    Retry {
        wait: Wait,
        error: String,
        ordered: bool,
    },
}

/// Drops a task whose subscription a caught-up view shows deleted.
async fn skip_deleted(context: &Context, task: &DeliveryTask) {
    context.metrics.task(TaskOutcome::SkippedDeleted);
    tracing::info!(event_id = %task.event.id, message_id = %task.message_id, subscription = %task.subscription_id, "subscription deleted; task dropped");
    let id = &task.subscription_id;
    context
        .health
        .forget(id, context.view.health_of(id).is_some())
        .await;
}

/// Why a task is not attempted: its subscription is deleted, or it is refused (and
/// dead-lettered by [`not_attempted`]).
enum NotActive {
    /// A caught-up view shows the subscription deleted.
    Deleted,
    /// The subscription is disabled, or belongs to another tenant than the task.
    Refused {
        outcome: TaskOutcome,
        reason: &'static str,
        class: DlqReason,
    },
}

/// The subscription of `task` as a fresh view shows it, if it still receives
/// deliveries. Writes nothing: the caller carries out a refusal with
/// [`not_attempted`], outside any concurrency slot.
async fn active_subscription(
    context: &Context,
    task: &DeliveryTask,
) -> Result<Arc<Subscription>, NotActive> {
    let subscription = find_subscription(context, &task.subscription_id)
        .await
        .ok_or(NotActive::Deleted)?;
    if subscription.tenant() != task.event.tenant {
        return Err(NotActive::Refused {
            outcome: TaskOutcome::Invalid,
            reason: "task tenant differs from its subscription's",
            class: DlqReason::TenantMismatch,
        });
    }
    if !subscription.is_active() {
        return Err(NotActive::Refused {
            outcome: TaskOutcome::DeadLettered,
            reason: "subscription disabled",
            class: DlqReason::SubscriptionDisabled,
        });
    }
    Ok(subscription)
}

/// Ends a task that is not attempted: a refused one is dead-lettered (done once
/// acknowledged), a deleted one is left to the caller to drop.
async fn not_attempted(context: &Context, message: &OwnedMessage, why: NotActive) -> Step {
    match why {
        NotActive::Deleted => Step::Deleted,
        NotActive::Refused {
            outcome,
            reason,
            class,
        } => {
            context.metrics.task(outcome);
            dead_letter(context, message, reason, None, class).await;
            Step::Finished
        }
    }
}

/// One attempt at `task` (or its skip while the endpoint's circuit is open), with
/// every effect of its outcome but the wait before a retry, which it returns.
async fn attempt_once(
    context: &Context,
    message: &OwnedMessage,
    task: &mut DeliveryTask,
    timing: Option<&mut Timing>,
) -> Step {
    let queued = match active_subscription(context, task).await {
        Ok(subscription) => subscription,
        Err(why) => return not_attempted(context, message, why).await,
    };
    // The slot bounds requests in flight to the endpoint, nothing else: it is released
    // as soon as the answer (or the timeout, or the error) is in, before the attempt
    // record, the health write and any retry or dead letter. Those still end before
    // `process` returns, and only then does the worker store the record's offset
    // (at-least-once); an ordered lane waits for them too before its next request.
    // Admission waits for the slot, so tasks queued behind it see a circuit opened
    // meanwhile.
    // Ordered tasks wait their turn whatever it takes; others do not wait behind a
    // stalled endpoint, which would hold their partition back for everyone.
    let ordered = queued.ordered();
    let slot = match context.limits.acquire(&queued, !ordered).await {
        Ok(slot) => slot,
        Err(stalled) => {
            return Step::Retry {
                wait: Wait::Deferred(stalled),
                error: format!(
                    "deferred: the endpoint stalled (every concurrency slot taken, no \
                     answer for {} s); not attempted",
                    stalled.as_secs()
                ),
                ordered: false,
            }
        }
    };
    // The wait for the slot may have outlived a deletion, a disable or a new URL: the
    // request goes out only as the view shows the subscription now.
    let subscription = match active_subscription(context, task).await {
        Ok(subscription) => subscription,
        Err(why) => {
            // No request goes out: the slot is free before the dead letter is written.
            drop(slot);
            return not_attempted(context, message, why).await;
        }
    };
    let result = call_endpoint(context, &subscription, task, slot, timing).await;
    let failed = matches!(result, AttemptResult::Failed { .. });
    let now = Utc::now();
    let circumstances = Circumstances {
        attempts_before: task.attempts,
        failing_since: context.health.failing_since(&subscription),
        disable_after: context.disable_after,
        schedule: &context.schedule,
        now,
    };
    let decision = decide(result, circumstances);
    carry_out(context, message, &subscription, task, decision, failed, now).await
}

/// One request to the endpoint, unless its circuit is open; records the attempt
/// (metrics, attempt record) and releases `slot` as soon as the answer is in (noted in
/// `timing`).
async fn call_endpoint(
    context: &Context,
    subscription: &Subscription,
    task: &DeliveryTask,
    slot: Slot,
    timing: Option<&mut Timing>,
) -> AttemptResult {
    let endpoint = Breakers::endpoint(subscription.url().as_str());
    if context.breakers.admit(&endpoint) == Admission::Reject {
        drop(slot);
        context
            .metrics
            .attempt(AttemptOutcome::CircuitOpen, &task.event.tenant);
        tracing::Span::current().record("outcome", AttemptOutcome::CircuitOpen.as_str());
        let floor = Duration::from_millis(100);
        let circuit = context
            .breakers
            .open_circuit(&endpoint)
            .unwrap_or(OpenCircuit::new(floor, floor));
        return AttemptResult::CircuitOpen(OpenCircuit::new(
            circuit.remaining.max(floor),
            circuit.period.max(floor),
        ));
    }
    let started_at = Utc::now();
    let (outcome, elapsed) = context.sender.attempt(subscription, task).await;
    if let Some(timing) = timing {
        timing.answered = Some(Instant::now());
    }
    let delivered = matches!(outcome, Outcome::Delivered { .. });
    context.breakers.record(&endpoint, delivered);
    if outcome.answered() {
        slot.answered();
    } else {
        drop(slot);
    }
    let class = outcome.class();
    record_outcome(&tracing::Span::current(), &outcome);
    context.metrics.attempt(class, &task.event.tenant);
    context
        .metrics
        .attempt_seconds
        .with_label_values(&[class.as_str()])
        .observe(elapsed.as_secs_f64());
    record_attempt(context, task, &outcome, elapsed, started_at).await;
    match outcome {
        Outcome::Delivered { .. } => AttemptResult::Delivered,
        Outcome::Failed {
            status,
            detail,
            retry_after,
            ..
        } => AttemptResult::Failed {
            status,
            detail,
            retry_after,
        },
    }
}

/// Notes how an attempt ended on its span.
fn record_outcome(span: &tracing::Span, outcome: &Outcome) {
    if span.is_disabled() {
        return;
    }
    span.record("outcome", outcome.class().as_str());
    let status = match outcome {
        Outcome::Delivered { status, .. } => Some(*status),
        Outcome::Failed { status, .. } => *status,
    };
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if !matches!(outcome, Outcome::Delivered { .. }) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Carries out `decision`'s effects: health, metrics, dead letter; a retry is returned
/// for the caller to schedule.
async fn carry_out(
    context: &Context,
    message: &OwnedMessage,
    subscription: &Subscription,
    task: &mut DeliveryTask,
    decision: Decision,
    failed: bool,
    now: chrono::DateTime<Utc>,
) -> Step {
    match decision {
        Decision::Delivered => {
            context.metrics.task(TaskOutcome::Delivered);
            let since_routed = (now - task.routed_at).num_microseconds().unwrap_or(0);
            context
                .metrics
                .routed_to_delivered
                .observe(since_routed as f64 / 1e6);
            if let Some(accepted_at) = task.accepted_at {
                let since = (now - accepted_at).num_microseconds().unwrap_or(0).max(0);
                let attempt = if task.attempts == 0 { "first" } else { "retry" };
                context
                    .metrics
                    .end_to_end
                    .with_label_values(&[attempt])
                    .observe(since as f64 / 1e6);
            }
            tracing::debug!(event_id = %task.event.id, message_id = %task.message_id, subscription = %task.subscription_id, attempt = task.attempts + 1, "delivered");
            context.health.mark_healthy(subscription).await;
            Step::Finished
        }
        Decision::Disable {
            reason,
            dead_letter: why,
            status,
        } => {
            context.health.disable(subscription, &reason).await;
            context.metrics.task(TaskOutcome::DeadLettered);
            let class = if status == Some(410) {
                DlqReason::Gone
            } else {
                DlqReason::FailingTooLong
            };
            dead_letter(context, message, &why, status, class).await;
            Step::Finished
        }
        Decision::DeadLetter { reason, status } => {
            context.health.mark_failing(subscription, now).await;
            context.metrics.task(TaskOutcome::DeadLettered);
            dead_letter(
                context,
                message,
                &reason,
                status,
                DlqReason::AttemptsExhausted,
            )
            .await;
            Step::Finished
        }
        Decision::Retry {
            wait,
            attempts,
            error,
        } => {
            if failed {
                tracing::info!(event_id = %task.event.id, message_id = %task.message_id, subscription = %subscription.id(), attempt = attempts, %error, "attempt failed");
                context.health.mark_failing(subscription, now).await;
            }
            task.attempts = attempts;
            Step::Retry {
                wait,
                error,
                ordered: subscription.ordered(),
            }
        }
    }
}

/// Hands the task to the retry tier `wait` calls for. The due time is picked and the
/// record enqueued under one lock, so records enter each tier partition in due order.
/// `trace` (the task record's trace headers) goes along, so that the next attempt
/// joins the same trace.
async fn reschedule(
    context: &Context,
    task: DeliveryTask,
    wait: Wait,
    error: String,
    trace: OwnedHeaders,
) {
    context
        .progress
        .track(hand_over(context, task, wait, error, trace))
        .await
}

async fn hand_over(
    context: &Context,
    mut task: DeliveryTask,
    wait: Wait,
    error: String,
    trace: OwnedHeaders,
) {
    task.last_error = Some(error);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut planned_tier;
    loop {
        let enqueued = {
            let mut clock = context.due_clock.lock().unwrap_or_else(|p| p.into_inner());
            let (tier, due) = context.schedule.plan(wait, Utc::now(), &mut clock);
            planned_tier = tier;
            task.not_before = Some(due);
            let payload = match serde_json::to_vec(&task) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::error!(%err, "retry record not serializable; not written");
                    return;
                }
            };
            let topic = context.topics.deliveries_retry(tier);
            let mut record = FutureRecord::<str, [u8]>::to(&topic)
                .key(&task.subscription_id)
                .payload(&payload);
            if rdkafka::message::Headers::count(&trace) > 0 {
                record = record.headers(trace.clone());
            }
            context
                .producer
                .current()
                .send_result(record)
                .map_err(|(err, _)| err)
        };
        let outcome = match enqueued {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => {
                    context.metrics.task(match wait {
                        Wait::Deferred(_) => TaskOutcome::Deferred,
                        _ => TaskOutcome::RetryScheduled,
                    });
                    let kind = match wait {
                        Wait::Deferred(_) => "deferred",
                        _ => "retry",
                    };
                    context
                        .metrics
                        .retries
                        .with_label_values(&[&tier_name(planned_tier), kind])
                        .inc();
                    return;
                }
                Ok(Err((err, _))) => err.to_string(),
                Err(_) => "producer dropped the delivery".to_owned(),
            },
            Err(err) => err.to_string(),
        };
        tracing::error!(error = %outcome, "retry hand-over failed; retrying");
        context.producer.renew_if_fatal();
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn record_attempt(
    context: &Context,
    task: &DeliveryTask,
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
        attempt: task.attempts + 1,
        outcome: outcome.class(),
        status,
        error,
        response_body: body.filter(|b| !b.is_empty()),
        duration_ms: elapsed.as_millis() as u64,
        at,
    };
    let topic = context.topics.attempts();
    let write = produce_json(&context.producer, &topic, &task.subscription_id, &record);
    context.progress.track(write).await;
}

/// The subscription of a task, as a view confirmed caught up within
/// `view_max_staleness` shows it; `None` only when a caught-up view shows it deleted.
/// While the view cannot catch up, the task is held here (counted once in
/// `hookline_delivery_view_lagging_total`) and the catch-up retried with backoff: a
/// lagging view is never taken for a deletion.
pub async fn find_subscription(context: &Context, id: &str) -> Option<Arc<Subscription>> {
    if context.view.staleness() <= context.view_max_staleness {
        if let Some(found) = context.view.get(id) {
            return Some(found);
        }
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut held = false;
    loop {
        match context.view.catch_up(context.view_patience).await {
            Ok(()) => return context.view.get(id),
            Err(err) => {
                if !held {
                    held = true;
                    context.metrics.view_lagging.inc();
                    tracing::warn!(%err, subscription = id, "subscriptions view lagging; task held");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Copies the record to the deliveries DLQ with the reason; done once acknowledged.
async fn dead_letter(
    context: &Context,
    message: &OwnedMessage,
    reason: &str,
    status: Option<u16>,
    class: DlqReason,
) {
    context.metrics.dead_lettered(class);
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
    // The key is the subscription id; the message id is read back from the task when
    // it parses, so that one grep on either finds the dead letter.
    let message_id = message
        .payload()
        .and_then(|p| serde_json::from_slice::<TaskIds>(p).ok());
    tracing::warn!(
        topic = message.topic(),
        offset = message.offset(),
        subscription = message
            .key()
            .map(String::from_utf8_lossy)
            .as_deref()
            .unwrap_or(""),
        message_id = message_id
            .as_ref()
            .map_or("", |ids| ids.message_id.as_str()),
        event_id = message_id.as_ref().map_or("", |ids| ids.event.id.as_str()),
        reason,
        class = class.as_str(),
        "task dead-lettered"
    );
    let record = OutRecord::new(
        context.topics.deliveries_dlq(),
        message.key().unwrap_or_default(),
        message.payload().map(<[u8]>::to_vec),
    )
    .with_headers(headers);
    let write = produce_durably(&context.producer, &record);
    context.progress.track(write).await;
}

/// Why a task was dead-lettered, as a metric label (the record's header carries the
/// full reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqReason {
    /// Every attempt of the schedule failed.
    AttemptsExhausted,
    /// The endpoint answered 410 Gone: the subscription is disabled.
    Gone,
    /// The endpoint failed for `HOOKLINE_DISABLE_AFTER`: the subscription is disabled.
    FailingTooLong,
    /// The subscription was disabled when the task came up.
    SubscriptionDisabled,
    /// The task's tenant is not its subscription's.
    TenantMismatch,
    /// The record is not a delivery task.
    InvalidTask,
}

impl DlqReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Gone => "gone",
            Self::FailingTooLong => "failing_too_long",
            Self::SubscriptionDisabled => "subscription_disabled",
            Self::TenantMismatch => "tenant_mismatch",
            Self::InvalidTask => "invalid_task",
        }
    }
}

/// The ids of a task record, for logs about a record not otherwise parsed here.
#[derive(serde::Deserialize)]
struct TaskIds {
    message_id: String,
    event: TaskEventId,
}

#[derive(serde::Deserialize)]
struct TaskEventId {
    id: String,
}

/// When a held retry record falls due.
pub fn due_in(task: &DeliveryTask) -> Duration {
    task.not_before
        .map(|at| (at - Utc::now()).to_std().unwrap_or_default())
        .unwrap_or_default()
}
