//! The load: events of about 1 KiB (each carrying its send time), sent through
//! ingest's HTTP API or produced straight to the events topic, in a burst or paced
//! (open loop: a paced send never waits for the previous one), and subscriptions
//! created and deleted through the HTTP API with bounded concurrency.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hookline_core::kafka::Producer;
use hookline_core::produce::{send_all, OutRecord};
use serde_json::{json, Value};

use crate::receiver::now_us;

/// How the load tool sends its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Batches POSTed to ingest's `/v1/events`.
    Http,
    /// Records produced to the events topic.
    Kafka,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Kafka => "kafka",
        }
    }
}

/// Ingest's HTTP API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// Tries of a call answered `503` (Kafka did not acknowledge in time) or not answered.
const TRIES: u32 = 3;

impl Api {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// POSTs events; fails unless they are accepted (`202`).
    pub async fn post_events(&self, events: &[Value]) -> anyhow::Result<()> {
        let response = self
            .request(reqwest::Method::POST, "/v1/events")
            .json(events)
            .send()
            .await?;
        let status = response.status();
        anyhow::ensure!(
            status == reqwest::StatusCode::ACCEPTED,
            "POST /v1/events: HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }

    /// Creates a subscription; returns its id.
    pub async fn create_subscription(&self, body: &Value) -> anyhow::Result<String> {
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = self
                .request(reqwest::Method::POST, "/v1/subscriptions")
                .json(body)
                .send()
                .await;
            let retry = match outcome {
                Ok(response) if response.status().is_success() => {
                    let created: Value = response.json().await?;
                    return created["id"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| anyhow::anyhow!("subscription created without an id"));
                }
                Ok(response) if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    anyhow::anyhow!("POST /v1/subscriptions: HTTP 503")
                }
                Ok(response) => {
                    let status = response.status();
                    anyhow::bail!(
                        "POST /v1/subscriptions: HTTP {status}: {}",
                        response.text().await.unwrap_or_default()
                    )
                }
                Err(err) => err.into(),
            };
            if tries >= TRIES {
                return Err(retry);
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
        }
    }

    /// Creates every subscription, `concurrency` calls at once; returns their ids in order.
    pub async fn create_subscriptions(
        &self,
        bodies: &[Value],
        concurrency: usize,
    ) -> anyhow::Result<Vec<String>> {
        let results: Vec<anyhow::Result<String>> = futures::stream::iter(bodies)
            .map(|body| self.create_subscription(body))
            .buffered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Deletes subscriptions (a `404` is fine), `concurrency` at once; returns how many
    /// could not be deleted.
    pub async fn delete_subscriptions(&self, ids: &[String], concurrency: usize) -> usize {
        futures::stream::iter(ids)
            .map(|id| async move {
                let response = self
                    .request(reqwest::Method::DELETE, &format!("/v1/subscriptions/{id}"))
                    .send()
                    .await;
                matches!(response, Ok(r) if r.status().is_success()
                    || r.status() == reqwest::StatusCode::NOT_FOUND)
            })
            .buffer_unordered(concurrency.max(1))
            .filter(|deleted| futures::future::ready(!deleted))
            .count()
            .await
    }
}

/// The 32 event types of the many-subscriptions mix: 8 resources × 4 actions.
pub const RESOURCES: [&str; 8] = [
    "payment",
    "invoice",
    "customer",
    "refund",
    "transfer",
    "subscription",
    "payout",
    "dispute",
];
pub const ACTIONS: [&str; 4] = ["created", "succeeded", "failed", "updated"];

/// Every `resource.action` type.
pub fn catalogue() -> Vec<String> {
    RESOURCES
        .iter()
        .flat_map(|r| ACTIONS.iter().map(move |a| format!("{r}.{a}")))
        .collect()
}

/// A well-mixed 64-bit hash (SplitMix64's finaliser): the tenant and type of event `seq`
/// are deterministic yet spread evenly.
pub fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Makes the events of a run.
pub struct EventMaker {
    tenants: Vec<String>,
    types: Vec<String>,
    padding: String,
}

impl EventMaker {
    /// Events of `tenants` (uniformly) and `types` (uniformly), padded to about
    /// `bytes` of JSON each.
    pub fn new(tenants: Vec<String>, types: Vec<String>, bytes: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !tenants.is_empty() && !types.is_empty(),
            "no tenant or no type"
        );
        let mut maker = Self {
            tenants,
            types,
            padding: String::new(),
        };
        let size = serde_json::to_vec(&maker.event(0))?.len();
        maker.padding = "x".repeat(bytes.saturating_sub(size));
        Ok(maker)
    }

    /// Bytes of the largest event's JSON (the largest sequence number and time).
    pub fn max_size(&self) -> anyhow::Result<usize> {
        Ok(serde_json::to_vec(&self.event(u64::MAX))?.len())
    }

    /// Indices of the tenant and the type of event `seq`.
    pub fn pick(&self, seq: u64) -> (usize, usize) {
        let h = mix(seq);
        (
            (h % self.tenants.len() as u64) as usize,
            ((h >> 32) % self.types.len() as u64) as usize,
        )
    }

    /// Event `seq`, stamped with the current time.
    pub fn event(&self, seq: u64) -> Value {
        let (t, k) = self.pick(seq);
        json!({"type": self.types[k], "tenant": self.tenants[t], "data": {
            "seq": seq, "sent_at_us": now_us(), "payment_id": format!("pay_{seq}"),
            "amount": 125_000, "currency": "EUR", "customer_id": "cus_77",
            "description": "Invoice in_2001 for services rendered, November 2026",
            "padding": self.padding}})
    }

    /// The Kafka record key of event `seq` (tenant and entity, as ingest keys them).
    fn key(&self, seq: u64) -> String {
        format!("{}/pay_{seq}", self.tenants[self.pick(seq).0])
    }
}

/// Events per HTTP request: at most `max_batch`, and no more than fit in ingest's body
/// limit (`max_body` bytes) with events of `event_size` bytes (JSON array: one comma
/// each), rounded down to a multiple of ten when that leaves at least ten.
pub fn fit_batch(max_batch: usize, max_body: usize, event_size: usize) -> usize {
    let fit = max_body.saturating_sub(2) / (event_size + 1).max(1);
    let fit = if fit >= 10 { fit / 10 * 10 } else { fit };
    max_batch.min(fit).max(1)
}

/// Sends events.
#[derive(Clone)]
pub struct Load {
    pub api: Arc<Api>,
    pub producer: Producer,
    pub topic: String,
    pub via: Via,
    /// Events per HTTP request (or per produced batch).
    pub batch: usize,
    /// Requests (or batches) in flight at once in a burst.
    pub in_flight: usize,
}

/// Paced sends go out every tick.
const TICK: Duration = Duration::from_millis(10);

impl Load {
    /// Sends events `seqs` as one request (HTTP) or one batch of records (Kafka).
    async fn send(&self, maker: &EventMaker, seqs: Range<u64>) -> anyhow::Result<()> {
        match self.via {
            Via::Http => {
                let events: Vec<Value> = seqs.map(|seq| maker.event(seq)).collect();
                self.api.post_events(&events).await
            }
            Via::Kafka => {
                let records = seqs
                    .map(|seq| {
                        OutRecord::json(self.topic.as_str(), maker.key(seq), &maker.event(seq))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                for result in send_all(&self.producer, &records, Duration::from_secs(30)).await {
                    result?;
                }
                Ok(())
            }
        }
    }

    fn batches(&self, seqs: Range<u64>) -> impl Iterator<Item = Range<u64>> {
        let step = self.batch.max(1) as u64;
        let end = seqs.end;
        (seqs.start..end)
            .step_by(step as usize)
            .map(move |s| s..(s + step).min(end))
    }

    /// Sends events `0..count` as fast as allowed: `batch` a request, `in_flight`
    /// requests at once. Each event is made (and stamped) when its request starts.
    pub async fn burst(&self, maker: &EventMaker, count: u64) -> anyhow::Result<()> {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(self.batches(0..count))
            .map(|seqs| self.send(maker, seqs))
            .buffer_unordered(self.in_flight.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Sends events `0..count` at `rate` events/s: every 10 ms the events due by then,
    /// without waiting for earlier sends to be answered (open loop, so a slow answer
    /// does not hide latency by delaying later events).
    pub async fn paced(
        &self,
        maker: &Arc<EventMaker>,
        count: u64,
        rate: f64,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(rate > 0.0, "the rate must be positive");
        let mut ticker = tokio::time::interval(TICK);
        let mut tasks = tokio::task::JoinSet::new();
        let (mut sent, mut tick) = (0u64, 0u64);
        while sent < count {
            ticker.tick().await;
            tick += 1;
            let due = ((rate * TICK.as_secs_f64() * tick as f64).round() as u64).min(count);
            for seqs in self.batches(sent..due) {
                let (load, maker) = (self.clone(), Arc::clone(maker));
                tasks.spawn(async move { load.send(&maker, seqs).await });
            }
            sent = due;
            while let Some(done) = tasks.try_join_next() {
                done??;
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_about_the_requested_size() -> anyhow::Result<()> {
        let maker = EventMaker::new(vec!["t".into()], vec!["payment.succeeded".into()], 1024)?;
        let size = serde_json::to_vec(&maker.event(12_345))?.len();
        assert!((1000..=1050).contains(&size), "{size}");
        Ok(())
    }

    #[test]
    fn batches_fit_in_the_body_limit() {
        // 1 KiB events under the default 256 KiB: 251 fit, 250 a request.
        assert_eq!(fit_batch(500, 256 * 1024, 1040), 250);
        assert_eq!(fit_batch(100, 256 * 1024, 1040), 100);
        assert_eq!(fit_batch(500, 256 * 1024, 100), 500);
        assert_eq!(fit_batch(500, 5_000, 1040), 4);
        assert_eq!(fit_batch(500, 10, 1040), 1);
    }

    #[test]
    fn tenants_and_types_spread_evenly() -> anyhow::Result<()> {
        let tenants: Vec<String> = (0..10).map(|t| format!("t{t}")).collect();
        let maker = EventMaker::new(tenants, catalogue(), 100)?;
        let mut per_tenant = [0u32; 10];
        let mut per_type = [0u32; 32];
        for seq in 0..32_000 {
            let (t, k) = maker.pick(seq);
            per_tenant[t] += 1;
            per_type[k] += 1;
        }
        assert!(
            per_tenant.iter().all(|&n| (3_000..3_400).contains(&n)),
            "{per_tenant:?}"
        );
        assert!(
            per_type.iter().all(|&n| (850..1_150).contains(&n)),
            "{per_type:?}"
        );
        Ok(())
    }
}
