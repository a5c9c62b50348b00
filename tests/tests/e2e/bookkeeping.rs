//! Correct bookkeeping under concurrency: an operator's change made while an attempt
//! runs is never reverted, a lagging view never counts as a deletion, retry tiers stay
//! in due order, a held tier partition survives a rebalance that hands it back, and
//! ordered lanes are dropped when idle. Real broker, binaries as processes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hookline_domain::event::{Defaults, Event};
use hookline_domain::subscription::{EventTypePattern, Subscription};
use hookline_domain::task::DeliveryTask;
use hookline_e2e::{
    client_config, eventually, produce, producer, read_all, Behaviour, Deployment, Pipeline,
    Receiver,
};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_or_an_edit_made_during_an_attempt_is_never_reverted() {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_RETRY_SCHEDULE", "1s,1s,1s,1s")
        .set("HOOKLINE_DELIVERY_TIMEOUT", "2s");
    let p = Pipeline::start(deployment).await.unwrap();
    // One request at a time: while the first hangs, the other two wait for the slot.
    let (doomed, _) = p
        .subscribe(
            "acme",
            &["invoice.paid"],
            "doomed",
            json!({"max_in_flight": 1}),
        )
        .await
        .unwrap();
    let (edited, _) = p
        .subscribe("acme", &["invoice.paid"], "edited", json!({}))
        .await
        .unwrap();
    // Both endpoints hang past the request timeout: the attempts fail after 2 s.
    p.receiver
        .behave("doomed", Behaviour::Hang(Duration::from_secs(4)));
    p.receiver
        .behave("edited", Behaviour::Hang(Duration::from_secs(4)));
    let first_events = p.send("acme", "invoice.paid", 3).await.unwrap();
    let in_flight = p
        .receiver
        .wait_until(Duration::from_secs(30), |_| {
            p.receiver.entered("doomed") == 1 && p.receiver.entered("edited") >= 1
        })
        .await;
    assert!(in_flight, "both attempts are in flight");

    let (status, _) = p
        .api
        .call(Method::DELETE, &format!("/v1/subscriptions/{doomed}"), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, _) = p
        .api
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{edited}"),
            Some(json!({"event_types": ["invoice.created"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);

    // The attempts time out, the workers record the failures (health) and schedule
    // retries after 1 s. Give that, and several retries, time to happen.
    let failing = eventually(Duration::from_secs(30), || async {
        let shown = p.api.subscription(&edited).await.unwrap_or_default();
        shown["failing_since"].is_string()
    })
    .await;
    assert!(
        failing,
        "the failed attempt starts the failure clock (health)"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (status, shown) = p
        .api
        .call(Method::GET, &format!("/v1/subscriptions/{doomed}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404, "the deletion stands: {shown}");
    let shown = p.api.subscription(&edited).await.unwrap();
    assert_eq!(
        shown["event_types"],
        json!(["invoice.created"]),
        "the edit stands"
    );
    assert_eq!(
        p.receiver.entered("doomed"),
        1,
        "no request reaches a deleted subscription's URL after the delete, not even \
         those that were waiting for the subscription's slot"
    );
    // The edit applies to events accepted after it: an invoice.paid is not routed to it.
    p.subscribe("acme", &["invoice.paid"], "witness", json!({}))
        .await
        .unwrap();
    p.send("acme", "invoice.paid", 1).await.unwrap();
    let witnessed = p
        .receiver
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.path == "witness")
        })
        .await;
    assert!(witnessed, "the witness subscription got the later event");
    let edited_events: Vec<String> = p
        .receiver
        .on("edited")
        .iter()
        .map(|r| r.json["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        edited_events.iter().all(|id| first_events.contains(id)),
        "only events routed before the edit reach the edited subscription: {edited_events:?}"
    );
}

/// A subscription record written straight to the topic, acknowledged.
async fn write_subscription(deployment: &Deployment, subscription: &Subscription) {
    let producer = producer().unwrap();
    produce(
        &producer,
        &deployment.topic("subscriptions"),
        Some(subscription.id()),
        &serde_json::to_vec(subscription).unwrap(),
    )
    .await
    .unwrap();
}

/// Writes `count` tombstones of unknown ids to the subscriptions topic as fast as the
/// broker takes them: every view then has that many records to apply before it reaches
/// what is written next.
fn flood_subscriptions(deployment: &Deployment, count: usize) {
    let producer: BaseProducer = client_config(
        "hookline-test-flood",
        &[
            ("linger.ms", "20"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "1000000"),
            ("compression.type", "lz4"),
        ],
    )
    .create()
    .unwrap();
    let topic = deployment.topic("subscriptions");
    for n in 0..count {
        let key = format!("sub_flood{n:09}");
        let mut record = BaseRecord::<str, [u8]>::to(&topic).key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_view_holds_a_task_instead_of_dropping_it() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_DELIVERY_VIEW_PATIENCE", "200ms");
    let worker = deployment.start("hookline-delivery").await.unwrap();
    let receiver = Receiver::start().await.unwrap();

    // Enough records that the view lags longer than any catch-up patience (the old
    // code gave up after 10 s and dropped the task).
    let flood = deployment.clone();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || flood_subscriptions(&flood, 3_000_000))
        .await
        .unwrap();
    eprintln!("flood written in {:?}", started.elapsed());
    let subscription = Subscription::basic(
        "sub_behindaflood",
        "acme",
        receiver.url("held").parse().unwrap(),
        vec![EventTypePattern::parse("*").unwrap()],
    );
    write_subscription(&deployment, &subscription).await;
    let event = Event::from_json(
        json!({"type": "invoice.paid", "tenant": "acme", "data": {"n": 1}}),
        Defaults::Fresh,
    )
    .unwrap();
    let task = DeliveryTask::new(event, subscription.id(), Utc::now());
    produce(
        &producer().unwrap(),
        &deployment.topic("deliveries"),
        Some(subscription.id()),
        &serde_json::to_vec(&task).unwrap(),
    )
    .await
    .unwrap();

    let delivered = receiver
        .wait_until(Duration::from_secs(120), |r| {
            r.iter().any(|x| x.path == "held")
        })
        .await;
    eprintln!("delivered {:?} after the flood", started.elapsed());
    assert!(
        delivered,
        "the task is delivered once the view catches up; log:\n{}",
        worker.log_tail()
    );
    assert!(
        worker.metric("hookline_delivery_view_lagging_total").await >= 1.0,
        "the task was held on a lagging view"
    );
    assert_eq!(
        worker
            .metric("hookline_delivery_tasks_total{outcome=\"skipped_deleted\"")
            .await,
        0.0
    );
}

/// Records of one retry tier's (single) partition in partition order: attempts made,
/// due time, and whether the task was deferred (not attempted: its endpoint looked
/// stalled, which a loaded machine can make a slow local receiver look like).
fn retry_records(deployment: &Deployment, tier: &str) -> Vec<(u32, DateTime<Utc>, bool)> {
    read_all(&deployment.topic(&format!("deliveries.retry.{tier}")))
        .unwrap()
        .iter()
        .filter_map(|r| serde_json::from_slice::<DeliveryTask>(r.value.as_deref()?).ok())
        .map(|t| {
            let deferred = t
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("deferred"));
            (t.attempts, t.not_before.unwrap_or_default(), deferred)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_in_their_schedule_tier_in_due_order() {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_RETRY_SCHEDULE", "1s,3s")
        .set("HOOKLINE_BREAKER_THRESHOLD", "1000")
        // One partition per topic: every record of a tier in one total order.
        .set("HOOKLINE_TOPIC_PARTITIONS", "1");
    let p = Pipeline::start(deployment).await.unwrap();
    p.subscribe("acme", &["invoice.paid"], "down", json!({}))
        .await
        .unwrap();
    p.receiver.behave("down", Behaviour::Always(500));
    let count = 30;
    p.send("acme", "invoice.paid", count).await.unwrap();
    let all_failed = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().filter(|x| x.path == "down").count() >= 3 * count
        })
        .await;
    assert!(all_failed, "every task makes its three attempts");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let short = retry_records(&p.deployment, "1s");
    let long = retry_records(&p.deployment, "3s");
    let retries = |records: &[(u32, DateTime<Utc>, bool)]| -> Vec<u32> {
        records
            .iter()
            .filter(|(_, _, deferred)| !deferred)
            .map(|(attempts, _, _)| *attempts)
            .collect()
    };
    let (short_retries, long_retries) = (retries(&short), retries(&long));
    assert_eq!(
        short_retries.len() + long_retries.len(),
        2 * count,
        "two retries per task"
    );
    assert!(
        short_retries.iter().all(|attempts| *attempts == 1),
        "the 1 s tier holds only retries after the first attempt: {short:?}"
    );
    assert!(
        long_retries.iter().all(|attempts| *attempts == 2),
        "the 3 s tier holds only retries after the second attempt: {long:?}"
    );
    // Deferred tasks too: every record of a tier partition is in due order.
    for (tier, records) in [("1s", &short), ("3s", &long)] {
        let dues: Vec<DateTime<Utc>> = records.iter().map(|(_, due, _)| *due).collect();
        assert!(
            dues.windows(2).all(|w| w[0] <= w[1]),
            "due times never decrease within the {tier} tier partition: {dues:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_tier_partition_handed_back_by_a_rebalance_is_resumed() {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_RETRY_SCHEDULE", "12s")
        .set("HOOKLINE_SHUTDOWN_GRACE", "2s")
        // One partition per topic: both go to one worker, and all come back to it.
        .set("HOOKLINE_TOPIC_PARTITIONS", "1");
    let p = Pipeline::start(deployment).await.unwrap();
    p.subscribe("acme", &["invoice.paid"], "flaky", json!({}))
        .await
        .unwrap();
    p.receiver.behave("flaky", Behaviour::FailFirst(500, 1));
    p.send("acme", "invoice.paid", 1).await.unwrap();
    let first = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().any(|x| x.path == "flaky")
        })
        .await;
    assert!(first, "the first attempt fails");
    // The retry record is read and held: its tier partition is paused.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A second worker joins (every partition is revoked and reassigned: one of the
    // two workers gets both) and leaves again (the first gets them back, the held one
    // included, whoever had it in between).
    let revocations = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("partitions revoked")
            .count()
    };
    let first_log = p.workers[0].log_path.clone();
    let mut second = p.deployment.start("hookline-delivery").await.unwrap();
    let rebalanced = eventually(Duration::from_secs(30), || async {
        revocations(&first_log) >= 1
    })
    .await;
    assert!(rebalanced, "the second worker joined the group");
    // Let the new assignment settle before leaving.
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.terminate().unwrap();
    let all_back = p.workers[0]
        .wait_metric(
            "hookline_delivery_assigned_partitions",
            2.0,
            Duration::from_secs(30),
        )
        .await;
    assert!(all_back, "the first worker holds every partition again");

    let retried = p
        .receiver
        .wait_until(Duration::from_secs(40), |r| {
            r.iter().filter(|x| x.path == "flaky").count() >= 2
        })
        .await;
    assert!(
        retried,
        "the held retry is delivered after the rebalance; log:\n{}",
        p.workers[0].log_tail()
    );
    assert_eq!(p.receiver.on("flaky")[1].status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ordered_lanes_are_dropped() {
    let p = Pipeline::start(Deployment::new()).await.unwrap();
    let worker = &p.workers[0];
    let rounds = 3;
    let per_round = 40;
    let mut rss = Vec::new();
    for round in 0..rounds {
        let mut ids = Vec::new();
        for i in 0..per_round {
            let path = format!("lane-{round}-{i}");
            let (id, _) = p
                .subscribe("acme", &["invoice.paid"], &path, json!({"ordered": true}))
                .await
                .unwrap();
            p.receiver
                .behave(&path, Behaviour::Hang(Duration::from_millis(1500)));
            ids.push(id);
        }
        p.send("acme", "invoice.paid", 2).await.unwrap();
        let busy = worker
            .wait_metric(
                "hookline_delivery_lanes",
                per_round as f64,
                Duration::from_secs(30),
            )
            .await;
        assert!(busy, "one lane per busy ordered subscription");
        let delivered = p
            .receiver
            .wait_until(Duration::from_secs(60), |r| {
                r.iter()
                    .filter(|x| x.path.starts_with(&format!("lane-{round}-")))
                    .count()
                    >= 2 * per_round
            })
            .await;
        assert!(delivered, "round {round} delivered");
        for id in &ids {
            p.api
                .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
                .await
                .unwrap();
        }
        let pruned = eventually(Duration::from_secs(20), || async {
            worker.metric("hookline_delivery_lanes").await == 0.0
        })
        .await;
        assert!(pruned, "idle lanes are dropped after round {round}");
        rss.push(worker.rss_kib());
    }
    eprintln!("worker RSS after each round (KiB): {rss:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_stops_retrying_in_place_once_its_partition_is_revoked() {
    let mut deployment = Deployment::new();
    deployment
        // Retried in place about every second, for long enough.
        .set("HOOKLINE_RETRY_SCHEDULE", vec!["1s"; 40].join(","))
        .set("HOOKLINE_BREAKER_THRESHOLD", "1000")
        .set("HOOKLINE_SHUTDOWN_GRACE", "1s")
        // One partition per topic: one worker holds all of one subscription's work.
        .set("HOOKLINE_TOPIC_PARTITIONS", "1")
        .set("HOOKLINE_KAFKA_PROPERTIES", "group.instance.id=worker-z");
    let p = Pipeline::start(deployment).await.unwrap();
    p.subscribe("acme", &["invoice.paid"], "lane", json!({"ordered": true}))
        .await
        .unwrap();
    p.receiver.behave("lane", Behaviour::Always(500));
    p.send("acme", "invoice.paid", 1).await.unwrap();
    let retrying = eventually(Duration::from_secs(30), || p.receiver.entered("lane") >= 2).await;
    assert!(retrying, "the ordered task is retried in place");

    // A second worker that may not reach loopback takes the partitions over: from then
    // on no request may reach the receiver (the first worker's lane must stop). Static
    // members are ordered by instance id, so the range assignor gives both partitions
    // to `worker-a`, the second worker.
    let second = p
        .deployment
        .start_with(
            "hookline-delivery",
            &[
                ("HOOKLINE_DELIVERY_ALLOW_CIDRS", ""),
                ("HOOKLINE_KAFKA_PROPERTIES", "group.instance.id=worker-a"),
            ],
        )
        .await
        .unwrap();
    let owns = second
        .wait_metric(
            "hookline_delivery_assigned_partitions",
            2.0,
            Duration::from_secs(30),
        )
        .await;
    assert!(owns, "the second worker took the partitions over");
    // The revocation waits out the grace period (1 s); the lane's current sleep (about
    // 1 s) ends; then nothing more may come from the first worker.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled = p.receiver.entered("lane");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        p.receiver.entered("lane"),
        settled,
        "no request from a worker whose partition was revoked; first worker's log:\n{}",
        p.workers[0].log_tail()
    );
    assert!(
        second
            .metric("hookline_delivery_attempts_total{outcome=\"blocked\"")
            .await
            >= 1.0,
        "the new owner works the task (and is refused loopback)"
    );
}
