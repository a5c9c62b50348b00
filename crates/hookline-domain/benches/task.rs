//! The per-event work of the router and the per-delivery work of delivery, on events
//! shaped like `scripts/bench.sh`'s (about 1 KiB: seven fields and a padding string).
//!
//! `cargo bench -p hookline-domain --bench task` — prints, for the router, the time to
//! read one record and encode its ten tasks; for delivery, the time to read one task
//! and build its webhook body; and for both the allocations made, and the heap one
//! task read by delivery holds while it is in flight (a worker holds up to 4,096).
//! Times are the best of five rounds (the machine is shared); allocations and bytes do
//! not depend on the load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use chrono::Utc;
use hookline_domain::event::{Defaults, Event};
use hookline_domain::task::DeliveryTask;

/// The system allocator, counting allocations and the bytes held.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        HELD.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        HELD.fetch_add(new_size, Relaxed);
        HELD.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const EVENTS: usize = 20_000;
const FAN_OUT: usize = 10;
const ROUNDS: usize = 5;

/// An event record as ingest writes it for the load tool's events.
fn record(seq: usize) -> Vec<u8> {
    let padding = "x".repeat(700);
    let request = serde_json::json!({"type": "payment.succeeded", "tenant": "bench", "data": {
        "seq": seq, "sent_at_us": 1_795_000_000_000_000u64 + seq as u64,
        "payment_id": format!("pay_{seq}"), "amount": 125_000, "currency": "EUR",
        "customer_id": "cus_77", "description": "Invoice in_2001 for services rendered, November 2026",
        "padding": padding}});
    let event = Event::from_json(request, Defaults::Fresh).expect("a valid event");
    serde_json::to_vec(&event).expect("serializable")
}

fn defaults(offset: usize) -> Defaults<'static> {
    Defaults::Record {
        topic: "hookline.events",
        partition: 0,
        offset: offset as i64,
        timestamp: None,
    }
}

/// Best time of `ROUNDS` runs of `work`, in seconds, and the allocations of one run.
fn measure(mut work: impl FnMut()) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut allocations = 0;
    for _ in 0..ROUNDS {
        let before = ALLOCATIONS.load(Relaxed);
        let t = Instant::now();
        work();
        best = best.min(t.elapsed().as_secs_f64());
        allocations = ALLOCATIONS.load(Relaxed) - before;
    }
    (best, allocations)
}

fn main() {
    let records: Vec<Vec<u8>> = (0..EVENTS).map(record).collect();
    let subscriptions: Vec<String> = (0..FAN_OUT).map(|i| format!("sub_{i:02}")).collect();
    let now = Utc::now();
    println!(
        "{EVENTS} events of {} bytes, {FAN_OUT} tasks each",
        records[0].len()
    );

    // The router: read the record, one task per subscription, each serialized.
    let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(EVENTS * FAN_OUT);
    let (router, router_allocs) = measure(|| {
        payloads.clear();
        for (n, record) in records.iter().enumerate() {
            let event = Event::from_record_value(record, defaults(n)).expect("valid record");
            for sub in &subscriptions {
                let task = DeliveryTask::new(event.clone(), sub, now);
                payloads.push(serde_json::to_vec(&task).expect("serializable"));
            }
        }
    });
    let tasks = payloads.len();

    // Delivery: read the task, build the body.
    let (delivery, delivery_allocs) = measure(|| {
        for payload in &payloads {
            let task: DeliveryTask = serde_json::from_slice(payload).expect("valid task");
            black_box(task.event.webhook_body().expect("serializable"));
        }
    });

    // What tasks in flight hold: 4,096 read and kept.
    let held_before = HELD.load(Relaxed);
    let in_flight: Vec<DeliveryTask> = payloads[..4096]
        .iter()
        .map(|p| serde_json::from_slice(p).expect("valid task"))
        .collect();
    let held = HELD.load(Relaxed) - held_before;
    black_box(&in_flight);

    println!(
        "router: read a record, encode {FAN_OUT} tasks   {:>8.2} µs per event  ({:.1} allocations)",
        router * 1e6 / EVENTS as f64,
        router_allocs as f64 / EVENTS as f64
    );
    println!(
        "delivery: read a task, build the body    {:>8.2} µs per task   ({:.1} allocations)",
        delivery * 1e6 / tasks as f64,
        delivery_allocs as f64 / tasks as f64
    );
    println!(
        "delivery: heap held per task in flight   {:>8} bytes (task of {} bytes)",
        held / in_flight.len(),
        payloads[0].len()
    );
}
