//! The cost of checking events against the catalog's schemas.
//!
//! `cargo bench -p hookline-domain --bench validation` — prints events/s and ns per
//! event for parsing the envelope alone (the floor) and for parsing plus the schema
//! check, on valid events of three types (a small payment, an invoice with lines, a
//! card transaction with FX details), validators compiled once beforehand. The router
//! checks records produced straight to Kafka with the same call; a record ingest
//! already checked carries its type's version in a header, and the router's check of
//! it (`trusted header`) is then a comparison of that version, also measured.

use std::hint::black_box;
use std::time::Instant;

use hookline_domain::catalog::{Catalog, Policy};
use hookline_domain::event::{Defaults, Event};
use serde_json::{json, Value};

const EVENTS: usize = 200_000;

fn events() -> Vec<Value> {
    let payment = json!({"type": "payment.succeeded", "tenant": "acme", "data": {
        "payment_id": "pay_1001", "amount": 125000, "currency": "EUR", "customer_id": "cus_77",
        "method": "card", "captured_at": "2026-12-01T10:00:00Z"}});
    let lines: Vec<Value> = (0..10)
        .map(|i| json!({"description": format!("line {i}"), "quantity": 2, "amount": 1000 + i, "tax_rate": 19}))
        .collect();
    let invoice = json!({"type": "invoice.created", "tenant": "acme", "data": {
        "invoice_id": "in_2001", "number": "2026-0001", "customer_id": "cus_77", "amount_due": 20090,
        "tax_amount": 3817, "currency": "EUR", "issued_on": "2026-12-01", "due_on": "2026-12-31",
        "lines": lines}});
    let card = json!({"type": "card_transaction.settled", "tenant": "acme", "data": {
        "transaction_id": "tx_1", "card_id": "card_1", "amount": 9342, "currency": "EUR",
        "merchant": {"name": "Hotel", "mcc": "7011", "country": "US"},
        "fx": {"original_amount": 10000, "original_currency": "USD", "rate": 0.9342, "fee": 50},
        "settled_at": "2026-12-01T10:00:00Z"}});
    vec![payment, invoice, card]
}

fn main() {
    let started = Instant::now();
    let catalog = Catalog::new(None, Policy::validating()).expect("the built-in catalog");
    println!(
        "catalog: {} types compiled in {:.1} ms",
        catalog.types().count(),
        started.elapsed().as_secs_f64() * 1e3
    );
    for sample in events() {
        let name = sample["type"].as_str().unwrap_or("?").to_owned();
        let parsed = Event::from_json(sample.clone(), Defaults::Fresh).expect("a valid event");
        assert!(catalog.check(&parsed).is_ok(), "{name} is valid");
        let version = catalog
            .get(&name)
            .map(|t| t.version.clone())
            .expect("a known type");
        let run = |check: bool, header: Option<&str>| {
            let started = Instant::now();
            for _ in 0..EVENTS {
                let event = Event::from_json(black_box(sample.clone()), Defaults::Fresh)
                    .expect("a valid event");
                if check {
                    black_box(catalog.check_trusting(&event, header)).expect("valid");
                }
                black_box(event);
            }
            started.elapsed().as_secs_f64()
        };
        let floor = run(false, None);
        let checked = run(true, None);
        let trusted = run(true, Some(&version));
        println!(
            "{name:28} parse only {:>9.0} events/s | parse + schema {:>9.0} events/s | schema check ≈ {:>6.0} ns/event | trusted header ≈ {:>5.0} ns/event",
            EVENTS as f64 / floor,
            EVENTS as f64 / checked,
            (checked - floor) / EVENTS as f64 * 1e9,
            (trusted - floor) / EVENTS as f64 * 1e9
        );
    }
}
