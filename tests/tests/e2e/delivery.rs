//! Delivery that never loses a webhook and never lets one endpoint block the others:
//! retries through tier topics, the DLQ and redrive, 410, a hanging endpoint, a worker
//! killed mid-run, and two workers in one group. Real broker, binaries as processes,
//! a short retry schedule.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hookline_e2e::{
    eventually, read_all, record_count, Api, Behaviour, Deployment, Pipeline, Proc, Received,
    Receiver,
};
use reqwest::Method;
use serde_json::json;

/// A deployment with a retry schedule of seconds instead of hours.
fn quick(schedule: &str) -> Deployment {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_RETRY_SCHEDULE", schedule)
        .set("HOOKLINE_BREAKER_THRESHOLD", "1000");
    deployment
}

fn ids(received: &[Received]) -> BTreeSet<String> {
    received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect()
}

fn successes(received: &[Received]) -> Vec<&Received> {
    received
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_delivery_once_it_recovers_with_one_webhook_id() {
    let p = Pipeline::start(quick("1s,1s,1s")).await.unwrap();
    let (sub, _) = p
        .subscribe("acme", &["invoice.paid"], "flaky", json!({}))
        .await
        .unwrap();
    p.receiver.behave("flaky", Behaviour::FailFirst(503, 2));
    p.send("acme", "invoice.paid", 1).await.unwrap();

    let done = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| !successes(r).is_empty())
        .await;
    assert!(done, "delivered after retries");
    let requests = p.receiver.on("flaky");
    assert_eq!(requests.len(), 3, "two failures, then a success");
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 503, 204]
    );
    assert_eq!(
        ids(&requests).len(),
        1,
        "the same webhook-id on every attempt"
    );
    assert_eq!(
        requests
            .iter()
            .map(|r| r.header("webhook-attempt"))
            .collect::<Vec<_>>(),
        ["1", "2", "3"],
        "each request carries its attempt number"
    );

    // The attempts are recorded, newest first.
    let attempts = p
        .api
        .wait_attempts(&sub, Duration::from_secs(10), |a| a.len() == 3)
        .await;
    let summary: Vec<(u64, &str, u64)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (3, "success", 204),
            (2, "http_5xx", 503),
            (1, "http_5xx", 503)
        ]
    );
    let webhook_id = requests[0].header("webhook-id");
    assert!(attempts.iter().all(|a| a["message_id"] == webhook_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_receiver_ends_in_the_dlq_and_redrive_delivers_it() {
    let p = Pipeline::start(quick("1s,1s")).await.unwrap();
    let (sub, _) = p
        .subscribe("acme", &["payment.*"], "down", json!({}))
        .await
        .unwrap();
    p.receiver.behave("down", Behaviour::Always(500));
    p.send("acme", "payment.failed", 3).await.unwrap();

    let dlq = p.deployment.topic("deliveries.dlq");
    let mut dead = Vec::new();
    eventually(Duration::from_secs(60), || {
        dead = read_all(&dlq).unwrap();
        dead.len() >= 3
    })
    .await;
    assert_eq!(dead.len(), 3, "all three dead-lettered");
    for record in &dead {
        assert!(
            record.headers["hookline-dlq-reason"].contains("3 attempts failed"),
            "{:?}",
            record.headers
        );
        assert_eq!(record.headers["hookline-last-status"], "500");
    }
    let failed = p.receiver.on("down");
    assert_eq!(failed.len(), 9, "three attempts each");
    assert!(successes(&failed).is_empty());

    p.receiver.behave("down", Behaviour::Ok);
    let job = p
        .api
        .run_job("/v1/dlq/redrive", json!({"subscription_id": sub}))
        .await
        .unwrap();
    assert_eq!(job["kind"], "redrive", "{job}");
    assert_eq!(job["progress"]["requeued"], 3, "{job}");
    let done = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| successes(r).len() >= 3)
        .await;
    assert!(done, "redriven deliveries arrive");
    let redelivered = p.receiver.on("down");
    assert_eq!(
        ids(&successes(&redelivered)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()),
        ids(&failed),
        "same webhook-ids"
    );

    // The same from the command line: the dead letters are still there, so they are
    // requeued once more (receivers de-duplicate on the unchanged webhook-ids).
    let output = p
        .deployment
        .run("hookline-ingest", &["redrive", "--subscription-id", &sub])
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["requeued"], 3, "{report}");
    let again = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| successes(r).len() >= 6)
        .await;
    assert!(again, "CLI-redriven deliveries arrive");
    assert_eq!(ids(&p.receiver.on("down")), ids(&failed));

    // Redrive without a filter is refused rather than replaying every dead letter.
    let (status, error) = p
        .api
        .call(Method::POST, "/v1/dlq/redrive", Some(json!({})))
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_and_tells_the_tenant() {
    let p = Pipeline::start(quick("1s")).await.unwrap();
    let (gone, _) = p
        .subscribe("acme", &["invoice.*"], "gone", json!({}))
        .await
        .unwrap();
    p.subscribe("acme", &["subscription.*"], "ops", json!({}))
        .await
        .unwrap();
    p.receiver.behave("gone", Behaviour::Always(410));
    p.send("acme", "invoice.paid", 1).await.unwrap();

    let told = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().any(|r| r.path == "ops")
        })
        .await;
    assert!(told, "the tenant got a subscription.disabled event");
    let notice = &p.receiver.on("ops")[0].json;
    assert_eq!(notice["type"], "subscription.disabled");
    assert_eq!(notice["data"]["subscription_id"], gone.as_str());

    let (_, shown) = p
        .api
        .call(Method::GET, &format!("/v1/subscriptions/{gone}"), None)
        .await
        .unwrap();
    assert_eq!(shown["enabled"], false, "{shown}");
    assert!(shown["disabled_reason"]
        .as_str()
        .is_some_and(|r| r.contains("410")));
    assert_eq!(p.receiver.on("gone").len(), 1, "no retry after 410");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_hold_back_fast_ones() {
    let mut deployment = quick("30s");
    // One partition for all three subscriptions, and a window far smaller than the
    // slow one's tasks: tasks queued for its slots would fill the window and hold the
    // fast ones back (8 slots, 2 s per timed-out request: over a minute for 300 tasks)
    // unless they stop waiting once the endpoint stalls.
    deployment
        .set("HOOKLINE_DELIVERY_TIMEOUT", "2s")
        .set("HOOKLINE_TOPIC_PARTITIONS", "1")
        .set("HOOKLINE_DELIVERY_PARTITION_WINDOW", "50");
    let p = Pipeline::start(deployment).await.unwrap();
    for path in ["slow", "fast-1", "fast-2"] {
        p.subscribe("acme", &["expense.created"], path, json!({}))
            .await
            .unwrap();
    }
    p.receiver
        .behave("slow", Behaviour::Hang(Duration::from_secs(20)));
    let count = 300;
    p.send("acme", "expense.created", count).await.unwrap();

    let fast_done = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| {
            ["fast-1", "fast-2"]
                .iter()
                .all(|path| r.iter().filter(|x| x.path == *path).count() >= count)
        })
        .await;
    assert!(fast_done, "the fast endpoints got every delivery");
    // Requests are recorded when answered: the slow endpoint has answered none of its
    // deliveries yet, while both fast ones are complete.
    let slow_answered = p.receiver.on("slow").len();
    assert!(
        slow_answered < count,
        "slow endpoint still pending ({slow_answered} answered)"
    );
    for path in ["fast-1", "fast-2"] {
        let seqs: BTreeSet<u64> = p
            .receiver
            .on(path)
            .iter()
            .filter_map(|r| r.json["data"]["seq"].as_u64())
            .collect();
        assert_eq!(seqs.len(), count, "{path} got each event");
    }
    // The slow endpoint's attempts timed out and wait in their retry tier.
    let worker = &p.workers[0];
    let timed_out = worker
        .wait_metric(
            "hookline_delivery_attempts_total{outcome=\"timeout\"",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(timed_out, "the slow endpoint's attempts time out");
    let deferred = worker
        .wait_metric(
            "hookline_delivery_tasks_total{outcome=\"deferred\"",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        deferred,
        "tasks of the stalled endpoint were deferred, not queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing() {
    let mut p = Pipeline::start(quick("1s,2s")).await.unwrap();
    for path in ["erp", "ledger"] {
        p.subscribe("acme", &["invoice.*"], path, json!({}))
            .await
            .unwrap();
        p.receiver
            .behave(path, Behaviour::Hang(Duration::from_millis(20)));
    }
    let count = 600;
    let event_ids = p.send("acme", "invoice.created", count).await.unwrap();
    let started = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| r.len() >= 150)
        .await;
    assert!(started);
    p.workers[0].kill_hard();
    let before_restart = p.receiver.received().len();
    assert!(
        before_restart < 2 * count,
        "killed mid-run ({before_restart} delivered)"
    );
    p.workers[0] = p.deployment.start("hookline-delivery").await.unwrap();

    let complete = |r: &[Received]| {
        let pairs: BTreeSet<(String, String)> = r
            .iter()
            .map(|x| {
                (
                    x.json["id"].as_str().unwrap_or("").to_owned(),
                    x.path.clone(),
                )
            })
            .collect();
        pairs.len() >= 2 * count
    };
    assert!(
        p.receiver
            .wait_until(Duration::from_secs(120), complete)
            .await,
        "every delivery arrives"
    );
    let received = p.receiver.received();
    let mut webhook_ids: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for r in &received {
        let key = (r.json["id"].as_str().unwrap().to_owned(), r.path.clone());
        webhook_ids
            .entry(key)
            .or_default()
            .insert(r.header("webhook-id").to_owned());
    }
    for id in &event_ids {
        for path in ["erp", "ledger"] {
            let seen = webhook_ids.get(&(id.clone(), path.to_owned()));
            assert_eq!(
                seen.map(BTreeSet::len),
                Some(1),
                "{id} to {path}: once or more, one webhook-id"
            );
        }
    }
    assert_eq!(webhook_ids.len(), 2 * count, "nothing unexpected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_partitions_and_deliver_everything() {
    let mut p = Pipeline::start(quick("1s")).await.unwrap();
    p.workers
        .push(p.deployment.start("hookline-delivery").await.unwrap());
    for worker in &p.workers {
        let assigned = worker
            .wait_metric(
                "hookline_delivery_assigned_partitions",
                1.0,
                Duration::from_secs(60),
            )
            .await;
        assert!(assigned, "each worker holds partitions");
    }
    // Tasks are keyed by subscription: with 32 of them, the chance that every key lands
    // on one worker's partitions is about 1e-4 even with a 3:1 split (with 8 it was ~10%).
    let paths: Vec<String> = (0..32).map(|i| format!("erp-{i}")).collect();
    for path in &paths {
        p.subscribe("globex", &["payment.succeeded"], path, json!({}))
            .await
            .unwrap();
    }
    let count = 60;
    p.send("globex", "payment.succeeded", count).await.unwrap();
    let all = p.receiver.wait_until(Duration::from_secs(90), |r| {
        r.iter()
            .map(|x| {
                (
                    x.json["id"].as_str().unwrap_or("").to_owned(),
                    x.path.clone(),
                )
            })
            .collect::<BTreeSet<_>>()
            .len()
            >= count * paths.len()
    });
    assert!(all.await, "together they deliver everything");
    // A delivery is counted once its attempt record is written, a moment after the
    // receiver answered: wait for the counts to catch up with what was received.
    let total = (count * paths.len()) as f64;
    let counted = eventually(Duration::from_secs(30), || async {
        delivered_counts(&p.workers).await.iter().sum::<f64>() >= total
    })
    .await;
    let counts = delivered_counts(&p.workers).await;
    assert!(counted, "deliveries counted: {counts:?}, of {total}");
    assert!(
        counts.iter().all(|n| *n > 0.0),
        "both workers delivered: {counts:?}"
    );
}

/// Each worker's count of delivered tasks.
async fn delivered_counts(workers: &[Proc]) -> Vec<f64> {
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(
            worker
                .metric("hookline_delivery_tasks_total{outcome=\"delivered\"")
                .await,
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_deliveries_and_commits_them() {
    let mut p = Pipeline::start(quick("1s")).await.unwrap();
    p.subscribe("acme", &["invoice.paid"], "slowish", json!({}))
        .await
        .unwrap();
    p.receiver
        .behave("slowish", Behaviour::Hang(Duration::from_millis(1500)));
    let count = 6;
    p.send("acme", "invoice.paid", count).await.unwrap();
    let in_flight = p.workers[0]
        .wait_metric(
            "hookline_delivery_in_flight",
            count as f64,
            Duration::from_secs(30),
        )
        .await;
    assert!(in_flight, "all deliveries in flight");
    let status = p.workers[0].terminate().unwrap();
    assert!(status.success(), "clean exit: {status}");
    assert_eq!(
        p.receiver.on("slowish").len(),
        count,
        "in-flight deliveries finished before exit"
    );

    // What was finished was committed: a new worker delivers nothing again.
    p.workers[0] = p.deployment.start("hookline-delivery").await.unwrap();
    p.send("acme", "invoice.paid", 1).await.unwrap();
    let next = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| r.len() > count)
        .await;
    assert!(next, "the new worker delivers new work");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        p.receiver.on("slowish").len(),
        count + 1,
        "no redelivery of committed work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_a_subscriptions_events_with_their_webhook_ids() {
    let p = Pipeline::start(quick("1s")).await.unwrap();
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let (sub, _) = p
        .subscribe("acme", &["payment.*"], "erp", json!({}))
        .await
        .unwrap();
    p.subscribe("acme", &["payment.*"], "other", json!({}))
        .await
        .unwrap();
    p.send("acme", "payment.succeeded", 5).await.unwrap();
    p.send("globex", "payment.succeeded", 2).await.unwrap();
    assert!(
        p.receiver
            .wait_until(Duration::from_secs(30), |r| r.len() >= 10)
            .await
    );
    let first = ids(&p.receiver.on("erp"));
    assert_eq!(first.len(), 5);

    let job = p
        .api
        .run_job(
            &format!("/v1/subscriptions/{sub}/replay"),
            json!({"since": before}),
        )
        .await
        .unwrap();
    assert_eq!(job["progress"]["requeued"], 5, "{job}");
    assert!(
        p.receiver
            .wait_until(Duration::from_secs(30), |r| r
                .iter()
                .filter(|x| x.path == "erp")
                .count()
                >= 10)
            .await
    );
    let erp = p.receiver.on("erp");
    assert_eq!(erp.len(), 10);
    assert_eq!(
        ids(&erp),
        first,
        "replayed deliveries keep their webhook-ids"
    );
    assert_eq!(
        p.receiver.on("other").len(),
        5,
        "only the replayed subscription gets them again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_limits_and_the_circuit_breaker_hold() {
    let mut deployment = quick("1s,1s,1s,1s,1s,1s,1s,1s");
    deployment
        .set("HOOKLINE_BREAKER_THRESHOLD", "3")
        .set("HOOKLINE_BREAKER_COOLDOWN", "60s");
    let p = Pipeline::start(deployment).await.unwrap();
    p.subscribe(
        "acme",
        &["invoice.paid"],
        "narrow",
        json!({"max_in_flight": 2}),
    )
    .await
    .unwrap();
    p.subscribe("acme", &["invoice.paid"], "paced", json!({"rate_limit": 4}))
        .await
        .unwrap();
    p.subscribe("acme", &["invoice.paid"], "broken", json!({}))
        .await
        .unwrap();
    p.receiver
        .behave("narrow", Behaviour::Hang(Duration::from_millis(200)));
    p.receiver.behave("broken", Behaviour::Always(500));
    let count = 16;
    p.send("acme", "invoice.paid", count).await.unwrap();

    let both = |r: &[Received]| {
        ["narrow", "paced"]
            .iter()
            .all(|path| r.iter().filter(|x| x.path == *path).count() >= count)
    };
    assert!(p.receiver.wait_until(Duration::from_secs(60), both).await);
    assert_eq!(
        p.receiver.max_concurrency("narrow"),
        2,
        "max_in_flight holds"
    );
    let paced = p.receiver.on("paced");
    let times: Vec<i64> = paced
        .iter()
        .map(|r| r.header("webhook-timestamp").parse().unwrap())
        .collect();
    let span = times.iter().max().unwrap() - times.iter().min().unwrap();
    assert!(
        span >= 2,
        "16 requests at 4/s span at least 2 s of timestamps, got {span}"
    );

    // After 3 straight failures the breaker opens and further deliveries skip HTTP.
    let worker = &p.workers[0];
    let skipped = worker
        .wait_metric(
            "hookline_delivery_attempts_total{outcome=\"circuit_open\"",
            1.0,
            Duration::from_secs(30),
        )
        .await;
    assert!(skipped, "open circuit skips requests");
    assert_eq!(worker.metric("hookline_delivery_circuit_open").await, 1.0);
    assert!(
        p.receiver.on("broken").len() < count,
        "broken endpoint not hammered with every delivery"
    );
}

/// A subscription's concurrency slot bounds the requests in flight to its endpoint and
/// nothing else: the bookkeeping after an answer (the attempt record acknowledged by
/// Kafka) happens outside it, while the record's offset still waits for that
/// bookkeeping. The worker's producer lingers for ten minutes here, so none of its
/// writes is acknowledged during the test: were the slot held until the attempt record
/// is acknowledged, only the first two requests could ever go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_bounds_requests_to_the_endpoint_not_the_bookkeeping_after_them() {
    let deployment = quick("1s,1s,1s");
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let router = deployment.start("hookline-router").await.unwrap();
    // Only the worker's producer lingers (consumers ignore producer properties).
    let lingering = [(
        "HOOKLINE_KAFKA_PROPERTIES",
        "linger.ms=600000,message.timeout.ms=900000",
    )];
    let worker = deployment
        .start_with("hookline-delivery", &lingering)
        .await
        .unwrap();
    let receiver = Receiver::start().await.unwrap();
    let api = Api::new(ingest.url());
    let mut p = Pipeline {
        deployment,
        ingest,
        router,
        workers: vec![worker],
        receiver,
        api,
    };
    p.subscribe(
        "acme",
        &["invoice.paid"],
        "narrow",
        json!({"max_in_flight": 2}),
    )
    .await
    .unwrap();
    p.subscribe(
        "acme",
        &["invoice.paid"],
        "ordered",
        json!({"ordered": true}),
    )
    .await
    .unwrap();
    // Requests overlap unless something holds them back.
    p.receiver
        .behave("narrow", Behaviour::Hang(Duration::from_millis(200)));
    let count = 8;
    p.send("acme", "invoice.paid", count).await.unwrap();

    let all_sent = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().filter(|x| x.path == "narrow").count() >= count
        })
        .await;
    assert!(
        all_sent,
        "every request went out while the attempt records wait for Kafka; got {}",
        p.receiver.on("narrow").len()
    );
    assert_eq!(
        p.receiver.max_concurrency("narrow"),
        2,
        "the slot still bounds requests in flight"
    );
    let attempts = p.deployment.topic("attempts");
    assert_eq!(
        record_count(&attempts).await.unwrap(),
        0,
        "no attempt record acknowledged yet: the bookkeeping is still under way"
    );
    let worker = &p.workers[0];
    assert_eq!(
        worker
            .metric("hookline_delivery_tasks_total{outcome=\"delivered\"")
            .await,
        0.0,
        "no task is done before its attempt record is durable"
    );
    // An ordered lane waits for a task's bookkeeping before its next request.
    assert_eq!(
        p.receiver.on("ordered").len(),
        1,
        "the ordered lane is held by its first task's bookkeeping"
    );

    // The worker dies with its records unwritten: nothing was committed, so a new
    // worker delivers every task again, with the same webhook-ids.
    let first = ids(&p.receiver.on("narrow"));
    p.workers[0].kill_hard();
    p.workers[0] = p.deployment.start("hookline-delivery").await.unwrap();
    let distinct = |r: &[Received], path: &str| {
        let on_path = r.iter().filter(|x| x.path == path);
        on_path
            .map(|x| x.header("webhook-id"))
            .collect::<BTreeSet<_>>()
            .len()
    };
    let again = p
        .receiver
        .wait_until(Duration::from_secs(90), |r| {
            r.iter().filter(|x| x.path == "narrow").count() >= 2 * count
                && distinct(r, "ordered") >= count
        })
        .await;
    assert!(again, "every task delivered again by the new worker");
    assert_eq!(
        ids(&p.receiver.on("narrow")),
        first,
        "redelivered with the same webhook-ids"
    );
    let recorded = eventually(Duration::from_secs(30), || async {
        record_count(&attempts).await.unwrap_or(0) >= (2 * count) as i64
    })
    .await;
    assert!(recorded, "the new worker's attempt records are written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_past_the_limit_is_disabled() {
    // Twenty retries a second apart: the whole schedule takes 20 s, ten times the
    // failing time that disables the subscription.
    let schedule = vec!["1s"; 20].join(",");
    let mut deployment = quick(&schedule);
    deployment.set("HOOKLINE_DISABLE_AFTER", "2s");
    let p = Pipeline::start(deployment).await.unwrap();
    let (sub, _) = p
        .subscribe("acme", &["invoice.paid"], "dead", json!({}))
        .await
        .unwrap();
    p.subscribe("acme", &["subscription.disabled"], "ops", json!({}))
        .await
        .unwrap();
    p.receiver.behave("dead", Behaviour::Always(502));
    p.send("acme", "invoice.paid", 1).await.unwrap();

    let told = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().any(|x| x.path == "ops")
        })
        .await;
    assert!(told, "subscription.disabled published");
    let shown = p.api.subscription(&sub).await.unwrap();
    assert_eq!(shown["enabled"], false);
    assert!(
        shown["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("failing")),
        "{shown}"
    );
    let attempts = p.receiver.on("dead").len();
    // At least two failures 2 s apart; fewer than the schedule's 21 attempts (on a
    // loaded machine a retry may come late, so no tighter bound).
    assert!(
        (2..21).contains(&attempts),
        "disabled after 2 s of failures, not after the whole schedule: {attempts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_redirects_are_never_followed() {
    // A 3 s hint goes to the shortest tier that honours it (4 s), not the 1 s one.
    let p = Pipeline::start(quick("1s,4s")).await.unwrap();
    p.subscribe("acme", &["invoice.paid"], "busy", json!({}))
        .await
        .unwrap();
    let (moved_id, _) = p
        .subscribe("acme", &["invoice.paid"], "moved", json!({}))
        .await
        .unwrap();
    p.receiver.behave("busy", Behaviour::RetryAfter(429, 3, 1));
    let elsewhere: &'static str = Box::leak(p.receiver.url("elsewhere").into_boxed_str());
    p.receiver.behave("moved", Behaviour::Redirect(elsewhere));
    p.send("acme", "invoice.paid", 1).await.unwrap();

    let done = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().filter(|x| x.path == "busy").count() >= 2
        })
        .await;
    assert!(done, "the throttled delivery is retried");
    let arrivals = p.receiver.arrivals("busy");
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_secs(3),
        "Retry-After: 3 is honoured (not the 1 s schedule): {gap:?}"
    );
    assert_eq!(p.receiver.on("busy")[1].status, 204);

    let moved = p
        .receiver
        .wait_until(Duration::from_secs(10), |r| {
            r.iter().any(|x| x.path == "moved")
        })
        .await;
    assert!(moved);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        p.receiver.on("elsewhere").is_empty(),
        "a redirect is never followed"
    );
    let attempts = p
        .api
        .wait_attempts(&moved_id, Duration::from_secs(10), |a| !a.is_empty())
        .await;
    let outcome = attempts
        .last()
        .map(|a| a["outcome"].clone())
        .unwrap_or_default();
    assert_eq!(outcome, "http_3xx", "a 3xx is a failed attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_lets_revoked_deliveries_finish_and_commits_them() {
    let mut p = Pipeline::start(quick("1s")).await.unwrap();
    let paths: Vec<String> = (0..6).map(|i| format!("erp-{i}")).collect();
    for path in &paths {
        p.subscribe("acme", &["invoice.paid"], path, json!({}))
            .await
            .unwrap();
        p.receiver
            .behave(path, Behaviour::Hang(Duration::from_millis(500)));
    }
    let count = 100;
    p.send("acme", "invoice.paid", count).await.unwrap();
    let busy = p.workers[0]
        .wait_metric("hookline_delivery_in_flight", 20.0, Duration::from_secs(30))
        .await;
    assert!(busy, "the first worker has deliveries in flight");
    // A second worker joins: the group rebalances while the first is mid-delivery. Its
    // readiness comes only after that rebalance (once it was assigned partitions), so
    // progress is measured when it starts.
    let mut second = p.deployment.spawn("hookline-delivery").unwrap();
    let expected = count * paths.len();
    let so_far = p.receiver.received().len();
    assert!(
        so_far < expected / 2,
        "the rebalance comes mid-run ({so_far} of {expected} done)"
    );
    second.wait_ready(Duration::from_secs(90)).await.unwrap();
    p.workers.push(second);

    let all = p
        .receiver
        .wait_until(Duration::from_secs(120), |r| ids(r).len() >= expected)
        .await;
    assert!(all, "every delivery arrives");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let received = p.receiver.received();
    assert_eq!(ids(&received).len(), expected);
    assert_eq!(
        received.len(),
        expected,
        "no delivery repeated: revoked work finished and was committed"
    );
    let second = p.workers[1]
        .metric("hookline_delivery_assigned_partitions")
        .await;
    assert!(second > 0.0, "the second worker took partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_waiting_in_a_tier_of_an_old_schedule_are_still_delivered() {
    let mut p = Pipeline::start(quick("3s")).await.unwrap();
    p.subscribe("acme", &["invoice.paid"], "flaky", json!({}))
        .await
        .unwrap();
    p.receiver.behave("flaky", Behaviour::FailFirst(500, 1));
    p.send("acme", "invoice.paid", 1).await.unwrap();
    let failed = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert!(failed, "first attempt made");
    // The task now waits in deliveries.retry.3s. Restart the worker with a schedule
    // that has no 3 s tier at all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.workers[0].terminate().unwrap();
    p.workers[0] = p
        .deployment
        .start_with("hookline-delivery", &[("HOOKLINE_RETRY_SCHEDULE", "1s,1m")])
        .await
        .unwrap();
    let delivered = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| !successes(r).is_empty())
        .await;
    assert!(delivered, "the old tier's record is read and delivered");
    assert_eq!(ids(&p.receiver.on("flaky")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_the_delivery_once_it_is_up() {
    let p = Pipeline::start(quick("1s,1s,1s,1s,1s")).await.unwrap();
    let addr = hookline_e2e::free_addr();
    let (sub, _) = p
        .api
        .subscribe(json!({"tenant": "acme", "url": format!("http://{addr}/hooks/late"), "event_types": ["*"]}))
        .await
        .unwrap();
    p.send("acme", "payment.succeeded", 1).await.unwrap();

    let attempts = p
        .api
        .wait_attempts(&sub, Duration::from_secs(10), |a| {
            a.iter().any(|x| x["outcome"] == "connect")
        })
        .await;
    let refused = attempts.iter().any(|x| x["outcome"] == "connect");
    assert!(refused, "the first attempt found nobody listening");
    let late = hookline_e2e::Receiver::start_on(addr).await.unwrap();
    let delivered = late
        .wait_until(Duration::from_secs(30), |r| !successes(r).is_empty())
        .await;
    assert!(
        delivered,
        "retried after the connection error, delivered once the receiver is up"
    );
}
