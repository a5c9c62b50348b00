//! Routing throughput against 100,000 subscriptions.
//!
//! `cargo bench -p hookline-domain --bench matching` — prints events/s for routing whole
//! records (JSON parse, match, task creation) and for the index look-up alone, next to
//! the cost of parsing the same records with no matching at all (the floor).

use std::hint::black_box;
use std::time::Instant;

use chrono::Utc;
use hookline_domain::cloudevents::CloudEventsConfig;
use hookline_domain::event::{Defaults, Event};
use hookline_domain::matching::SubscriptionIndex;
use hookline_domain::position::RecordPosition;
use hookline_domain::routing::{route_record, EventRecord};
use hookline_domain::subscription::{EventTypePattern, Subscription};

const SUBSCRIPTIONS: usize = 100_000;
const TENANTS: usize = 2_000;
const EVENTS: usize = 200_000;
const TYPES: [&str; 8] = [
    "payment.succeeded",
    "payment.failed",
    "invoice.paid",
    "invoice.created",
    "expense.created",
    "customer.changed",
    "transfer.failed",
    "refund.created",
];

fn subscription(i: usize) -> Subscription {
    let pattern = match i % 4 {
        0 => TYPES[i % TYPES.len()].to_owned(),
        1 => format!(
            "{}.*",
            TYPES[i % TYPES.len()].split('.').next().unwrap_or("x")
        ),
        2 => "*".to_owned(),
        _ => TYPES[(i / 4) % TYPES.len()].to_owned(),
    };
    let filter = i.is_multiple_of(10).then(|| {
        hookline_domain::filter::Filter::parse(&serde_json::json!(
            {"field": "amount", "op": "gte", "value": 5000}
        ))
        .expect("valid filter")
    });
    let patterns = vec![EventTypePattern::parse(&pattern).expect("valid pattern")];
    let tenant = format!("tenant-{}", i % TENANTS);
    Subscription::basic(
        &format!("sub_{i:08}"),
        &tenant,
        "https://erp.example/hooks".parse().expect("valid URL"),
        patterns,
    )
    .with_filter(filter)
}

fn main() {
    let started = Instant::now();
    let mut index = SubscriptionIndex::new();
    for i in 0..SUBSCRIPTIONS {
        index.upsert(subscription(i));
    }
    println!(
        "index: {SUBSCRIPTIONS} subscriptions over {TENANTS} tenants built in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let records: Vec<Vec<u8>> = (0..EVENTS)
        .map(|n| {
            serde_json::to_vec(&serde_json::json!({
                "id": format!("evt_{n}"),
                "type": TYPES[n % TYPES.len()],
                "tenant": format!("tenant-{}", (n * 7919) % TENANTS),
                "occurred_at": "2026-11-24T12:00:00Z",
                "data": {"amount": (n * 37) % 10_000, "currency": "EUR", "invoice_id": format!("in_{n}")}
            }))
            .expect("serializable")
        })
        .collect();

    let position = |offset: usize| RecordPosition {
        topic: "hookline.events",
        partition: 0,
        offset: offset as i64,
        timestamp: None,
    };

    // Floor: parsing alone.
    let t = Instant::now();
    for (n, record) in records.iter().enumerate() {
        let defaults = Defaults::Record {
            topic: "hookline.events",
            partition: 0,
            offset: n as i64,
            timestamp: None,
        };
        black_box(Event::from_record_value(record, defaults).ok());
    }
    let parse_rate = EVENTS as f64 / t.elapsed().as_secs_f64();

    // Whole routing: parse, match (type index, then filters), build tasks.
    let config = CloudEventsConfig::default();
    let now = Utc::now();
    let t = Instant::now();
    let mut tasks = 0usize;
    for (n, record) in records.iter().enumerate() {
        let record = EventRecord {
            position: position(n),
            headers: &[],
            payload: Some(record),
        };
        if let Ok((_, routed)) = route_record(record, &config, &index, now) {
            tasks += routed.len();
        }
    }
    let route_rate = EVENTS as f64 / t.elapsed().as_secs_f64();

    // The index look-up alone, on parsed events.
    let events: Vec<Event> = records
        .iter()
        .enumerate()
        .filter_map(|(n, r)| {
            let defaults = Defaults::Record {
                topic: "hookline.events",
                partition: 0,
                offset: n as i64,
                timestamp: None,
            };
            Event::from_record_value(r, defaults).ok()
        })
        .collect();
    let t = Instant::now();
    let mut matched = 0usize;
    for event in &events {
        matched += black_box(index.matching_event(event)).len();
    }
    let match_rate = EVENTS as f64 / t.elapsed().as_secs_f64();

    println!(
        "events: {EVENTS}, tasks: {tasks} ({:.1} per event), matches: {matched}",
        tasks as f64 / EVENTS as f64
    );
    println!("parse only (floor)        {parse_rate:>12.0} events/s");
    println!(
        "route (parse+match+tasks) {route_rate:>12.0} events/s  ({:.0} tasks/s)",
        route_rate * tasks as f64 / EVENTS as f64
    );
    println!("index look-up only        {match_rate:>12.0} events/s");
}
