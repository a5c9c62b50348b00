//! Rich subscriptions end to end: payload filters, channels, thin payloads, custom
//! headers, and ordered delivery of one entity's events.

use std::time::Duration;

use hookline_e2e::{produce, producer, Behaviour, Deployment, Pipeline};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_channels_thin_payloads_and_headers_shape_what_arrives() {
    let p = Pipeline::start(Deployment::new()).await.unwrap();
    let big_eur_usd = json!({"all": [{"field": "amount", "op": "gte", "value": 10000},
                                     {"field": "currency", "op": "in", "value": ["EUR", "USD"]}]});
    p.subscribe(
        "acme",
        &["payment.succeeded"],
        "big",
        json!({"filter": big_eur_usd}),
    )
    .await
    .unwrap();
    p.subscribe(
        "acme",
        &["payment.*"],
        "eu-only",
        json!({"channels": ["eu"]}),
    )
    .await
    .unwrap();
    p.subscribe(
        "acme",
        &["payment.*"],
        "thin",
        json!({"payload": "thin", "headers": {"X-Erp-Company": "1000"}}),
    )
    .await
    .unwrap();

    let payments = [
        (12000, "EUR", vec!["eu"]),
        (500, "EUR", vec!["eu"]),
        (25000, "GBP", vec!["uk"]),
        (10000, "USD", vec![]),
    ];
    let events: Vec<Value> = payments
        .iter()
        .enumerate()
        .map(|(i, (amount, currency, channels))| {
            json!({"type": "payment.succeeded", "tenant": "acme", "channels": channels,
                   "data": {"payment_id": format!("pay_{i}"), "amount": amount, "currency": currency,
                            "card": {"last4": "4242"}}})
        })
        .collect();
    p.api.send_events(Value::Array(events)).await.unwrap();

    let arrived = p
        .receiver
        .wait_until(Duration::from_secs(30), |r| r.len() >= 8)
        .await;
    assert!(arrived, "{} arrived", p.receiver.received().len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = |path: &str| -> Vec<String> {
        let mut ids: Vec<String> = p
            .receiver
            .on(path)
            .iter()
            .map(|r| {
                let data = &r.json["data"];
                data["payment_id"]
                    .as_str()
                    .or(r.json["entity_id"].as_str())
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids("big"),
        ["pay_0", "pay_3"],
        "amount >= 10000 in EUR or USD"
    );
    assert_eq!(
        ids("eu-only"),
        ["pay_0", "pay_1"],
        "events on the eu channel"
    );
    assert_eq!(ids("thin"), ["pay_0", "pay_1", "pay_2", "pay_3"]);
    for r in p.receiver.on("thin") {
        assert!(
            r.json.get("data").is_none(),
            "thin bodies hold no data: {}",
            r.json
        );
        let keys: Vec<&str> = r
            .json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["entity_id", "id", "tenant", "timestamp", "type"]);
        assert_eq!(r.header("x-erp-company"), "1000");
        assert!(r.header("webhook-signature").starts_with("v1,"));
    }

    // A bad filter is refused with the offending part named.
    let (status, error) = p
        .api
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"tenant": "acme", "url": p.receiver.url("x"), "event_types": ["*"],
                        "filter": {"any": [{"field": "amount", "op": "between", "value": [1, 2]}]}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 422);
    assert_eq!(error["error"]["field"], "filter.any[0].op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_subscription_gets_one_entitys_events_in_order_despite_failures() {
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_RETRY_SCHEDULE", "1s,1s,1s,1s");
    let p = Pipeline::start(deployment).await.unwrap();
    p.subscribe("acme", &["invoice.*"], "ordered", json!({"ordered": true}))
        .await
        .unwrap();
    // The first three requests fail: the first event is retried in place, and nothing
    // behind it may overtake it.
    p.receiver.behave("ordered", Behaviour::FailFirst(503, 3));

    let kafka = producer().unwrap();
    let topic = p.deployment.topic("events");
    let steps = [
        "invoice.created",
        "invoice.finalized",
        "invoice.sent",
        "invoice.paid",
    ];
    let count = 40;
    for seq in 0..count {
        let value = json!({"id": format!("inv-evt-{seq}"), "type": steps[seq % 4], "tenant": "acme",
                           "data": {"invoice_id": "in_1", "seq": seq}});
        produce(
            &kafka,
            &topic,
            Some("acme/in_1"),
            value.to_string().as_bytes(),
        )
        .await
        .unwrap();
    }
    let done = p
        .receiver
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().filter(|x| x.status == 204).count() >= count
        })
        .await;
    assert!(done, "all delivered");
    let requests = p.receiver.on("ordered");
    let seqs: Vec<u64> = requests
        .iter()
        .filter_map(|r| r.json["data"]["seq"].as_u64())
        .collect();
    assert_eq!(
        &seqs[..4],
        [0, 0, 0, 0],
        "the first event is retried before anything else goes out"
    );
    let delivered: Vec<u64> = requests
        .iter()
        .filter(|r| r.status == 204)
        .filter_map(|r| r.json["data"]["seq"].as_u64())
        .collect();
    assert_eq!(
        delivered,
        (0..count as u64).collect::<Vec<_>>(),
        "delivered in order, once each"
    );
    assert_eq!(p.receiver.max_concurrency("ordered"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_subscription_stays_in_order_while_its_partition_window_is_full() {
    // A window of two: records behind a busy lane wait in the partition's backlog, and
    // a record read while a slot has just freed must not overtake them (found by the
    // fault-injection ledger, where a backlog built up after an outage).
    let mut deployment = Deployment::new();
    deployment.set("HOOKLINE_DELIVERY_PARTITION_WINDOW", "2");
    let p = Pipeline::start(deployment).await.unwrap();
    p.subscribe("acme", &["invoice.*"], "ordered", json!({"ordered": true}))
        .await
        .unwrap();
    p.receiver
        .behave("ordered", Behaviour::Hang(Duration::from_millis(5)));
    let kafka = producer().unwrap();
    let topic = p.deployment.topic("events");
    let count: u64 = 300;
    for seq in 0..count {
        let value = json!({"id": format!("inv-evt-{seq}"), "type": "invoice.paid", "tenant": "acme",
                           "data": {"invoice_id": "in_1", "seq": seq}});
        produce(
            &kafka,
            &topic,
            Some("acme/in_1"),
            value.to_string().as_bytes(),
        )
        .await
        .unwrap();
    }
    let done = p
        .receiver
        .wait_until(Duration::from_secs(120), |r| r.len() as u64 >= count)
        .await;
    assert!(done, "all delivered");
    let delivered: Vec<u64> = p
        .receiver
        .on("ordered")
        .iter()
        .filter_map(|r| r.json["data"]["seq"].as_u64())
        .collect();
    assert_eq!(
        delivered,
        (0..count).collect::<Vec<_>>(),
        "delivered in order, once each"
    );
}
