//! What SREs watch: every binary's `/metrics` as `promtool` checks it, and a real
//! Prometheus server scraping a run, asked with PromQL what it saw.

use std::sync::Mutex;
use std::time::Duration;

use hookline_e2e::{
    dashboard_expressions, eventually, exported_names, promtool_check_metrics, referenced_names,
    scrape, Behaviour, Deployment, Pipeline, PrometheusServer,
};
use serde_json::{json, Value};

/// A file of the repository, as shipped.
fn repo_file(path: &str) -> String {
    let full = concat!(env!("CARGO_MANIFEST_DIR"), "/../").to_owned() + path;
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{full}: {err}"))
}

fn alerts() -> String {
    repo_file("deploy/prometheus/alerts.yml")
}

fn dashboard() -> Value {
    serde_json::from_str(&repo_file("deploy/grafana/dashboards/hookline.json"))
        .expect("the dashboard is JSON")
}

/// The datasource uid the compose stack's Grafana provisions.
const DATASOURCE_UID: &str = "hookline-prometheus";

/// Patience for librdkafka's statistics (every 5 s by default) to show a partition.
const STATS_PATIENCE: Duration = Duration::from_secs(60);

/// A pipeline with one subscription that takes everything and one whose endpoint fails
/// its first requests (so retries are scheduled), `events` events delivered to each.
async fn pipeline_with_traffic(events: usize) -> anyhow::Result<Pipeline> {
    traffic_on(Deployment::new(), events).await
}

async fn traffic_on(deployment: Deployment, events: usize) -> anyhow::Result<Pipeline> {
    let pipeline = Pipeline::start(deployment).await?;
    pipeline
        .receiver
        .behave("flaky", Behaviour::FailFirst(500, 2));
    pipeline
        .subscribe("acme", &["invoice.*"], "ok", json!({}))
        .await?;
    pipeline
        .subscribe("acme", &["invoice.*"], "flaky", json!({}))
        .await?;
    pipeline.send("acme", "invoice.paid", events).await?;
    // One refused request, for the rejection counters.
    let (status, _) = pipeline
        .api
        .post_raw("/v1/events", b"{not json".to_vec())
        .await?;
    anyhow::ensure!(status == 400, "malformed JSON answered {status}");
    Ok(pipeline)
}

/// Requests the receiver got, by path and status.
fn got_by_path(pipeline: &Pipeline) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for r in pipeline.receiver.received() {
        *counts.entry((r.path.clone(), r.status)).or_insert(0) += 1;
    }
    format!("{counts:?}")
}

#[tokio::test]
async fn every_binary_passes_promtool_check_metrics() {
    let events = 20;
    let pipeline = pipeline_with_traffic(events).await.expect("pipeline");
    let delivered = pipeline
        .receiver
        .wait_until(Duration::from_secs(60), |got| {
            got.iter().filter(|r| r.path == "ok").count() >= events
                && got.iter().filter(|r| r.path == "flaky").count() >= events + 2
        })
        .await;
    assert!(
        delivered,
        "deliveries did not arrive: {}\nworker log:\n{}",
        got_by_path(&pipeline),
        pipeline.workers[0].log_tail()
    );
    let worker = &pipeline.workers[0];
    // Every family the binaries register shows once its first sample exists: wait for
    // the ones that appear late (lag from librdkafka's statistics, retries).
    for (proc, name) in [
        (&pipeline.router, "hookline_consumer_lag_records"),
        (worker, "hookline_consumer_lag_records"),
        (worker, "hookline_delivery_retries_scheduled_total"),
        (worker, "hookline_kafka_producer_queue_messages"),
        (&pipeline.router, "hookline_router_transactions_total"),
        (worker, "hookline_kafka_broker_rtt_avg_seconds"),
        (&pipeline.ingest, "hookline_kafka_producer_queue_messages"),
    ] {
        let shown = eventually(STATS_PATIENCE, || async {
            scrape(&format!("{}/metrics", proc.url()))
                .await
                .is_ok_and(|text| text.lines().any(|l| l.starts_with(name)))
        })
        .await;
        assert!(shown, "{} never exported {name}", proc.name());
    }
    for proc in [&pipeline.ingest, &pipeline.router, worker] {
        let text = scrape(&format!("{}/metrics", proc.url()))
            .await
            .expect("scrape");
        if let Err(complaints) = promtool_check_metrics(&text) {
            panic!("{}'s /metrics: {complaints}", proc.name());
        }
    }
    // The new figures count what happened: each of the 2 x events tasks delivered once
    // (a delivery is counted just after the receiver answered, hence the wait), each
    // with its end-to-end latency.
    let counts = Mutex::new((0.0, 0.0));
    let counted = eventually(Duration::from_secs(30), || async {
        let now = (
            worker
                .metric("hookline_delivery_tasks_total{outcome=\"delivered\"")
                .await,
            worker
                .metric("hookline_delivery_end_to_end_seconds_count")
                .await,
        );
        *counts.lock().unwrap() = now;
        now == ((2 * events) as f64, (2 * events) as f64)
    })
    .await;
    assert!(
        counted,
        "(delivered, end-to-end observations) = {:?}, expected {} each",
        counts.lock().unwrap(),
        2 * events
    );
    assert_eq!(
        worker
            .metric("hookline_delivery_end_to_end_seconds_count{attempt=\"retry\"")
            .await,
        2.0,
        "the flaky endpoint's first two events were delivered on a retry"
    );
    assert!(
        worker
            .metric("hookline_delivery_retries_scheduled_total{kind=\"retry\",tier=\"5s\"")
            .await
            >= 2.0
    );
    assert_eq!(
        pipeline
            .ingest
            .metric("hookline_ingest_event_requests_rejected_total{reason=\"malformed_json\"")
            .await,
        1.0
    );
    assert!(
        pipeline
            .ingest
            .metric("hookline_ingest_event_bytes_total{outcome=\"accepted\"")
            .await
            > 0.0
    );
}

#[tokio::test]
async fn prometheus_sees_what_the_receivers_got_and_lag_back_to_zero() {
    let events = 40;
    let pipeline = pipeline_with_traffic(events).await.expect("pipeline");
    let targets = [
        ("ingest", pipeline.ingest.addr),
        ("router", pipeline.router.addr),
        ("delivery", pipeline.workers[0].addr),
    ];
    let prometheus = PrometheusServer::start(&targets, &alerts())
        .await
        .expect("prometheus");
    let arrived = pipeline
        .receiver
        .wait_until(Duration::from_secs(90), |got| {
            got.iter().filter(|r| r.path == "flaky").count() >= events + 2
                && got.iter().filter(|r| r.path == "ok").count() >= events
        })
        .await;
    assert!(
        arrived,
        "deliveries did not arrive: {}\nworker log:\n{}",
        got_by_path(&pipeline),
        pipeline.workers[0].log_tail()
    );
    let answered_2xx = pipeline
        .receiver
        .received()
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .count();
    let group = |binary: &str| format!("{}{binary}", pipeline.deployment.prefix);
    let delivered_query = "sum(hookline_delivery_tasks_total{outcome=\"delivered\"})";
    let seen = Mutex::new(None);
    let matched = eventually(Duration::from_secs(60), || async {
        let now = prometheus.scalar(delivered_query).await.ok().flatten();
        *seen.lock().unwrap() = now;
        now == Some(answered_2xx as f64)
    })
    .await;
    assert!(
        matched,
        "Prometheus saw {seen:?} delivered, the receivers answered {answered_2xx} with 2xx"
    );
    // Lag: present for the router's group (events) and the workers' (deliveries and the
    // retry tier), and back to zero everywhere once all is delivered.
    for (binary, topic) in [
        ("router", "events"),
        ("delivery", "deliveries"),
        ("delivery", "deliveries.retry.5s"),
    ] {
        let query = format!(
            "count(hookline_consumer_lag_records{{group=\"{}\",topic=\"{}{topic}\"}})",
            group(binary),
            pipeline.deployment.prefix
        );
        let present = eventually(STATS_PATIENCE, || async {
            prometheus.scalar(&query).await.ok().flatten() == Some(4.0)
        })
        .await;
        assert!(
            present,
            "no lag series for each of the 4 partitions: {query}"
        );
    }
    let lag_query = format!(
        "max(hookline_consumer_lag_records{{group=~\"{}|{}\"}})",
        group("router"),
        group("delivery")
    );
    let seconds_query = lag_query.replace("_records", "_seconds");
    let last = Mutex::new((None, None));
    let zero = eventually(STATS_PATIENCE, || async {
        let now = (
            prometheus.scalar(&lag_query).await.ok().flatten(),
            prometheus.scalar(&seconds_query).await.ok().flatten(),
        );
        *last.lock().unwrap() = now;
        now == (Some(0.0), Some(0.0))
    })
    .await;
    assert!(
        zero,
        "lag (records, seconds) did not return to zero: {last:?}"
    );
    // The shipped alert rules load and evaluate on the real series.
    let rules = Mutex::new(Vec::new());
    let healthy = eventually(Duration::from_secs(30), || async {
        let now = prometheus.rule_health().await.unwrap_or_default();
        let ok = !now.is_empty() && now.iter().all(|(_, health, _)| health == "ok");
        *rules.lock().unwrap() = now;
        ok
    })
    .await;
    assert!(
        healthy,
        "alert rules not all healthy: {:?}",
        rules.lock().unwrap()
    );
    // Every dashboard query is valid PromQL for the real server.
    for expr in dashboard_expressions(&dashboard(), DATASOURCE_UID).expect("dashboard") {
        let query = expr.replace("$__rate_interval", "1m");
        let series = prometheus.query(&query).await;
        assert!(
            series.is_ok(),
            "dashboard query refused: {query}: {series:?}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_metrics_the_binaries_export() {
    // Circuits open at the first failure and close a second later, so that every
    // family the dashboard shows has series within the test.
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_BREAKER_THRESHOLD", "1")
        .set("HOOKLINE_BREAKER_COOLDOWN", "1s");
    let pipeline = traffic_on(deployment, 5).await.expect("pipeline");
    // An endpoint answering 410: a dead letter and a disabled subscription.
    pipeline.receiver.behave("gone", Behaviour::Always(410));
    pipeline
        .subscribe("globex", &["invoice.*"], "gone", json!({}))
        .await
        .expect("subscribe");
    pipeline
        .send("globex", "invoice.paid", 1)
        .await
        .expect("send");
    let expressions = dashboard_expressions(&dashboard(), DATASOURCE_UID).expect("dashboard");
    let mut wanted = referenced_names(&alerts());
    wanted.extend(referenced_names(&expressions.join("\n")));
    assert!(
        wanted.len() > 20,
        "only {} names found: {wanted:?}",
        wanted.len()
    );
    let urls: Vec<String> = [&pipeline.ingest, &pipeline.router, &pipeline.workers[0]]
        .iter()
        .map(|p| format!("{}/metrics", p.url()))
        .collect();
    let missing = Mutex::new(wanted.clone());
    let all_exported = eventually(Duration::from_secs(90), || async {
        let mut exported = std::collections::BTreeSet::new();
        for url in &urls {
            exported.extend(exported_names(&scrape(url).await.unwrap_or_default()));
        }
        let now: std::collections::BTreeSet<String> =
            wanted.difference(&exported).cloned().collect();
        let done = now.is_empty();
        *missing.lock().unwrap() = now;
        done
    })
    .await;
    assert!(
        all_exported,
        "referenced by the dashboard or the alerts, exported by no binary: {:?}",
        missing.lock().unwrap()
    );
}

#[tokio::test]
async fn one_grep_follows_an_event_through_the_three_binaries() {
    let mut deployment = Deployment::new();
    // Per-event lines are debug lines: an operator following events turns them on so.
    deployment.set(
        "RUST_LOG",
        "info,rdkafka=warn,hookline_ingest=debug,hookline_router=debug,hookline_delivery=debug",
    );
    let pipeline = Pipeline::start(deployment).await.expect("pipeline");
    // Its first attempt fails, so that the trail has a failed attempt too.
    pipeline
        .receiver
        .behave("trail", Behaviour::FailFirst(500, 1));
    let (subscription, _) = pipeline
        .subscribe("acme", &["invoice.*"], "trail", json!({}))
        .await
        .expect("subscribe");
    let event_id = format!("evt_trail_{}", ulid::Ulid::new().to_string().to_lowercase());
    pipeline
        .api
        .send_events(json!({"id": event_id, "type": "invoice.paid", "tenant": "acme", "data": {}}))
        .await
        .expect("send");
    let delivered = pipeline
        .receiver
        .wait_until(Duration::from_secs(60), |got| {
            got.iter().any(|r| r.path == "trail" && r.status == 204)
        })
        .await;
    assert!(delivered, "not delivered: {}", got_by_path(&pipeline));
    let message_id = hookline_domain::ids::message_id(&event_id, &subscription);
    // The delivered line is written right after the answer; wait for it in the log.
    let worker_log = &pipeline.workers[0].log_path;
    let logged = eventually(Duration::from_secs(10), || async {
        grep(worker_log, &event_id)
            .iter()
            .any(|line| line.contains("delivered"))
    })
    .await;
    assert!(logged, "no delivered line for {event_id}");
    // One grep, the event id, through each binary's log.
    let expectations: [(&std::path::Path, &[&str]); 3] = [
        (&pipeline.ingest.log_path, &["event accepted"]),
        (&pipeline.router.log_path, &["task routed"]),
        (worker_log, &["attempt failed", "delivered"]),
    ];
    for (log, says) in expectations {
        let lines = grep(log, &event_id);
        for what in says {
            let line = lines.iter().find(|line| line.contains(what));
            assert!(
                line.is_some(),
                "{}: no {what:?} line with {event_id}; lines with it: {lines:?}",
                log.display()
            );
        }
    }
    // The lines about the delivery carry its webhook id and subscription too.
    for (log, what) in [
        (&pipeline.router.log_path, "task routed"),
        (worker_log, "attempt failed"),
        (worker_log, "delivered"),
    ] {
        let lines = grep(log, &event_id);
        assert!(
            lines
                .iter()
                .filter(|l| l.contains(what))
                .all(|l| l.contains(message_id.as_str()) && l.contains(&subscription)),
            "{}: a {what:?} line without the message id or subscription: {lines:?}",
            log.display()
        );
    }
}

/// The lines of `log` containing `needle`.
fn grep(log: &std::path::Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}
