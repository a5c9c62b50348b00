//! Idempotent ingest across instances and restarts: `Idempotency-Key` on
//! `POST /v1/events` and producer-supplied event ids, with TWO ingest instances on the
//! same topics (the claims race through the idempotency topic, not a process's memory).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hookline_e2e::{read_all, Deployment, Pipeline, ADMIN_TOKEN};
use serde_json::{json, Value};

/// `POST /v1/events` with `body`, under `key` if given; (status, JSON answer,
/// `Retry-After`).
async fn post(
    http: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value, Option<String>) {
    let mut request = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(ADMIN_TOKEN)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("ingest answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await.expect("a body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after,
    )
}

fn ids(answer: &Value) -> Vec<String> {
    answer["ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// How many times each event id sits on the events topic.
async fn written(deployment: &Deployment) -> HashMap<String, usize> {
    let topic = deployment.topic("events");
    let records = tokio::task::spawn_blocking(move || read_all(&topic))
        .await
        .expect("reader thread")
        .expect("events topic read");
    let mut counts = HashMap::new();
    for record in records {
        let value: Value = serde_json::from_slice(record.value.as_deref().unwrap_or_default())
            .expect("an event record");
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

fn batch(pair: usize) -> Value {
    json!([
        {"type": "invoice.paid", "tenant": "acme", "data": {"pair": pair, "n": 0}},
        {"type": "invoice.paid", "tenant": "acme", "data": {"pair": pair, "n": 1}},
    ])
}

#[tokio::test]
async fn racing_requests_with_one_key_on_two_instances_write_and_deliver_once() {
    let deployment = Deployment::new();
    let p = Pipeline::start(deployment).await.unwrap();
    let second = p.deployment.start("hookline-ingest").await.unwrap();
    p.subscribe("acme", &["invoice.*"], "hooks", json!({}))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let (a, b) = (p.ingest.url(), second.url());

    // 20 pairs, each pair the same request under one key, to both instances at once.
    let pairs = 20;
    let answers = futures_join(&http, &a, &b, pairs).await;
    let mut all_ids = BTreeSet::new();
    for (pair, ((status_a, answer_a), (status_b, answer_b))) in answers.iter().enumerate() {
        assert_eq!(*status_a, 202, "pair {pair} on A: {answer_a}");
        assert_eq!(*status_b, 202, "pair {pair} on B: {answer_b}");
        assert_eq!(ids(answer_a).len(), 2, "{answer_a}");
        assert_eq!(
            ids(answer_a),
            ids(answer_b),
            "pair {pair}: same ids on both"
        );
        all_ids.extend(ids(answer_a));
    }
    assert_eq!(all_ids.len(), 2 * pairs, "ids of different keys differ");

    let counts = written(&p.deployment).await;
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(
        got, all_ids,
        "the events topic holds exactly the answered ids"
    );
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");

    assert!(
        p.receiver
            .wait_until(Duration::from_secs(30), |got| got.len() >= 2 * pairs)
            .await,
        "every event delivered"
    );
    let delivered: Vec<String> = p
        .receiver
        .on("hooks")
        .iter()
        .map(|r| r.json["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let unique: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(
        unique, all_ids,
        "the answered events are the delivered ones"
    );
    assert_eq!(delivered.len(), unique.len(), "each event delivered once");
}

/// Fires pair `i` at `a` and `b` at the same time, for every pair at once.
async fn futures_join(
    http: &reqwest::Client,
    a: &str,
    b: &str,
    pairs: usize,
) -> Vec<((u16, Value), (u16, Value))> {
    let mut tasks = Vec::new();
    for pair in 0..pairs {
        let (http, a, b) = (http.clone(), a.to_owned(), b.to_owned());
        tasks.push(tokio::spawn(async move {
            let key = format!("race-{pair}");
            let body = batch(pair);
            let (x, y) = tokio::join!(
                post(&http, &a, Some(&key), &body),
                post(&http, &b, Some(&key), &body)
            );
            ((x.0, x.1), (y.0, y.1))
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("request task"));
    }
    answers
}

#[tokio::test]
async fn a_key_survives_a_restart_and_refuses_another_body_and_event_ids_are_kept_once() {
    let deployment = Deployment::new();
    let mut first = deployment.start("hookline-ingest").await.unwrap();
    let second = deployment.start("hookline-ingest").await.unwrap();
    let http = reqwest::Client::new();

    let (status, answer, _) = post(&http, &first.url(), Some("order-1"), &batch(1)).await;
    assert_eq!(status, 202, "{answer}");
    let original = ids(&answer);

    // The same request after the instance that took it restarted: same ids, no write.
    first.terminate().unwrap();
    let first = deployment.start("hookline-ingest").await.unwrap();
    let (status, again, _) = post(&http, &first.url(), Some("order-1"), &batch(1)).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(ids(&again), original, "same ids after a restart");
    // Key order and spacing do not make another body.
    let reordered: Value = serde_json::from_str(
        r#"[{"data":{"n":0,"pair":1},"tenant":"acme","type":"invoice.paid"},
            {"tenant":"acme","data":{"pair":1,"n":1},"type":"invoice.paid"}]"#,
    )
    .unwrap();
    let (status, again, _) = post(&http, &second.url(), Some("order-1"), &reordered).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(ids(&again), original, "same ids on the other instance");

    // The same key with a different body: 422 naming the problem, nothing written.
    let (status, refused, _) = post(&http, &second.url(), Some("order-1"), &batch(2)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["code"], "idempotency_key_reused",
        "{refused}"
    );
    assert_eq!(refused["error"]["field"], "Idempotency-Key", "{refused}");
    // A key that is no key.
    let (status, refused, _) = post(&http, &second.url(), Some(""), &batch(3)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "Idempotency-Key", "{refused}");

    // A producer-supplied id, sent twice (once to each instance): written once.
    let event = json!({"id": "inv-77-paid", "type": "invoice.paid", "tenant": "acme", "data": {"amount": 5}});
    let (status, answer, _) = post(&http, &first.url(), None, &event).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ids(&answer), ["inv-77-paid"]);
    let (status, answer, _) = post(&http, &second.url(), None, &event).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ids(&answer), ["inv-77-paid"]);
    // In a batch beside a new event: only the new one is written.
    let (status, answer, _) = post(
        &http,
        &second.url(),
        None,
        &json!([event, {"id": "inv-78-paid", "type": "invoice.paid", "tenant": "acme"}]),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(ids(&answer), ["inv-77-paid", "inv-78-paid"]);
    // The same id with another body.
    let changed = json!({"id": "inv-77-paid", "type": "invoice.paid", "tenant": "acme", "data": {"amount": 6}});
    let (status, refused, _) = post(&http, &first.url(), None, &changed).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["code"], "idempotency_key_reused",
        "{refused}"
    );
    assert_eq!(refused["error"]["field"], "id", "{refused}");
    // In a batch, the whole request is refused, naming the event: its new event too.
    let (status, refused, _) = post(
        &http,
        &second.url(),
        None,
        &json!([{"id": "inv-79-paid", "type": "invoice.paid", "tenant": "acme"}, changed]),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "[1].id", "{refused}");

    let counts = written(&deployment).await;
    let mut want: HashMap<String, usize> = original.iter().map(|id| (id.clone(), 1)).collect();
    want.insert("inv-77-paid".into(), 1);
    want.insert("inv-78-paid".into(), 1);
    assert_eq!(counts, want, "each event on the events topic once");
}

/// Appends a claim on the admin's `key` for `body`, made `age` ago by an instance that
/// then vanished (it never completes).
async fn vanished_claim(deployment: &Deployment, key: &str, body: &Value, age: Duration) {
    use hookline_domain::idempotency::{
        fingerprint, Entry, IdempotencyKey, IdempotencyRecord, Scope, CLAIM_TTL,
    };
    let at = chrono::Utc::now() - chrono::Duration::from_std(age).unwrap();
    let key = IdempotencyKey {
        tenant: None,
        scope: Scope::Request,
        key: key.to_owned(),
    };
    let record = IdempotencyRecord {
        key: key.clone(),
        entry: Entry::Claim {
            claim: format!("vanished-{}", ulid::Ulid::new()),
            instance: "gone".into(),
            fingerprint: fingerprint(body),
            at,
            expires: at + chrono::Duration::from_std(CLAIM_TTL).unwrap(),
        },
    };
    hookline_e2e::produce(
        &hookline_e2e::producer().unwrap(),
        &deployment.topic("idempotency"),
        Some(&key.record_key()),
        &serde_json::to_vec(&record).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_held_key_is_answered_409_and_a_vanished_holder_expires() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let http = reqwest::Client::new();

    // A holder that is (as far as anyone can tell) still writing: the retry waits,
    // then gets 409 with Retry-After, and nothing is written.
    let held = batch(10);
    vanished_claim(&deployment, "held", &held, Duration::ZERO).await;
    // A holder that vanished 28 s ago: its claim expires 2 s into the wait (which
    // lasts at most the request's produce timeout, 5 s), then the request claims
    // again, wins and is written.
    let expiring = batch(11);
    vanished_claim(&deployment, "expiring", &expiring, Duration::from_secs(28)).await;

    let base = ingest.url();
    let ((status, refused, retry_after), (won_status, won, _)) = tokio::join!(
        post(&http, &base, Some("held"), &held),
        post(&http, &base, Some("expiring"), &expiring)
    );
    assert_eq!(status, 409, "{refused}");
    assert_eq!(
        refused["error"]["code"], "idempotency_in_progress",
        "{refused}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(won_status, 202, "{won}");
    assert_eq!(ids(&won).len(), 2, "{won}");

    let counts = written(&deployment).await;
    let want: HashMap<String, usize> = ids(&won).into_iter().map(|id| (id, 1)).collect();
    assert_eq!(
        counts, want,
        "only the request whose holder expired is written"
    );
}

#[tokio::test]
async fn ingest_refuses_an_idempotency_window_under_a_minute() {
    let deployment = Deployment::new();
    let mut proc = deployment
        .spawn_with("hookline-ingest", &[("HOOKLINE_IDEMPOTENCY_WINDOW", "10s")])
        .unwrap();
    assert!(
        proc.wait_ready(Duration::from_secs(30)).await.is_err(),
        "ingest started with a 10s window"
    );
    let log = std::fs::read_to_string(&proc.log_path).unwrap();
    assert!(
        log.contains("HOOKLINE_IDEMPOTENCY_WINDOW") && log.contains("at least 1m"),
        "{log}"
    );
}
