//! The recent delivery attempts of every subscription, read from `<prefix>attempts`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline_core::attempt::AttemptRecord;
use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Attempts kept per subscription.
pub const KEPT_PER_SUBSCRIPTION: usize = 100;

/// Recent attempts by subscription, oldest first.
#[derive(Default)]
pub struct AttemptLog {
    by_subscription: Mutex<HashMap<String, VecDeque<AttemptRecord>>>,
}

impl AttemptLog {
    /// Reads the attempts topic from its beginning in the background.
    pub fn start(args: &KafkaArgs) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, "hookline-ingest-attempts")?;
        let topic = args.topics().attempts();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut assignment = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                assignment.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment)?;
        let log = Arc::new(Self::default());
        let filler = Arc::clone(&log);
        tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(message) => match message
                        .payload()
                        .map(serde_json::from_slice::<AttemptRecord>)
                    {
                        Some(Ok(record)) => filler.add(record),
                        _ => {
                            tracing::debug!(offset = message.offset(), "unreadable attempt record")
                        }
                    },
                    Err(err) => {
                        tracing::warn!(%err, "attempts topic read failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(log)
    }

    fn add(&self, record: AttemptRecord) {
        let mut map = self
            .by_subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let list = map.entry(record.subscription_id.clone()).or_default();
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
