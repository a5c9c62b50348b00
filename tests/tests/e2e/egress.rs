//! The egress policy end to end: https only unless allowed (at the API, and again at
//! delivery for a record written straight to the topic), a port allow-list, refused
//! hop-by-hop headers, and proxy variables of the environment ignored unless the
//! operator names an egress proxy. (Hostile addresses and names resolving to private
//! addresses are table-tested against a stub resolver in the delivery crate's sender.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline_domain::subscription::{EventTypePattern, Subscription};
use hookline_e2e::{eventually, produce, producer, Api, Deployment, Pipeline};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn http_urls_ports_and_transport_headers_are_refused_at_the_api() {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_DELIVERY_ALLOW_HTTP", "false")
        .set("HOOKLINE_DELIVERY_ALLOWED_PORTS", "443,8443");
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    let create = |url: &str, headers: serde_json::Value| json!({"tenant": "acme", "url": url, "event_types": ["*"], "headers": headers});
    let refused = [
        (
            create("http://erp.example/h", json!({})),
            "url",
            "must be https",
        ),
        (
            create("https://erp.example:6379/h", json!({})),
            "url",
            "port 6379",
        ),
        (
            create("https://erp.example/h", json!({"Connection": "close"})),
            "headers.Connection",
            "hop-by-hop",
        ),
        (
            create(
                "https://erp.example/h",
                json!({"transfer-encoding": "chunked"}),
            ),
            "headers.transfer-encoding",
            "hop-by-hop",
        ),
        (
            create(
                "https://erp.example/h",
                json!({"Proxy-Authorization": "Basic eA=="}),
            ),
            "headers.Proxy-Authorization",
            "hop-by-hop",
        ),
    ];
    for (body, field, message) in refused {
        let (status, answer) = api
            .call(Method::POST, "/v1/subscriptions", Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{text}");
    }
    let (id, _) = api
        .subscribe(create("https://erp.example:8443/h", json!({"X-Erp": "1"})))
        .await
        .unwrap();
    // A change to http is refused the same way.
    let (status, answer) = api
        .call(
            Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"url": "http://erp.example/h"})),
        )
        .await
        .unwrap();
    assert_eq!((status, &answer["error"]["field"]), (422, &json!("url")));
}

#[tokio::test]
async fn a_record_with_an_http_url_written_straight_to_the_topic_is_blocked_at_delivery() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_DELIVERY_ALLOW_HTTP", "false");
    let pipeline = Pipeline::start(deployment).await.unwrap();
    let subscription = Subscription::basic(
        "sub_plainhttp",
        "acme",
        pipeline.receiver.url("plain").parse().unwrap(),
        vec![EventTypePattern::parse("*").unwrap()],
    );
    produce(
        &producer().unwrap(),
        &pipeline.deployment.topic("subscriptions"),
        Some("sub_plainhttp"),
        &serde_json::to_vec(&subscription).unwrap(),
    )
    .await
    .unwrap();
    let seen = eventually(Duration::from_secs(15), || async {
        pipeline
            .api
            .subscription("sub_plainhttp")
            .await
            .is_ok_and(|s| s["id"] == "sub_plainhttp")
    })
    .await;
    assert!(seen, "the record reached the views");
    pipeline.send("acme", "invoice.paid", 1).await.unwrap();
    let attempts = pipeline
        .api
        .wait_attempts("sub_plainhttp", Duration::from_secs(30), |a| !a.is_empty())
        .await;
    assert!(!attempts.is_empty(), "an attempt was recorded");
    assert_eq!(attempts[0]["outcome"], "blocked", "{:?}", attempts[0]);
    let error = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("must be https"), "{error}");
    assert!(pipeline.receiver.on("plain").is_empty(), "nothing was sent");
}

/// A stand-in forward proxy: records the request line of every request it gets and
/// answers `204`.
async fn proxy_stub() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = socket.read(&mut head).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&head[..n]).into_owned();
                let line = text.lines().next().unwrap_or_default().to_owned();
                record.lock().unwrap().push(line);
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn proxy_variables_are_ignored_unless_an_egress_proxy_is_configured() {
    let (proxy, through_proxy) = proxy_stub().await;
    let mut deployment = Deployment::new();
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        deployment.set(name, proxy.clone());
    }
    let mut pipeline = Pipeline::start(deployment).await.unwrap();
    let (id, _) = pipeline
        .subscribe("acme", &["*"], "direct", json!({}))
        .await
        .unwrap();
    pipeline.send("acme", "invoice.paid", 2).await.unwrap();
    let direct = pipeline
        .receiver
        .wait_until(Duration::from_secs(30), |all| all.len() >= 2)
        .await;
    assert!(direct, "delivered straight to the receiver");
    assert!(
        through_proxy.lock().unwrap().is_empty(),
        "the environment's proxy was used"
    );

    // The operator's explicit egress proxy carries every delivery.
    for mut worker in pipeline.workers.drain(..) {
        worker.terminate().unwrap();
    }
    let worker = pipeline
        .deployment
        .start_with(
            "hookline-delivery",
            &[("HOOKLINE_DELIVERY_EGRESS_PROXY", &proxy)],
        )
        .await
        .unwrap();
    pipeline.workers.push(worker);
    pipeline.send("acme", "invoice.paid", 1).await.unwrap();
    let proxied = eventually(Duration::from_secs(30), || {
        !through_proxy.lock().unwrap().is_empty()
    })
    .await;
    assert!(proxied, "the configured proxy was used");
    let line = through_proxy.lock().unwrap()[0].clone();
    let target = pipeline.receiver.url("direct");
    assert_eq!(line, format!("POST {target} HTTP/1.1"));
    let attempts = pipeline
        .api
        .wait_attempts(&id, Duration::from_secs(10), |a| a.len() >= 3)
        .await;
    assert_eq!(attempts[0]["outcome"], "success", "{:?}", attempts[0]);
    assert_eq!(
        pipeline.receiver.received().len(),
        2,
        "not sent around the proxy"
    );
}
