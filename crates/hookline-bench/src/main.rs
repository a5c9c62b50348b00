//! `hookline-bench`: measures the pipeline end to end (deliveries/s, latency
//! percentiles) and, in the same run, the raw limits it sits on: HTTP POSTs/s from one
//! reqwest client to one axum server, and Kafka produce/consume records/s.
//!
//! Run through `scripts/bench.sh`, which starts the broker and the three binaries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use clap::Parser;
use futures::future::join_all;
use futures::StreamExt;
use hookline_core::config::KafkaArgs;
use hookline_core::kafka::{self, TopicSpec};
use hookline_core::produce::{send_all, OutRecord};
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "hookline-bench", about)]
struct Cli {
    /// Base URL of hookline-ingest (subscriptions are created there).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingest: String,
    /// Events produced for the end-to-end run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Events per second to produce (0: as fast as possible). A paced run measures
    /// latency without queueing; a burst measures throughput.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// How events enter the pipeline: `http` (POST /v1/events, as a new user would) or
    /// `kafka` (produced straight to the events topic, as a payment processor may).
    #[arg(long, value_enum, default_value_t = Via::Http)]
    via: Via,
    /// Subscriptions each event fans out to.
    #[arg(long, default_value_t = 4)]
    subscriptions: usize,
    /// Seconds of the raw HTTP measurement.
    #[arg(long, default_value_t = 5)]
    http_seconds: u64,
    /// Concurrent requests of the raw HTTP measurement.
    #[arg(long, default_value_t = 64)]
    http_concurrency: usize,
    /// Records of the raw Kafka measurement.
    #[arg(long, default_value_t = 200_000)]
    kafka_records: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Default)]
struct Sink {
    count: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    /// Arrival time (µs) of every delivery, for the steady-state rate.
    arrivals_us: Mutex<Vec<u64>>,
}

/// How the load tool sends its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    /// Batches POSTed to ingest's `/v1/events`.
    Http,
    /// Records produced to the events topic.
    Kafka,
}

/// Events per HTTP request, and requests in flight at once in a burst.
const HTTP_BATCH: usize = 500;
const HTTP_IN_FLIGHT: usize = 8;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

async fn receive(State(sink): State<Arc<Sink>>, body: Bytes) -> StatusCode {
    let received = now_us();
    if let Ok(mut a) = sink.arrivals_us.lock() {
        a.push(received);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(&body) {
        if let Some(sent) = value["data"]["sent_at_us"].as_u64() {
            if let Ok(mut l) = sink.latencies_us.lock() {
                l.push(received.saturating_sub(sent));
            }
        }
    }
    sink.count.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// Starts a receiver on a free loopback port; returns its base URL and counters.
async fn start_receiver() -> anyhow::Result<(String, Arc<Sink>)> {
    let sink = Arc::new(Sink::default());
    let app = axum::Router::new()
        .route("/hooks", post(receive))
        .with_state(Arc::clone(&sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, sink))
}

fn body(seq: usize) -> Value {
    json!({"type": "payment.succeeded", "tenant": "bench", "data": {
        "seq": seq, "sent_at_us": now_us(), "payment_id": format!("pay_{seq}"),
        "amount": 125_000, "currency": "EUR", "customer_id": "cus_77",
        "description": "Invoice in_2001 for services rendered, November 2026"}})
}

/// Raw HTTP: POSTs/s from one reqwest client to one axum server, keep-alive.
async fn raw_http(seconds: u64, concurrency: usize) -> anyhow::Result<f64> {
    let (base, sink) = start_receiver().await?;
    let client = reqwest::Client::new();
    let payload = serde_json::to_vec(&body(0))?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, url, payload) = (client.clone(), format!("{base}/hooks"), payload.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let _ = client.post(&url).body(payload.clone()).send().await;
            }
        })
    });
    join_all(workers).await;
    Ok(sink.count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Raw Kafka: produce `records` task-sized records (acks=all), then consume them.
async fn raw_kafka(args: &KafkaArgs, records: usize) -> anyhow::Result<(f64, f64)> {
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
    let payload = serde_json::to_vec(&json!({"message_id": "msg_0", "subscription_id": "sub_0",
        "event": body(0), "attempts": 0, "routed_at": "2026-11-24T12:00:00Z"}))?;
    let started = Instant::now();
    for chunk in (0..records).collect::<Vec<_>>().chunks(10_000) {
        let records = chunk
            .iter()
            .map(|n| (format!("k{}", n % 64), payload.clone()));
        produce_all(&producer, &topic, records.collect()).await?;
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

/// Produces every (key, value) record at once and waits for all acknowledgements.
async fn produce_all(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let records: Vec<OutRecord> = records
        .into_iter()
        .map(|(key, payload)| OutRecord::new(topic, key, Some(payload)))
        .collect();
    for result in send_all(producer, &records, Duration::from_secs(30)).await {
        result?;
    }
    Ok(())
}

/// POSTs the events of `seqs` to ingest, `HTTP_BATCH` a request, `HTTP_IN_FLIGHT`
/// requests at once; fails unless every request is accepted (202).
async fn post_events(http: &reqwest::Client, ingest: &str, seqs: &[usize]) -> anyhow::Result<()> {
    let url = format!("{ingest}/v1/events");
    let requests = seqs.chunks(HTTP_BATCH).map(|batch| {
        let events: Vec<Value> = batch.iter().map(|&seq| body(seq)).collect();
        let request = http.post(&url).json(&events);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(
                response.status() == reqwest::StatusCode::ACCEPTED,
                "POST /v1/events: HTTP {}",
                response.status()
            );
            Ok(())
        }
    });
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(requests)
        .buffer_unordered(HTTP_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

struct EndToEnd {
    deliveries_per_s: f64,
    steady_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    delivered: u64,
}

/// End to end: events straight to the events topic, fanned out to `subscriptions`
/// subscriptions at the local receiver, until every delivery arrived.
async fn end_to_end(cli: &Cli) -> anyhow::Result<EndToEnd> {
    let (base, sink) = start_receiver().await?;
    let http = reqwest::Client::new();
    for _ in 0..cli.subscriptions {
        let response = http
            .post(format!("{}/v1/subscriptions", cli.ingest))
            .json(
                // The shipped defaults: no per-subscription limits of its own.
                &json!({"tenant": "bench", "url": format!("{base}/hooks"), "event_types": ["*"]}),
            )
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "subscription: HTTP {}",
            response.status()
        );
    }
    let producer = kafka::producer(&cli.kafka, "hookline-bench")?;
    let topic = cli.kafka.topics().events();
    let expected = (cli.events * cli.subscriptions) as u64;
    let started = Instant::now();
    let chunk_size = if cli.rate > 0 {
        (cli.rate as usize / 100).max(1)
    } else {
        2_000
    };
    let mut next_tick = tokio::time::Instant::now();
    for chunk in (0..cli.events).collect::<Vec<_>>().chunks(chunk_size) {
        if cli.rate > 0 {
            // 100 chunks a second.
            tokio::time::sleep_until(next_tick).await;
            next_tick += Duration::from_millis(10);
        }
        match cli.via {
            Via::Kafka => {
                let records = chunk.iter().map(|&seq| {
                    (
                        format!("pay_{seq}"),
                        serde_json::to_vec(&body(seq)).unwrap_or_default(),
                    )
                });
                produce_all(&producer, &topic, records.collect()).await?;
            }
            Via::Http => post_events(&http, &cli.ingest, chunk).await?,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.count.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = sink.count.load(Ordering::Relaxed);
    let mut arrivals = sink
        .arrivals_us
        .lock()
        .map(|a| a.clone())
        .unwrap_or_default();
    arrivals.sort_unstable();
    // Between the 10th and the 90th percentile of arrivals: the pipeline's steady rate,
    // without its fill and drain.
    let steady_per_s = match (
        arrivals.get(arrivals.len() / 10),
        arrivals.get(arrivals.len() * 9 / 10),
    ) {
        (Some(a), Some(b)) if b > a => (arrivals.len() as f64 * 0.8) / ((b - a) as f64 / 1e6),
        _ => 0.0,
    };
    let mut latencies = sink
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok(EndToEnd {
        deliveries_per_s: delivered as f64 / elapsed,
        steady_per_s,
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        delivered,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let e2e = end_to_end(&cli).await?;
    let http = raw_http(cli.http_seconds, cli.http_concurrency).await?;
    let (produce, consume) = raw_kafka(&cli.kafka, cli.kafka_records).await?;
    let expected = cli.events * cli.subscriptions;
    if cli.json {
        println!(
            "{}",
            json!({
                "events": cli.events, "subscriptions": cli.subscriptions,
                "via": format!("{:?}", cli.via).to_lowercase(),
                "deliveries_expected": expected, "deliveries_received": e2e.delivered,
                "rate_events_per_s": cli.rate,
                "end_to_end": {"deliveries_per_s": e2e.deliveries_per_s.round(),
                               "steady_deliveries_per_s": e2e.steady_per_s.round(),
                               "latency_ms": {"p50": e2e.p50_ms, "p95": e2e.p95_ms, "p99": e2e.p99_ms}},
                "raw": {"http_posts_per_s": http.round(), "kafka_produce_records_per_s": produce.round(),
                        "kafka_consume_records_per_s": consume.round()},
                "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            })
        );
    } else {
        let pacing = if cli.rate > 0 {
            format!("{} events/s", cli.rate)
        } else {
            "burst".into()
        };
        println!(
            "end to end ({pacing}): {} events x {} subscriptions = {expected} deliveries ({} received)",
            cli.events, cli.subscriptions, e2e.delivered
        );
        println!("  deliveries/s, whole run   {:>10.0}", e2e.deliveries_per_s);
        println!(
            "  deliveries/s, steady      {:>10.0} (10th to 90th percentile of arrivals)",
            e2e.steady_per_s
        );
        println!(
            "  latency p50 / p95 / p99   {:.1} / {:.1} / {:.1} ms (event sent -> webhook received)",
            e2e.p50_ms, e2e.p95_ms, e2e.p99_ms
        );
        println!("raw limits, same machine, same run:");
        println!(
            "  HTTP POSTs/s (reqwest -> axum, {} in flight) {:>10.0}",
            cli.http_concurrency, http
        );
        println!(
            "  Kafka produce records/s (acks=all)        {:>10.0}",
            produce
        );
        println!(
            "  Kafka consume records/s                   {:>10.0}",
            consume
        );
    }
    anyhow::ensure!(
        e2e.delivered >= expected as u64,
        "only {} of {expected} deliveries arrived",
        e2e.delivered
    );
    Ok(())
}
