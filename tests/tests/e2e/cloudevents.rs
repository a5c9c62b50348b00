//! What producers send: CloudEvents (binary and structured Kafka binding) and native
//! envelopes produced by kcat, a Kafka client nobody on the team wrote, interleaved with
//! garbage that must end in the events DLQ while everything else is routed.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use hookline_e2e::{brokers, eventually, read_all, Behaviour, Deployment, Pipeline};
use serde_json::json;

/// Produces one record with kcat: `headers` as `name=value`, `value` as the body.
fn kcat(topic: &str, key: &str, headers: &[&str], value: &str) {
    let mut command = Command::new("kcat");
    command.args(["-P", "-b", &brokers(), "-t", topic, "-k", key]);
    for header in headers {
        command.args(["-H", header]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat must be installed (apt-get install kcat; .ci/run does it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "kcat failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_and_native_records_from_kcat_are_routed_and_garbage_is_dead_lettered() {
    let p = Pipeline::start(Deployment::new()).await.unwrap();
    p.subscribe("acme", &["payment.*", "invoice.*"], "erp", json!({}))
        .await
        .unwrap();
    p.receiver.behave("erp", Behaviour::Ok);
    let topic = p.deployment.topic("events");

    for n in 0..5 {
        // Binary mode: attributes in ce_ headers, the value is the data.
        kcat(
            &topic,
            &format!("pay_{n}"),
            &[
                "ce_specversion=1.0",
                &format!("ce_id=pay-{n}"),
                "ce_source=/payments/eu-1",
                "ce_type=payment.succeeded",
                "ce_tenant=acme",
                "ce_time=2026-11-24T10:00:00Z",
                "content-type=application/json",
            ],
            &json!({"payment_id": format!("pay_{n}"), "amount": 1000 + n}).to_string(),
        );
        // Structured mode: the whole CloudEvent is the value.
        kcat(
            &topic,
            &format!("in_{n}"),
            &["content-type=application/cloudevents+json; charset=utf-8"],
            &json!({"specversion": "1.0", "id": format!("inv-{n}"), "source": "/billing",
                    "type": "invoice.paid", "tenant": "acme", "data": {"invoice_id": format!("in_{n}")}})
            .to_string(),
        );
        // Native envelope.
        kcat(
            &topic,
            &format!("n_{n}"),
            &[],
            &json!({"type": "invoice.created", "tenant": "acme", "data": {"invoice_id": format!("native_{n}")}})
                .to_string(),
        );
        // Garbage: not JSON, a CloudEvent without its type, a native event without tenant.
        kcat(&topic, "junk", &[], "this is not an event");
        kcat(
            &topic,
            "junk",
            &[
                "ce_specversion=1.0",
                "ce_id=x",
                "ce_source=/s",
                "ce_tenant=acme",
            ],
            "{}",
        );
        kcat(&topic, "junk", &[], r#"{"type": "invoice.paid"}"#);
    }

    let all = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| r.len() >= 15)
        .await;
    assert!(all, "15 deliveries, got {}", p.receiver.received().len());
    let got: BTreeSet<(String, String)> = p
        .receiver
        .on("erp")
        .iter()
        .map(|r| {
            (
                r.json["type"].as_str().unwrap().to_owned(),
                r.json["data"].to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), 15, "each record once: {got:?}");
    let payments: Vec<_> = p
        .receiver
        .on("erp")
        .into_iter()
        .filter(|r| r.json["type"] == "payment.succeeded")
        .collect();
    assert_eq!(payments.len(), 5);
    assert!(payments
        .iter()
        .all(|r| r.json["timestamp"] == "2026-11-24T10:00:00.000Z"));
    assert!(payments
        .iter()
        .all(|r| r.json["id"].as_str().unwrap().starts_with("evt_")));

    let mut dead = Vec::new();
    eventually(Duration::from_secs(20), || {
        dead = read_all(&p.deployment.topic("events.dlq")).unwrap();
        dead.len() >= 15
    })
    .await;
    assert_eq!(dead.len(), 15, "every garbage record dead-lettered");
    let reasons: BTreeSet<String> = dead
        .iter()
        .map(|r| r.headers["hookline-dlq-reason"].clone())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("ce_type")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.starts_with("tenant")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("JSON")), "{reasons:?}");
    assert!(dead.iter().all(|r| r.key.as_deref() == Some(&b"junk"[..])));
}
