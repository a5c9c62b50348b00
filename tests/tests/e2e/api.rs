//! The ingest API's contract: validation errors, nothing written on bad input, the
//! admin token, and the subscription lifecycle (tenant API keys: `tenancy`).

use hookline_e2e::{record_count, Api, Deployment};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn bad_input_gets_a_json_error_naming_the_field_and_writes_nothing() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_MAX_BODY_BYTES", "4096");
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"type\": ".to_vec(), 400, "$"),
        (br#"{"tenant": "acme"}"#.to_vec(), 422, "type"),
        (br#"{"type": "invoice.paid"}"#.to_vec(), 422, "tenant"),
        (
            br#"{"type": "invoice.paid", "tenant": "acme", "occurred_at": "yesterday"}"#.to_vec(),
            422,
            "occurred_at",
        ),
        // One bad event spoils the batch: nothing of it is written.
        (
            br#"[{"type": "a.b", "tenant": "acme"}, {"type": "a.b"}]"#.to_vec(),
            422,
            "[1].tenant",
        ),
        (b"[]".to_vec(), 422, "$"),
    ];
    for (body, status, field) in cases {
        let (got, error) = api.post_raw("/v1/events", body.clone()).await.unwrap();
        assert_eq!(got, status, "{}: {error}", String::from_utf8_lossy(&body));
        assert_eq!(error["error"]["field"], field, "{error}");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let big = format!(
        r#"{{"type": "a.b", "tenant": "acme", "data": "{}"}}"#,
        "x".repeat(5000)
    );
    let (status, error) = api.post_raw("/v1/events", big.into_bytes()).await.unwrap();
    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "payload_too_large");

    let bad_subscriptions = [
        (
            json!({"url": "https://erp.example/h", "event_types": ["*"]}),
            "tenant",
        ),
        (
            json!({"tenant": "acme", "url": "not a url", "event_types": ["*"]}),
            "url",
        ),
        (
            json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": []}),
            "event_types",
        ),
        (
            json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["in*v"]}),
            "event_types[0]",
        ),
    ];
    for (body, field) in bad_subscriptions {
        let (status, error) = api
            .call(Method::POST, "/v1/subscriptions", Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{error}");
    }

    assert_eq!(
        record_count(&deployment.topic("events")).await.unwrap(),
        0,
        "no event written"
    );
    assert_eq!(
        record_count(&deployment.topic("subscriptions"))
            .await
            .unwrap(),
        0,
        "no subscription written"
    );

    // The same server still accepts good input afterwards.
    let ids = api
        .send_events(json!({"type": "invoice.paid", "tenant": "acme", "id": "evt_given"}))
        .await
        .unwrap();
    assert_eq!(ids, ["evt_given"]);
    assert_eq!(record_count(&deployment.topic("events")).await.unwrap(), 1);
}

#[tokio::test]
async fn admin_token_guards_the_api_but_not_operations_endpoints() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_ADMIN_TOKEN", "s3cret-admin-token");
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let anonymous = Api::anonymous(ingest.url());
    let wrong = Api::new(ingest.url()).with_token("nope");
    let admin = Api::new(ingest.url()).with_token("s3cret-admin-token");
    let event = json!({"type": "payment.succeeded", "tenant": "acme"});

    for api in [&anonymous, &wrong] {
        let (status, body) = api
            .call(Method::POST, "/v1/events", Some(event.clone()))
            .await
            .unwrap();
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, _) = api
            .call(Method::GET, "/v1/subscriptions", None)
            .await
            .unwrap();
        assert_eq!(status, 401);
    }
    assert_eq!(admin.send_events(event).await.unwrap().len(), 1);
    let (status, _) = anonymous.call(Method::GET, "/metrics", None).await.unwrap();
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(&ingest.log_path).unwrap();
    assert!(
        !log.contains("s3cret-admin-token"),
        "the token never reaches the logs"
    );
}

#[tokio::test]
async fn subscription_lifecycle() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());

    let (status, created) = api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"tenant": "acme", "url": "https://erp.example/hooks",
                        "event_types": ["invoice.*", "payment.succeeded"], "description": "ERP"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap();
    let key = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    let decoded = base64_len(key);
    assert!((24..=64).contains(&decoded), "secret holds {decoded} bytes");
    assert_eq!(created["enabled"], true);

    let (status, shown) = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        shown["event_types"],
        json!(["invoice.*", "payment.succeeded"])
    );
    assert!(
        shown.get("secret").is_none(),
        "reads do not repeat the secret"
    );
    let (_, revealed) = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}/secret"), None)
        .await
        .unwrap();
    assert_eq!(revealed["secret"], secret);

    api.subscribe(json!({"tenant": "globex", "url": "https://g.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    let (_, listed) = api
        .call(Method::GET, "/v1/subscriptions?tenant=acme", None)
        .await
        .unwrap();
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    let (status, patched) = api
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"enabled": false, "event_types": ["*"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["event_types"], json!(["*"]));
    assert_eq!(patched["url"], "https://erp.example/hooks");

    let (status, _) = api
        .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, error) = api
        .call(Method::GET, &format!("/v1/subscriptions/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(error["error"]["code"], "not_found");
    let (status, _) = api
        .call(Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);

    // A second ingest reads the same state from the compacted topic.
    let other = deployment.start("hookline-ingest").await.unwrap();
    let (_, listed) = Api::new(other.url())
        .call(Method::GET, "/v1/subscriptions", None)
        .await
        .unwrap();
    let tenants: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["tenant"].as_str())
        .collect();
    assert_eq!(tenants, ["globex"]);
}

fn base64_len(text: &str) -> usize {
    let padding = text.chars().rev().take_while(|c| *c == '=').count();
    text.len() / 4 * 3 - padding
}
