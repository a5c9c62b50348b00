//! The steady load of the chaos run: streams of events, each stream sending one event at
//! a time (the next only once the previous one is acknowledged), over the HTTP API or
//! straight to the events topic with an idempotent `acks=all` producer.
//!
//! Every event has an id of the sender's own and names its entity in `data.id`, with a
//! per-entity sequence number in `data.seq`: ingest keys HTTP events by
//! `<tenant>/<entity>`, and the Kafka streams key their records the same way, so one
//! entity's events share an events partition and ordered subscriptions must get them in
//! that partition's order. An event that is not acknowledged (`503`, a transport error,
//! a produce error) is sent again with the same id until it is, so none is accepted
//! under two ids; a stream never moves on before its event is acknowledged, so an
//! entity's events reach the topic in sequence order (copies of a retried event aside).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hookline_e2e::ledger::{Refusal, EVENT_TYPES};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};
use tokio::sync::watch;

/// How an event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `POST /v1/events`.
    Http,
    /// Produced straight to the events topic.
    Kafka,
}

/// One event a stream sent.
#[derive(Debug, Clone)]
pub struct SentEvent {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its type.
    pub event_type: String,
    /// Its `data` (entity id, sequence number, amount, currency).
    pub data: Value,
    /// How it was sent.
    pub via: Via,
    /// When its first send began.
    pub first_sent: Instant,
    /// When it was acknowledged (`None`: never).
    pub accepted: Option<Instant>,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Every event sent, acknowledged or not.
    pub events: Vec<SentEvent>,
    /// `503` answers with `Retry-After`.
    pub unavailable: usize,
    /// `503` answers without `Retry-After`.
    pub unavailable_without_retry_after: usize,
    /// `409 idempotency_in_progress` answers with `Retry-After` (a killed ingest's claim
    /// holds the id until it expires).
    pub in_progress: usize,
    /// `409 idempotency_in_progress` answers without `Retry-After`.
    pub in_progress_without_retry_after: usize,
    /// HTTP transport errors (ingest away) and produce errors, each retried.
    pub send_errors: usize,
    /// Answers no retry changes (the event was given up).
    pub refused: Vec<String>,
    /// The longest one HTTP request took to be answered.
    pub slowest_answer: Duration,
}

impl LoadStats {
    /// Events acknowledged.
    pub fn accepted(&self) -> usize {
        self.events.iter().filter(|e| e.accepted.is_some()).count()
    }
}

/// Where the load sends.
#[derive(Clone)]
pub struct Targets {
    /// Ingest's current base URL (changes when ingest is restarted on a new port).
    pub ingest: Arc<RwLock<String>>,
    /// The producer of the Kafka streams.
    pub producer: FutureProducer,
    /// The events topic.
    pub events_topic: String,
}

/// One stream: a tenant's entities, written in turn.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Label, the prefix of its event ids.
    pub label: String,
    /// How it sends.
    pub via: Via,
    /// Its tenant.
    pub tenant: String,
    /// Its entities, written round-robin.
    pub entities: Vec<String>,
    /// Events a second.
    pub per_second: f64,
    /// Shifts the type and amount cycles so streams differ.
    pub salt: usize,
}

impl Stream {
    /// The stream's `n`-th event (without times).
    fn event(&self, n: usize) -> (String, String, String, Value) {
        let entity = &self.entities[n % self.entities.len()];
        let seq = n / self.entities.len();
        let event_type =
            EVENT_TYPES[(seq + n % self.entities.len() + self.salt) % EVENT_TYPES.len()];
        let amount = (n * 7919 + self.salt * 104_729) % 10_000;
        let currency = ["EUR", "USD", "GBP"][(n / 2 + self.salt) % 3];
        let data = json!({"id": entity, "seq": seq, "amount": amount, "currency": currency});
        (
            format!("{}-{n}", self.label),
            entity.clone(),
            event_type.to_owned(),
            data,
        )
    }
}

#[derive(Default)]
struct Shared {
    stats: LoadStats,
}

/// The load running in the background.
pub struct Load {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    shared: Arc<Mutex<Shared>>,
}

impl Load {
    /// Starts every stream.
    pub fn start(targets: Targets, streams: Vec<Stream>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mut tasks = tokio::task::JoinSet::new();
        let client = hookline_e2e::admin_client();
        for stream in streams {
            tasks.spawn(run_stream(
                stream,
                targets.clone(),
                client.clone(),
                stopped.clone(),
                Arc::clone(&shared),
            ));
        }
        Self {
            stop,
            tasks,
            shared,
        }
    }

    /// Events sent so far (acknowledged or not).
    pub fn sent(&self) -> usize {
        self.shared
            .lock()
            .map(|s| s.stats.events.len())
            .unwrap_or(0)
    }

    /// Stops new sends, waits up to `drain` for the events under way to be
    /// acknowledged, and reports.
    pub async fn stop(mut self, drain: Duration) -> LoadStats {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(drain, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared.into_inner().map(|s| s.stats).unwrap_or_default(),
            Err(shared) => shared
                .lock()
                .map(|mut s| std::mem::take(&mut *s).stats)
                .unwrap_or_default(),
        }
    }
}

async fn run_stream(
    stream: Stream,
    targets: Targets,
    client: reqwest::Client,
    mut stopped: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
) {
    let period = Duration::from_secs_f64(1.0 / stream.per_second.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let (id, _, event_type, data) = stream.event(n);
        let index = match shared.lock() {
            Ok(mut shared) => {
                shared.stats.events.push(SentEvent {
                    id: id.clone(),
                    tenant: stream.tenant.clone(),
                    event_type: event_type.clone(),
                    data: data.clone(),
                    via: stream.via,
                    first_sent: Instant::now(),
                    accepted: None,
                });
                shared.stats.events.len() - 1
            }
            Err(_) => return,
        };
        let body = json!({"id": id, "type": event_type, "tenant": stream.tenant, "data": data});
        let accepted = match stream.via {
            Via::Http => send_http(&client, &targets, &body, &shared).await,
            Via::Kafka => send_kafka(&targets, &stream, &body, &shared).await,
        };
        if let Ok(mut shared) = shared.lock() {
            shared.stats.events[index].accepted = accepted.then(Instant::now);
        }
    }
}

/// Posts one event until it is accepted; `false` when an answer no retry changes came.
async fn send_http(
    client: &reqwest::Client,
    targets: &Targets,
    body: &Value,
    shared: &Mutex<Shared>,
) -> bool {
    loop {
        let base = targets.ingest.read().map(|b| b.clone()).unwrap_or_default();
        let started = Instant::now();
        let answer = client
            .post(format!("{base}/v1/events"))
            .json(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let took = started.elapsed();
        let note = |f: &mut dyn FnMut(&mut LoadStats)| {
            if let Ok(mut shared) = shared.lock() {
                shared.stats.slowest_answer = shared.stats.slowest_answer.max(took);
                f(&mut shared.stats);
            }
        };
        match answer {
            Ok(response) if response.status().as_u16() == 202 => return true,
            Ok(response) => {
                let status = response.status();
                let answer = Refusal::read(response).await;
                note(&mut |s| match (&answer, answer.retry_after()) {
                    (Refusal::Unavailable { .. }, Some(_)) => s.unavailable += 1,
                    (Refusal::Unavailable { .. }, None) => s.unavailable_without_retry_after += 1,
                    (Refusal::InProgress { .. }, Some(_)) => s.in_progress += 1,
                    (Refusal::InProgress { .. }, None) => s.in_progress_without_retry_after += 1,
                    (Refusal::Final(text), _) => {
                        s.refused.push(format!("{}: {status} {text}", body["id"]))
                    }
                });
                match answer {
                    Refusal::Final(_) => return false,
                    retry => {
                        let wait = retry.retry_after().unwrap_or(1).min(10);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                }
            }
            Err(_) => {
                // Ingest away (killed by the run, or restarting): send again.
                note(&mut |s| s.send_errors += 1);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Produces one event (keyed `<tenant>/<entity>`) until the broker acknowledges it.
async fn send_kafka(
    targets: &Targets,
    stream: &Stream,
    body: &Value,
    shared: &Mutex<Shared>,
) -> bool {
    let key = format!(
        "{}/{}",
        stream.tenant,
        body["data"]["id"].as_str().unwrap_or_default()
    );
    let value = body.to_string();
    loop {
        match hookline_e2e::produce(
            &targets.producer,
            &targets.events_topic,
            Some(&key),
            value.as_bytes(),
        )
        .await
        {
            Ok(()) => return true,
            Err(_) => {
                if let Ok(mut shared) = shared.lock() {
                    shared.stats.send_errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
