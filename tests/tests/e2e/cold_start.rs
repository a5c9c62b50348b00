//! Cold start: a brand-new broker and the three binaries started at the same moment,
//! as after a fresh install or a cluster restart. The binaries must wait for the broker
//! and for their topics, then really consume: first attempts are delivered and failing
//! tasks go through every retry tier to the DLQ within a minute of the broker being up.
//! Then a retry tier topic that appears while the worker runs is read within seconds.
//! Runs its own broker (deploy/local/kafka.sh on free ports), not the suite's.

use std::time::{Duration, Instant};

use chrono::Utc;
use hookline_domain::event::{Defaults, Event};
use hookline_domain::task::DeliveryTask;
use hookline_e2e::{
    create_topic_on, eventually, produce, producer_on, read_all_on, Api, Behaviour, Broker,
    Deployment, Proc, Receiver,
};
use serde_json::json;

/// Events sent; each one matches both subscriptions.
const EVENTS: usize = 20;
/// How long after the broker is up everything must have happened.
const BOUND: Duration = Duration::from_secs(60);
/// How long after a new retry tier appears its records must be read.
const LATE_TIER_BOUND: Duration = Duration::from_secs(30);

fn logs(procs: &[&Proc], broker: &Broker) -> String {
    let mut text = String::new();
    for proc in procs {
        text.push_str(&format!(
            "\n--- {}\n{}",
            proc.log_path.display(),
            proc.log_tail()
        ));
    }
    text.push_str(&format!("\n--- broker\n{}", broker.log_tail()));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_started_with_a_brand_new_broker_deliver_and_dead_letter_within_a_minute() {
    let mut broker = Broker::launch().unwrap();
    let mut deployment = Deployment::on(&broker.brokers());
    deployment
        .set("HOOKLINE_RETRY_SCHEDULE", "1s,1s")
        .set("HOOKLINE_BREAKER_THRESHOLD", "1000");
    let launched = Instant::now();
    // At the same moment as the broker, before it answers.
    let mut ingest = deployment.spawn("hookline-ingest").unwrap();
    let mut router = deployment.spawn("hookline-router").unwrap();
    let mut worker = deployment.spawn("hookline-delivery").unwrap();
    let receiver = Receiver::start().await.unwrap();

    broker.wait_started(Duration::from_secs(120)).await.unwrap();
    let up = Instant::now();
    eprintln!("broker up {:?} after launch", up - launched);
    for proc in [&mut ingest, &mut router, &mut worker] {
        // The error carries the process's own log.
        let ready = proc.wait_ready(BOUND.saturating_sub(up.elapsed())).await;
        if let Err(err) = ready {
            panic!("{err}\n--- broker\n{}", broker.log_tail());
        }
    }
    eprintln!("all three ready {:?} after the broker", up.elapsed());

    let api = Api::new(ingest.url());
    receiver.behave("down", Behaviour::Always(500));
    let mut subscriptions = Vec::new();
    for path in ["up", "down"] {
        let (id, _) = api
            .subscribe(json!({
                "tenant": "acme", "url": receiver.url(path), "event_types": ["invoice.*"]}))
            .await
            .unwrap();
        subscriptions.push(id);
    }
    let events: Vec<_> = (0..EVENTS)
        .map(|seq| json!({"type": "invoice.paid", "tenant": "acme", "data": {"seq": seq}}))
        .collect();
    api.send_events(json!(events)).await.unwrap();

    let delivered = receiver
        .wait_until(BOUND.saturating_sub(up.elapsed()), |r| {
            r.iter().filter(|r| r.path == "up").count() >= EVENTS
        })
        .await;
    let delivered_after = up.elapsed();
    assert!(
        delivered,
        "{} of {EVENTS} delivered within {BOUND:?} of the broker being up{}",
        receiver.on("up").len(),
        logs(&[&ingest, &router, &worker], &broker)
    );
    eprintln!("first attempts delivered {delivered_after:?} after the broker");

    let dlq = deployment.topic("deliveries.dlq");
    let mut dead = Vec::new();
    eventually(BOUND.saturating_sub(up.elapsed()), || {
        dead = read_all_on(&broker.brokers(), &dlq).unwrap_or_default();
        dead.len() >= EVENTS
    })
    .await;
    assert_eq!(
        dead.len(),
        EVENTS,
        "failing deliveries dead-lettered within {BOUND:?} of the broker being up \
         ({} attempts on the failing endpoint){}",
        receiver.on("down").len(),
        logs(&[&ingest, &router, &worker], &broker)
    );
    eprintln!("all dead-lettered {:?} after the broker", up.elapsed());
    for record in &dead {
        assert!(
            record.headers["hookline-dlq-reason"].contains("3 attempts failed"),
            "{:?}",
            record.headers
        );
    }
    assert_eq!(receiver.on("down").len(), 3 * EVENTS, "three attempts each");

    // A retry tier topic that appears later (left by a worker on another schedule, say)
    // matches the worker's pattern subscription: its due records are read within
    // seconds, not at librdkafka's default 5-minute metadata refresh.
    let late = deployment.topic("deliveries.retry.7s");
    create_topic_on(&broker.brokers(), &late, 4).await.unwrap();
    let appeared = Instant::now();
    let event = Event::from_json(
        json!({"type": "invoice.paid", "tenant": "acme", "data": {"late": true}}),
        Defaults::Fresh,
    )
    .unwrap();
    let mut task = DeliveryTask::new(event, &subscriptions[0], Utc::now());
    task.attempts = 1;
    task.not_before = Some(Utc::now());
    let producer = producer_on(&broker.brokers()).unwrap();
    produce(
        &producer,
        &late,
        Some(&subscriptions[0]),
        &serde_json::to_vec(&task).unwrap(),
    )
    .await
    .unwrap();
    let read = receiver
        .wait_until(LATE_TIER_BOUND, |r| {
            r.iter().any(|r| r.header("webhook-id") == task.message_id)
        })
        .await;
    assert!(
        read,
        "a task in a retry tier created while the worker runs delivered within \
         {LATE_TIER_BOUND:?}{}",
        logs(&[&ingest, &router, &worker], &broker)
    );
    eprintln!(
        "task in the new tier delivered {:?} after the tier appeared",
        appeared.elapsed()
    );
}
