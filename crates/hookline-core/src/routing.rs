//! Routing one record: parse it as an event, find the matching subscriptions, and
//! make one delivery task per match. Pure, so the router and replay share it.

use chrono::{DateTime, Utc};

use crate::event::{Defaults, Event, FieldError};
use crate::matching::SubscriptionIndex;
use crate::task::DeliveryTask;

/// Where a record sits on its topic.
#[derive(Debug, Clone, Copy)]
pub struct RecordPosition<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, if any.
    pub timestamp: Option<DateTime<Utc>>,
}

/// Parses the record's value as an event and returns it with one task per matching,
/// enabled subscription of its tenant (possibly none).
pub fn route_record(
    position: RecordPosition<'_>,
    payload: Option<&[u8]>,
    index: &SubscriptionIndex,
    now: DateTime<Utc>,
) -> Result<(Event, Vec<DeliveryTask>), FieldError> {
    let payload = payload.ok_or_else(|| FieldError::new("$", "record has no value"))?;
    let event = Event::from_record_value(
        payload,
        Defaults::Record {
            topic: position.topic,
            partition: position.partition,
            offset: position.offset,
            timestamp: position.timestamp,
        },
    )?;
    let tasks = index
        .matching(&event.tenant, &event.event_type)
        .iter()
        .map(|sub| DeliveryTask::new(event.clone(), &sub.id, now))
        .collect();
    Ok((event, tasks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::WebhookSecret;
    use crate::subscription::{EventTypePattern, Subscription};

    fn index() -> SubscriptionIndex {
        let mut index = SubscriptionIndex::new();
        for (id, pattern) in [("sub_a", "invoice.*"), ("sub_b", "payment.succeeded")] {
            index.upsert(Subscription {
                id: id.into(),
                tenant: "acme".into(),
                url: "https://erp.example/hooks".into(),
                event_types: vec![EventTypePattern::parse(pattern).unwrap()],
                enabled: true,
                description: None,
                secret: WebhookSecret::generate(),
                max_in_flight: None,
                rate_limit: None,
                failing_since: None,
                disabled_reason: None,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            });
        }
        index
    }

    const AT: RecordPosition<'static> = RecordPosition {
        topic: "hookline.events",
        partition: 0,
        offset: 5,
        timestamp: None,
    };

    #[test]
    fn one_task_per_matching_subscription() {
        let payload = br#"{"id":"evt_1","type":"invoice.paid","tenant":"acme","data":{}}"#;
        let (event, tasks) = route_record(AT, Some(payload), &index(), Utc::now()).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].subscription_id, "sub_a");
        assert_eq!(
            tasks[0].message_id,
            crate::ids::message_id("evt_1", "sub_a")
        );
        let other_tenant = br#"{"type":"invoice.paid","tenant":"globex"}"#;
        assert!(route_record(AT, Some(other_tenant), &index(), Utc::now())
            .unwrap()
            .1
            .is_empty());
    }

    #[test]
    fn unreadable_records_are_errors() {
        assert!(route_record(AT, None, &index(), Utc::now()).is_err());
        assert!(route_record(AT, Some(b"garbage"), &index(), Utc::now()).is_err());
        assert_eq!(
            route_record(AT, Some(br#"{"type":"a"}"#), &index(), Utc::now())
                .unwrap_err()
                .field,
            "tenant"
        );
    }
}
