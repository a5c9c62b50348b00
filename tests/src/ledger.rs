//! A steady load over the HTTP API, sent as a careful producer sends it, and the ledger
//! that checks what the receivers got against what was accepted.
//!
//! The load sends one event per request at a fixed rate, each request on its own (a
//! slow answer never holds back the next send), with an id of the sender's own. A
//! `503` is sent again with the same id after its `Retry-After`, so every event is
//! accepted in the end and none is accepted twice under two ids. The ledger then
//! expects each accepted event at each subscription it matches, at least once, with
//! valid signatures and one `webhook-id` per (event, subscription), and nothing else.
//!
//! `409 idempotency_in_progress` is retried the same way: after a `503` whose claim
//! could not be released (the idempotency partition had no leader, or the instance was
//! killed), the key stays claimed until the claim expires, and ingest says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline_domain::ids::message_id;
use hookline_domain::signing::WebhookSecret;
use hookline_domain::subscription::EventTypePattern;
use serde_json::json;
use tokio::sync::watch;

use crate::receiver::Received;

/// A subscription as the ledger knows it.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// Its id (also its receiver path).
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its event-type patterns.
    pub patterns: Vec<String>,
    /// Its signing secret.
    pub secret: String,
}

impl Subscribed {
    fn wants(&self, tenant: &str, event_type: &str) -> bool {
        self.tenant == tenant
            && self.patterns.iter().any(|p| {
                EventTypePattern::parse(p).is_ok_and(|pattern| pattern.matches(event_type))
            })
    }
}

/// One event the load sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Its id (chosen by the sender).
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its type.
    pub event_type: String,
    /// When it was first sent.
    pub sent_at: Instant,
    /// When ingest accepted it (answered 202); its first send until then.
    pub accepted_at: Instant,
}

/// What the load saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Events accepted (202), with when they were first sent.
    pub accepted: Vec<Sent>,
    /// `503` answers, each with `Retry-After`.
    pub unavailable: usize,
    /// `503` answers without a `Retry-After` header.
    pub unavailable_without_retry_after: usize,
    /// `409 idempotency_in_progress` answers (an earlier try's claim still holds the
    /// id), each with `Retry-After`.
    pub in_progress: usize,
    /// `409 idempotency_in_progress` answers without a `Retry-After` header.
    pub in_progress_without_retry_after: usize,
    /// Answers other than 202 and 503, and transport errors, with what they were.
    pub unexpected: Vec<String>,
    /// The longest any one request took to be answered.
    pub slowest_answer: Duration,
    /// Each `202`, in the order they came: requests to partitions with a leader while
    /// another partition has none show here.
    pub accepted_answers: Vec<Answer>,
    /// Events not accepted: refused for good, or still retried when the drain ended.
    pub never_accepted: usize,
}

/// One `202` answer: to which event, when the request went, how long it took.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The event accepted.
    pub id: String,
    /// When its accepted request was sent.
    pub asked_at: Instant,
    /// How long that request took.
    pub took: Duration,
}

impl LoadReport {
    /// The `q` quantile (0 to 1) of the `202` answers' times.
    pub fn accepted_answer_quantile(&self, q: f64) -> Duration {
        self.answer_quantile(q, |_| true)
    }

    /// The `q` quantile (0 to 1) of the times of the `202` answers `which` picks.
    pub fn answer_quantile(&self, q: f64, which: impl Fn(&Answer) -> bool) -> Duration {
        let mut answers: Vec<Duration> = self
            .accepted_answers
            .iter()
            .filter(|a| which(a))
            .map(|a| a.took)
            .collect();
        answers.sort();
        let index = ((answers.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
        answers.get(index).copied().unwrap_or_default()
    }
}

/// A steady load running in the background; [`stop`](Self::stop) ends it.
pub struct Load {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Mutex<Shared>>,
}

/// Event types the load cycles through.
pub const EVENT_TYPES: [&str; 6] = [
    "payment.succeeded",
    "payment.failed",
    "invoice.paid",
    "invoice.created",
    "expense.created",
    "customer.changed",
];

impl Load {
    /// Sends `per_second` events a second to ingest at `base`, cycling through
    /// `tenants` and [`EVENT_TYPES`]; ids are `<label>-<n>`.
    pub fn start(base: String, tenants: Vec<String>, per_second: u32, label: &str) -> Self {
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let load = run_load(
            base,
            tenants,
            per_second.max(1),
            label.to_owned(),
            stopped,
            Arc::clone(&shared),
        );
        Self {
            stop,
            task: tokio::spawn(load),
            shared,
        }
    }

    /// Stops sending new events, waits until every event sent is accepted (or
    /// `drain` passes), and reports.
    pub async fn stop(self, drain: Duration) -> LoadReport {
        let _ = self.stop.send(true);
        let ended = tokio::time::timeout(drain, self.task).await;
        let mut report = match self.shared.lock() {
            Ok(shared) => {
                let mut report = shared.report.clone();
                report.never_accepted += shared.pending;
                report
            }
            Err(_) => LoadReport::default(),
        };
        if ended.is_err() {
            report
                .unexpected
                .push(format!("load not drained within {drain:?}"));
        }
        report.accepted.sort_by(|a, b| a.id.cmp(&b.id));
        report
    }
}

#[derive(Default)]
struct Shared {
    report: LoadReport,
    pending: usize,
}

async fn run_load(
    base: String,
    tenants: Vec<String>,
    per_second: u32,
    label: String,
    mut stopped: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
) {
    let client = crate::process::admin_client();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut sends = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        let tenant = tenants[(n as usize) % tenants.len()].clone();
        let event = Sent {
            id: format!("{label}-{n}"),
            event_type: EVENT_TYPES[(n as usize / tenants.len()) % EVENT_TYPES.len()].to_owned(),
            tenant,
            sent_at: Instant::now(),
            accepted_at: Instant::now(),
        };
        n += 1;
        if let Ok(mut shared) = shared.lock() {
            shared.pending += 1;
        }
        sends.spawn(send_until_accepted(
            client.clone(),
            format!("{base}/v1/events"),
            event,
            Arc::clone(&shared),
        ));
    }
    while sends.join_next().await.is_some() {}
}

/// Sends one event until it is accepted, waiting out each 503's `Retry-After`; gives up
/// only on an answer that no retry changes.
async fn send_until_accepted(
    client: reqwest::Client,
    url: String,
    event: Sent,
    shared: Arc<Mutex<Shared>>,
) {
    let body = json!({"id": event.id, "type": event.event_type, "tenant": event.tenant,
                      "data": {"id": event.id, "amount": 1250, "currency": "EUR"}});
    loop {
        let started = Instant::now();
        let answer = client
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(120))
            .send()
            .await;
        let took = started.elapsed();
        let record = |f: &mut dyn FnMut(&mut Shared)| {
            if let Ok(mut shared) = shared.lock() {
                shared.report.slowest_answer = shared.report.slowest_answer.max(took);
                f(&mut shared);
            }
        };
        match answer {
            Ok(response) if response.status().as_u16() == 202 => {
                let accepted = Sent {
                    accepted_at: Instant::now(),
                    ..event.clone()
                };
                record(&mut |s| {
                    s.report.accepted.push(accepted.clone());
                    s.report.accepted_answers.push(Answer {
                        id: event.id.clone(),
                        asked_at: started,
                        took,
                    });
                    s.pending -= 1;
                });
                return;
            }
            Ok(response) => {
                let status = response.status();
                let answer = Refusal::read(response).await;
                record(&mut |s| match (&answer, answer.retry_after()) {
                    (Refusal::Unavailable { .. }, Some(_)) => s.report.unavailable += 1,
                    (Refusal::Unavailable { .. }, None) => {
                        s.report.unavailable_without_retry_after += 1
                    }
                    (Refusal::InProgress { .. }, Some(_)) => s.report.in_progress += 1,
                    (Refusal::InProgress { .. }, None) => {
                        s.report.in_progress_without_retry_after += 1
                    }
                    (Refusal::Final(text), _) => s
                        .report
                        .unexpected
                        .push(format!("{}: {status} {text}", event.id)),
                });
                match answer {
                    Refusal::Final(_) => return,
                    retry => {
                        let wait = retry.retry_after().unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                }
            }
            Err(err) => {
                // Ingest itself away (killed by a test): a client sends again.
                record(&mut |s| s.report.unexpected.push(format!("{}: {err}", event.id)));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A non-`202` answer to `POST /v1/events`, as a careful producer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `503`: not made durable; send the same request again after `Retry-After`.
    Unavailable {
        /// `Retry-After` in seconds, if the answer had one.
        retry_after: Option<u64>,
    },
    /// `409 idempotency_in_progress`: an earlier try's claim still holds the id (its
    /// instance was killed, or could not release it while the idempotency partition had
    /// no leader); send again after `Retry-After` to get the answer.
    InProgress {
        /// `Retry-After` in seconds, if the answer had one.
        retry_after: Option<u64>,
    },
    /// Anything else: no retry changes it (status and body text).
    Final(String),
}

impl Refusal {
    /// Reads a non-`202` answer.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = response.text().await.unwrap_or_default();
        let code = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
        match (status, code.as_deref()) {
            (503, _) => Self::Unavailable { retry_after },
            (409, Some("idempotency_in_progress")) => Self::InProgress { retry_after },
            _ => Self::Final(text),
        }
    }

    /// The `Retry-After` of a retryable answer.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Unavailable { retry_after } | Self::InProgress { retry_after } => *retry_after,
            Self::Final(_) => None,
        }
    }
}

/// Whether `request` is a genuine delivery of event `event_id` to subscription
/// `subscription_id`: its Standard Webhooks signature verifies with `secret` (a timestamp
/// up to `tolerance` seconds before `now`, Unix seconds: a copy sent again after an
/// outage keeps its first one) and its `webhook-id` is the one derived from the two ids.
pub fn genuine(
    request: &Received,
    secret: &str,
    event_id: &str,
    subscription_id: &str,
    now: i64,
    tolerance: i64,
) -> bool {
    let webhook_id = request.header("webhook-id");
    let verified = WebhookSecret::parse(secret).is_ok_and(|secret| {
        let timestamp = request.header("webhook-timestamp").parse().unwrap_or(0);
        secret
            .verify(
                webhook_id,
                timestamp,
                &request.body,
                request.header("webhook-signature"),
                now,
                tolerance,
            )
            .is_ok()
    });
    verified && webhook_id == message_id(event_id, subscription_id).as_str()
}

/// What the receivers got, checked against what was accepted.
#[derive(Debug, Default)]
pub struct Ledger {
    /// (event, subscription) pairs expected.
    pub expected: usize,
    /// Expected pairs that never arrived with a 2xx answer (first 20).
    pub missing: Vec<(String, String)>,
    /// How many expected pairs never arrived.
    pub missing_count: usize,
    /// Requests that no accepted event explains (first 20).
    pub unexpected: Vec<String>,
    /// Requests whose signature did not verify, or whose `webhook-id` is not the one
    /// derived from its event and subscription (first 20).
    pub bad: Vec<String>,
    /// Requests beyond the first 2xx of their pair (at-least-once copies).
    pub duplicates: usize,
    /// The longest time between two requests arriving, over the whole run.
    pub longest_gap: Duration,
    /// The longest time from an event's acceptance (202) to its first 2xx delivery to a
    /// subscription (a stall of some partitions shows here even while others deliver).
    pub slowest_delivery: Duration,
}

impl Ledger {
    /// Checks `received` against the events `accepted` and the `subscriptions`.
    pub fn check(accepted: &[Sent], subscriptions: &[Subscribed], received: &[Received]) -> Self {
        Self::check_allowing(accepted, &[], subscriptions, received)
    }

    /// [`check`](Self::check), where the events `unresolved` (answered `503` and never
    /// sent again: written or not, nobody knows) may arrive but need not.
    pub fn check_allowing(
        accepted: &[Sent],
        unresolved: &[Sent],
        subscriptions: &[Subscribed],
        received: &[Received],
    ) -> Self {
        let mut ledger = Ledger::default();
        let by_id: HashMap<&str, &Subscribed> =
            subscriptions.iter().map(|s| (s.id.as_str(), s)).collect();
        let events: HashMap<&str, &Sent> = accepted
            .iter()
            .chain(unresolved)
            .map(|e| (e.id.as_str(), e))
            .collect();
        let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
        for event in accepted {
            for sub in subscriptions
                .iter()
                .filter(|s| s.wants(&event.tenant, &event.event_type))
            {
                expected.insert((event.id.clone(), sub.id.clone()));
            }
        }
        ledger.expected = expected.len();
        let mut delivered: BTreeMap<(String, String), usize> = BTreeMap::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut arrivals: Vec<Instant> = Vec::with_capacity(received.len());
        for r in received {
            arrivals.push(r.arrived);
            let event_id = r.json["id"].as_str().unwrap_or_default().to_owned();
            let Some(sub) = by_id.get(r.path.as_str()) else {
                ledger
                    .unexpected
                    .push(format!("request on unknown path {}", r.path));
                continue;
            };
            let Some(event) = events.get(event_id.as_str()) else {
                ledger
                    .unexpected
                    .push(format!("{event_id} to {}: never accepted", sub.id));
                continue;
            };
            if !sub.wants(&event.tenant, &event.event_type) {
                ledger
                    .unexpected
                    .push(format!("{event_id} to {}: does not match", sub.id));
                continue;
            }
            let webhook_id = r.header("webhook-id");
            if !genuine(r, &sub.secret, &event_id, &sub.id, now, 3600) {
                ledger
                    .bad
                    .push(format!("{event_id} to {}: webhook-id {webhook_id}", sub.id));
                continue;
            }
            if (200..300).contains(&r.status) {
                let copies = delivered.entry((event_id, sub.id.clone())).or_default();
                if *copies == 0 {
                    let took = r.arrived.saturating_duration_since(event.accepted_at);
                    ledger.slowest_delivery = ledger.slowest_delivery.max(took);
                }
                *copies += 1;
            }
        }
        ledger.duplicates = delivered.values().map(|n| n - 1).sum();
        let missing: Vec<&(String, String)> = expected
            .iter()
            .filter(|pair| !delivered.contains_key(*pair))
            .collect();
        ledger.missing_count = missing.len();
        ledger.missing = missing.into_iter().take(20).cloned().collect();
        ledger.unexpected.truncate(20);
        ledger.bad.truncate(20);
        arrivals.sort();
        ledger.longest_gap = arrivals
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        ledger
    }

    /// Whether everything expected arrived and nothing else did.
    pub fn holds(&self) -> bool {
        self.missing_count == 0 && self.unexpected.is_empty() && self.bad.is_empty()
    }
}
