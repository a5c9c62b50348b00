//! `hookline-bench`: measures the pipeline end to end in the scenarios of issue 9
//! (`--scenario burst|paced|slow-endpoint|flaky-endpoint|many-subscriptions`), `--repeat`
//! times in a row, next to the raw limits it sits on measured in the same invocation
//! (HTTP POSTs/s from one reqwest client to one axum server, Kafka produce/consume
//! records/s). Per run: deliveries/s, latency from the event's send to the receiver,
//! per-stage percentiles from the binaries' `*_stage_duration_seconds` histograms, and
//! CPU time and memory of each watched process (binaries and broker).
//!
//! Run through `scripts/bench.sh`, which starts the broker and the three binaries and
//! passes their addresses and pids.

mod fanout;
mod load;
mod procstat;
mod prom;
mod receiver;
mod stats;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::future::join_all;
use futures::StreamExt;
use hookline_core::config::KafkaArgs;
use hookline_core::kafka::{self, TopicSpec};
use hookline_core::produce::{send_all, OutRecord};
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{json, Map, Value};

use load::{Api, EventMaker, Load, Via};
use receiver::{now_us, Behaviour, Endpoint, Receiver};

#[derive(Parser)]
#[command(name = "hookline-bench", about)]
struct Cli {
    /// What to measure. Without it: `paced` when `--rate` is given, else `burst`.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Runs of the scenario in a row against the same binaries (fresh tenants and
    /// subscriptions each time); the spread of the headline figures follows.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Events of a burst (burst: 30,000; slow/flaky-endpoint: 20,000 per burst phase;
    /// many-subscriptions: 100,000), or of the whole paced run (paced: rate × duration).
    #[arg(long)]
    events: Option<u64>,
    /// Events per second of paced runs and phases (default 200, i.e. 2,000 deliveries/s
    /// with ten subscriptions). Alone, it selects the paced scenario.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of paced runs and phases (paced: 60; slow/flaky-endpoint: 30).
    #[arg(long)]
    duration: Option<f64>,
    /// Subscriptions of the one tenant of a run, all to `*` (default 10); in
    /// slow/flaky-endpoint, the bad one included.
    #[arg(long)]
    subscriptions: Option<usize>,
    /// many-subscriptions: subscriptions created in all.
    #[arg(long, default_value_t = 100_000)]
    subscriptions_total: usize,
    /// many-subscriptions: subscriptions per tenant.
    #[arg(long, default_value_t = 50)]
    subscriptions_per_tenant: usize,
    /// many-subscriptions: keep a run's subscriptions instead of deleting them after its
    /// figures are taken (later runs then route against the earlier runs' too).
    #[arg(long)]
    keep_subscriptions: bool,
    /// Subscription calls in flight at once (many-subscriptions; at most 16 for the
    /// few subscriptions of the other scenarios).
    #[arg(long, default_value_t = 256)]
    create_concurrency: usize,
    /// Approximate size of each event's JSON.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// How events enter the pipeline: `http` (POST /v1/events, as a new user would) or
    /// `kafka` (produced straight to the events topic, as a payment processor may).
    #[arg(long, value_enum, default_value_t = Via::Http)]
    via: Via,
    /// Most events per HTTP request (or per produced batch); HTTP requests hold no more
    /// than fit in `--max-body-bytes` (240 events of 1 KiB).
    #[arg(long, default_value_t = 500)]
    http_batch: usize,
    /// Ingest's request body limit (its `HOOKLINE_MAX_BODY_BYTES`, 256 KiB by default).
    #[arg(long, default_value_t = 256 * 1024)]
    max_body_bytes: usize,
    /// Requests (or produced batches) in flight at once in a burst.
    #[arg(long, default_value_t = 8)]
    http_in_flight: usize,
    /// How long the hanging endpoint of slow-endpoint takes to answer (longer than the
    /// delivery timeout, 15 s by default).
    #[arg(long, default_value_t = 20.0)]
    slow_seconds: f64,
    /// Latency of events sent in the first this many seconds of a paced phase is also
    /// reported apart (`startup_p99_ms`).
    #[arg(long, default_value_t = 5.0)]
    startup_seconds: f64,
    /// Give up waiting for deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    stall_seconds: u64,
    /// Base URL of hookline-ingest (events and subscriptions; `/metrics`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingest: String,
    /// Base URL of hookline-router's operations endpoints (`/metrics`).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    router: String,
    /// Base URL of hookline-delivery's operations endpoints (`/metrics`).
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    delivery: String,
    /// Processes whose CPU and memory are reported per run: `name=pid,…` (bench.sh
    /// passes ingest, router, delivery and broker). The bench itself is always added.
    #[arg(long, default_value = "")]
    pids: String,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clock_ticks: u64,
    /// Skip the raw-limit measurements.
    #[arg(long)]
    no_raw: bool,
    /// Seconds of the raw HTTP measurement.
    #[arg(long, default_value_t = 5)]
    http_seconds: u64,
    /// Concurrent requests of the raw HTTP measurement.
    #[arg(long, default_value_t = 64)]
    http_concurrency: usize,
    /// Records of the raw Kafka measurement.
    #[arg(long, default_value_t = 200_000)]
    kafka_records: usize,
    /// One JSON object per run on stdout, one line each (the spread goes to stderr).
    #[arg(long)]
    json: bool,
    /// Bearer token of ingest's `/v1` API, if it has one.
    #[arg(long, env = "HOOKLINE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Ten subscriptions to `*`, 30,000 events as fast as allowed: deliveries/s.
    Burst,
    /// 200 events/s × ten subscriptions for 60 s: latency.
    Paced,
    /// Nine fast subscriptions and one hanging endpoint, against the nine alone.
    SlowEndpoint,
    /// Nine fast subscriptions and one failing every other request, against the nine alone.
    FlakyEndpoint,
    /// 100,000 subscriptions over 2,000 tenants: routed events/s.
    ManySubscriptions,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Burst => "burst",
            Scenario::Paced => "paced",
            Scenario::SlowEndpoint => "slow-endpoint",
            Scenario::FlakyEndpoint => "flaky-endpoint",
            Scenario::ManySubscriptions => "many-subscriptions",
        }
    }
}

/// The raw limits, measured once per invocation.
#[derive(Debug, Clone, Copy)]
struct Raw {
    http_per_sec: f64,
    kafka_produce_per_sec: f64,
    kafka_consume_per_sec: f64,
}

struct Bench {
    cli: Cli,
    scenario: Scenario,
    api: Arc<Api>,
    load: Load,
    receiver: Receiver,
    raw: Option<Raw>,
    watched: Vec<procstat::Watched>,
    scraper: reqwest::Client,
}

/// One phase: one tenant's subscriptions, one load.
struct PhaseSpec {
    name: &'static str,
    fast: usize,
    bad: Option<Behaviour>,
    events: u64,
    /// Events/s; `None` is a burst.
    rate: Option<f64>,
}

/// What a phase measured, over its fast endpoints.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    rate: Option<f64>,
    events: u64,
    fast: usize,
    bad: Option<Behaviour>,
    expected: u64,
    delivered: u64,
    duplicates: u64,
    complete: bool,
    send_s: f64,
    elapsed_s: f64,
    deliveries_per_sec: f64,
    steady_per_sec: Option<f64>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    startup_p99_ms: Option<f64>,
    bad_requests: u64,
    bad_failed: u64,
    bad_delivered: u64,
}

/// What a scenario measured in one run.
struct Outcome {
    deliveries_per_sec: f64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Deliveries received in the run (all endpoints), for CPU per 1,000.
    deliveries: u64,
    complete: bool,
    /// Scenario-specific JSON fields.
    fields: Map<String, Value>,
    /// Figures whose spread is printed over repeats.
    headline: Vec<(&'static str, Option<f64>)>,
    /// Scenario-specific text lines.
    lines: Vec<String>,
    phases: Vec<Phase>,
    /// Subscriptions to delete once the run's figures are taken.
    cleanup: Vec<String>,
}

impl Outcome {
    /// The outcome of a run of one phase: the phase's own figures.
    fn of_phase(
        phase: Phase,
        fields: Map<String, Value>,
        headline: Vec<(&'static str, Option<f64>)>,
        lines: Vec<String>,
    ) -> Self {
        Self {
            deliveries_per_sec: phase.deliveries_per_sec,
            p50_ms: phase.p50_ms,
            p95_ms: phase.p95_ms,
            p99_ms: phase.p99_ms,
            deliveries: phase.delivered,
            complete: phase.complete,
            fields,
            headline,
            lines,
            phases: vec![phase],
            cleanup: Vec::new(),
        }
    }
}

/// One run's report.
struct Report {
    run: usize,
    run_id: String,
    elapsed_s: f64,
    outcome: Outcome,
    stages: Vec<prom::StageStat>,
    procs: Vec<procstat::Figure>,
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn opt_round(x: Option<f64>, digits: i32) -> Value {
    x.filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(round(v, digits)))
}

/// `12345.6` as `12,346`.
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 {
        out.insert(0, '-');
    }
    out
}

fn fmt_ms(x: Option<f64>) -> String {
    match x {
        Some(ms) if ms >= 10_000.0 => format!("{:.1} s", ms / 1000.0),
        Some(ms) if ms >= 100.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{ms:.1} ms"),
        None => "-".into(),
    }
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or("-".into(), |r| format!("{r:.2}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn subscription(tenant: &str, url: &str, patterns: &[String]) -> Value {
    // The shipped defaults: no per-subscription limits of its own.
    json!({"tenant": tenant, "url": url, "event_types": patterns, "description": "hookline-bench"})
}

impl Bench {
    /// `/metrics` of each binary; `None` for one that does not answer.
    async fn scrape(&self) -> Vec<(&'static str, Option<String>)> {
        let targets = [
            ("ingest", &self.cli.ingest),
            ("router", &self.cli.router),
            ("delivery", &self.cli.delivery),
        ];
        join_all(
            targets
                .into_iter()
                .map(|(name, base)| async move { (name, self.metrics(base).await) }),
        )
        .await
    }

    async fn metrics(&self, base: &str) -> Option<String> {
        let response = self
            .scraper
            .get(format!("{}/metrics", base.trim_end_matches('/')))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    /// Waits until `count()` reaches `expected`; false when it stopped moving for
    /// `--stall-seconds`.
    async fn wait_for(&self, what: &str, count: impl Fn() -> u64, expected: u64) -> bool {
        let stall = Duration::from_secs(self.cli.stall_seconds);
        let (mut last, mut moved) = (count(), Instant::now());
        loop {
            let n = count();
            if n >= expected {
                return true;
            }
            if n != last {
                (last, moved) = (n, Instant::now());
            } else if moved.elapsed() > stall {
                eprintln!(
                    "hookline-bench: {what}: {n} of {expected} after {} s without progress; giving up",
                    stall.as_secs()
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One phase: its subscriptions (fresh tenant), the load, until every delivery to
    /// the fast endpoints arrived; then the subscriptions are deleted.
    async fn phase(&self, run_id: &str, spec: PhaseSpec) -> anyhow::Result<Phase> {
        let tenant = format!("b{run_id}-{}", spec.name);
        let all = vec!["*".to_owned()];
        let mut fast: Vec<Arc<Endpoint>> = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..spec.fast {
            let (url, endpoint) = self.receiver.add(Behaviour::Instant)?;
            bodies.push(subscription(&tenant, &url, &all));
            fast.push(endpoint);
        }
        let bad = match spec.bad {
            Some(behaviour) => {
                let (url, endpoint) = self.receiver.add(behaviour)?;
                bodies.push(subscription(&tenant, &url, &all));
                Some(endpoint)
            }
            None => None,
        };
        let ids = self
            .api
            .create_subscriptions(&bodies, self.cli.create_concurrency.min(16))
            .await?;
        let maker = Arc::new(EventMaker::new(
            vec![tenant.clone()],
            vec!["payment.succeeded".to_owned()],
            self.cli.event_bytes,
        )?);

        let start_us = now_us();
        let started = Instant::now();
        match spec.rate {
            Some(rate) => self.load.paced(&maker, spec.events, rate).await?,
            None => self.load.burst(&maker, spec.events).await?,
        }
        let send_s = started.elapsed().as_secs_f64();
        let expected = spec.events * spec.fast as u64;
        let delivered = || fast.iter().map(|e| e.delivered()).sum::<u64>();
        let complete = self
            .wait_for(&format!("{} deliveries", spec.name), delivered, expected)
            .await;

        let mut latencies: Vec<u64> = Vec::new();
        let mut startup: Vec<u64> = Vec::new();
        let mut arrivals: Vec<u64> = Vec::new();
        let startup_end = start_us + (self.cli.startup_seconds * 1e6) as u64;
        for endpoint in &fast {
            let received = endpoint.received();
            for &(sent, latency) in &received.latencies {
                latencies.push(latency);
                if sent < startup_end {
                    startup.push(latency);
                }
            }
            arrivals.extend(received.arrivals);
        }
        latencies.sort_unstable();
        startup.sort_unstable();
        arrivals.sort_unstable();
        let delivered = delivered();
        let elapsed_s = match (complete, arrivals.last()) {
            (true, Some(&last)) if last > start_us => (last - start_us) as f64 / 1e6,
            _ => started.elapsed().as_secs_f64(),
        };
        let pct = |v: &[u64], p: f64| stats::percentile(v, p).map(stats::ms);
        let phase = Phase {
            name: spec.name,
            rate: spec.rate,
            events: spec.events,
            fast: spec.fast,
            bad: spec.bad,
            expected,
            delivered,
            duplicates: fast.iter().map(|e| e.duplicates()).sum(),
            complete,
            send_s,
            elapsed_s,
            deliveries_per_sec: delivered as f64 / elapsed_s.max(1e-9),
            steady_per_sec: stats::steady_rate(&arrivals),
            p50_ms: pct(&latencies, 0.50),
            p95_ms: pct(&latencies, 0.95),
            p99_ms: pct(&latencies, 0.99),
            max_ms: pct(&latencies, 1.0),
            startup_p99_ms: spec.rate.and_then(|_| pct(&startup, 0.99)),
            bad_requests: bad.as_ref().map_or(0, |e| e.requests()),
            bad_failed: bad.as_ref().map_or(0, |e| e.failed()),
            bad_delivered: bad.as_ref().map_or(0, |e| e.delivered()),
        };
        let undeleted = self
            .api
            .delete_subscriptions(&ids, self.cli.create_concurrency.min(16))
            .await;
        if undeleted > 0 {
            eprintln!("hookline-bench: {undeleted} subscriptions of {tenant} not deleted");
        }
        for endpoint in fast.iter().chain(bad.iter()) {
            endpoint.retire();
        }
        Ok(phase)
    }

    fn paced_rate(&self) -> f64 {
        self.cli.rate.unwrap_or(200.0)
    }

    fn subscriptions(&self) -> usize {
        self.cli.subscriptions.unwrap_or(10).max(1)
    }

    async fn burst(&self, run_id: &str) -> anyhow::Result<Outcome> {
        let phase = self
            .phase(
                run_id,
                PhaseSpec {
                    name: "burst",
                    fast: self.subscriptions(),
                    bad: None,
                    events: self.cli.events.unwrap_or(30_000),
                    rate: None,
                },
            )
            .await?;
        let raw_ratio = ratio(
            Some(phase.deliveries_per_sec),
            self.raw.map(|r| r.http_per_sec),
        );
        let mut fields = Map::new();
        fields.insert("ratio_to_raw_http".into(), opt_round(raw_ratio, 3));
        fields.insert(
            "steady_deliveries_per_sec".into(),
            opt_round(phase.steady_per_sec, 0),
        );
        let lines = vec![format!(
            "  deliveries/s {} (steady {}); {} of the raw HTTP limit",
            thousands(phase.deliveries_per_sec),
            phase.steady_per_sec.map_or("-".into(), thousands),
            fmt_ratio(raw_ratio)
        )];
        let headline = vec![
            ("deliveries_per_sec", Some(phase.deliveries_per_sec)),
            ("steady_deliveries_per_sec", phase.steady_per_sec),
            ("ratio_to_raw_http", raw_ratio),
            ("p99_ms", phase.p99_ms),
        ];
        Ok(Outcome::of_phase(phase, fields, headline, lines))
    }

    async fn paced(&self, run_id: &str) -> anyhow::Result<Outcome> {
        let rate = self.paced_rate();
        let events = self
            .cli
            .events
            .unwrap_or((rate * self.cli.duration.unwrap_or(60.0)).round() as u64);
        let phase = self
            .phase(
                run_id,
                PhaseSpec {
                    name: "paced",
                    fast: self.subscriptions(),
                    bad: None,
                    events,
                    rate: Some(rate),
                },
            )
            .await?;
        let mut fields = Map::new();
        fields.insert("startup_p99_ms".into(), opt_round(phase.startup_p99_ms, 2));
        fields.insert(
            "target_deliveries_per_sec".into(),
            json!(rate * phase.fast as f64),
        );
        let headline = vec![
            ("p50_ms", phase.p50_ms),
            ("p99_ms", phase.p99_ms),
            ("startup_p99_ms", phase.startup_p99_ms),
            ("deliveries_per_sec", Some(phase.deliveries_per_sec)),
        ];
        Ok(Outcome::of_phase(phase, fields, headline, Vec::new()))
    }

    /// slow-endpoint and flaky-endpoint: the fast subscriptions alone (burst, then
    /// paced), then with the bad one (paced, then burst: the bad one's backlog of a
    /// burst would otherwise weigh on the paced phase).
    async fn bad_endpoint(&self, run_id: &str, bad: Behaviour) -> anyhow::Result<Outcome> {
        let fast = self.subscriptions().saturating_sub(1).max(1);
        let burst_events = self.cli.events.unwrap_or(20_000);
        let rate = self.paced_rate();
        let paced_events = (rate * self.cli.duration.unwrap_or(30.0)).round() as u64;
        let spec = |name, bad, events, rate| PhaseSpec {
            name,
            fast,
            bad,
            events,
            rate,
        };
        let base_burst = self
            .phase(run_id, spec("baseline-burst", None, burst_events, None))
            .await?;
        let base_paced = self
            .phase(
                run_id,
                spec("baseline-paced", None, paced_events, Some(rate)),
            )
            .await?;
        let bad_paced = self
            .phase(
                run_id,
                spec("bad-paced", Some(bad), paced_events, Some(rate)),
            )
            .await?;
        let bad_burst = self
            .phase(run_id, spec("bad-burst", Some(bad), burst_events, None))
            .await?;

        let throughput_ratio = ratio(
            Some(bad_burst.deliveries_per_sec),
            Some(base_burst.deliveries_per_sec),
        );
        let p99_ratio = ratio(bad_paced.p99_ms, base_paced.p99_ms);
        let throughput_met = throughput_ratio.map(|r| r >= 0.9);
        let p99_met = p99_ratio.map(|r| r <= 2.0);
        let mut fields = Map::new();
        fields.insert(
            "baseline".into(),
            json!({"deliveries_per_sec": round(base_burst.deliveries_per_sec, 0),
                   "p50_ms": opt_round(base_paced.p50_ms, 2),
                   "p99_ms": opt_round(base_paced.p99_ms, 2)}),
        );
        fields.insert("throughput_ratio".into(), opt_round(throughput_ratio, 3));
        fields.insert("p99_ratio".into(), opt_round(p99_ratio, 3));
        fields.insert(
            "targets_met".into(),
            json!({"throughput_ratio_ge_0_9": throughput_met, "p99_ratio_le_2": p99_met}),
        );
        fields.insert("fast_subscriptions".into(), json!(fast));
        fields.insert(
            "bad_endpoint".into(),
            json!(match bad {
                Behaviour::Hang(d) => format!("answers after {} s", d.as_secs_f64()),
                Behaviour::FailEveryOther => "500 to every other request".into(),
                Behaviour::Instant => "instant".into(),
            }),
        );
        let met = |m: Option<bool>| match m {
            Some(true) => "met",
            Some(false) => "missed",
            None => "-",
        };
        let lines = vec![format!(
            "  fast ones with the bad one vs alone: throughput x{} (target >= 0.9: {}), p99 x{} (target <= 2: {})",
            fmt_ratio(throughput_ratio),
            met(throughput_met),
            fmt_ratio(p99_ratio),
            met(p99_met)
        )];
        let phases = vec![base_burst, base_paced, bad_paced, bad_burst];
        let deliveries = phases.iter().map(|p| p.delivered + p.bad_delivered).sum();
        let complete = phases.iter().all(|p| p.complete);
        Ok(Outcome {
            deliveries_per_sec: phases[3].deliveries_per_sec,
            p50_ms: phases[2].p50_ms,
            p95_ms: phases[2].p95_ms,
            p99_ms: phases[2].p99_ms,
            deliveries,
            complete,
            fields,
            headline: vec![
                ("throughput_ratio", throughput_ratio),
                ("p99_ratio", p99_ratio),
                ("deliveries_per_sec", Some(phases[3].deliveries_per_sec)),
                ("p99_ms", phases[2].p99_ms),
            ],
            lines,
            phases,
            cleanup: Vec::new(),
        })
    }

    /// many-subscriptions: `--subscriptions-total` subscriptions over tenants of
    /// `--subscriptions-per-tenant`, then a burst of events of all those tenants and 32
    /// types; routed events/s from the router's `hookline_router_events_total`.
    async fn many_subscriptions(&self, run_id: &str) -> anyhow::Result<Outcome> {
        let per_tenant = self.cli.subscriptions_per_tenant.max(1);
        let total = self.cli.subscriptions_total.max(1);
        let tenant_count = total.div_ceil(per_tenant);
        let tenants: Vec<String> = (0..tenant_count)
            .map(|t| format!("b{run_id}-t{t}"))
            .collect();
        let types = fanout::types();
        let (url, endpoint) = self.receiver.add(Behaviour::Instant)?;
        let created = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let reporter = (!self.cli.json).then(|| {
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    eprintln!(
                        "  ... {} of {} subscriptions created",
                        thousands(progress.load(Ordering::Relaxed) as f64),
                        thousands(total as f64)
                    );
                }
            })
        });
        // Bodies are made as the calls go out: 100,000 of them held at once would weigh
        // on the bench's own memory.
        let (tenants_ref, types_ref, url_ref) = (&tenants, &types, &url);
        let results: Vec<anyhow::Result<String>> = futures::stream::iter(0..total)
            .map(|k| {
                let progress = &progress;
                async move {
                    let (t, j) = (k / per_tenant, k % per_tenant);
                    let pattern = fanout::pattern(t, j, types_ref);
                    let body = subscription(&tenants_ref[t], url_ref, &[pattern]);
                    let id = self.api.create_subscription(&body).await;
                    progress.fetch_add(1, Ordering::Relaxed);
                    id
                }
            })
            .buffer_unordered(self.cli.create_concurrency.max(1))
            .collect()
            .await;
        if let Some(reporter) = reporter {
            reporter.abort();
        }
        let (mut ids, mut failure) = (Vec::with_capacity(total), None);
        for result in results {
            match result {
                Ok(id) => ids.push(id),
                Err(err) => failure = Some(err),
            }
        }
        if let Some(err) = failure {
            self.api
                .delete_subscriptions(&ids, self.cli.create_concurrency)
                .await;
            return Err(err.context("creating the subscriptions"));
        }
        let create_s = created.elapsed().as_secs_f64();

        let events = self.cli.events.unwrap_or(100_000);
        let maker = Arc::new(EventMaker::new(
            tenants.clone(),
            types.clone(),
            self.cli.event_bytes,
        )?);
        let counts: Vec<usize> = (0..tenant_count)
            .map(|t| per_tenant.min(total - t * per_tenant))
            .collect();
        let table = fanout::table(&counts, &types);
        let expected: u64 = (0..events)
            .map(|seq| {
                let (t, k) = maker.pick(seq);
                u64::from(table[t][k])
            })
            .sum();

        // The router's counters, sampled every 100 ms from before the first event.
        let samples: Arc<Mutex<Vec<(f64, f64, f64)>>> = Arc::default();
        let router_base = self.metrics(&self.cli.router).await.map(|text| {
            let s = prom::parse(&text);
            (
                prom::sum(&s, "hookline_router_events_total").unwrap_or(0.0),
                prom::sum(&s, "hookline_router_tasks_total").unwrap_or(0.0),
            )
        });
        if router_base.is_none() {
            eprintln!("hookline-bench: the router's /metrics does not answer: no routed events/s");
        }
        let start_us = now_us();
        let started = Instant::now();
        let sampler = {
            let (samples, client) = (Arc::clone(&samples), self.scraper.clone());
            let url = format!("{}/metrics", self.cli.router.trim_end_matches('/'));
            let (base_events, base_tasks) = router_base.unwrap_or((0.0, 0.0));
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(100));
                loop {
                    ticker.tick().await;
                    let Ok(response) = client.get(&url).send().await else {
                        continue;
                    };
                    let Ok(text) = response.text().await else {
                        continue;
                    };
                    let s = prom::parse(&text);
                    let events = prom::sum(&s, "hookline_router_events_total").unwrap_or(0.0);
                    let tasks = prom::sum(&s, "hookline_router_tasks_total").unwrap_or(0.0);
                    if let Ok(mut all) = samples.lock() {
                        all.push((
                            started.elapsed().as_secs_f64(),
                            events - base_events,
                            tasks - base_tasks,
                        ));
                    }
                }
            })
        };
        let sent = self.load.burst(&maker, events).await;
        let send_s = started.elapsed().as_secs_f64();
        let routed_now = || {
            samples
                .lock()
                .ok()
                .and_then(|s| s.last().map(|&(_, e, _)| e as u64))
                .unwrap_or(0)
        };
        let routed_complete = match (&sent, router_base) {
            (Ok(()), Some(_)) => self.wait_for("routed events", routed_now, events).await,
            _ => false,
        };
        let routed_complete = routed_complete || router_base.is_none();
        let delivered_complete = match &sent {
            Ok(()) => {
                self.wait_for("deliveries", || endpoint.delivered(), expected)
                    .await
            }
            Err(_) => false,
        };
        sampler.abort();
        sent?;

        let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
        let series: Vec<(f64, f64)> = samples.iter().map(|&(t, e, _)| (t, e)).collect();
        let n = events as f64;
        let routed_at = prom::crossing_time(&series, n);
        let routed_per_sec = routed_at.map(|t| n / t.max(1e-9));
        let steady_routed = match (
            prom::crossing_time(&series, 0.1 * n),
            prom::crossing_time(&series, 0.9 * n),
        ) {
            (Some(a), Some(b)) if b > a => Some(0.8 * n / (b - a)),
            _ => None,
        };
        let measured_fan_out = samples
            .iter()
            .rev()
            .find(|s| s.1 > 0.0)
            .map(|&(_, e, t)| t / e);
        let received = endpoint.received();
        let mut latencies: Vec<u64> = received.latencies.iter().map(|&(_, l)| l).collect();
        latencies.sort_unstable();
        let delivered = endpoint.delivered();
        let last_arrival = received.arrivals.iter().copied().max();
        let delivery_s = match last_arrival {
            Some(last) if last > start_us => (last - start_us) as f64 / 1e6,
            _ => started.elapsed().as_secs_f64(),
        };
        let deliveries_per_sec = delivered as f64 / delivery_s.max(1e-9);
        let mean_fan_out = expected as f64 / n.max(1.0);
        let pct = |p: f64| stats::percentile(&latencies, p).map(stats::ms);
        endpoint.retire();

        let mut fields = Map::new();
        fields.insert("routed_events_per_sec".into(), opt_round(routed_per_sec, 0));
        fields.insert(
            "routed_events_per_sec_steady".into(),
            opt_round(steady_routed, 0),
        );
        fields.insert(
            "ingest_events_per_sec".into(),
            json!(round(n / send_s.max(1e-9), 0)),
        );
        fields.insert("events".into(), json!(events));
        fields.insert("subscriptions_total".into(), json!(total));
        fields.insert("tenants".into(), json!(tenant_count));
        fields.insert("subscriptions_per_tenant".into(), json!(per_tenant));
        fields.insert("mean_fan_out".into(), json!(round(mean_fan_out, 3)));
        fields.insert("measured_fan_out".into(), opt_round(measured_fan_out, 3));
        fields.insert("subscription_create_s".into(), json!(round(create_s, 2)));
        fields.insert(
            "subscription_create_per_sec".into(),
            json!(round(ids.len() as f64 / create_s.max(1e-9), 0)),
        );
        fields.insert("deliveries_expected".into(), json!(expected));
        fields.insert("duplicates".into(), json!(endpoint.duplicates()));
        fields.insert("routed_s".into(), opt_round(routed_at, 2));
        fields.insert("delivered_s".into(), json!(round(delivery_s, 2)));
        fields.insert("target_routed_events_per_sec".into(), json!(50_000));
        let lines = vec![
            format!(
                "  {} subscriptions ({} tenants x {per_tenant}; *, resource.* and exact types) created in {:.1} s ({}/s, {} in flight)",
                thousands(total as f64),
                thousands(tenant_count as f64),
                create_s,
                thousands(ids.len() as f64 / create_s.max(1e-9)),
                self.cli.create_concurrency
            ),
            format!(
                "  {} events of {} tenants and {} types, mean fan-out {:.2} (router: {}): {} deliveries expected, {} received",
                thousands(n),
                thousands(tenant_count as f64),
                types.len(),
                mean_fan_out,
                measured_fan_out.map_or("-".into(), |f| format!("{f:.2}")),
                thousands(expected as f64),
                thousands(delivered as f64)
            ),
            format!(
                "  routed events/s {} end to end, steady {} (target >= 50,000); events accepted {}/s",
                routed_per_sec.map_or("-".into(), thousands),
                steady_routed.map_or("-".into(), thousands),
                thousands(n / send_s.max(1e-9))
            ),
            format!(
                "  deliveries/s {} ({} after {:.1} s)",
                thousands(deliveries_per_sec),
                if delivered_complete {
                    "all delivered"
                } else {
                    "NOT all delivered"
                },
                delivery_s
            ),
        ];
        Ok(Outcome {
            deliveries_per_sec,
            p50_ms: pct(0.50),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            deliveries: delivered,
            complete: routed_complete && delivered_complete,
            fields,
            headline: vec![
                ("routed_events_per_sec", routed_per_sec),
                ("routed_events_per_sec_steady", steady_routed),
                ("deliveries_per_sec", Some(deliveries_per_sec)),
            ],
            lines,
            phases: Vec::new(),
            cleanup: ids,
        })
    }

    async fn run(&self, run: usize) -> anyhow::Result<Report> {
        let run_id = ulid::Ulid::new().to_string().to_lowercase();
        let before = self.scrape().await;
        let procs = procstat::start(&self.watched);
        let started = Instant::now();
        let outcome = match self.scenario {
            Scenario::Burst => self.burst(&run_id).await?,
            Scenario::Paced => self.paced(&run_id).await?,
            Scenario::SlowEndpoint => {
                let hang = Duration::from_secs_f64(self.cli.slow_seconds.max(0.0));
                self.bad_endpoint(&run_id, Behaviour::Hang(hang)).await?
            }
            Scenario::FlakyEndpoint => {
                self.bad_endpoint(&run_id, Behaviour::FailEveryOther)
                    .await?
            }
            Scenario::ManySubscriptions => self.many_subscriptions(&run_id).await?,
        };
        let elapsed_s = started.elapsed().as_secs_f64();
        let after = self.scrape().await;
        let procs = procstat::finish(&procs, self.cli.clock_ticks);
        if !outcome.cleanup.is_empty() && !self.cli.keep_subscriptions {
            if !self.cli.json {
                eprintln!(
                    "  ... deleting the run's {} subscriptions (not measured)",
                    thousands(outcome.cleanup.len() as f64)
                );
            }
            let undeleted = self
                .api
                .delete_subscriptions(&outcome.cleanup, self.cli.create_concurrency)
                .await;
            if undeleted > 0 {
                eprintln!("hookline-bench: {undeleted} subscriptions not deleted");
            }
        }
        let mut stages = Vec::new();
        for ((binary, before), (_, after)) in before.iter().zip(&after) {
            if let Some(after) = after {
                stages.extend(prom::stage_stats(
                    binary,
                    before.as_deref().unwrap_or(""),
                    after,
                ));
            }
        }
        Ok(Report {
            run,
            run_id,
            elapsed_s,
            outcome,
            stages,
            procs,
        })
    }
}

impl Phase {
    fn pacing(&self) -> String {
        match self.rate {
            Some(rate) => format!("{} events/s", thousands(rate)),
            None => "burst".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name, "pacing": self.pacing(), "events": self.events,
            "fast_subscriptions": self.fast, "bad_subscription": self.bad.is_some(),
            "deliveries_expected": self.expected, "deliveries": self.delivered,
            "duplicates": self.duplicates, "all_delivered": self.complete,
            "send_s": round(self.send_s, 2), "elapsed_s": round(self.elapsed_s, 2),
            "deliveries_per_sec": round(self.deliveries_per_sec, 0),
            "steady_deliveries_per_sec": opt_round(self.steady_per_sec, 0),
            "p50_ms": opt_round(self.p50_ms, 2), "p95_ms": opt_round(self.p95_ms, 2),
            "p99_ms": opt_round(self.p99_ms, 2), "max_ms": opt_round(self.max_ms, 2),
            "startup_p99_ms": opt_round(self.startup_p99_ms, 2),
            "bad_requests": self.bad_requests, "bad_failed": self.bad_failed,
            "bad_delivered": self.bad_delivered,
        })
    }

    fn line(&self, named: bool) -> String {
        let mut line = format!(
            "  {}{}: {} events x {} subscriptions{}: {}/{} delivered in {:.1} s, {} deliveries/s, p50 / p99 {} / {}",
            if named {
                format!("{:<15} ", self.name)
            } else {
                String::new()
            },
            self.pacing(),
            thousands(self.events as f64),
            self.fast,
            if self.bad.is_some() { " (+1 bad)" } else { "" },
            thousands(self.delivered as f64),
            thousands(self.expected as f64),
            self.elapsed_s,
            thousands(self.deliveries_per_sec),
            fmt_ms(self.p50_ms),
            fmt_ms(self.p99_ms),
        );
        if self.rate.is_some() {
            line.push_str(&format!(
                " (first seconds: p99 {})",
                fmt_ms(self.startup_p99_ms)
            ));
        }
        if self.bad.is_some() {
            line.push_str(&format!(
                "; bad endpoint: {} requests, {} answered 500, {} delivered",
                thousands(self.bad_requests as f64),
                thousands(self.bad_failed as f64),
                thousands(self.bad_delivered as f64)
            ));
        }
        line
    }
}

impl Report {
    fn json(&self, bench: &Bench) -> Value {
        let o = &self.outcome;
        let mut m = Map::new();
        m.insert("scenario".into(), json!(bench.scenario.name()));
        m.insert("run".into(), json!(self.run));
        m.insert("repeat".into(), json!(bench.cli.repeat));
        m.insert("run_id".into(), json!(self.run_id));
        m.insert("via".into(), json!(bench.cli.via.name()));
        m.insert("event_bytes".into(), json!(bench.cli.event_bytes));
        m.insert("events_per_request".into(), json!(bench.load.batch));
        m.insert("requests_in_flight".into(), json!(bench.load.in_flight));
        m.insert(
            "cores".into(),
            json!(std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)),
        );
        m.insert(
            "deliveries_per_sec".into(),
            json!(round(o.deliveries_per_sec, 0)),
        );
        m.insert("p50_ms".into(), opt_round(o.p50_ms, 2));
        m.insert("p95_ms".into(), opt_round(o.p95_ms, 2));
        m.insert("p99_ms".into(), opt_round(o.p99_ms, 2));
        m.insert("deliveries".into(), json!(o.deliveries));
        m.insert("all_delivered".into(), json!(o.complete));
        m.insert("elapsed_s".into(), json!(round(self.elapsed_s, 2)));
        for (k, v) in &o.fields {
            m.insert(k.clone(), v.clone());
        }
        let raw = bench.raw;
        m.insert(
            "raw_http_per_sec".into(),
            opt_round(raw.map(|r| r.http_per_sec), 0),
        );
        m.insert(
            "raw_kafka_produce_per_sec".into(),
            opt_round(raw.map(|r| r.kafka_produce_per_sec), 0),
        );
        m.insert(
            "raw_kafka_consume_per_sec".into(),
            opt_round(raw.map(|r| r.kafka_consume_per_sec), 0),
        );
        let mut stages: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for s in &self.stages {
            stages.entry(&s.binary).or_default().insert(
                s.stage.clone(),
                json!({"count": s.count, "p50_ms": opt_round(s.p50_ms, 3),
                       "p99_ms": opt_round(s.p99_ms, 3), "metric": s.metric}),
            );
        }
        m.insert("stages".into(), json!(stages));
        let per_1k = (o.deliveries as f64 / 1000.0).max(1e-9);
        let (mut rss, mut cpu, mut cpu_1k, mut scope) =
            (Map::new(), Map::new(), Map::new(), Map::new());
        for p in &self.procs {
            rss.insert(
                p.name.clone(),
                json!({"end": round(p.rss_end_mb, 1), "peak": round(p.rss_peak_mb, 1)}),
            );
            cpu.insert(p.name.clone(), json!(round(p.cpu_s, 2)));
            cpu_1k.insert(
                p.name.clone(),
                if o.deliveries > 0 {
                    json!(round(p.cpu_s / per_1k, 4))
                } else {
                    Value::Null
                },
            );
            scope.insert(p.name.clone(), json!(p.peak_scope));
        }
        m.insert("rss_mb".into(), Value::Object(rss));
        m.insert("rss_peak_scope".into(), Value::Object(scope));
        m.insert("cpu_s".into(), Value::Object(cpu));
        m.insert("cpu_s_per_1k".into(), Value::Object(cpu_1k));
        m.insert(
            "phases".into(),
            Value::Array(o.phases.iter().map(Phase::json).collect()),
        );
        Value::Object(m)
    }

    fn print(&self, bench: &Bench) {
        let o = &self.outcome;
        println!(
            "== {} · run {} of {} · via {} ({} events a {}, {} in flight in a burst) · {:.0} s{} ==",
            bench.scenario.name(),
            self.run,
            bench.cli.repeat,
            bench.cli.via.name(),
            bench.load.batch,
            match bench.cli.via {
                Via::Http => "request",
                Via::Kafka => "batch",
            },
            bench.load.in_flight,
            self.elapsed_s,
            if o.complete {
                ""
            } else {
                " · NOT ALL DELIVERED"
            }
        );
        let named = o.phases.len() > 1;
        for phase in &o.phases {
            println!("{}", phase.line(named));
        }
        for line in &o.lines {
            println!("{line}");
        }
        println!(
            "  latency (event sent -> webhook received) p50 / p95 / p99: {} / {} / {}",
            fmt_ms(o.p50_ms),
            fmt_ms(o.p95_ms),
            fmt_ms(o.p99_ms)
        );
        if self.stages.is_empty() {
            println!("  stages: none (no *_stage_duration_seconds histogram observed)");
        } else {
            println!("  stages, p50 / p99 (observations):");
            for s in &self.stages {
                println!(
                    "    {:<9} {:<28} {:>9} / {:<9} ({})",
                    s.binary,
                    s.stage,
                    fmt_ms(s.p50_ms),
                    fmt_ms(s.p99_ms),
                    thousands(s.count)
                );
            }
        }
        if !self.procs.is_empty() {
            println!(
                "  per process: CPU s (per 1,000 of {} deliveries), RSS at end / peak MiB",
                thousands(o.deliveries as f64)
            );
            for p in &self.procs {
                let per_1k = if o.deliveries > 0 {
                    format!("{:.4}", p.cpu_s / (o.deliveries as f64 / 1000.0))
                } else {
                    "-".into()
                };
                println!(
                    "    {:<9} {:>7.2} s ({per_1k:>7})   {:>6.0} / {:>6.0}{}",
                    p.name,
                    p.cpu_s,
                    p.rss_end_mb,
                    p.rss_peak_mb,
                    if p.peak_scope == "run" {
                        ""
                    } else {
                        " (lifetime peak)"
                    }
                );
            }
        }
    }
}

/// Raw HTTP: POSTs/s from one reqwest client to one axum server, keep-alive, with an
/// event's body, the receiver doing what the end-to-end receiver does.
async fn raw_http(seconds: u64, concurrency: usize, event_bytes: usize) -> anyhow::Result<f64> {
    let receiver = Receiver::start().await?;
    let (url, endpoint) = receiver.add(Behaviour::Instant)?;
    let client = reqwest::Client::new();
    let maker = EventMaker::new(
        vec!["bench".into()],
        vec!["payment.succeeded".into()],
        event_bytes,
    )?;
    let payload = serde_json::to_vec(&json!({"id": "evt_0", "data": maker.event(0)["data"]}))?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| {
        let (client, url, payload) = (client.clone(), url.clone(), payload.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let _ = client.post(&url).body(payload.clone()).send().await;
            }
        })
    });
    join_all(workers).await;
    let rate = endpoint.delivered() as f64 / started.elapsed().as_secs_f64();
    endpoint.retire();
    Ok(rate)
}

/// Raw Kafka: produce `records` task-sized records (acks=all), then consume them.
async fn raw_kafka(
    args: &KafkaArgs,
    records: usize,
    event_bytes: usize,
) -> anyhow::Result<(f64, f64)> {
    let topic = format!(
        "{}bench.raw.{}",
        args.topic_prefix,
        ulid::Ulid::new().to_string().to_lowercase()
    );
    kafka::ensure_topics(
        args,
        &[TopicSpec::plain(topic.clone(), args)],
        Duration::from_secs(30),
    )
    .await?;
    let producer = kafka::producer(args, "hookline-bench")?;
    let maker = EventMaker::new(
        vec!["bench".into()],
        vec!["payment.succeeded".into()],
        event_bytes,
    )?;
    let payload = serde_json::to_vec(&json!({"message_id": "msg_0", "subscription_id": "sub_0",
        "event": maker.event(0), "attempts": 0, "routed_at": "2026-11-24T12:00:00Z"}))?;
    let started = Instant::now();
    let mut n = 0;
    while n < records {
        let chunk: Vec<OutRecord> = (n..(n + 10_000).min(records))
            .map(|i| {
                OutRecord::new(
                    topic.as_str(),
                    format!("k{}", i % 64),
                    Some(payload.clone()),
                )
            })
            .collect();
        n += chunk.len();
        for result in send_all(&producer, &chunk, Duration::from_secs(30)).await {
            result?;
        }
    }
    let produce_rate = records as f64 / started.elapsed().as_secs_f64();

    let consumer: StreamConsumer =
        kafka::group_consumer(args, "hookline-bench", &format!("{topic}-reader"))?;
    consumer.subscribe(&[&topic])?;
    let started = Instant::now();
    let mut read = 0;
    while read < records {
        tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        read += 1;
    }
    Ok((
        produce_rate,
        records as f64 / started.elapsed().as_secs_f64(),
    ))
}

fn print_spread(reports: &[Report], json: bool) {
    let Some(first) = reports.first() else {
        return;
    };
    let mut lines = vec![format!(
        "spread over {} runs (min / median / max):",
        reports.len()
    )];
    for (i, (name, _)) in first.outcome.headline.iter().enumerate() {
        let values: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.outcome.headline.get(i).and_then(|(_, v)| *v))
            .collect();
        let Some(s) = stats::spread(&values) else {
            continue;
        };
        let show = |x: f64| {
            if name.ends_with("_ms") {
                fmt_ms(Some(x))
            } else if name.contains("ratio") {
                format!("{x:.3}")
            } else {
                thousands(x)
            }
        };
        lines.push(format!(
            "  {name:<30} {} / {} / {}",
            show(s.min),
            show(s.median),
            show(s.max)
        ));
    }
    for line in lines {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenario = cli.scenario.unwrap_or(if cli.rate.is_some() {
        Scenario::Paced
    } else {
        Scenario::Burst
    });
    anyhow::ensure!(cli.repeat >= 1, "--repeat must be at least 1");
    if matches!(scenario, Scenario::SlowEndpoint | Scenario::FlakyEndpoint) {
        anyhow::ensure!(
            cli.subscriptions.unwrap_or(10) >= 2,
            "--subscriptions must be at least 2 (fast ones plus the bad one)"
        );
    }
    let mut watched = procstat::parse_pids(&cli.pids).map_err(anyhow::Error::msg)?;
    watched.push(procstat::Watched {
        name: "bench".into(),
        pid: std::process::id(),
    });
    let api = Arc::new(Api::new(&cli.ingest, cli.admin_token.clone())?);
    let batch = match cli.via {
        Via::Http => {
            let sample = EventMaker::new(
                vec!["b00000000000000000000000000-baseline-burst".into()],
                fanout::types(),
                cli.event_bytes,
            )?;
            load::fit_batch(cli.http_batch, cli.max_body_bytes, sample.max_size()?)
        }
        Via::Kafka => cli.http_batch.max(1),
    };
    let load = Load {
        api: Arc::clone(&api),
        producer: kafka::producer(&cli.kafka, "hookline-bench")?,
        topic: cli.kafka.topics().events(),
        via: cli.via,
        batch,
        in_flight: cli.http_in_flight,
    };
    let raw = if cli.no_raw {
        None
    } else {
        let http = raw_http(cli.http_seconds, cli.http_concurrency, cli.event_bytes).await?;
        let (produce, consume) = raw_kafka(&cli.kafka, cli.kafka_records, cli.event_bytes).await?;
        Some(Raw {
            http_per_sec: http,
            kafka_produce_per_sec: produce,
            kafka_consume_per_sec: consume,
        })
    };
    if let (Some(raw), false) = (raw, cli.json) {
        println!("raw limits, same machine, this invocation:");
        println!(
            "  HTTP POSTs/s (reqwest -> axum, {} in flight)   {:>10}",
            cli.http_concurrency,
            thousands(raw.http_per_sec)
        );
        println!(
            "  Kafka produce records/s (acks=all)           {:>10}",
            thousands(raw.kafka_produce_per_sec)
        );
        println!(
            "  Kafka consume records/s                      {:>10}",
            thousands(raw.kafka_consume_per_sec)
        );
    }
    let bench = Bench {
        scenario,
        api,
        load,
        receiver: Receiver::start().await?,
        raw,
        watched,
        scraper: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        cli,
    };
    let mut reports = Vec::new();
    for run in 1..=bench.cli.repeat {
        let report = bench.run(run).await?;
        if bench.cli.json {
            println!("{}", report.json(&bench));
        } else {
            report.print(&bench);
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        print_spread(&reports, bench.cli.json);
    }
    let incomplete: Vec<usize> = reports
        .iter()
        .filter(|r| !r.outcome.complete)
        .map(|r| r.run)
        .collect();
    anyhow::ensure!(
        incomplete.is_empty(),
        "not every delivery arrived in run(s) {incomplete:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(f64::NAN), "-");
    }

    #[test]
    fn the_scenario_follows_the_rate_when_not_given() {
        let cli = Cli::parse_from(["hookline-bench", "--rate", "100"]);
        assert_eq!(cli.scenario, None);
        assert_eq!(cli.rate, Some(100.0));
        let cli = Cli::parse_from(["hookline-bench", "--scenario", "many-subscriptions"]);
        assert_eq!(cli.scenario, Some(Scenario::ManySubscriptions));
    }
}
