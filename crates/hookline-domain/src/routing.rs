//! Routing one record: parse it as an event, find the matching subscriptions, and
//! make one delivery task per match. Pure, so the router and replay share it.

use chrono::{DateTime, Utc};

use crate::cloudevents::{self, CloudEventsConfig};
use crate::event::{Defaults, Event, FieldError};
use crate::matching::SubscriptionIndex;
use crate::position::RecordPosition;
use crate::task::DeliveryTask;

/// A record read from the events topic.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    /// Where it sits.
    pub position: RecordPosition<'a>,
    /// Its headers (name, value).
    pub headers: &'a [(String, Vec<u8>)],
    /// Its value.
    pub payload: Option<&'a [u8]>,
}

/// Reads a record as an event: a CloudEvent (structured or binary Kafka binding) when
/// it carries one, the native envelope otherwise.
pub fn parse_record(
    record: EventRecord<'_>,
    cloudevents: &CloudEventsConfig,
) -> Result<Event, FieldError> {
    if let Some(parsed) =
        cloudevents::from_record(record.headers, record.payload, record.position, cloudevents)
    {
        return parsed;
    }
    let payload = record
        .payload
        .ok_or_else(|| FieldError::new("$", "record has no value"))?;
    let position = record.position;
    Event::from_record_value(
        payload,
        Defaults::Record {
            topic: position.topic,
            partition: position.partition,
            offset: position.offset,
            timestamp: position.timestamp,
        },
    )
}

/// Reads the record as an event and returns it with one task per matching, enabled
/// subscription of its tenant (possibly none).
pub fn route_record(
    record: EventRecord<'_>,
    cloudevents: &CloudEventsConfig,
    index: &SubscriptionIndex,
    now: DateTime<Utc>,
) -> Result<(Event, Vec<DeliveryTask>), FieldError> {
    let event = parse_record(record, cloudevents)?;
    let tasks = index
        .matching_event(&event)
        .iter()
        .map(|sub| {
            DeliveryTask::new(event.clone(), sub.id(), now).accepted_at(record.position.timestamp)
        })
        .collect();
    Ok((event, tasks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;
    use crate::subscription::{EventTypePattern, Subscription};

    fn index() -> SubscriptionIndex {
        let mut index = SubscriptionIndex::new();
        for (id, pattern) in [("sub_a", "invoice.*"), ("sub_b", "payment.succeeded")] {
            let patterns = vec![EventTypePattern::parse(pattern).unwrap()];
            index.upsert(Subscription::basic(
                id,
                "acme",
                "https://erp.example/hooks".parse().unwrap(),
                patterns,
            ));
        }
        index
    }

    const AT: RecordPosition<'static> = RecordPosition {
        topic: "hookline.events",
        partition: 0,
        offset: 5,
        timestamp: None,
    };

    fn route(
        payload: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> Result<(Event, Vec<DeliveryTask>), FieldError> {
        let record = EventRecord {
            position: AT,
            headers,
            payload,
        };
        route_record(record, &CloudEventsConfig::default(), &index(), Utc::now())
    }

    #[test]
    fn one_task_per_matching_subscription() {
        let payload = br#"{"id":"evt_1","type":"invoice.paid","tenant":"acme","data":{}}"#;
        let (event, tasks) = route(Some(payload), &[]).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].subscription_id, "sub_a");
        assert_eq!(
            tasks[0].message_id,
            crate::ids::message_id("evt_1", "sub_a")
        );
        let other_tenant = br#"{"type":"invoice.paid","tenant":"globex"}"#;
        assert!(route(Some(other_tenant), &[]).unwrap().1.is_empty());
    }

    #[test]
    fn tasks_carry_the_acceptance_time_of_their_record() {
        let accepted = DateTime::<Utc>::from_timestamp_millis(1_795_000_000_123);
        let record = EventRecord {
            position: RecordPosition {
                timestamp: accepted,
                ..AT
            },
            headers: &[],
            payload: Some(br#"{"type":"invoice.paid","tenant":"acme"}"#),
        };
        let index = index();
        let (_, tasks) =
            route_record(record, &CloudEventsConfig::default(), &index, Utc::now()).unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].accepted_at, accepted);
        let (_, tasks) = route(Some(br#"{"type":"invoice.paid","tenant":"acme"}"#), &[]).unwrap();
        assert_eq!(tasks[0].accepted_at, None, "a record without timestamp");
    }

    #[test]
    fn tasks_share_the_event_data_and_are_encoded_without_a_tree() {
        let payload = br#"{"id": "evt_1", "type": "invoice.paid", "tenant": "acme",
                           "data": {"amount": 250, "lines": [{"sku": "a"}]}}"#;
        let mut index = index();
        for id in ["sub_c", "sub_d"] {
            let patterns = vec![EventTypePattern::parse("*").unwrap()];
            index.upsert(Subscription::basic(
                id,
                "acme",
                "https://erp.example/hooks".parse().unwrap(),
                patterns,
            ));
        }
        let record = EventRecord {
            position: AT,
            headers: &[],
            payload: Some(payload),
        };
        let config = CloudEventsConfig::default();
        let (event, tasks) = route_record(record, &config, &index, Utc::now()).unwrap();
        assert_eq!(tasks.len(), 3);
        for task in &tasks {
            assert!(
                task.event.data.shares_with(&event.data),
                "a copy of the text"
            );
            let encoded = serde_json::to_vec(task).unwrap();
            let text = String::from_utf8(encoded).unwrap();
            assert!(text.contains(r#""data":{"amount": 250, "lines": [{"sku": "a"}]}"#));
        }
        assert!(
            !event.data.is_parsed(),
            "no subscription filters: no tree built"
        );

        // A filter reads the tree: built once, for the event and all its tasks.
        let filter =
            Filter::parse(&serde_json::json!({"field": "amount", "op": "gte", "value": 100}));
        index.upsert(
            Subscription::basic(
                "sub_e",
                "acme",
                "https://erp.example/hooks".parse().unwrap(),
                vec![EventTypePattern::parse("invoice.*").unwrap()],
            )
            .with_filter(Some(filter.unwrap())),
        );
        let (event, tasks) = route_record(record, &config, &index, Utc::now()).unwrap();
        assert_eq!(tasks.len(), 4);
        assert!(event.data.is_parsed());
        assert!(tasks.iter().all(|t| t.event.data.shares_with(&event.data)));
    }

    #[test]
    fn unreadable_records_are_errors() {
        assert!(route(None, &[]).is_err());
        assert!(route(Some(b"garbage"), &[]).is_err());
        assert_eq!(
            route(Some(br#"{"type":"a"}"#), &[]).unwrap_err().field,
            "tenant"
        );
    }

    #[test]
    fn binary_cloudevents_are_routed_like_native_events() {
        let headers: Vec<(String, Vec<u8>)> = [
            ("ce_specversion", "1.0"),
            ("ce_id", "pay-1"),
            ("ce_source", "/payments/eu-1"),
            ("ce_type", "payment.succeeded"),
            ("ce_tenant", "acme"),
            ("content-type", "application/json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        let (event, tasks) = route(Some(br#"{"amount": 100}"#), &headers).unwrap();
        assert_eq!(event.event_type, "payment.succeeded");
        assert_eq!(event.data.value()["amount"], 100);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].subscription_id, "sub_b");
    }
}
