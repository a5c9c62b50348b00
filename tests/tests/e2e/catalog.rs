//! The event catalog through the API: `GET /v1/event-types` lists the finance types
//! with their schemas; with validation on (the shipped default), an event breaking its
//! type's schema is a `422` naming the path and the rule, and nothing is written;
//! unknown types are allowed or refused by setting; an operator's file adds types; the
//! admin adds types through the API and every ingest instance checks them; subscriptions
//! name known types; records produced straight to Kafka that break their schema go to
//! the events DLQ with the reason while the pipeline delivers the rest.

use std::time::Duration;

use hookline_e2e::{eventually, producer, read_all, record_count, Api, Deployment, Pipeline};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use reqwest::Method;
use serde_json::{json, Value};

/// A deployment with the shipped validation default (the harness turns it off).
fn validating() -> Deployment {
    let mut deployment = Deployment::new();
    deployment.env.remove("HOOKLINE_EVENT_VALIDATION");
    deployment
}

#[tokio::test]
async fn events_that_break_their_schema_are_refused_naming_path_and_rule() {
    let deployment = validating();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let admin = Api::new(ingest.url());
    let (_, key) = admin.create_key("acme", &["events:publish"]).await.unwrap();
    let acme = Api::new(ingest.url()).with_token(&key);

    // Any valid credential reads the catalog, a tenant key of any role included.
    let (status, listed) = acme
        .call(Method::GET, "/v1/event-types", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{listed}");
    let types = listed["data"].as_array().unwrap();
    let paid = types
        .iter()
        .find(|t| t["type"] == "invoice.paid")
        .expect("invoice.paid is listed");
    assert_eq!(paid["source"], "builtin");
    assert_eq!(
        paid["schema"]["required"],
        json!(["invoice_id", "amount_paid", "currency"])
    );
    for name in [
        "card_transaction.settled",
        "supplier.changed",
        "invoice_correction.created",
    ] {
        assert!(types.iter().any(|t| t["type"] == name), "{name}");
    }
    let (status, _) = Api::anonymous(ingest.url())
        .call(Method::GET, "/v1/event-types", None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    let good = json!({"type": "invoice.paid", "tenant": "acme",
        "data": {"invoice_id": "in_1", "amount_paid": 125000, "currency": "EUR"}});
    let refused = [
        (
            json!({"type": "invoice.paid", "tenant": "acme",
                "data": {"invoice_id": "in_1", "amount_paid": -1, "currency": "EUR"}}),
            "data.amount_paid",
            "minimum",
        ),
        (
            json!({"type": "payment.succeeded", "tenant": "acme",
                "data": {"payment_id": "p_1", "amount": 100}}),
            "data",
            "required",
        ),
        (
            json!([good.clone(), {"type": "card_transaction.settled", "tenant": "acme",
                "data": {"transaction_id": "t", "card_id": "c", "amount": 1, "currency": "EUR",
                         "fx": {"original_amount": 1, "original_currency": "usd", "rate": 1.1}}}]),
            "[1].data.fx.original_currency",
            "pattern",
        ),
    ];
    for (body, field, rule) in refused {
        let (status, error) = acme
            .call(Method::POST, "/v1/events", Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["code"], "invalid_field");
        assert_eq!(error["error"]["field"], field, "{error}");
        assert_eq!(error["error"]["rule"], rule, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{message}");
    }
    assert_eq!(
        record_count(&deployment.topic("events")).await.unwrap(),
        0,
        "nothing of a refused request is written"
    );
    assert_eq!(acme.send_events(good).await.unwrap().len(), 1);
    // Unknown types are allowed by default, unchecked.
    acme.send_events(json!({"type": "ledger.closed", "tenant": "acme", "data": {"x": 1}}))
        .await
        .unwrap();
    assert_eq!(record_count(&deployment.topic("events")).await.unwrap(), 2);
}

#[tokio::test]
async fn unknown_types_can_be_refused_and_operators_add_their_own() {
    let deployment = validating();
    let file = std::env::temp_dir().join(format!("{}event-types.json", deployment.prefix));
    std::fs::write(
        &file,
        json!({"types": [{"type": "ledger.closed", "description": "A period was closed.",
            "schema": {"type": "object", "required": ["period"],
                       "properties": {"period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}}}}]})
        .to_string(),
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let ingest = deployment
        .start_with(
            "hookline-ingest",
            &[
                ("HOOKLINE_EVENT_TYPES_UNKNOWN", "refuse"),
                ("HOOKLINE_EVENT_TYPES_FILE", &path),
            ],
        )
        .await
        .unwrap();
    let admin = Api::new(ingest.url());
    let (status, error) = admin
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "no.such.type", "tenant": "acme"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "type");
    assert_eq!(error["error"]["rule"], "known_type");

    let (_, listed) = admin
        .call(Method::GET, "/v1/event-types", None)
        .await
        .unwrap();
    let own = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "ledger.closed")
        .cloned()
        .expect("the operator's type is listed");
    assert_eq!(own["source"], "file");
    let (status, error) = admin
        .call(
            Method::POST,
            "/v1/events",
            Some(
                json!({"type": "ledger.closed", "tenant": "acme", "data": {"period": "November"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "data.period");
    admin
        .send_events(
            json!({"type": "ledger.closed", "tenant": "acme", "data": {"period": "2026-11"}}),
        )
        .await
        .unwrap();

    // A file with a broken schema stops ingest at start-up, naming the type.
    std::fs::write(
        &file,
        json!({"types": [{"type": "ledger.opened", "schema": {"type": 12}}]}).to_string(),
    )
    .unwrap();
    let mut refused = deployment
        .spawn_with("hookline-ingest", &[("HOOKLINE_EVENT_TYPES_FILE", &path)])
        .unwrap();
    assert!(refused
        .wait_ready(std::time::Duration::from_secs(30))
        .await
        .is_err());
    let log = std::fs::read_to_string(&refused.log_path).unwrap();
    assert!(log.contains("ledger.opened"), "{log}");
    let _ = std::fs::remove_file(&file);
}

/// The `ledger.closed` type the admin adds in these tests.
fn ledger_closed() -> Value {
    json!({"type": "ledger.closed", "description": "A period was closed.",
        "schema": {"type": "object", "required": ["period"],
                   "properties": {"period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}}}})
}

#[tokio::test]
async fn admin_types_reach_every_instance_and_subscriptions_name_known_types() {
    let mut deployment = validating();
    deployment.set("HOOKLINE_SUBSCRIPTION_EVENT_TYPES", "known");
    let one = deployment.start("hookline-ingest").await.unwrap();
    let two = deployment.start("hookline-ingest").await.unwrap();
    let (admin, other) = (Api::new(one.url()), Api::new(two.url()));

    // A schema that is not valid JSON Schema is refused, naming it.
    let (status, error) = admin
        .call(
            Method::POST,
            "/v1/event-types",
            Some(json!({"type": "ledger.closed", "schema": {"type": "no such type"}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "schema");
    // A tenant key, whatever its roles, cannot add types.
    let (_, key) = admin
        .create_key(
            "acme",
            &["events:publish", "subscriptions:manage", "attempts:read"],
        )
        .await
        .unwrap();
    let acme = Api::new(one.url()).with_token(&key);
    let (status, error) = acme
        .call(Method::POST, "/v1/event-types", Some(ledger_closed()))
        .await
        .unwrap();
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["code"], "forbidden");

    let (status, created) = admin
        .call(Method::POST, "/v1/event-types", Some(ledger_closed()))
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source"], "api");
    let (status, _) = admin
        .call(Method::POST, "/v1/event-types", Some(ledger_closed()))
        .await
        .unwrap();
    assert_eq!(status, 409, "it exists: PUT replaces it");

    // The second instance lists it (from the event types topic) and checks events with it.
    let listed = eventually(Duration::from_secs(20), || async {
        let (_, listed) = other
            .call(Method::GET, "/v1/event-types", None)
            .await
            .unwrap();
        listed["data"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t["type"] == "ledger.closed"))
    })
    .await;
    assert!(listed, "ledger.closed reaches the second instance");
    let (status, error) = other
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "ledger.closed", "tenant": "acme", "data": {"period": "Nov"}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "data.period");
    assert_eq!(error["error"]["rule"], "pattern");
    other
        .send_events(
            json!({"type": "ledger.closed", "tenant": "acme", "data": {"period": "2026-11"}}),
        )
        .await
        .unwrap();

    // Subscriptions name known types, or patterns matching some.
    let subscribe = |patterns: Value| json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": patterns});
    let (status, error) = other
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(subscribe(json!(["invoice.*", "ledger.opened"]))),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "event_types[1]");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ledger.opened"));
    let (status, created) = other
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(subscribe(json!(["ledger.*", "invoice.paid"]))),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, error) = other
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"event_types": ["payroll.*"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "event_types[0]");

    // Built-in types cannot be deleted; the API's can, on every instance.
    let (status, _) = admin
        .call(Method::DELETE, "/v1/event-types/invoice.paid", None)
        .await
        .unwrap();
    assert_eq!(status, 409);
    let (status, _) = admin
        .call(Method::DELETE, "/v1/event-types/ledger.closed", None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, _) = admin
        .call(Method::GET, "/v1/event-types/ledger.closed", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    let gone = eventually(Duration::from_secs(20), || async {
        let (status, _) = other
            .call(Method::GET, "/v1/event-types/ledger.closed", None)
            .await
            .unwrap();
        status == 404
    })
    .await;
    assert!(gone, "the deletion reaches the second instance");
}

#[tokio::test]
async fn records_produced_straight_to_kafka_that_break_their_schema_go_to_the_events_dlq() {
    let p = Pipeline::start(validating()).await.unwrap();
    p.subscribe("acme", &["invoice.*"], "direct", json!({}))
        .await
        .unwrap();
    let paid = |id: &str, amount: i64| {
        json!({"id": id, "type": "invoice.paid", "tenant": "acme",
            "data": {"invoice_id": "in_1", "amount_paid": amount, "currency": "EUR"}})
    };
    let kafka = producer().unwrap();
    let topic = p.deployment.topic("events");
    // One partition (key `acme`), in order: valid, broken, broken under a made-up
    // `hookline-validated` header, valid.
    let records = [
        (paid("direct-1", 100), None),
        (paid("direct-bad", -5), None),
        (paid("direct-forged", -6), Some("0123456789abcdef")),
        (paid("direct-2", 200), None),
    ];
    for (event, header) in &records {
        let payload = event.to_string();
        let mut record = FutureRecord::<str, str>::to(&topic)
            .key("acme")
            .payload(&payload);
        if let Some(version) = header {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "hookline-validated",
                value: Some(*version),
            }));
        }
        kafka
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // Through ingest: checked there, marked, and delivered.
    p.api.send_events(paid("via-ingest", 300)).await.unwrap();

    assert!(
        p.receiver
            .wait_until(Duration::from_secs(30), |got| got.len() >= 3)
            .await,
        "the valid events are delivered"
    );
    assert!(
        p.router
            .wait_metric("hookline_router_events_total", 5.0, Duration::from_secs(30))
            .await
    );
    let mut delivered: Vec<String> = p
        .receiver
        .on("direct")
        .iter()
        .filter_map(|r| r.json["id"].as_str().map(str::to_owned))
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered, ["direct-1", "direct-2", "via-ingest"]);

    let dead = read_all(&p.deployment.topic("events.dlq")).unwrap();
    let mut ids: Vec<String> = dead
        .iter()
        .map(|r| {
            let event: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let reason = &r.headers["hookline-dlq-reason"];
            assert!(
                reason.contains("data.amount_paid") && reason.contains("minimum"),
                "the reason names the path and the rule: {reason}"
            );
            event["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["direct-bad", "direct-forged"]);
}
