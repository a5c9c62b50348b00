//! The OpenAPI document against the running ingest: served at `/openapi.json` as kept
//! in `docs/openapi.json`, and schemathesis (PyPI, installed by `scripts/setup.sh`)
//! throwing generated input at every operation, as the admin and as a tenant key, on
//! the real broker: no `5xx`, and every answer's status, content type, headers and
//! body as the document says.

use std::process::Command;

use hookline_e2e::{Api, Pipeline, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

/// Runs schemathesis against `base` with `token`; returns whether it passed, and its
/// output.
fn schemathesis(base: &str, token: &str, seed: u32) -> (bool, String) {
    // As a module of the python3 it was installed for, wherever pip put its script.
    let output = Command::new("python3")
        .args([
            "-m",
            "schemathesis.cli",
            "run",
            &format!("{base}/openapi.json"),
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "20",
            "--seed",
            &seed.to_string(),
            "--request-timeout",
            "30",
            "--no-color",
            // No example database left in the work tree: every run starts afresh.
            "--generation-database",
            "none",
            // Prometheus text: many series, nothing generated reaches it.
            "--exclude-path",
            "/metrics",
        ])
        .output()
        .expect("schemathesis is installed (scripts/setup.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_answer_conforms() {
    let mut deployment = hookline_e2e::Deployment::new();
    // Generated URLs name hosts that do not resolve here, each lookup taking its time:
    // tests without a `wait` of their own answer 202 sooner.
    deployment.set("HOOKLINE_SUBSCRIPTION_TEST_WAIT", "1s");
    let p = Pipeline::start(deployment).await.unwrap();
    let base = p.ingest.url();
    // The document served is the one kept in the repository.
    let (status, served) = p
        .api
        .call(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, kept,
        "served /openapi.json differs from docs/openapi.json"
    );
    // Without a credential too: it describes the API, it holds no data.
    let (status, _) = Api::anonymous(base.clone())
        .call(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert_eq!(status, 200);

    let (passed, output) = schemathesis(&base, ADMIN_TOKEN, 1);
    assert!(passed, "as the admin:\n{output}");
    assert!(output.contains("passed"), "{output}");
    let (_, key) = p
        .api
        .create_key(
            "acme",
            &["events:publish", "subscriptions:manage", "attempts:read"],
        )
        .await
        .unwrap();
    let (passed, output) = schemathesis(&base, &key, 2);
    assert!(passed, "as a tenant key:\n{output}");
}

/// What schemathesis found once, kept as plain cases: times before the Unix epoch
/// (Kafka's timestamps start there) were a `503` from the broker's client.
#[tokio::test]
async fn times_before_the_epoch_scan_from_the_start() {
    let p = Pipeline::start(hookline_e2e::Deployment::new())
        .await
        .unwrap();
    let (id, _) = p
        .subscribe("acme", &["invoice.*"], "erp", json!({}))
        .await
        .unwrap();
    p.send("acme", "invoice.paid", 1).await.unwrap();
    let job = p
        .api
        .run_job(
            "/v1/dlq/redrive",
            json!({"since": "0266-09-27T15:46:31Z", "subscription_id": id, "until": "0009-01-01T01:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(job["progress"]["requeued"], 0, "{job}");
    let job = p
        .api
        .run_job(
            &format!("/v1/subscriptions/{id}/replay"),
            json!({"since": "1900-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    let report = &job["progress"];
    assert_eq!(
        report["scanned"], 1,
        "the one event, from the start: {report}"
    );
    assert_eq!(report["requeued"], 1, "{report}");
}

/// Query strings and path segments that do not parse get the API's JSON error, not the
/// web framework's plain text (which the document does not describe).
#[tokio::test]
async fn unreadable_query_strings_and_paths_get_json_errors() {
    let deployment = hookline_e2e::Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    let (id, _) = api
        .subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    for limit in ["abc", "-1", "99999999999999999999999"] {
        let (status, error) = api
            .call(
                Method::GET,
                &format!("/v1/subscriptions/{id}/attempts?limit={limit}"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(status, 422, "{limit}: {error}");
        assert_eq!(error["error"]["code"], "invalid_field");
        assert_eq!(error["error"]["field"], "query");
    }
    let (status, error) = api
        .call(Method::GET, "/v1/subscriptions/%FF%FE", None)
        .await
        .unwrap();
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "bad_request");
}
