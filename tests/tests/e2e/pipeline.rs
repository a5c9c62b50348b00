//! The pipeline end to end: ingest → events → router → deliveries → delivery → receivers,
//! on a real broker, with the binaries as processes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hookline_domain::ids::message_id;
use hookline_domain::signing::WebhookSecret;
use hookline_domain::subscription::EventTypePattern;
use hookline_e2e::{
    assert_same, produce, producer, read_all, Api, Deployment, Pipeline, Received, Receiver,
};
use serde_json::{json, Value};

const TYPES: [&str; 6] = [
    "payment.succeeded",
    "payment.failed",
    "invoice.paid",
    "invoice.created",
    "expense.created",
    "customer.changed",
];
const TENANTS: [&str; 4] = ["acme", "globex", "initech", "nobody"];

/// A subscription as the test knows it.
struct Sub {
    id: String,
    name: &'static str,
    tenant: &'static str,
    patterns: Vec<&'static str>,
    secret: WebhookSecret,
    enabled: bool,
}

impl Sub {
    fn wants(&self, tenant: &str, event_type: &str) -> bool {
        self.enabled
            && self.tenant == tenant
            && self
                .patterns
                .iter()
                .any(|p| EventTypePattern::parse(p).unwrap().matches(event_type))
    }
}

fn event(seq: u64) -> (String, &'static str, &'static str) {
    let event_type = TYPES[(seq % 6) as usize];
    let tenant = TENANTS[((seq / 6) % 4) as usize];
    (format!("seq-{seq}"), event_type, tenant)
}

/// (seq, subscription name) pairs a set of events should produce.
fn expected(seqs: impl Iterator<Item = u64>, subs: &[Sub]) -> BTreeSet<(u64, &'static str)> {
    let mut pairs = BTreeSet::new();
    for seq in seqs {
        let (_, event_type, tenant) = event(seq);
        for sub in subs.iter().filter(|s| s.wants(tenant, event_type)) {
            pairs.insert((seq, sub.name));
        }
    }
    pairs
}

/// (seq, subscription name) pairs received, checking every request on the way.
fn received_pairs(received: &[Received], subs: &[Sub]) -> BTreeSet<(u64, &'static str)> {
    let by_id: HashMap<&str, &Sub> = subs.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut first_ids: HashMap<(u64, &str), String> = HashMap::new();
    let mut pairs = BTreeSet::new();
    for r in received {
        let sub = by_id
            .get(r.path.as_str())
            .unwrap_or_else(|| panic!("request on unknown path {}", r.path));
        let webhook_id = r.header("webhook-id");
        let timestamp: i64 = r
            .header("webhook-timestamp")
            .parse()
            .expect("numeric webhook-timestamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        sub.secret
            .verify(
                webhook_id,
                timestamp,
                &r.body,
                r.header("webhook-signature"),
                now,
                300,
            )
            .unwrap_or_else(|e| panic!("signature of {webhook_id} to {}: {e}", sub.name));
        standardwebhooks::Webhook::new(&sub.secret.expose())
            .and_then(|verifier| verifier.verify(&r.body, &r.headers))
            .unwrap_or_else(|e| {
                panic!(
                    "official verifier rejects {webhook_id} to {}: {e:?}",
                    sub.name
                )
            });
        assert_eq!(r.header("idempotency-key"), webhook_id);
        assert_eq!(r.header("content-type"), "application/json");
        let body = &r.json;
        let event_id = body["id"].as_str().expect("body.id");
        assert_eq!(
            webhook_id,
            message_id(event_id, &sub.id),
            "webhook-id is derived from event and subscription"
        );
        assert_eq!(body["tenant"], sub.tenant);
        assert!(
            body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "timestamp: {body}"
        );
        let seq = body["data"]["seq"].as_u64().expect("data.seq");
        let (_, event_type, tenant) = event(seq);
        assert_eq!(
            (
                body["type"].as_str().unwrap(),
                body["tenant"].as_str().unwrap()
            ),
            (event_type, tenant)
        );
        // Duplicates (at-least-once) must carry the same webhook-id.
        let first = first_ids
            .entry((seq, sub.name))
            .or_insert_with(|| webhook_id.to_owned());
        assert_eq!(first, webhook_id, "a duplicate carries the same webhook-id");
        pairs.insert((seq, sub.name));
    }
    pairs
}

/// Sends events `seqs`: even tens over HTTP in batches, the others straight to the
/// events topic by a plain Kafka producer (half of those without an id).
async fn send(api: &Api, deployment: &Deployment, seqs: std::ops::Range<u64>) {
    let kafka = producer().unwrap();
    let topic = deployment.topic("events");
    let (http, direct): (Vec<u64>, Vec<u64>) = seqs.partition(|s| (s / 10) % 2 == 0);
    for chunk in http.chunks(100) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|&seq| {
                let (_, event_type, tenant) = event(seq);
                json!({"type": event_type, "tenant": tenant, "data": {"seq": seq}})
            })
            .collect();
        let ids = api.send_events(Value::Array(events)).await.unwrap();
        assert_eq!(ids.len(), chunk.len());
    }
    for seq in direct {
        let (id, event_type, tenant) = event(seq);
        let mut value = json!({"type": event_type, "tenant": tenant, "data": {"seq": seq},
                               "occurred_at": "2026-11-24T12:00:00Z"});
        if seq % 2 == 0 {
            value["id"] = json!(format!("ext_{id}"));
        }
        produce(&kafka, &topic, Some(tenant), value.to_string().as_bytes())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_exactly_the_matching_subscriptions() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let router = deployment.start("hookline-router").await.unwrap();
    let _delivery = deployment.start("hookline-delivery").await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    let api = Api::new(ingest.url());

    let plan: [(&str, &str, &[&str], bool); 7] = [
        (
            "acme-erp",
            "acme",
            &["invoice.*", "payment.succeeded"],
            true,
        ),
        ("acme-all", "acme", &["*"], true),
        ("acme-paid", "acme", &["invoice.paid"], true),
        ("acme-exp", "acme", &["expense.*"], true),
        ("globex-pay", "globex", &["payment.*"], true),
        (
            "globex-mix",
            "globex",
            &["expense.created", "invoice.*", "payment.failed"],
            true,
        ),
        ("initech-off", "initech", &["*"], false),
    ];
    let mut subs = Vec::new();
    for (name, tenant, patterns, enabled) in plan {
        let (id, secret) = api
            .subscribe(json!({"tenant": tenant, "url": receiver.url("pending"),
                              "event_types": patterns, "enabled": enabled}))
            .await
            .unwrap();
        // Point the subscription at a path named by its id.
        let (status, _) = api
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/subscriptions/{id}"),
                Some(json!({"url": receiver.url(&id)})),
            )
            .await
            .unwrap();
        assert_eq!(status, 200);
        subs.push(Sub {
            id,
            name,
            tenant,
            patterns: patterns.to_vec(),
            secret: WebhookSecret::parse(&secret).unwrap(),
            enabled,
        });
    }

    // Phase A: 1,000 events, plus garbage records the router must step over.
    let kafka = producer().unwrap();
    for garbage in [&b"not json"[..], br#"{"tenant":"acme"}"#, br#"[1,2]"#] {
        produce(&kafka, &deployment.topic("events"), None, garbage)
            .await
            .unwrap();
    }
    send(&api, &deployment, 0..1000).await;
    let want_a = expected(0..1000, &subs);
    assert!(
        want_a.len() > 600,
        "the plan fans out: {} pairs",
        want_a.len()
    );
    let arrived = receiver
        .wait_until(Duration::from_secs(180), |r| {
            received_pairs(r, &subs).len() >= want_a.len()
        })
        .await;
    assert!(
        arrived,
        "phase A: {} of {} pairs arrived",
        received_pairs(&receiver.received(), &subs).len(),
        want_a.len()
    );
    assert_same(
        &received_pairs(&receiver.received(), &subs),
        &want_a,
        "phase A pairs",
    );
    // Every phase A record is routed (unmatched ones too) before the subscriptions change.
    let routed = router
        .wait_metric(
            "hookline_router_events_total",
            1003.0,
            Duration::from_secs(60),
        )
        .await;
    assert!(routed, "the router consumed all phase A records");

    // Mid-run changes, no restart: a new subscription, one deleted, one disabled.
    let (id, secret) = api
        .subscribe(json!({"tenant": "globex", "url": receiver.url("x"), "event_types": ["customer.changed"]}))
        .await
        .unwrap();
    api.call(
        reqwest::Method::PATCH,
        &format!("/v1/subscriptions/{id}"),
        Some(json!({"url": receiver.url(&id)})),
    )
    .await
    .unwrap();
    subs.push(Sub {
        id,
        name: "globex-new",
        tenant: "globex",
        patterns: vec!["customer.changed"],
        secret: WebhookSecret::parse(&secret).unwrap(),
        enabled: true,
    });
    let all = subs.iter().position(|s| s.name == "acme-all").unwrap();
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/subscriptions/{}", subs[all].id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 204);
    subs[all].enabled = false;
    let paid = subs.iter().position(|s| s.name == "acme-paid").unwrap();
    api.call(
        reqwest::Method::PATCH,
        &format!("/v1/subscriptions/{}", subs[paid].id),
        Some(json!({"enabled": false})),
    )
    .await
    .unwrap();
    subs[paid].enabled = false;

    // Phase B: 300 more events under the new subscription set.
    send(&api, &deployment, 1000..1300).await;
    let want_b = expected(1000..1300, &subs);
    assert!(want_b.iter().any(|(_, name)| *name == "globex-new"));
    let want_all: BTreeSet<_> = want_a.union(&want_b).copied().collect();
    let arrived = receiver
        .wait_until(Duration::from_secs(120), |r| {
            received_pairs(r, &subs).len() >= want_all.len()
        })
        .await;
    assert!(
        arrived,
        "phase B: {} of {} pairs",
        received_pairs(&receiver.received(), &subs).len(),
        want_all.len()
    );
    // Give stragglers (unexpected pairs) a moment to show up before the exact check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_same(
        &received_pairs(&receiver.received(), &subs),
        &want_all,
        "all pairs",
    );

    // The garbage went to the events DLQ with a reason and its source position.
    let dead = read_all(&deployment.topic("events.dlq")).unwrap();
    assert_eq!(dead.len(), 3, "three garbage records dead-lettered");
    for record in &dead {
        let headers = &record.headers;
        assert!(!headers["hookline-dlq-reason"].is_empty());
        assert_eq!(headers["hookline-source-topic"], deployment.topic("events"));
        assert!(headers["hookline-source-offset"].parse::<i64>().is_ok());
    }
}

/// The `data` of an event produced straight to Kafka reaches receivers byte for byte as
/// its producer wrote it; an event sent over HTTP arrives compact with sorted keys, as
/// it always has; filters and thin bodies read both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_arrives_as_its_producer_wrote_it() {
    let p = Pipeline::start(Deployment::new()).await.unwrap();
    let (_, secret) = p
        .subscribe("acme", &["invoice.*"], "full", json!({}))
        .await
        .unwrap();
    let big = json!({"filter": {"field": "amount", "op": "gte", "value": 100}});
    p.subscribe("acme", &["invoice.*"], "big", big)
        .await
        .unwrap();
    p.subscribe(
        "acme",
        &["invoice.*"],
        "small",
        json!({"filter": {"field": "amount", "op": "lt", "value": 100}}),
    )
    .await
    .unwrap();
    p.subscribe("acme", &["invoice.*"], "thin", json!({"payload": "thin"}))
        .await
        .unwrap();

    let data = "{ \"invoice_id\" : \"in_1\",\n  \"amount\": 150.50, \"note\": \"caf\\u00e9\" }";
    let record = format!(
        r#"{{"id": "ext_raw", "type": "invoice.paid", "tenant": "acme", "occurred_at": "2026-11-24T12:00:00Z", "data": {data}}}"#
    );
    let kafka = producer().unwrap();
    produce(
        &kafka,
        &p.deployment.topic("events"),
        Some("acme"),
        record.as_bytes(),
    )
    .await
    .unwrap();
    p.api
        .send_events(
            json!({"id": "http_raw", "type": "invoice.paid", "tenant": "acme",
            "occurred_at": "2026-11-24T12:00:00Z",
            "data": {"note": "café", "amount": 150.50, "invoice_id": "in_2"}}),
        )
        .await
        .unwrap();

    let arrived = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| {
            ["full", "big", "thin"].iter().all(|path| {
                ["ext_raw", "http_raw"]
                    .iter()
                    .all(|id| r.iter().any(|r| r.path == *path && r.json["id"] == *id))
            })
        })
        .await;
    let received = p.receiver.received();
    assert!(arrived, "not all arrived: {} requests", received.len());
    let request = |path: &str, id: &str| {
        received
            .iter()
            .find(|r| r.path == path && r.json["id"] == id)
            .unwrap_or_else(|| panic!("no {id} at {path}"))
    };
    let body = |path: &str, id: &str| String::from_utf8(request(path, id).body.to_vec()).unwrap();
    let tail = r#""tenant":"acme","timestamp":"2026-11-24T12:00:00.000Z","type":"invoice.paid"}"#;
    assert_eq!(
        body("full", "ext_raw"),
        format!(r#"{{"data":{data},"id":"ext_raw",{tail}"#)
    );
    assert_eq!(
        body("full", "http_raw"),
        format!(
            r#"{{"data":{{"amount":150.5,"invoice_id":"in_2","note":"café"}},"id":"http_raw",{tail}"#
        )
    );
    assert_eq!(body("big", "ext_raw"), body("full", "ext_raw"));
    assert!(
        received.iter().all(|r| r.path != "small"),
        "the filter read the data"
    );
    assert_eq!(request("thin", "ext_raw").json["entity_id"], "in_1");
    assert_eq!(request("thin", "http_raw").json["entity_id"], "in_2");

    // The signature is over the bytes sent, formatting and all.
    let sent = request("full", "ext_raw");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    WebhookSecret::parse(&secret)
        .unwrap()
        .verify(
            sent.header("webhook-id"),
            sent.header("webhook-timestamp").parse().unwrap(),
            &sent.body,
            sent.header("webhook-signature"),
            now,
            300,
        )
        .unwrap();
}
