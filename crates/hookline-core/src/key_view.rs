//! A live, in-memory view of the compacted API keys topic (owned by the ingest API:
//! one record per key, keyed by key id, a revocation is a tombstone). Every ingest
//! instance holds one, so a key created or revoked through one instance reaches all.
//!
//! Like the subscriptions view, it knows how fresh it is: a background probe confirms
//! about every second that it has applied everything written to the topic, so ingest
//! can refuse tenant keys while its view is too old to be trusted with revocations
//! (see [`ApiKeyView::staleness`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::kafka;
use crate::view::NotCaughtUp;
use hookline_domain::api_key::ApiKeyRecord;

/// How often the background probe confirms the view is caught up.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The API keys topic, materialized: key records by key id.
pub struct ApiKeyView {
    keys: RwLock<HashMap<String, Arc<ApiKeyRecord>>>,
    /// When the view was last confirmed to hold everything written before that moment.
    fresh_as_of: Mutex<Option<Instant>>,
    /// Next offset of the (single) partition not yet applied.
    position: watch::Sender<i64>,
    consumer: StreamConsumer,
    /// A second client for watermark queries, so that a query never waits behind the
    /// reader's long-polling fetch.
    probe: Arc<BaseConsumer>,
    topic: String,
    loaded: prometheus::IntGauge,
}

impl ApiKeyView {
    /// Starts reading the API keys topic from its beginning in the background.
    pub fn start(
        args: &KafkaArgs,
        client_id: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, client_id)?;
        let probe: BaseConsumer = kafka::reader(args, &format!("{client_id}-probe"))?;
        let topic = args.topics().api_keys();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let loaded = prometheus::IntGauge::new(
            "hookline_api_keys_loaded",
            "Tenant API keys held in this process's view of the API keys topic.",
        )?;
        registry.register(Box::new(loaded.clone()))?;
        let view = Arc::new(Self {
            keys: RwLock::new(HashMap::new()),
            fresh_as_of: Mutex::new(None),
            position: watch::Sender::new(0),
            consumer,
            probe: Arc::new(probe),
            topic,
            loaded,
        });
        tokio::spawn(Arc::clone(&view).run());
        tokio::spawn(Arc::clone(&view).probe_freshness());
        Ok(view)
    }

    async fn probe_freshness(self: Arc<Self>) {
        loop {
            if let Err(err) = self.catch_up(Duration::from_secs(5)).await {
                tracing::debug!(%err, "API keys view freshness probe failed");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let message = kafka::next_record(&self.consumer, "API keys").await;
            let key = message.key().map(String::from_utf8_lossy);
            self.apply(key.as_deref(), message.payload(), message.offset());
        }
    }

    fn apply(&self, key: Option<&str>, payload: Option<&[u8]>, offset: i64) {
        {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            match (key, payload) {
                (Some(id), None) => {
                    keys.remove(id);
                }
                (Some(id), Some(bytes)) => match serde_json::from_slice::<ApiKeyRecord>(bytes) {
                    Ok(record) if record.id == id => {
                        keys.insert(id.to_owned(), Arc::new(record));
                    }
                    Ok(_) => tracing::warn!(
                        offset,
                        key = id,
                        "API key record key and id differ; skipped"
                    ),
                    Err(err) => {
                        tracing::warn!(offset, key = id, %err, "unreadable API key record; skipped")
                    }
                },
                (None, _) => tracing::warn!(offset, "API key record without key; skipped"),
            }
            self.loaded.set(keys.len() as i64);
        }
        self.position.send_replace(offset + 1);
    }

    /// The record of key `id`, if it exists and is not revoked.
    pub fn get(&self, id: &str) -> Option<Arc<ApiKeyRecord>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every live key of `tenant`, ordered by id (creation order).
    pub fn of_tenant(&self, tenant: &str) -> Vec<Arc<ApiKeyRecord>> {
        let mut found: Vec<Arc<ApiKeyRecord>> = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|record| record.tenant == tenant)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }

    /// How long ago the view was last confirmed to hold every key change written
    /// before that moment (`Duration::MAX` if never).
    pub fn staleness(&self) -> Duration {
        self.fresh_as_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::MAX, |at| at.elapsed())
    }

    /// Waits until the record at `offset` has been applied.
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<(), NotCaughtUp> {
        let mut position = self.position.subscribe();
        tokio::time::timeout(timeout, position.wait_for(|next| *next > offset))
            .await
            .map_err(|_| NotCaughtUp(format!("offset {offset} not applied within {timeout:?}")))?
            .map_err(|_| NotCaughtUp("view stopped".into()))?;
        Ok(())
    }

    /// Waits until every record written before this call is applied, and records the
    /// view as fresh as of the call.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        let asked_at = Instant::now();
        let marks = kafka::high_watermarks(Arc::clone(&self.probe), self.topic.clone(), timeout)
            .await
            .map_err(|e| NotCaughtUp(e.to_string()))?;
        let end = marks.iter().find(|(p, _)| *p == 0).map_or(0, |(_, h)| *h);
        if end > 0 {
            self.wait_for_offset(end - 1, timeout).await?;
        }
        let mut fresh = self.fresh_as_of.lock().unwrap_or_else(|p| p.into_inner());
        if fresh.is_none_or(|at| at < asked_at) {
            *fresh = Some(asked_at);
        }
        Ok(())
    }
}
