//! The webhook receiver: one axum server on loopback, one endpoint (`/hooks/<n>`) per
//! subscription or group of subscriptions, each answering instantly, after a delay
//! (a hanging endpoint) or with a `500` to every other request (a flaky one), and
//! counting what it received: deliveries (de-duplicated on `webhook-id`), latency from
//! the event's send time (`data.sent_at_us`) and arrival times.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde::Deserialize;

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `204` at once.
    Instant,
    /// `204` after this long (longer than the delivery timeout: a hanging endpoint).
    Hang(Duration),
    /// `500` to every other request (the first, third, …), `204` to the rest.
    FailEveryOther,
}

#[derive(Default)]
struct Samples {
    seen: HashSet<u64>,
    /// (send time, latency) in µs of each first delivery.
    latencies: Vec<(u64, u64)>,
    /// Arrival time (µs) of each first delivery.
    arrivals: Vec<u64>,
}

/// One endpoint and what it received.
pub struct Endpoint {
    behaviour: Behaviour,
    requests: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    retired: AtomicBool,
    samples: Mutex<Samples>,
}

/// What an endpoint received, copied out.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Latencies (µs) of the first deliveries, with their send times.
    pub latencies: Vec<(u64, u64)>,
    pub arrivals: Vec<u64>,
}

impl Endpoint {
    fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            requests: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            samples: Mutex::new(Samples::default()),
        }
    }

    /// Requests received (answered or not yet).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Distinct deliveries answered `2xx` at once (a hanging endpoint has none).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Deliveries received again (same `webhook-id`).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Requests answered `500` on purpose.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// A copy of the samples.
    pub fn received(&self) -> Received {
        self.samples
            .lock()
            .map(|s| Received {
                latencies: s.latencies.clone(),
                arrivals: s.arrivals.clone(),
            })
            .unwrap_or_default()
    }

    /// Drops the samples; later requests are still answered (and counted as requests).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock() {
            *s = Samples::default();
        }
    }

    fn record(&self, received_us: u64, headers: &HeaderMap, body: &[u8]) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let key = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .and_then(webhook_key);
        let sent = serde_json::from_slice::<Hook>(body)
            .ok()
            .and_then(|h| h.data.sent_at_us);
        let Ok(mut s) = self.samples.lock() else {
            return;
        };
        if let Some(key) = key {
            if !s.seen.insert(key) {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Some(sent) = sent {
            s.latencies.push((sent, received_us.saturating_sub(sent)));
        }
        s.arrivals.push(received_us);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// 64 bits of a `webhook-id` (`msg_` + 32 hex chars derived from event and subscription).
pub fn webhook_key(id: &str) -> Option<u64> {
    let hex = id.strip_prefix("msg_")?;
    u64::from_str_radix(hex.get(..16)?, 16).ok()
}

#[derive(Deserialize)]
struct Hook {
    #[serde(default)]
    data: HookData,
}

#[derive(Deserialize, Default)]
struct HookData {
    sent_at_us: Option<u64>,
}

type Endpoints = Arc<RwLock<Vec<Arc<Endpoint>>>>;

/// The receiver server.
pub struct Receiver {
    base: String,
    endpoints: Endpoints,
}

impl Receiver {
    /// Starts the server on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let endpoints: Endpoints = Arc::default();
        let app = axum::Router::new()
            .route("/hooks/{n}", post(hook))
            .with_state(Arc::clone(&endpoints));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("receiver stopped: {err}");
            }
        });
        Ok(Self { base, endpoints })
    }

    /// A new endpoint: its URL and its counters.
    pub fn add(&self, behaviour: Behaviour) -> anyhow::Result<(String, Arc<Endpoint>)> {
        let endpoint = Arc::new(Endpoint::new(behaviour));
        let mut all = self
            .endpoints
            .write()
            .map_err(|_| anyhow::anyhow!("receiver state poisoned"))?;
        all.push(Arc::clone(&endpoint));
        Ok((format!("{}/hooks/{}", self.base, all.len() - 1), endpoint))
    }
}

async fn hook(
    Path(n): Path<usize>,
    State(endpoints): State<Endpoints>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let received = now_us();
    let endpoint = endpoints.read().ok().and_then(|all| all.get(n).cloned());
    let Some(endpoint) = endpoint else {
        return StatusCode::NOT_FOUND;
    };
    let nth = endpoint.requests.fetch_add(1, Ordering::Relaxed);
    match endpoint.behaviour {
        Behaviour::Instant => {}
        Behaviour::Hang(delay) => {
            tokio::time::sleep(delay).await;
            return StatusCode::NO_CONTENT;
        }
        Behaviour::FailEveryOther => {
            if nth % 2 == 0 {
                endpoint.failed.fetch_add(1, Ordering::Relaxed);
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
    }
    endpoint.record(received, &headers, &body);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_keys() {
        assert_eq!(
            webhook_key("msg_00000000000000ff0123456789abcdef"),
            Some(255)
        );
        assert_eq!(webhook_key("evt_1"), None);
        assert_eq!(webhook_key("msg_12"), None);
        assert_eq!(webhook_key("msg_zzzzzzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn duplicates_are_counted_once() {
        let e = Endpoint::new(Behaviour::Instant);
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-id",
            axum::http::HeaderValue::from_static("msg_0123456789abcdef0123456789abcdef"),
        );
        let body = br#"{"id":"evt_1","data":{"sent_at_us":1000}}"#;
        e.record(3000, &headers, body);
        e.record(4000, &headers, body);
        assert_eq!((e.delivered(), e.duplicates()), (1, 1));
        assert_eq!(e.received().latencies, vec![(1000, 2000)]);
        e.retire();
        assert!(e.received().arrivals.is_empty());
    }
}
