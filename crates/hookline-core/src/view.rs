//! A live, in-memory view of the compacted subscriptions topic (configuration, owned
//! by the API) merged with the subscription health topic (owned by delivery workers).
//! Ingest, the router and delivery workers each hold one, so a change reaches every
//! process without restarts.
//!
//! The view knows how fresh it is: a background probe confirms about every second that
//! it has applied everything written to the subscriptions topic, so a process can
//! refuse to act on a view that has not been confirmed recently (see
//! [`SubscriptionView::staleness`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::freshness::Freshness;
use crate::kafka;
use hookline_domain::health::SubscriptionHealth;
use hookline_domain::matching::SubscriptionIndex;
use hookline_domain::sealing::Keyring;
use hookline_domain::subscription::Subscription;

/// How often the background probe confirms the view is caught up.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The subscriptions topic, materialized, with each subscription's health merged in.
pub struct SubscriptionView {
    index: RwLock<SubscriptionIndex>,
    /// Health records by subscription id, kept also for subscriptions not (yet) known.
    health: Mutex<HashMap<String, SubscriptionHealth>>,
    /// How far the view has applied the subscriptions topic, and how fresh that is.
    freshness: Arc<Freshness>,
    consumer: StreamConsumer,
    health_topic: String,
    loaded: prometheus::IntGauge,
}

pub use crate::freshness::NotCaughtUp;

/// Exports `hookline_subscription_view_staleness_seconds`, set every
/// [`PROBE_INTERVAL`] by a task of its own, so that the figure keeps growing while the
/// probe itself is stuck.
fn report_staleness(
    freshness: &Arc<Freshness>,
    registry: &prometheus::Registry,
) -> anyhow::Result<()> {
    let gauge = prometheus::Gauge::new(
        "hookline_subscription_view_staleness_seconds",
        "How long ago this process's subscriptions view was last confirmed to hold \
         every change written to the subscriptions topic (since start while never); \
         the probe confirms about every second, so above a few seconds the view lags.",
    )?;
    registry.register(Box::new(gauge.clone()))?;
    let freshness = Arc::downgrade(freshness);
    let started = Instant::now();
    tokio::spawn(async move {
        // Ends with the view.
        while let Some(freshness) = freshness.upgrade() {
            let staleness = match freshness.staleness() {
                Duration::MAX => started.elapsed(),
                staleness => staleness,
            };
            drop(freshness);
            gauge.set(staleness.as_secs_f64());
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    });
    Ok(())
}

impl SubscriptionView {
    /// Starts reading the subscriptions topic from its beginning in the background.
    pub fn start(
        args: &KafkaArgs,
        client_id: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, client_id)?;
        let topic = args.topics().subscriptions();
        let freshness = Freshness::new(args, &format!("{client_id}-probe"), topic.clone())?;
        let health_topic = args.topics().subscription_health();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        assignment.add_partition_offset(&health_topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let loaded = prometheus::IntGauge::new(
            "hookline_subscriptions_loaded",
            "Subscriptions held in this process's view of the subscriptions topic.",
        )?;
        registry.register(Box::new(loaded.clone()))?;
        let view = Arc::new(Self {
            index: RwLock::new(SubscriptionIndex::new()),
            health: Mutex::new(HashMap::new()),
            freshness: Arc::new(freshness),
            consumer,
            health_topic,
            loaded,
        });
        tokio::spawn(Arc::clone(&view).run());
        tokio::spawn(Arc::clone(&view.freshness).probe_every(PROBE_INTERVAL, "subscriptions"));
        report_staleness(&view.freshness, registry)?;
        Ok(view)
    }

    /// How long ago the view was last confirmed to hold every subscription change
    /// written before that moment (`Duration::MAX` if never).
    pub fn staleness(&self) -> Duration {
        self.freshness.staleness()
    }

    async fn run(self: Arc<Self>) {
        loop {
            let message = kafka::next_record(&self.consumer, "subscriptions").await;
            let key = message.key().map(String::from_utf8_lossy);
            if message.topic() == self.health_topic {
                self.apply_health(key.as_deref(), message.payload(), message.offset());
            } else {
                self.apply(key.as_deref(), message.payload(), message.offset());
            }
        }
    }

    fn apply(&self, key: Option<&str>, payload: Option<&[u8]>, offset: i64) {
        {
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            match (key, payload) {
                (Some(id), None) => {
                    index.remove(id);
                }
                (Some(id), Some(bytes)) => match serde_json::from_slice::<Subscription>(bytes) {
                    Ok(sub) if sub.id() == id => {
                        index.upsert(sub.with_health(self.health_of(id).unwrap_or_default()));
                    }
                    Ok(sub) => {
                        tracing::warn!(offset, key = id, id = %sub.id(), "subscription record key and id differ; skipped")
                    }
                    Err(err) => {
                        tracing::warn!(offset, key = id, %err, "unreadable subscription record; skipped")
                    }
                },
                (None, _) => tracing::warn!(offset, "subscription record without key; skipped"),
            }
            self.loaded.set(index.len() as i64);
        }
        self.freshness.applied_through(offset);
    }

    /// Applies one health record: kept by id and merged into the subscription, if known.
    fn apply_health(&self, key: Option<&str>, payload: Option<&[u8]>, offset: i64) {
        let Some(id) = key else {
            tracing::warn!(offset, "health record without key; skipped");
            return;
        };
        let health = match payload.map(serde_json::from_slice::<SubscriptionHealth>) {
            None => None,
            Some(Ok(health)) => Some(health),
            Some(Err(err)) => {
                tracing::warn!(offset, key = id, %err, "unreadable health record; skipped");
                return;
            }
        };
        {
            let mut all = self.health.lock().unwrap_or_else(|p| p.into_inner());
            match &health {
                Some(health) => all.insert(id.to_owned(), health.clone()),
                None => all.remove(id),
            };
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = index.get(id) {
            let merged = Subscription::clone(current).with_health(health.unwrap_or_default());
            index.upsert(merged);
        }
    }

    /// The health record of subscription `id`, if there is one.
    pub fn health_of(&self, id: &str) -> Option<SubscriptionHealth> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Read access to the current index.
    pub fn read(&self) -> RwLockReadGuard<'_, SubscriptionIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A subscription by id.
    pub fn get(&self, id: &str) -> Option<Arc<Subscription>> {
        self.read().get(id).cloned()
    }

    /// Waits until the record at `offset` has been applied.
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.wait_for_offset(offset, timeout).await
    }

    /// Waits until every record written to the topic before this call is applied:
    /// afterwards, any subscription change acknowledged before the call is visible.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.catch_up(timeout).await
    }

    /// The offset after the last record of the subscriptions topic now: every change
    /// acknowledged before this call sits below it. Read by one query at a time for
    /// all callers (see [`Freshness`]).
    pub async fn end_offset(&self, timeout: Duration) -> Result<i64, NotCaughtUp> {
        self.freshness.end_offset(timeout).await
    }

    /// The offset after the last subscription record applied. Read before the index,
    /// it is a lower bound of what a later [`read`](Self::read) shows: every record
    /// below it is in the index.
    pub fn applied(&self) -> i64 {
        self.freshness.applied()
    }

    /// Waits until the view caught up, then checks that `keyring` opens every sealed
    /// value of every subscription: a wrong or missing key is an error naming the key
    /// ids and subscriptions concerned (never a value). Records still holding values in
    /// clear (written before encryption at rest) are counted in a warning.
    pub async fn check_keys(&self, keyring: &Keyring) -> anyhow::Result<()> {
        while let Err(err) = self.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view to check the secrets keys");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let index = self.read();
        let mut failures: Vec<String> = Vec::new();
        let mut clear = 0usize;
        for subscription in index.iter() {
            if let Err(err) = subscription.opens_with(keyring) {
                failures.push(format!("{}: {err}", subscription.id()));
            }
            clear += usize::from(subscription.holds_clear_values());
        }
        if clear > 0 {
            tracing::warn!(
                clear,
                "subscription records hold secrets in clear (written before encryption at \
                 rest); each is sealed when the API next writes it"
            );
        }
        if failures.is_empty() {
            tracing::info!(keys = ?keyring.ids(), "secrets keys open every subscription");
            return Ok(());
        }
        let shown = failures.len().min(5);
        anyhow::bail!(
            "HOOKLINE_SECRETS_KEYS (ids {:?}) does not open {} subscription(s): {}{}; \
             give the key(s) they were sealed with (see docs/security.md)",
            keyring.ids(),
            failures.len(),
            failures[..shown].join("; "),
            if failures.len() > shown { "; …" } else { "" }
        )
    }

    /// Records that the view held everything written before `asked_at` (the caller
    /// saw [`end_offset`](Self::end_offset), asked at `asked_at`, applied).
    pub fn confirm_fresh(&self, asked_at: Instant) {
        self.freshness.confirm_fresh(asked_at);
    }
}
