//! The router: exactly-once fan-out through Kafka transactions, even when killed.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hookline_core::task::DeliveryTask;
use hookline_e2e::{assert_same, produce, producer, read_all, record_count, Api, Deployment};
use serde_json::json;

fn event(n: usize) -> (String, &'static str, &'static str) {
    let tenant = if n.is_multiple_of(2) {
        "acme"
    } else {
        "globex"
    };
    let event_type = ["invoice.paid", "payment.succeeded", "expense.created"][n % 3];
    (format!("e-{n}"), tenant, event_type)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_routers_neither_duplicate_nor_lose_a_task() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    let plan = [
        ("acme", vec!["invoice.*"]),
        ("acme", vec!["*"]),
        ("globex", vec!["payment.*"]),
    ];
    let mut subs = Vec::new();
    for (tenant, patterns) in &plan {
        let (id, _) = api
            .subscribe(
                json!({"tenant": tenant, "url": "https://erp.example/h", "event_types": patterns}),
            )
            .await
            .unwrap();
        subs.push((id, *tenant, patterns.clone()));
    }
    // Two routers share the group; the first is killed again and again.
    let r1 = [("HOOKLINE_ROUTER_INSTANCE_ID", "r1")];
    let mut killed = deployment.start_with("hookline-router", &r1).await.unwrap();
    let steady = deployment
        .start_with("hookline-router", &[("HOOKLINE_ROUTER_INSTANCE_ID", "r2")])
        .await
        .unwrap();

    let kafka = producer().unwrap();
    let topic = deployment.topic("events");
    let rounds = 6;
    let per_round = 2500;
    for round in 0..rounds {
        for n in round * per_round..(round + 1) * per_round {
            let (id, tenant, event_type) = event(n);
            let value = json!({"id": id, "type": event_type, "tenant": tenant, "data": {"n": n}});
            produce(&kafka, &topic, Some(&id), value.to_string().as_bytes())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150 + 100 * round as u64)).await;
        killed.kill_hard();
        killed = deployment.start_with("hookline-router", &r1).await.unwrap();
    }
    let total = rounds * per_round;

    let mut expected = BTreeSet::new();
    for n in 0..total {
        let (id, tenant, event_type) = event(n);
        for (sub, sub_tenant, patterns) in &subs {
            let matches = patterns.iter().any(|p| {
                hookline_core::subscription::EventTypePattern::parse(p)
                    .unwrap()
                    .matches(event_type)
            });
            if *sub_tenant == tenant && matches {
                expected.insert((id.clone(), sub.clone()));
            }
        }
    }
    let deliveries = deployment.topic("deliveries");
    let mut settled = false;
    for _ in 0..600 {
        if record_count(&deliveries).unwrap() >= expected.len() as i64 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(settled, "all tasks written");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for record in read_all(&deliveries).unwrap() {
        let task: DeliveryTask = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        *counts
            .entry((task.event.id, task.subscription_id))
            .or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(
        duplicated.is_empty(),
        "committed duplicates: {duplicated:?}"
    );
    let got: BTreeSet<(String, String)> = counts.into_keys().collect();
    assert_same(&got, &expected, "committed (event, subscription) pairs");
    let shared = steady.metric("hookline_router_events_total").await;
    assert!(shared > 0.0, "the second router routed a share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_tasks_are_too_large_is_dead_lettered_and_routing_goes_on() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let api = Api::new(ingest.url());
    api.subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    let router = deployment
        .start_with(
            "hookline-router",
            &[("HOOKLINE_ROUTER_MAX_TASK_BYTES", "2000")],
        )
        .await
        .unwrap();
    let kafka = producer().unwrap();
    let topic = deployment.topic("events");
    let small = json!({"id": "small-1", "type": "invoice.paid", "tenant": "acme", "data": {}});
    let big = json!({"id": "big", "type": "invoice.paid", "tenant": "acme", "data": {"blob": "x".repeat(3000)}});
    let after = json!({"id": "small-2", "type": "invoice.paid", "tenant": "acme", "data": {}});
    for value in [&small, &big, &after] {
        produce(&kafka, &topic, None, value.to_string().as_bytes())
            .await
            .unwrap();
    }
    assert!(
        router
            .wait_metric("hookline_router_events_total", 3.0, Duration::from_secs(30))
            .await
    );
    let tasks: BTreeSet<String> = read_all(&deployment.topic("deliveries"))
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<DeliveryTask>(r.value.as_deref().unwrap())
                .unwrap()
                .event
                .id
        })
        .collect();
    assert_eq!(
        tasks,
        BTreeSet::from(["small-1".to_owned(), "small-2".to_owned()])
    );
    let dead = read_all(&deployment.topic("events.dlq")).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].headers["hookline-dlq-reason"].contains("over the 2000-byte limit"),
        "{:?}",
        dead[0].headers
    );
}
