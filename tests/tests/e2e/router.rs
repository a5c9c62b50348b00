//! The router: exactly-once fan-out through Kafka transactions, even when killed; and
//! the at-least-once mode, which may write copies but loses nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hookline_domain::task::DeliveryTask;
use hookline_e2e::{
    assert_same, client_config, create_topics, eventually, produce, producer, read_all,
    record_count, Api, Deployment, Pipeline, Receiver, TopicSpec,
};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::json;

fn event(n: usize) -> (String, &'static str, &'static str) {
    let tenant = if n.is_multiple_of(2) {
        "acme"
    } else {
        "globex"
    };
    let event_type = ["invoice.paid", "payment.succeeded", "expense.created"][n % 3];
    (format!("e-{n}"), tenant, event_type)
}

/// What a run of [`route_while_killing`] committed to the deliveries topic.
struct Routed {
    /// Tasks committed per (event id, subscription id).
    counts: HashMap<(String, String), usize>,
    /// The (event id, subscription id) pairs the subscriptions call for.
    expected: BTreeSet<(String, String)>,
    /// Events the router that was never killed routed.
    shared: f64,
}

/// Two routers with `routing` share the group while 15,000 events are produced; the
/// first is killed (SIGKILL) and restarted six times.
async fn route_while_killing(routing: &str) -> Routed {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    let plan = [
        ("acme", vec!["invoice.*"]),
        ("acme", vec!["*"]),
        ("globex", vec!["payment.*"]),
    ];
    let mut subs = Vec::new();
    for (tenant, patterns) in &plan {
        let (id, _) = api
            .subscribe(
                json!({"tenant": tenant, "url": "https://erp.example/h", "event_types": patterns}),
            )
            .await
            .unwrap();
        subs.push((id, *tenant, patterns.clone()));
    }
    // Two routers share the group; the first is killed again and again.
    let r1 = [
        ("HOOKLINE_ROUTER_INSTANCE_ID", "r1"),
        ("HOOKLINE_ROUTER_ROUTING", routing),
    ];
    let mut killed = deployment.start_with("hookline-router", &r1).await.unwrap();
    let steady = deployment
        .start_with(
            "hookline-router",
            &[
                ("HOOKLINE_ROUTER_INSTANCE_ID", "r2"),
                ("HOOKLINE_ROUTER_ROUTING", routing),
            ],
        )
        .await
        .unwrap();

    let kafka = producer().unwrap();
    let topic = deployment.topic("events");
    let rounds = 6;
    let per_round = 2500;
    for round in 0..rounds {
        for n in round * per_round..(round + 1) * per_round {
            let (id, tenant, event_type) = event(n);
            let value = json!({"id": id, "type": event_type, "tenant": tenant, "data": {"n": n}});
            produce(&kafka, &topic, Some(&id), value.to_string().as_bytes())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150 + 100 * round as u64)).await;
        killed.kill_hard();
        killed = deployment.start_with("hookline-router", &r1).await.unwrap();
    }
    let total = rounds * per_round;

    let mut expected = BTreeSet::new();
    for n in 0..total {
        let (id, tenant, event_type) = event(n);
        for (sub, sub_tenant, patterns) in &subs {
            let matches = patterns.iter().any(|p| {
                hookline_domain::subscription::EventTypePattern::parse(p)
                    .unwrap()
                    .matches(event_type)
            });
            if *sub_tenant == tenant && matches {
                expected.insert((id.clone(), sub.clone()));
            }
        }
    }
    let deliveries = deployment.topic("deliveries");
    let settled = eventually(Duration::from_secs(180), || async {
        record_count(&deliveries).await.unwrap() >= expected.len() as i64
    })
    .await;
    assert!(settled, "all tasks written");
    // Copies count too (at least once): wait until nothing more is written.
    let mut seen = record_count(&deliveries).await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = record_count(&deliveries).await.unwrap();
        if now == seen {
            break;
        }
        seen = now;
    }

    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for record in read_all(&deliveries).unwrap() {
        let task: DeliveryTask = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        // A task written twice carries the same webhook-id: receivers tell copies apart.
        assert_eq!(
            task.message_id,
            hookline_domain::ids::message_id(&task.event.id, &task.subscription_id),
            "webhook-id of {task:?}"
        );
        *counts
            .entry((task.event.id.into(), task.subscription_id.into()))
            .or_default() += 1;
    }
    let shared = steady.metric("hookline_router_events_total").await;
    Routed {
        counts,
        expected,
        shared,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_routers_neither_duplicate_nor_lose_a_task() {
    let Routed {
        counts,
        expected,
        shared,
    } = route_while_killing("exactly-once").await;
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(
        duplicated.is_empty(),
        "committed duplicates: {duplicated:?}"
    );
    let got: BTreeSet<(String, String)> = counts.into_keys().collect();
    assert_same(&got, &expected, "committed (event, subscription) pairs");
    assert!(shared > 0.0, "the second router routed a share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_routers_routing_at_least_once_lose_no_task() {
    let Routed {
        counts,
        expected,
        shared,
    } = route_while_killing("at-least-once").await;
    // Copies are allowed (same webhook-id, checked above); a missing or unexpected
    // pair is not.
    let got: BTreeSet<(String, String)> = counts.into_keys().collect();
    assert_same(&got, &expected, "written (event, subscription) pairs");
    assert!(shared > 0.0, "the second router routed a share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_tasks_are_too_large_is_dead_lettered_and_routing_goes_on() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    api.subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    let router = deployment
        .start_with(
            "hookline-router",
            &[("HOOKLINE_ROUTER_MAX_TASK_BYTES", "2000")],
        )
        .await
        .unwrap();
    let kafka = producer().unwrap();
    let topic = deployment.topic("events");
    let small = json!({"id": "small-1", "type": "invoice.paid", "tenant": "acme", "data": {}});
    let big = json!({"id": "big", "type": "invoice.paid", "tenant": "acme", "data": {"blob": "x".repeat(3000)}});
    let after = json!({"id": "small-2", "type": "invoice.paid", "tenant": "acme", "data": {}});
    for value in [&small, &big, &after] {
        produce(&kafka, &topic, None, value.to_string().as_bytes())
            .await
            .unwrap();
    }
    assert!(
        router
            .wait_metric("hookline_router_events_total", 3.0, Duration::from_secs(30))
            .await
    );
    let tasks: BTreeSet<String> = read_all(&deployment.topic("deliveries"))
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<DeliveryTask>(r.value.as_deref().unwrap())
                .unwrap()
                .event
                .id
                .into()
        })
        .collect();
    assert_eq!(
        tasks,
        BTreeSet::from(["small-1".to_owned(), "small-2".to_owned()])
    );
    let dead = read_all(&deployment.topic("events.dlq")).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].headers["hookline-dlq-reason"].contains("over the 2000-byte limit"),
        "{:?}",
        dead[0].headers
    );
}

/// Writes `count` tombstones (random keys, no value) to `topic` with many in flight, in
/// record batches of at most `per_batch` records, and waits until all are acknowledged.
async fn write_tombstones(topic: &str, count: usize, per_batch: usize) {
    let per_batch = per_batch.to_string();
    let producer: FutureProducer = client_config(
        "hookline-test-tombstones",
        &[
            ("acks", "all"),
            ("linger.ms", "20"),
            ("batch.num.messages", &per_batch),
            ("queue.buffering.max.messages", "1000000"),
        ],
    )
    .create()
    .unwrap();
    let keys: Vec<String> = (0..count)
        .map(|_| ulid::Ulid::new().to_string().to_lowercase())
        .collect();
    let mut pending = Vec::with_capacity(count);
    for key in &keys {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(key.as_str());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => panic!("tombstone not queued: {err}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    for delivery in pending {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_acknowledged_before_an_event_sees_it_while_the_router_view_lags() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_ROUTER_VIEW_PATIENCE", "50ms");
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    // The router's clients fetch one record batch per partition per request and wait
    // 10 ms before the next one while anything fetched is still queued, so its view of
    // the subscriptions topic falls well behind ingest's during the burst below: the
    // lagging view the router must not route with.
    let throttled = "max.partition.fetch.bytes=1,queued.min.messages=1,fetch.queue.backoff.ms=10";
    let router = deployment
        .start_with(
            "hookline-router",
            &[("HOOKLINE_KAFKA_PROPERTIES", throttled)],
        )
        .await
        .unwrap();
    let _worker = deployment.start("hookline-delivery").await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    let api = Api::new(ingest.url());

    let started = std::time::Instant::now();
    write_tombstones(&deployment.topic("subscriptions"), 20_000, 20).await;
    // Acknowledged (201) only once ingest's own view holds it.
    let (id, _) = api
        .subscribe(
            json!({"tenant": "acme", "url": receiver.url("lag"), "event_types": ["invoice.*"]}),
        )
        .await
        .unwrap();
    let sent = api
        .send_events(
            json!([{"type": "invoice.paid", "tenant": "acme", "data": {"invoice_id": "inv-1"}}]),
        )
        .await
        .unwrap();
    let delivered = receiver
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().any(|r| r.json["id"] == sent[0].as_str())
        })
        .await;
    assert!(
        delivered,
        "event {} not delivered to subscription {id} after {:?}; router log:\n{}",
        sent[0],
        started.elapsed(),
        router.log_tail()
    );
    assert!(
        router.metric("hookline_router_view_stale_total").await >= 1.0,
        "the lagging view held batches back"
    );
}

/// Creates `<prefix>events.dlq` (4 partitions) with a topic-level `max.message.bytes`,
/// before any binary runs: they create missing topics but leave existing ones as they are.
async fn create_small_dead_letter_topic(deployment: &Deployment, max_message_bytes: usize) {
    let topic = TopicSpec {
        name: deployment.topic("events.dlq"),
        partitions: 4,
        configs: vec![("max.message.bytes", max_message_bytes.to_string())],
    };
    create_topics(&[topic]).await.unwrap();
}

/// An invalid event record (not JSON) of about 20 KB that compresses badly, so that its
/// dead-letter copy stays over a small limit whatever the router's compression.
fn poison_payload() -> Vec<u8> {
    let mut text = String::from("not json: ");
    while text.len() < 20_000 {
        text.push_str(&ulid::Ulid::new().to_string());
    }
    text.into_bytes()
}

/// Writes the poison record and then one valid event straight to partition 0 of the
/// events topic; returns the poison's offset and the valid event's id.
async fn produce_poison_then_valid(deployment: &Deployment) -> (i64, String) {
    let kafka = producer().unwrap();
    let topic = deployment.topic("events");
    let poison = poison_payload();
    let poison_at = kafka
        .send(
            FutureRecord::<str, [u8]>::to(&topic)
                .partition(0)
                .key("poison")
                .payload(&poison),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap()
        .offset;
    let id = "after-poison".to_owned();
    let valid = json!({"id": id, "type": "invoice.paid", "tenant": "acme", "data": {"n": 0}});
    kafka
        .send(
            FutureRecord::<str, [u8]>::to(&topic)
                .partition(0)
                .key("acme/after")
                .payload(valid.to_string().as_bytes()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (poison_at, id)
}

/// Waits until every id in `ids` reached the receiver; returns the ones missing.
async fn missing_deliveries(pipeline: &Pipeline, ids: &BTreeSet<String>) -> BTreeSet<String> {
    let delivered = |received: &[hookline_e2e::Received]| -> BTreeSet<String> {
        received
            .iter()
            .filter_map(|r| r.json["id"].as_str().map(str::to_owned))
            .collect()
    };
    pipeline
        .receiver
        .wait_until(Duration::from_secs(60), |r| ids.is_subset(&delivered(r)))
        .await;
    ids.difference(&delivered(&pipeline.receiver.received()))
        .cloned()
        .collect()
}

/// A pipeline whose events DLQ takes at most `dlq_limit` bytes per record, a
/// subscription at `path`, a poison record and a valid event on partition 0, then 20
/// events through the API: (pipeline, the poison record's offset, every valid event id).
async fn poisoned_pipeline(dlq_limit: usize, path: &str) -> (Pipeline, i64, BTreeSet<String>) {
    let deployment = Deployment::new();
    create_small_dead_letter_topic(&deployment, dlq_limit).await;
    let pipeline = Pipeline::start(deployment).await.unwrap();
    pipeline
        .subscribe("acme", &["invoice.*"], path, json!({}))
        .await
        .unwrap();
    let (poison_offset, after) = produce_poison_then_valid(&pipeline.deployment).await;
    let mut ids: BTreeSet<String> = pipeline
        .send("acme", "invoice.paid", 20)
        .await
        .unwrap()
        .into_iter()
        .collect();
    ids.insert(after);
    (pipeline, poison_offset, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_copy_over_the_dlq_size_limit_is_cut_down_and_routing_goes_on() {
    let (pipeline, poison_offset, ids) = poisoned_pipeline(2048, "poison").await;
    let missing = missing_deliveries(&pipeline, &ids).await;
    assert!(
        missing.is_empty(),
        "events after the poison record not delivered: {missing:?}; router log:\n{}",
        pipeline.router.log_tail()
    );
    let dead = read_all(&pipeline.deployment.topic("events.dlq")).unwrap();
    assert_eq!(dead.len(), 1, "one dead letter: {dead:?}");
    let headers = &dead[0].headers;
    assert_eq!(headers["hookline-source-partition"], "0");
    assert_eq!(headers["hookline-source-offset"], poison_offset.to_string());
    assert_eq!(
        headers["hookline-source-topic"],
        pipeline.deployment.topic("events")
    );
    let reason = &headers["hookline-dlq-reason"];
    assert!(
        reason.contains("too large") && reason.contains("payload left out"),
        "{reason}"
    );
    assert!(
        dead[0].value.is_none(),
        "the payload that did not fit is left out"
    );
    assert!(
        pipeline
            .router
            .metric("hookline_router_events_total{outcome=\"invalid\"")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_even_be_dead_lettered_is_skipped_and_routing_goes_on() {
    // Room for the transaction markers (about 80 bytes; below that the topic cannot
    // take part in transactions at all), not for a dead letter even without payload.
    let (pipeline, _, ids) = poisoned_pipeline(128, "skip").await;
    let missing = missing_deliveries(&pipeline, &ids).await;
    assert!(
        missing.is_empty(),
        "events after the unproducible record not delivered: {missing:?}; router log:\n{}",
        pipeline.router.log_tail()
    );
    assert_eq!(
        pipeline
            .router
            .metric("hookline_router_records_skipped_total{reason=\"message_too_large\"")
            .await,
        1.0
    );
    assert!(read_all(&pipeline.deployment.topic("events.dlq"))
        .unwrap()
        .is_empty());
}
