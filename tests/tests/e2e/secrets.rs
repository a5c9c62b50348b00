//! Signing secrets and custom header values: rotation with two signatures (checked
//! with the official Standard Webhooks library for Python), sealed at rest, write-only
//! in the API, never in logs, metrics, error bodies or topics, and a wrong or missing
//! key stopping the binaries that need one at start-up.

use std::process::Command;
use std::time::Duration;

use hookline_e2e::{eventually, read_all, Deployment, Pipeline, Received};
use reqwest::Method;
use serde_json::{json, Value};

/// Whether the official Standard Webhooks library (PyPI `standardwebhooks`, installed
/// by `scripts/setup.sh`) verifies `request` with `secret`.
fn python_verifies(secret: &str, request: &Received) -> bool {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
given = json.load(sys.stdin)
try:
    Webhook(given["secret"]).verify(given["body"], given["headers"])
    print("verified")
except Exception as err:
    print("refused:", err)
"#;
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|name| (name.to_string(), json!(request.header(name))))
            .collect();
    let input = json!({
        "secret": secret,
        "body": String::from_utf8_lossy(&request.body),
        "headers": headers,
    });
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (run scripts/setup.sh)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write to python");
    }
    let output = child.wait_with_output().expect("python ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("verified") || stdout.starts_with("refused"),
        "the standardwebhooks library did not run (scripts/setup.sh installs it): {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.starts_with("verified")
}

async fn publish(pipeline: &Pipeline, id: &str, n: u32) {
    pipeline
        .api
        .send_events(json!({"id": id, "type": "invoice.paid", "tenant": "acme", "data": {"n": n}}))
        .await
        .unwrap();
}

/// The requests received on `path` for event `id`, waiting until there are `count`.
async fn wait_for(pipeline: &Pipeline, path: &str, id: &str, count: usize) -> Vec<Received> {
    let of_event = |all: &[Received]| {
        all.iter()
            .filter(|r| r.path == path && r.json["id"] == id)
            .count()
    };
    let arrived = pipeline
        .receiver
        .wait_until(Duration::from_secs(30), |all| of_event(all) >= count)
        .await;
    assert!(arrived, "{count} deliveries of {id} on {path}");
    pipeline
        .receiver
        .on(path)
        .into_iter()
        .filter(|r| r.json["id"] == id)
        .collect()
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_the_overlap_only() {
    let pipeline = Pipeline::start(Deployment::new()).await.unwrap();
    let (id, old) = pipeline
        .subscribe("acme", &["invoice.*"], "rotated", json!({}))
        .await
        .unwrap();

    publish(&pipeline, "evt_before", 1).await;
    let before = wait_for(&pipeline, "rotated", "evt_before", 1).await;
    assert!(python_verifies(&old, &before[0]));
    assert_eq!(before[0].header("webhook-signature").split(' ').count(), 1);

    // A rotation with a short window, so that the test sees its end.
    let (status, rotated) = pipeline
        .api
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            Some(json!({"overlap": "12s"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    assert_eq!(rotated["id"], id);
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    let shown = pipeline.api.subscription(&id).await.unwrap();
    assert!(shown.get("secret").is_none() && shown.get("previous_secret").is_none());
    assert_eq!(
        shown["previous_secret_expires_at"],
        rotated["previous_secret_expires_at"]
    );
    let (_, revealed) = pipeline
        .api
        .call(Method::GET, &format!("/v1/subscriptions/{id}/secret"), None)
        .await
        .unwrap();
    assert_eq!(revealed["secret"], new.as_str());

    // During the window: both signatures, each verifying; the same message, resent,
    // keeps its webhook-id across the rotation. (Publishing the event again would not
    // do: a producer's event id already accepted is not written twice.)
    let webhook_id = before[0].header("webhook-id").to_owned();
    let (status, resent) = pipeline
        .api
        .call(
            Method::POST,
            &format!("/v1/deliveries/{webhook_id}/resend"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{resent}");
    let during = wait_for(&pipeline, "rotated", "evt_before", 2).await;
    let during = &during[1];
    let signatures = during.header("webhook-signature");
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    assert!(signatures.split(' ').all(|s| s.starts_with("v1,")));
    assert_eq!(during.header("webhook-id"), before[0].header("webhook-id"));
    assert!(
        python_verifies(&old, during),
        "old secret during the window"
    );
    assert!(
        python_verifies(&new, during),
        "new secret during the window"
    );
    assert!(!python_verifies(
        &hookline_domain::signing::WebhookSecret::generate().expose(),
        during
    ));
    let expires: chrono::DateTime<chrono::Utc> = rotated["previous_secret_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let sent_at: i64 = during.header("webhook-timestamp").parse().unwrap();
    assert!(
        sent_at <= expires.timestamp(),
        "delivered within the window"
    );

    // After the window: the new secret only.
    let wait = (expires - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(1)).await;
    publish(&pipeline, "evt_after", 2).await;
    let after = wait_for(&pipeline, "rotated", "evt_after", 1).await;
    assert_eq!(after[0].header("webhook-signature").split(' ').count(), 1);
    assert!(
        python_verifies(&new, &after[0]),
        "new secret after the window"
    );
    assert!(
        !python_verifies(&old, &after[0]),
        "old secret after the window"
    );

    // Bad overlaps are refused, naming the field; an unknown subscription is a 404.
    for overlap in ["soon", "31d"] {
        let (status, body) = pipeline
            .api
            .call(
                Method::POST,
                &format!("/v1/subscriptions/{id}/rotate-secret"),
                Some(json!({ "overlap": overlap })),
            )
            .await
            .unwrap();
        assert_eq!(status, 422, "{overlap}: {body}");
        assert_eq!(body["error"]["field"], "overlap");
    }
    let (status, _) = pipeline
        .api
        .call(
            Method::POST,
            "/v1/subscriptions/sub_nosuch/rotate-secret",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    // Without a body: the default window of 24 hours.
    let (status, body) = pipeline
        .api
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let until: chrono::DateTime<chrono::Utc> = body["previous_secret_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let window = until - chrono::Utc::now();
    assert!(window > chrono::TimeDelta::hours(23) && window <= chrono::TimeDelta::hours(24));
}

/// Everything a run left behind, as text: every process's log, each one's `/metrics`,
/// and every record (key, value, headers) of every topic of the deployment.
async fn everything(pipeline: &Pipeline, topics: &[&str]) -> String {
    let mut text = String::new();
    for proc in [&pipeline.ingest, &pipeline.router]
        .into_iter()
        .chain(pipeline.workers.iter())
    {
        text.push_str(&std::fs::read_to_string(&proc.log_path).unwrap_or_default());
        let metrics = reqwest::get(format!("{}/metrics", proc.url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("hookline_"), "metrics read");
        text.push_str(&metrics);
    }
    for topic in topics {
        let name = pipeline.deployment.topic(topic);
        let records = tokio::task::spawn_blocking(move || read_all(&name))
            .await
            .unwrap()
            .unwrap();
        for record in records {
            for part in [record.key, record.value].into_iter().flatten() {
                text.push_str(&String::from_utf8_lossy(&part));
            }
            for (name, value) in record.headers {
                text.push_str(&format!("{name}={value}\n"));
            }
        }
    }
    text
}

#[tokio::test]
async fn secrets_and_header_values_never_appear_in_logs_metrics_errors_or_topics() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_RETRY_SCHEDULE", "1s").set(
        "RUST_LOG",
        "info,hookline_ingest=debug,hookline_router=debug,hookline_delivery=debug,\
             hookline_core=debug,rdkafka=warn",
    );
    let pipeline = Pipeline::start(deployment).await.unwrap();
    // Distinctive values, chosen by the client, so that any copy of them is found.
    let secret = "whsec_c2VjcmV0LW9mLWEtZmluYW5jZS1jdXN0b21lci0xMjM0NTY3OA==";
    let header_value = "Bearer receiver-credential-7f3a9c2e";
    let (id, shown_secret) = pipeline
        .subscribe(
            "acme",
            &["invoice.*"],
            "guarded",
            json!({"secret": secret, "headers": {"Authorization": header_value}}),
        )
        .await
        .unwrap();
    assert_eq!(shown_secret, secret);
    // Header values are write-only: names only in every read.
    let shown = pipeline.api.subscription(&id).await.unwrap();
    assert_eq!(shown["headers"], json!(["authorization"]), "{shown}");
    let (_, listed) = pipeline
        .api
        .call(Method::GET, "/v1/subscriptions?tenant=acme", None)
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["headers"], json!(["authorization"]));
    // A rotation puts a second secret in the record, sealed too.
    let (status, rotated) = pipeline
        .api
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let rotated_secret = rotated["secret"].as_str().unwrap().to_owned();

    // Errors that concern the values do not echo them.
    let mut echoes = Vec::new();
    for bad in [
        json!({"secret": format!("{secret}!")}),
        json!({"headers": {"Authorization": format!("{header_value}\n")}}),
        json!({"headers": {"Connection": header_value}}),
    ] {
        let mut body =
            json!({"tenant": "acme", "url": pipeline.receiver.url("x"), "event_types": ["*"]});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let (status, answer) = pipeline
            .api
            .call(Method::POST, "/v1/subscriptions", Some(body))
            .await
            .unwrap();
        assert_eq!(status, 422, "{answer}");
        echoes.push(answer.to_string());
    }

    // Deliveries that fail, are retried once, and go to the dead-letter topic.
    pipeline
        .receiver
        .behave("guarded", hookline_e2e::Behaviour::Always(500));
    pipeline.send("acme", "invoice.paid", 3).await.unwrap();
    let dead_lettered = eventually(Duration::from_secs(30), || async {
        let dlq = pipeline.deployment.topic("deliveries.dlq");
        hookline_e2e::record_count(&dlq).await.unwrap_or(0) >= 3
    })
    .await;
    assert!(dead_lettered, "every task dead-lettered");
    assert_eq!(
        pipeline.receiver.on("guarded").len(),
        6,
        "two attempts each"
    );
    // The receiver did get the header: the value is in use, not lost.
    let received = pipeline.receiver.on("guarded");
    assert!(received
        .iter()
        .all(|r| r.header("authorization") == header_value));

    let topics = [
        "events",
        "deliveries",
        "deliveries.dlq",
        "attempts",
        "subscriptions",
        "subscriptions.health",
        "events.dlq",
    ];
    let retry = hookline_core::topics::Topics::new("").deliveries_retry(Duration::from_secs(1));
    let topics: Vec<&str> = topics.into_iter().chain([retry.as_str()]).collect();
    let all = everything(&pipeline, &topics).await + &echoes.join("\n");
    assert!(
        all.contains(&id),
        "the grep sees the run ({} bytes)",
        all.len()
    );
    assert!(
        all.contains("\"kid\":\"test\""),
        "sealed values are on the topic"
    );
    for (what, value) in [
        ("secret", secret),
        ("its base64 key", secret.trim_start_matches("whsec_")),
        ("rotated secret", rotated_secret.as_str()),
        ("header value", header_value),
        ("header credential", "receiver-credential-7f3a9c2e"),
    ] {
        assert!(
            !all.contains(value),
            "the {what} appears in what the run produced"
        );
    }
}

/// Starts `binary` and expects it to exit before it is ready; returns its whole log.
async fn refused_start(deployment: &Deployment, binary: &str, extra: &[(&str, &str)]) -> String {
    let mut proc = deployment.spawn_with(binary, extra).unwrap();
    let started = proc.wait_ready(Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(&proc.log_path).unwrap_or_default();
    assert!(started.is_err(), "{binary} got ready: {log}");
    assert!(!proc.is_running(), "{binary} still runs: {log}");
    log
}

#[tokio::test]
async fn a_wrong_or_missing_key_stops_ingest_and_delivery_at_start_up() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = hookline_e2e::Api::new(ingest.url());
    let (id, _) = api
        .subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();

    // The same key id with other bytes: a wrong key.
    let wrong = hookline_domain::sealing::Keyring::generate_entry("test");
    for binary in ["hookline-delivery", "hookline-ingest"] {
        let log = refused_start(&deployment, binary, &[("HOOKLINE_SECRETS_KEYS", &wrong)]).await;
        assert!(
            log.contains("does not open") && log.contains(&id),
            "{binary}: {log}"
        );
        assert!(
            !log.contains(wrong.split(':').nth(1).unwrap()),
            "key echoed"
        );
    }

    let mut keyless = deployment.clone();
    keyless.env.remove("HOOKLINE_SECRETS_KEYS");
    for binary in ["hookline-delivery", "hookline-ingest"] {
        let log = refused_start(&keyless, binary, &[]).await;
        assert!(
            log.contains("HOOKLINE_SECRETS_KEYS is not set"),
            "{binary}: {log}"
        );
    }
    // The router never signs: it runs without any key.
    let router = keyless.start("hookline-router").await;
    assert!(router.is_ok(), "{:?}", router.err());

    // The old key listed after a new one: records sealed with the old still open, and
    // a write seals with the new.
    let old = deployment.env["HOOKLINE_SECRETS_KEYS"].clone();
    let both = format!(
        "{},{old}",
        hookline_domain::sealing::Keyring::generate_entry("next")
    );
    let worker = deployment
        .start_with("hookline-delivery", &[("HOOKLINE_SECRETS_KEYS", &both)])
        .await;
    assert!(worker.is_ok(), "{:?}", worker.err());
    drop(ingest);
    let ingest = deployment
        .start_with("hookline-ingest", &[("HOOKLINE_SECRETS_KEYS", &both)])
        .await
        .unwrap();
    let api = hookline_e2e::Api::new(ingest.url());
    let (status, _) = api
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let topic = deployment.topic("subscriptions");
    let records = tokio::task::spawn_blocking(move || read_all(&topic))
        .await
        .unwrap()
        .unwrap();
    let last: Value =
        serde_json::from_slice(records.last().unwrap().value.as_ref().unwrap()).unwrap();
    assert_eq!(last["secret"]["kid"], "next", "resealed with the first key");
}
