//! A live, in-memory view of the compacted API keys topic (owned by the ingest API:
//! one record per key, keyed by key id, a revocation is a tombstone). Every ingest
//! instance holds one, so a key created or revoked through one instance reaches all.
//!
//! Like the subscriptions view, it knows how fresh it is: a background probe confirms
//! about every second that it has applied everything written to the topic, so ingest
//! can refuse tenant keys while its view is too old to be trusted with revocations
//! (see [`ApiKeyView::staleness`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::freshness::Freshness;
use crate::kafka;
use crate::view::NotCaughtUp;
use hookline_domain::api_key::ApiKeyRecord;

/// How often the background probe confirms the view is caught up.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The API keys topic, materialized: key records by key id.
pub struct ApiKeyView {
    keys: RwLock<HashMap<String, Arc<ApiKeyRecord>>>,
    /// How far the view has applied the API keys topic, and how fresh that is.
    freshness: Arc<Freshness>,
    consumer: StreamConsumer,
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
        let topic = args.topics().api_keys();
        let freshness = Freshness::new(args, &format!("{client_id}-probe"), topic.clone())?;
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
            freshness: Arc::new(freshness),
            consumer,
            loaded,
        });
        tokio::spawn(Arc::clone(&view).run());
        tokio::spawn(Arc::clone(&view.freshness).probe_every(PROBE_INTERVAL, "API keys"));
        Ok(view)
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
        self.freshness.applied_through(offset);
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
        self.freshness.staleness()
    }

    /// Waits until the record at `offset` has been applied.
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.wait_for_offset(offset, timeout).await
    }

    /// Waits until every record written before this call is applied, and records the
    /// view as fresh as of the call.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.catch_up(timeout).await
    }
}
