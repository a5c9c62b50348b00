//! The message log: "did invoice X reach ERP Y, when, with what answer", through the
//! API, from the topics (any ingest instance answers the same), beyond the old cap of
//! 100 attempts per subscription; resending one message with its `webhook-id`; and a
//! tenant key sees its own tenant's events and deliveries only.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hookline_e2e::{eventually, Api, Behaviour, Deployment, Pipeline};
use reqwest::Method;
use serde_json::{json, Value};

const ROLES: [&str; 3] = ["events:publish", "subscriptions:manage", "attempts:read"];

async fn get(api: &Api, path: &str) -> (u16, Value) {
    api.call(Method::GET, path, None).await.unwrap()
}

/// Every page of `sub`'s attempts under `filters` (`&name=value…`), `limit` a page,
/// newest first; checks each page's `has_more`/`next_cursor` as it goes. Returns the
/// attempts and the number of pages.
async fn all_pages(api: &Api, sub: &str, filters: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut cursor = String::new();
    for pages in 1.. {
        let path = format!("/v1/subscriptions/{sub}/attempts?limit={limit}{filters}{cursor}");
        let (status, page) = get(api, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let data = page["data"].as_array().unwrap();
        all.extend(data.iter().cloned());
        if page["has_more"] != json!(true) {
            assert_eq!(page["next_cursor"], Value::Null, "{page}");
            return (all, pages);
        }
        assert_eq!(data.len(), limit, "a page that is not the last is full");
        cursor = format!("&cursor={}", page["next_cursor"].as_str().unwrap());
    }
    unreachable!()
}

/// Reads with `read` until `done` holds of what it read or `patience` passes; returns
/// the last read.
async fn poll<T, F, Fut>(patience: Duration, read: F, done: impl Fn(&T) -> bool) -> T
where
    T: Default,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let last = Mutex::new(T::default());
    eventually(patience, || async {
        let value = read().await;
        let held = done(&value);
        if let Ok(mut last) = last.lock() {
            *last = value;
        }
        held
    })
    .await;
    last.into_inner().unwrap_or_default()
}

fn at(attempt: &Value) -> i64 {
    attempt["at"]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .map(|t| t.timestamp_micros())
        .unwrap_or_else(|| panic!("no time: {attempt}"))
}

fn event_ids(attempts: &[Value]) -> Vec<String> {
    attempts
        .iter()
        .map(|a| a["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_log_shows_each_delivery_its_attempts_and_resends_one() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_RETRY_SCHEDULE", "1s,1s");
    let p = Pipeline::start(deployment).await.unwrap();
    let (_, key) = p.api.create_key("acme", &ROLES).await.unwrap();
    let acme = Api::new(p.ingest.url()).with_token(&key);
    let (_, other) = p.api.create_key("globex", &ROLES).await.unwrap();
    let globex = Api::new(p.ingest.url()).with_token(&other);

    // The ERP answers 204; the ledger 500 once, then 204.
    p.receiver.behave("ledger", Behaviour::FailFirst(500, 1));
    let (erp, _) = acme
        .subscribe(json!({"url": p.receiver.url("erp"), "event_types": ["invoice.*"]}))
        .await
        .unwrap();
    let (ledger, _) = acme
        .subscribe(json!({"url": p.receiver.url("ledger"), "event_types": ["invoice.paid"]}))
        .await
        .unwrap();
    let invoice =
        json!({"id": "inv_x", "type": "invoice.paid", "tenant": "acme", "data": {"amount": 10}});
    assert_eq!(acme.send_events(invoice).await.unwrap(), ["inv_x"]);

    // The event, with both subscriptions and where each delivery stands.
    let event = poll(
        Duration::from_secs(20),
        || async { get(&acme, "/v1/events/inv_x").await.1 },
        |event: &Value| {
            event["deliveries"]
                .as_array()
                .is_some_and(|d| d.len() == 2 && d.iter().all(|d| d["status"] == "delivered"))
        },
    )
    .await;
    assert_eq!(
        event["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{event}"
    );
    assert!(
        event["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "delivered"),
        "{event}"
    );
    assert_eq!(event["tenant"], "acme");
    assert_eq!(event["type"], "invoice.paid");
    assert_eq!(event["event"]["data"]["amount"], 10, "{event}");
    let subs: BTreeSet<&str> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["subscription_id"].as_str().unwrap())
        .collect();
    assert_eq!(subs, BTreeSet::from([erp.as_str(), ledger.as_str()]));
    let to_ledger = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subscription_id"] == ledger.as_str())
        .unwrap();
    assert_eq!(to_ledger["attempts"], 2, "{event}");
    let message = to_ledger["message_id"].as_str().unwrap().to_owned();
    assert!(p
        .receiver
        .on("ledger")
        .iter()
        .all(|r| r.header("webhook-id") == message));

    // The delivery: each attempt with its answer, oldest first.
    let delivery_path = format!("/v1/deliveries/{message}");
    let (status, delivery) = get(&acme, &delivery_path).await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["event_id"], "inv_x");
    assert_eq!(delivery["subscription_id"], ledger.as_str());
    assert_eq!(delivery["status"], "delivered");
    let answers: Vec<(Value, Value, Value)> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].clone(),
                a["outcome"].clone(),
                a["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            (json!(1), json!("http_5xx"), json!(500)),
            (json!(2), json!("success"), json!(204))
        ],
        "{delivery}"
    );

    // More than the old cap of 100 attempts on one subscription.
    let created: BTreeSet<String> = p
        .send("acme", "invoice.created", 120)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let everything = poll(
        Duration::from_secs(30),
        || async { all_pages(&acme, &erp, "", 100).await.0 },
        |all: &Vec<Value>| all.len() >= 121,
    )
    .await;
    let mut expected = created.clone();
    expected.insert("inv_x".into());
    let listed = event_ids(&everything);
    assert_eq!(listed.len(), 121, "one attempt each");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let times: Vec<i64> = everything.iter().map(at).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");

    // Each filter, across pages: exactly the expected set, no duplicates, no gaps.
    let (of_type, pages) = all_pages(&acme, &erp, "&event_type=invoice.created", 50).await;
    assert_eq!(pages, 3);
    let ids = event_ids(&of_type);
    assert_eq!(ids.len(), 120);
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), created);
    let (since, until) = (&everything[90], &everything[20]);
    let filter = format!(
        "&since={}&until={}",
        since["at"].as_str().unwrap(),
        until["at"].as_str().unwrap()
    );
    let (in_range, _) = all_pages(&acme, &erp, &filter, 7).await;
    let wanted: Vec<&Value> = everything
        .iter()
        .filter(|a| (at(since)..=at(until)).contains(&at(a)))
        .collect();
    assert!(wanted.len() >= 71, "{}", wanted.len());
    assert_eq!(
        event_ids(&in_range),
        event_ids(&wanted.into_iter().cloned().collect::<Vec<_>>())
    );
    for (status, outcome, code) in [
        ("success", "success", 204),
        ("http_5xx", "http_5xx", 500),
        ("failed", "http_5xx", 500),
    ] {
        let (found, _) = all_pages(&acme, &ledger, &format!("&status={status}"), 10).await;
        assert_eq!(found.len(), 1, "{status}: {found:?}");
        assert_eq!(found[0]["outcome"], outcome);
        assert_eq!(found[0]["status"], code);
    }
    let (none, _) = all_pages(&acme, &ledger, "&status=timeout", 10).await;
    assert!(none.is_empty());
    for (query, field) in [
        ("status=ok", "status"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("cursor=nonsense", "cursor"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
    ] {
        let path = format!("/v1/subscriptions/{erp}/attempts?{query}");
        let (status, error) = get(&acme, &path).await;
        assert_eq!(status, 422, "{query}: {error}");
        assert_eq!(error["error"]["field"], field, "{query}: {error}");
    }

    // A second instance, started now, answers the same from the topics as soon as it
    // is ready (it reads what they held before it gets ready).
    let second = p.deployment.start("hookline-ingest").await.unwrap();
    let on_second = Api::new(second.url()).with_token(&key);
    assert_eq!(get(&on_second, &delivery_path).await.1, delivery);
    assert_eq!(get(&on_second, "/v1/events/inv_x").await.1, event);
    assert!(all_pages(&on_second, &erp, "", 100).await.0 == everything);
    let log = std::fs::read_to_string(&second.log_path).unwrap();
    assert!(log.contains("message log caught up"), "{log}");

    // Resent: delivered again with the same webhook-id, a new attempt in the log.
    let resend = format!("{delivery_path}/resend");
    let (status, resent) = acme.call(Method::POST, &resend, None).await.unwrap();
    assert_eq!(status, 202, "{resent}");
    assert_eq!(resent["message_id"], message.as_str());
    assert!(
        p.receiver
            .wait_until(Duration::from_secs(20), |r| r
                .iter()
                .filter(|r| r.path == "ledger")
                .count()
                == 3)
            .await
    );
    assert!(p
        .receiver
        .on("ledger")
        .iter()
        .all(|r| r.header("webhook-id") == message));
    let shown = poll(
        Duration::from_secs(20),
        || async { get(&on_second, &delivery_path).await.1 },
        |shown: &Value| shown["attempts"].as_array().is_some_and(|a| a.len() == 3),
    )
    .await;
    assert_eq!(
        shown["attempts"].as_array().map(Vec::len),
        Some(3),
        "{shown}"
    );
    assert_eq!(shown["attempts"][2]["outcome"], "success");
    assert_eq!(shown["status"], "delivered");

    // Another tenant's key: exactly as missing ids.
    let missing = "msg_00000000000000000000000000000000";
    for (method, path, missing_path) in [
        (
            Method::GET,
            "/v1/events/inv_x".to_owned(),
            "/v1/events/inv_none".to_owned(),
        ),
        (
            Method::GET,
            delivery_path.clone(),
            format!("/v1/deliveries/{missing}"),
        ),
        (
            Method::POST,
            resend.clone(),
            format!("/v1/deliveries/{missing}/resend"),
        ),
        (
            Method::GET,
            format!("/v1/subscriptions/{ledger}/attempts"),
            "/v1/subscriptions/sub_01JZZZZZZZZZZZZZZZZZZZZZZZ/attempts".to_owned(),
        ),
    ] {
        let theirs = globex.call(method.clone(), &path, None).await.unwrap();
        let absent = globex
            .call(method.clone(), &missing_path, None)
            .await
            .unwrap();
        assert_eq!(theirs.0, 404, "{method} {path}: {}", theirs.1);
        assert_eq!(theirs, absent, "{method} {path}");
    }
    let (status, _) = acme
        .call(Method::POST, "/v1/deliveries/not-an-id/resend", None)
        .await
        .unwrap();
    assert_eq!(status, 404);

    // Never to a disabled or deleted subscription.
    let one = format!("/v1/subscriptions/{ledger}");
    let (status, _) = acme
        .call(Method::PATCH, &one, Some(json!({"enabled": false})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, error) = acme.call(Method::POST, &resend, None).await.unwrap();
    assert_eq!(
        (status, &error["error"]["code"]),
        (409, &json!("conflict")),
        "{error}"
    );
    let (status, _) = acme.call(Method::DELETE, &one, None).await.unwrap();
    assert_eq!(status, 204);
    let (status, error) = acme.call(Method::POST, &resend, None).await.unwrap();
    assert_eq!(status, 409, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("deleted"));
    assert_eq!(p.receiver.on("ledger").len(), 3, "nothing more was sent");
}
