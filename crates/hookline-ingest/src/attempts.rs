//! The recent delivery attempts of every subscription, read from `<prefix>attempts`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use hookline_core::telemetry::Readiness;
use hookline_domain::attempt::AttemptRecord;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

/// Attempts kept per subscription.
pub const KEPT_PER_SUBSCRIPTION: usize = 100;

/// Recent attempts by subscription, oldest first.
#[derive(Default)]
pub struct AttemptLog {
    by_subscription: Mutex<HashMap<String, VecDeque<AttemptRecord>>>,
    /// True once the consumer got its (first) assignment.
    assigned: Readiness,
}

impl AttemptLog {
    /// Reads the attempts topic from its beginning in the background.
    pub fn start(args: &KafkaArgs) -> anyhow::Result<Arc<Self>> {
        // A group of its own (this process alone, never committing) is assigned every
        // partition, including ones the topic's metadata did not show yet right after
        // it was created.
        let group = format!(
            "hookline-ingest-attempts-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let consumer: StreamConsumer<kafka::AssignmentContext> = kafka::client_config(
            args,
            "hookline-ingest-attempts",
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                (
                    "topic.metadata.refresh.interval.ms",
                    kafka::GROUP_METADATA_REFRESH_MS,
                ),
            ],
        )
        .create_with_context(kafka::AssignmentContext::new("attempts"))?;
        consumer.subscribe(&[&args.topics().attempts()])?;
        let log = Arc::new(Self {
            assigned: consumer.context().readiness(),
            ..Self::default()
        });
        let filler = Arc::clone(&log);
        tokio::spawn(async move {
            loop {
                let message = kafka::next_record(&consumer, "attempts").await;
                match message
                    .payload()
                    .map(serde_json::from_slice::<AttemptRecord>)
                {
                    Some(Ok(record)) => filler.add(record),
                    _ => tracing::debug!(offset = message.offset(), "unreadable attempt record"),
                }
            }
        });
        Ok(log)
    }

    /// True once the attempts consumer joined its group and reads.
    pub fn assigned(&self) -> Readiness {
        self.assigned.clone()
    }

    fn add(&self, record: AttemptRecord) {
        let mut map = self
            .by_subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let list = map.entry(record.subscription_id.to_string()).or_default();
        list.push_back(record);
        if list.len() > KEPT_PER_SUBSCRIPTION {
            list.pop_front();
        }
    }

    /// Up to `limit` attempts of a subscription, newest first.
    pub fn recent(&self, subscription_id: &str, limit: usize) -> Vec<AttemptRecord> {
        let map = self
            .by_subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(subscription_id)
            .map(|list| list.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }
}
