//! The event catalog through the API: `GET /v1/event-types` lists the finance types
//! with their schemas; with validation on (the shipped default), an event breaking its
//! type's schema is a `422` naming the path and the rule, and nothing is written;
//! unknown types are allowed or refused by setting; an operator's file adds types.

use hookline_e2e::{record_count, Api, Deployment};
use reqwest::Method;
use serde_json::json;

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
