//! Delivery tasks: what the router writes for each (event, matching subscription) and
//! delivery workers consume. Keyed by subscription id, so one subscription's tasks
//! share a partition.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::ids::{self, MessageId, SubscriptionId};

/// One event to deliver to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryTask {
    /// The `webhook-id`: stable for this (event, subscription) pair.
    pub message_id: MessageId,
    /// Target subscription; its URL and secret are looked up at delivery time.
    pub subscription_id: SubscriptionId,
    /// The event.
    pub event: Event,
    /// Attempts already made (0 for a fresh task).
    #[serde(default)]
    pub attempts: u32,
    /// When the router wrote the task.
    pub routed_at: DateTime<Utc>,
    /// When Hookline accepted the event: the timestamp of its record on the events
    /// topic (ingest's write, or a direct producer's). Carried through retries, so
    /// that delivery can measure acceptance to 2xx. Absent on replays and on tasks
    /// written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<DateTime<Utc>>,
    /// Not to be attempted before this time (set on tasks waiting in a retry tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The previous attempt's error, for operators reading retry topics and the DLQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl DeliveryTask {
    /// A fresh task for `event` to `subscription_id`.
    pub fn new(event: Event, subscription_id: &str, routed_at: DateTime<Utc>) -> Self {
        Self {
            message_id: ids::message_id(&event.id, subscription_id),
            subscription_id: SubscriptionId::from(subscription_id),
            event,
            attempts: 0,
            routed_at,
            accepted_at: None,
            not_before: None,
            last_error: None,
        }
    }
}

impl DeliveryTask {
    /// This task, with the time its event was accepted.
    pub fn accepted_at(mut self, accepted_at: Option<DateTime<Utc>>) -> Self {
        self.accepted_at = accepted_at;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Defaults;

    #[test]
    fn message_id_depends_on_event_and_subscription_only() {
        let event = Event::from_json(
            serde_json::json!({"id": "evt_1", "type": "invoice.paid", "tenant": "acme"}),
            Defaults::Fresh,
        )
        .unwrap();
        let a = DeliveryTask::new(event.clone(), "sub_1", Utc::now());
        let b = DeliveryTask::new(event, "sub_1", Utc::now());
        assert_eq!(a.message_id, b.message_id);
        assert_eq!(a.message_id, ids::message_id("evt_1", "sub_1"));
        let bytes = serde_json::to_vec(&a).unwrap();
        assert_eq!(serde_json::from_slice::<DeliveryTask>(&bytes).unwrap(), a);
    }
}
