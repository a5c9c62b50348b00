//! Replay and redrive as background jobs: answered `202` at once, polled on any ingest
//! instance, tenant-scoped, cancellable mid-way.

use std::collections::BTreeSet;
use std::time::Duration;

use hookline_e2e::{record_count, Api, Deployment, Pipeline, Received};
use reqwest::Method;
use serde_json::{json, Value};

fn ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect()
}

fn finished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_job_answers_at_once_succeeds_and_is_seen_on_every_instance() {
    let p = Pipeline::start(Deployment::new()).await.unwrap();
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let (sub, _) = p
        .subscribe("acme", &["invoice.*"], "erp", json!({}))
        .await
        .unwrap();
    let count = 400;
    p.send("acme", "invoice.paid", count).await.unwrap();
    p.send("acme", "payment.failed", 10).await.unwrap();
    assert!(
        p.receiver
            .wait_until(Duration::from_secs(60), |r| r.len() >= count)
            .await
    );
    let first: BTreeSet<String> = ids(&p.receiver.on("erp")).into_iter().collect();
    assert_eq!(first.len(), count);

    let (_, key) = p
        .api
        .create_key("acme", &["subscriptions:manage"])
        .await
        .unwrap();
    let acme = Api::new(p.ingest.url()).with_token(&key);
    let (status, job) = acme
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/replay"),
            Some(json!({"since": before})),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["kind"], "replay");
    assert_eq!(job["request"]["subscription_id"], sub.as_str());
    assert!(
        matches!(job["status"].as_str(), Some("queued" | "running")),
        "{job}"
    );
    let id = job["id"].as_str().unwrap().to_owned();

    // Another instance reads the same jobs topic: it answers the poll too.
    let second = p.deployment.start("hookline-ingest").await.unwrap();
    let elsewhere = Api::new(second.url()).with_token(&key);
    let done = elsewhere
        .wait_job(&id, Duration::from_secs(60), finished)
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let progress = &done["progress"];
    assert_eq!(progress["requeued"], count, "{done}");
    assert!(
        progress["scanned"].as_u64().unwrap() >= (count + 10) as u64,
        "every event of the range read: {done}"
    );
    assert_eq!(progress["unreadable"], 0, "{done}");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    let (_, here) = acme
        .call(Method::GET, &format!("/v1/jobs/{id}"), None)
        .await
        .unwrap();
    assert_eq!(
        here["status"], "succeeded",
        "the first instance agrees: {here}"
    );
    let (_, listed) = elsewhere.call(Method::GET, "/v1/jobs", None).await.unwrap();
    assert_eq!(listed["data"][0]["id"], id.as_str(), "{listed}");

    assert!(
        p.receiver
            .wait_until(Duration::from_secs(60), |r| r.len() >= 2 * count)
            .await,
        "the replayed deliveries arrive"
    );
    let erp = ids(&p.receiver.on("erp"));
    assert_eq!(erp.len(), 2 * count);
    assert_eq!(
        erp.into_iter().collect::<BTreeSet<_>>(),
        first,
        "replayed deliveries keep their webhook-ids"
    );

    // Another tenant's key: the job does not exist for it.
    let (_, other) = p
        .api
        .create_key("globex", &["subscriptions:manage"])
        .await
        .unwrap();
    let globex = Api::new(second.url()).with_token(&other);
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{id}")),
        (Method::POST, format!("/v1/jobs/{id}/cancel")),
    ] {
        let (status, error) = globex.call(method.clone(), &path, None).await.unwrap();
        assert_eq!(status, 404, "{method} {path}: {error}");
        assert_eq!(error["error"]["code"], "not_found");
    }
    let (_, listed) = globex.call(Method::GET, "/v1/jobs", None).await.unwrap();
    assert_eq!(listed["data"], json!([]));

    // A finished job has nothing left to cancel.
    let (status, error) = acme
        .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_replay_stops_it_part_way() {
    let mut deployment = Deployment::new();
    // 100 tasks a second: 3000 events take half a minute, time to cancel.
    deployment.set("HOOKLINE_JOB_MAX_RATE", "100");
    // No router, no workers: the deliveries topic holds only what the replay wrote.
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    let (sub, _) = api
        .subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    let count = 3000;
    for chunk in 0..count / 500 {
        let events: Vec<Value> = (0..500)
            .map(|seq| json!({"type": "invoice.paid", "tenant": "acme", "data": {"seq": chunk * 500 + seq}}))
            .collect();
        api.send_events(Value::Array(events)).await.unwrap();
    }

    let answer = hookline_e2e::admin_client()
        .post(format!("{}/v1/subscriptions/{sub}/replay", ingest.url()))
        .json(&json!({"since": "2020-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    let job: Value = answer.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/jobs/{id}"), "where to poll it");
    let running = api
        .wait_job(&id, Duration::from_secs(30), |job| {
            job["status"] == "running" && job["progress"]["requeued"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["progress"]["total"], count, "{running}");

    let (status, asked) = api
        .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{asked}");
    assert!(asked["cancel_requested_at"].is_string(), "{asked}");
    let done = api.wait_job(&id, Duration::from_secs(30), finished).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let requeued = done["progress"]["requeued"].as_u64().unwrap();
    let scanned = done["progress"]["scanned"].as_u64().unwrap();
    assert!(
        requeued < scanned && requeued < count as u64,
        "stopped part way: {done}"
    );
    assert_eq!(
        record_count(&deployment.topic("deliveries")).await.unwrap(),
        requeued as i64,
        "what it counts as requeued is what it wrote"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_instance_dies_shows_as_abandoned_on_another_after_the_lease() {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_JOB_MAX_RATE", "50")
        .set("HOOKLINE_JOB_LEASE", "5s");
    let mut runner = deployment.start("hookline-ingest").await.unwrap();
    let other = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(runner.url());
    let (sub, _) = api
        .subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    let events: Vec<Value> = (0..1000)
        .map(|seq| json!({"type": "invoice.paid", "tenant": "acme", "data": {"seq": seq}}))
        .collect();
    api.send_events(Value::Array(events)).await.unwrap();
    let (status, job) = api
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/replay"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let watcher = Api::new(other.url());
    let running = watcher
        .wait_job(&id, Duration::from_secs(30), |job| {
            job["status"] == "running" && job["progress"]["requeued"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(running["status"], "running", "{running}");

    runner.kill_hard();
    let shown = watcher
        .wait_job(&id, Duration::from_secs(30), finished)
        .await;
    assert_eq!(shown["status"], "failed", "{shown}");
    assert!(
        shown["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("abandoned"),
        "{shown}"
    );
    assert!(
        shown["finished_at"].is_null(),
        "nobody wrote an end: {shown}"
    );
    let (status, error) = watcher
        .call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None)
        .await
        .unwrap();
    assert_eq!(status, 409, "nothing left to cancel: {error}");
}
