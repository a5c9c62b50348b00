//! Putting deliveries back into the pipeline: dead-letter redrive and per-subscription
//! replay of the events topic. Both keep `webhook-id`s (they derive from the event and
//! subscription ids), so receivers de-duplicate what they already had.

use chrono::{DateTime, Utc};
use hookline_core::config::KafkaArgs;
use hookline_core::kafka::record_headers;
use hookline_core::produce::OutRecord;
use hookline_core::produce::RenewingProducer;
use hookline_core::scan::scan_topic;
use hookline_core::topics::Topics;
use hookline_domain::cloudevents::CloudEventsConfig;
use hookline_domain::routing::{parse_record, EventRecord};
use hookline_domain::subscription::Subscription;
use hookline_domain::task::DeliveryTask;
use rdkafka::message::Message;
use serde::{Deserialize, Serialize};

/// Which dead letters to redrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Only this subscription's dead letters.
    pub subscription_id: Option<String>,
    /// Only dead letters written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters written at or before this time.
    pub until: Option<DateTime<Utc>>,
}

/// What a redrive or replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Records read.
    pub scanned: u64,
    /// Delivery tasks written back to the deliveries topic.
    pub requeued: u64,
    /// Records that could not be read as tasks or events.
    pub unreadable: u64,
}

/// Re-queues the dead-lettered tasks matching `request` as fresh tasks.
pub async fn redrive(
    args: &KafkaArgs,
    topics: &Topics,
    producer: &RenewingProducer,
    request: RedriveRequest,
) -> anyhow::Result<Report> {
    let scan_args = args.clone();
    let dlq = topics.deliveries_dlq();
    let (mut report, tasks) = tokio::task::spawn_blocking(move || {
        let mut report = Report::default();
        let mut tasks = Vec::new();
        report.scanned = scan_topic(&scan_args, &dlq, request.since, |message| {
            let written = message
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis);
            if request
                .until
                .is_some_and(|until| written.is_some_and(|w| w > until))
            {
                return;
            }
            match message
                .payload()
                .map(serde_json::from_slice::<DeliveryTask>)
            {
                Some(Ok(task)) => {
                    if request
                        .subscription_id
                        .as_ref()
                        .is_none_or(|id| task.subscription_id == id.as_str())
                    {
                        // The dead letter's trace context: the redriven attempts
                        // join the event's trace.
                        tasks.push((task, hookline_core::trace::carried(message)));
                    }
                }
                _ => report.unreadable += 1,
            }
        })?;
        anyhow::Ok((report, tasks))
    })
    .await??;
    let fresh = tasks.into_iter().map(|(mut task, trace)| {
        task.attempts = 0;
        task.not_before = None;
        task.last_error = None;
        (task, trace)
    });
    report.requeued = enqueue(producer, &topics.deliveries(), fresh.collect()).await?;
    Ok(report)
}

/// Routes `subscription`'s events written since `since` again, to it alone.
pub async fn replay(
    args: &KafkaArgs,
    topics: &Topics,
    producer: &RenewingProducer,
    subscription: &Subscription,
    since: DateTime<Utc>,
    cloudevents: &CloudEventsConfig,
) -> anyhow::Result<Report> {
    let cloudevents = cloudevents.clone();
    let scan_args = args.clone();
    let events_topic = topics.events();
    let subscription = subscription.clone();
    let (report, tasks) = tokio::task::spawn_blocking(move || {
        let mut report = Report::default();
        let mut tasks = Vec::new();
        let now = Utc::now();
        report.scanned = scan_topic(&scan_args, &events_topic, Some(since), |message| {
            let headers = record_headers(message);
            let record = EventRecord {
                position: hookline_core::kafka::record_position(message),
                headers: &headers,
                payload: message.payload(),
            };
            match parse_record(record, &cloudevents) {
                Ok(event) if subscription.accepts(&event) => {
                    // A new delivery of an old event: a trace of its own.
                    tasks.push((DeliveryTask::new(event, subscription.id(), now), Vec::new()));
                }
                Ok(_) => {}
                Err(_) => report.unreadable += 1,
            }
        })?;
        anyhow::Ok((report, tasks))
    })
    .await??;
    let requeued = enqueue(producer, &topics.deliveries(), tasks).await?;
    Ok(Report { requeued, ..report })
}

/// Writes tasks to the deliveries topic, keyed by subscription, each with the trace
/// headers it carries; all must be acknowledged.
async fn enqueue(
    producer: &RenewingProducer,
    topic: &str,
    tasks: Vec<(DeliveryTask, Vec<(&'static str, String)>)>,
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
