//! Putting deliveries back into the pipeline: dead-letter redrive and per-subscription
//! replay of the events topic. Both keep `webhook-id`s (they derive from the event and
//! subscription ids), so receivers de-duplicate what they already had.
//!
//! A scan streams: a blocking thread reads the range and hands matching tasks over a
//! bounded channel to the writer, which re-queues them in chunks (at most
//! `HOOKLINE_JOB_MAX_RATE` a second when set), so memory stays bounded whatever the
//! range, progress is visible as it goes ([`Control`]), and a cancel stops both sides.

use std::num::NonZeroU32;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use governor::{Quota, RateLimiter};
use hookline_core::config::KafkaArgs;
use hookline_core::kafka::record_headers;
use hookline_core::produce::OutRecord;
use hookline_core::produce::RenewingProducer;
use hookline_core::scan::scan_topic_while;
use hookline_core::topics::Topics;
use hookline_domain::cloudevents::CloudEventsConfig;
use hookline_domain::job::JobProgress;
use hookline_domain::routing::{parse_record, EventRecord};
use hookline_domain::subscription::Subscription;
use hookline_domain::task::DeliveryTask;
use rdkafka::message::Message;
use serde::Deserialize;
use tokio::sync::mpsc;

/// Most tasks written to Kafka in one batch (and held in the channel between the
/// scan and the writer).
const CHUNK: usize = 500;

/// Which dead letters to redrive.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Only this subscription's dead letters.
    pub subscription_id: Option<String>,
    /// Only dead letters written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters written at or before this time.
    pub until: Option<DateTime<Utc>>,
}

/// What to put back into the pipeline.
#[derive(Debug, Clone)]
pub enum Work {
    /// `subscription`'s events written since `since`, routed again to it alone.
    Replay {
        /// The subscription, as it is now (its filters decide what matches).
        subscription: Box<Subscription>,
        /// The start of the range.
        since: DateTime<Utc>,
    },
    /// The dead-lettered tasks matching the request, as fresh tasks.
    Redrive(RedriveRequest),
}

/// The trace headers a re-queued task carries (none: a trace of its own).
type Carried = Vec<(&'static str, String)>;

/// The live counters of one scan, and its cancel switch: shared between the scan,
/// the writer and whoever reports on them.
#[derive(Debug, Default)]
pub struct Control {
    cancelled: AtomicBool,
    scanned: AtomicU64,
    requeued: AtomicU64,
    unreadable: AtomicU64,
    total: OnceLock<u64>,
}

impl Control {
    /// Asks the scan and the writer to stop at their next record or chunk.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The counters now.
    pub fn progress(&self) -> JobProgress {
        JobProgress {
            scanned: self.scanned.load(Ordering::Relaxed),
            requeued: self.requeued.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            total: self.total.get().copied(),
        }
    }
}

/// How a scan ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every record of the range read, every matching task re-queued.
    Completed,
    /// Stopped by [`Control::cancel`]: what was re-queued stays re-queued.
    Cancelled,
}

/// What a scan needs: where to read and write, and how fast it may write.
#[derive(Clone)]
pub struct Requeuing {
    /// Kafka settings, for the scan's consumer.
    pub kafka: KafkaArgs,
    /// Topic names.
    pub topics: Topics,
    /// `acks=all` producer of the re-queued tasks.
    pub producer: RenewingProducer,
    /// How CloudEvents records are read (replay).
    pub cloudevents: CloudEventsConfig,
    /// Most tasks re-queued a second (`None`: as fast as Kafka takes them).
    pub max_rate: Option<NonZeroU32>,
}

/// Runs `work` to its end (or its cancel), counting into `control`.
pub async fn run(
    requeuing: &Requeuing,
    work: Work,
    control: Arc<Control>,
) -> anyhow::Result<Finished> {
    let (sender, mut receiver) = mpsc::channel::<(DeliveryTask, Carried)>(CHUNK);
    let scan = {
        let requeuing = requeuing.clone();
        let control = Arc::clone(&control);
        tokio::task::spawn_blocking(move || scan(&requeuing, work, &control, &sender))
    };
    let limiter = requeuing
        .max_rate
        .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
    // A chunk never needs more permits than the limiter's burst (its rate).
    let chunk = requeuing
        .max_rate
        .map_or(CHUNK, |rate| CHUNK.min(rate.get() as usize));
    let topic = requeuing.topics.deliveries();
    let mut tasks = Vec::with_capacity(chunk);
    while !control.is_cancelled() {
        if receiver.recv_many(&mut tasks, chunk).await == 0 {
            break; // the scan is over and everything it found is written
        }
        if let (Some(limiter), Some(n)) = (&limiter, NonZeroU32::new(tasks.len() as u32)) {
            limiter.until_n_ready(n).await?;
        }
        if control.is_cancelled() {
            break;
        }
        let written = enqueue(&requeuing.producer, &topic, std::mem::take(&mut tasks)).await?;
        control.requeued.fetch_add(written, Ordering::Relaxed);
    }
    // Closing the channel stops a scan still running (its next hand-over fails).
    drop(receiver);
    scan.await??;
    Ok(if control.is_cancelled() {
        Finished::Cancelled
    } else {
        Finished::Completed
    })
}

/// [`run`] without a job around it (the `redrive` command): to the end, then the
/// counters.
pub async fn run_to_end(requeuing: &Requeuing, work: Work) -> anyhow::Result<JobProgress> {
    let control = Arc::new(Control::default());
    run(requeuing, work, Arc::clone(&control)).await?;
    Ok(control.progress())
}

/// Reads the range of `work`, handing matching tasks to `sender`; blocking.
fn scan(
    requeuing: &Requeuing,
    work: Work,
    control: &Control,
    sender: &mpsc::Sender<(DeliveryTask, Carried)>,
) -> anyhow::Result<()> {
    let range = |total| {
        let _ = control.total.set(total);
    };
    // Hands a task over; breaks once the writer is gone (cancelled, or failed).
    let hand_over = |task: (DeliveryTask, Carried)| match sender.blocking_send(task) {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    };
    match work {
        Work::Replay {
            subscription,
            since,
        } => {
            let now = Utc::now();
            let cloudevents = &requeuing.cloudevents;
            scan_topic_while(
                &requeuing.kafka,
                &requeuing.topics.events(),
                Some(since),
                range,
                |message| {
                    if control.is_cancelled() {
                        return ControlFlow::Break(());
                    }
                    control.scanned.fetch_add(1, Ordering::Relaxed);
                    let headers = record_headers(message);
                    let record = EventRecord {
                        position: hookline_core::kafka::record_position(message),
                        headers: &headers,
                        payload: message.payload(),
                    };
                    match parse_record(record, cloudevents) {
                        // A new delivery of an old event: a trace of its own.
                        Ok(event) if subscription.accepts(&event) => hand_over((
                            DeliveryTask::new(event, subscription.id(), now),
                            Carried::new(),
                        )),
                        Ok(_) => ControlFlow::Continue(()),
                        Err(_) => {
                            control.unreadable.fetch_add(1, Ordering::Relaxed);
                            ControlFlow::Continue(())
                        }
                    }
                },
            )?;
        }
        Work::Redrive(request) => {
            scan_topic_while(
                &requeuing.kafka,
                &requeuing.topics.deliveries_dlq(),
                request.since,
                range,
                |message| {
                    if control.is_cancelled() {
                        return ControlFlow::Break(());
                    }
                    control.scanned.fetch_add(1, Ordering::Relaxed);
                    let written = message
                        .timestamp()
                        .to_millis()
                        .and_then(DateTime::<Utc>::from_timestamp_millis);
                    if request
                        .until
                        .is_some_and(|until| written.is_some_and(|w| w > until))
                    {
                        return ControlFlow::Continue(());
                    }
                    match message
                        .payload()
                        .map(serde_json::from_slice::<DeliveryTask>)
                    {
                        Some(Ok(task))
                            if request
                                .subscription_id
                                .as_ref()
                                .is_none_or(|id| task.subscription_id == id.as_str()) =>
                        {
                            // The dead letter's trace context: the redriven attempts
                            // join the event's trace.
                            hand_over((fresh(task), hookline_core::trace::carried(message)))
                        }
                        Some(Ok(_)) => ControlFlow::Continue(()),
                        _ => {
                            control.unreadable.fetch_add(1, Ordering::Relaxed);
                            ControlFlow::Continue(())
                        }
                    }
                },
            )?;
        }
    }
    Ok(())
}

/// A dead letter as a new task: attempts from zero, due now, no error.
fn fresh(mut task: DeliveryTask) -> DeliveryTask {
    task.attempts = 0;
    task.not_before = None;
    task.last_error = None;
    task
}

/// Writes tasks to the deliveries topic, keyed by subscription, each with the trace
/// headers it carries; all must be acknowledged.
async fn enqueue(
    producer: &RenewingProducer,
    topic: &str,
    tasks: Vec<(DeliveryTask, Carried)>,
) -> anyhow::Result<u64> {
    let records: Vec<OutRecord> = tasks
        .iter()
        .map(|(task, trace)| {
            OutRecord::json(topic, task.subscription_id.as_str(), task)
                .map(|record| hookline_core::trace::with_carried(record, trace))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let results = producer
        .send_all(&records, std::time::Duration::from_secs(30))
        .await;
    if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
        anyhow::bail!("Kafka did not acknowledge every re-queued task: {err}");
    }
    Ok(results.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_report_what_was_counted_and_the_range_once_known() {
        let control = Control::default();
        assert_eq!(control.progress(), JobProgress::default());
        control.scanned.fetch_add(7, Ordering::Relaxed);
        control.requeued.fetch_add(3, Ordering::Relaxed);
        control.unreadable.fetch_add(1, Ordering::Relaxed);
        let _ = control.total.set(10);
        let _ = control.total.set(99); // the range is told once
        assert_eq!(
            control.progress(),
            JobProgress {
                scanned: 7,
                requeued: 3,
                unreadable: 1,
                total: Some(10)
            }
        );
        assert!(!control.is_cancelled());
        control.cancel();
        assert!(control.is_cancelled());
    }
}
