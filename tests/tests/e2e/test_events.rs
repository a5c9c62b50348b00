//! `POST /v1/subscriptions/{id}/test`: a `webhook.test` event sent to one subscription
//! through the delivery pipeline (signed, held to the egress policy), answered with
//! its first attempt; and the `webhook-attempt` header it carries like every delivery.

use std::time::Duration;

use hookline_e2e::{Api, Behaviour, Pipeline};
use reqwest::Method;
use serde_json::{json, Value};

/// A tenant key of `tenant` allowed to manage subscriptions and read attempts.
async fn tenant_api(p: &Pipeline, tenant: &str) -> Api {
    let (_, key) = p
        .api
        .create_key(tenant, &["subscriptions:manage", "attempts:read"])
        .await
        .unwrap();
    Api::new(p.ingest.url()).with_token(&key)
}

/// Creates a subscription with `api` (a tenant key: the tenant is the key's); returns
/// (id, secret).
async fn subscribe(api: &Api, url: &str) -> (String, String) {
    api.subscribe(json!({"url": url, "event_types": ["invoice.*"]}))
        .await
        .unwrap()
}

async fn test(api: &Api, id: &str, body: Option<Value>) -> (u16, Value) {
    api.call(Method::POST, &format!("/v1/subscriptions/{id}/test"), body)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_reaches_the_endpoint_signed_and_answers_with_its_attempt() {
    let p = Pipeline::start(hookline_e2e::Deployment::new())
        .await
        .unwrap();
    let acme = tenant_api(&p, "acme").await;
    let (id, secret) = subscribe(&acme, &p.receiver.url("erp")).await;

    // No body: the default wait, long enough for an idle pipeline.
    let (status, answer) = test(&acme, &id, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "attempted");
    assert_eq!(answer["delivered"], true, "{answer}");
    assert_eq!(answer["event_type"], "webhook.test");
    assert_eq!(answer["attempt"]["attempt"], 1);
    assert_eq!(answer["attempt"]["outcome"], "success");
    assert_eq!(answer["attempt"]["status"], 204);
    let message_id = answer["message_id"].as_str().unwrap().to_owned();
    assert_eq!(answer["attempt"]["message_id"], message_id.as_str());

    // The endpoint got it once, as any delivery: signed with the subscription's secret
    // (the official verifier agrees), its attempt number 1, though the subscription's
    // patterns (`invoice.*`) do not name `webhook.test`.
    let received = p.receiver.on("erp");
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    assert_eq!(request.header("webhook-id"), message_id);
    assert_eq!(request.header("webhook-attempt"), "1");
    assert_eq!(request.json["type"], "webhook.test");
    assert_eq!(request.json["tenant"], "acme");
    assert_eq!(request.json["data"]["subscription_id"], id.as_str());
    assert_eq!(request.json["id"], answer["event_id"]);
    standardwebhooks::Webhook::new(&secret)
        .and_then(|verifier| verifier.verify(&request.body, &request.headers))
        .expect("the official verifier accepts the test event");

    // A second test is a message of its own.
    let (status, again) = test(&acme, &id, Some(json!({"wait": "20s"}))).await;
    assert_eq!(status, 200, "{again}");
    assert_ne!(again["message_id"], message_id.as_str());

    // A failing endpoint: the call succeeds, the outcome says what the endpoint did.
    p.receiver.behave("erp", Behaviour::Always(500));
    let (status, failed) = test(&acme, &id, None).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["delivered"], false);
    assert_eq!(failed["attempt"]["outcome"], "http_5xx");
    assert_eq!(failed["attempt"]["status"], 500);

    // Every attempt shows in the attempts list too.
    let listed = acme
        .wait_attempts(&id, Duration::from_secs(10), |a| a.len() >= 3)
        .await;
    assert!(
        listed
            .iter()
            .any(|a| a["message_id"] == failed["message_id"] && a["attempt"] == 1),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_event_is_held_to_the_egress_policy_and_to_the_subscriptions_state() {
    let p = Pipeline::start(hookline_e2e::Deployment::new())
        .await
        .unwrap();
    let acme = tenant_api(&p, "acme").await;

    // The cloud metadata address: the API takes the URL (it checks scheme and port,
    // not addresses), the delivery worker refuses to connect.
    let (metadata, _) = subscribe(&acme, "http://169.254.169.254/latest/meta-data").await;
    let (status, answer) = test(&acme, &metadata, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], false);
    assert_eq!(answer["attempt"]["outcome"], "blocked", "{answer}");
    assert!(answer["attempt"].get("status").is_none(), "{answer}");

    // A disabled subscription is not tested: its tasks are dead-lettered unattempted.
    let (id, _) = subscribe(&acme, &p.receiver.url("erp")).await;
    let (status, _) = acme
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"enabled": false})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, error) = test(&acme, &id, None).await;
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "conflict");
    assert!(p.receiver.on("erp").is_empty());

    // Bad bodies are named.
    let (status, _) = acme
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"enabled": true})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    for (body, code, field) in [
        (json!({"wait": "soon"}), 422, "wait"),
        (json!({"wait": "61s"}), 422, "wait"),
        (json!({"wait": 5}), 422, "$"),
        (json!({"other": 1}), 422, "$"),
    ] {
        let (status, error) = test(&acme, &id, Some(body.clone())).await;
        assert_eq!(status, code, "{body}: {error}");
        assert_eq!(error["error"]["field"], field, "{body}: {error}");
    }
    let (status, error) = acme
        .post_raw(
            &format!("/v1/subscriptions/{id}/test"),
            b"{not json".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "malformed_json");
    assert!(
        p.receiver.on("erp").is_empty(),
        "nothing sent for a bad body"
    );

    // Not waiting: 202, and the attempt shows in the attempts list once made.
    let (status, pending) = test(&acme, &id, Some(json!({"wait": "0s"}))).await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["status"], "pending");
    let listed = acme
        .wait_attempts(&id, Duration::from_secs(30), |a| {
            a.iter().any(|a| a["message_id"] == pending["message_id"])
        })
        .await;
    assert!(
        listed
            .iter()
            .any(|a| a["message_id"] == pending["message_id"] && a["outcome"] == "success"),
        "{listed:?}"
    );
}
