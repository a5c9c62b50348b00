//! The recent delivery attempts of every subscription, read from `<prefix>attempts`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use hookline_core::telemetry::Readiness;
use hookline_domain::attempt::AttemptRecord;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

/// Attempts kept per subscription.
pub const KEPT_PER_SUBSCRIPTION: usize = 100;

/// Recent attempts by subscription, oldest first.
pub struct AttemptLog {
    by_subscription: Mutex<HashMap<String, VecDeque<AttemptRecord>>>,
    /// True once the consumer got its (first) assignment.
    assigned: Readiness,
    /// Counts the records added, so that a caller can wait for one ([`Self::wait_for`]).
    added: tokio::sync::watch::Sender<u64>,
}

impl Default for AttemptLog {
    fn default() -> Self {
        Self {
            by_subscription: Mutex::default(),
            assigned: Readiness::default(),
            added: tokio::sync::watch::Sender::new(0),
        }
    }
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
        drop(map);
        self.added.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The first attempt at message `message_id` of `subscription_id`, waiting up to
    /// `patience` for it to be read from the attempts topic; `None` if it was not.
    pub async fn wait_for(
        &self,
        subscription_id: &str,
        message_id: &str,
        patience: Duration,
    ) -> Option<AttemptRecord> {
        // Subscribed before looking, so a record added in between is not missed.
        let mut added = self.added.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(found) = self.first_of(subscription_id, message_id) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, added.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    fn first_of(&self, subscription_id: &str, message_id: &str) -> Option<AttemptRecord> {
        let map = self
            .by_subscription
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(subscription_id)?
            .iter()
            .find(|a| a.message_id.as_str() == message_id)
            .cloned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_domain::attempt::AttemptOutcome;

    fn record(message_id: &str, attempt: u32) -> AttemptRecord {
        serde_json::from_value(serde_json::json!({
            "message_id": message_id, "subscription_id": "sub_1", "event_id": "evt_1",
            "event_type": "webhook.test", "attempt": attempt, "outcome": "success",
            "duration_ms": 3, "at": "2026-12-01T00:00:00Z"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_waiter_gets_the_first_attempt_at_its_message_once_it_is_read() {
        let log = Arc::new(AttemptLog::default());
        log.add(record("msg_other", 1));
        let waiter = {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                log.wait_for("sub_1", "msg_a", Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        log.add(record("msg_a", 1));
        log.add(record("msg_a", 2));
        let found = waiter.await.unwrap().expect("the attempt was added");
        assert_eq!(found.message_id.as_str(), "msg_a");
        assert_eq!(found.attempt, 1);
        assert_eq!(found.outcome, AttemptOutcome::Success);
        // Already there: answered at once.
        let again = log.wait_for("sub_1", "msg_a", Duration::ZERO).await;
        assert_eq!(again.map(|a| a.attempt), Some(1));
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_its_patience() {
        let log = AttemptLog::default();
        log.add(record("msg_other", 1));
        assert!(log
            .wait_for("sub_1", "msg_a", Duration::from_millis(20))
            .await
            .is_none());
        assert!(log
            .wait_for("sub_2", "msg_other", Duration::ZERO)
            .await
            .is_none());
    }
}
