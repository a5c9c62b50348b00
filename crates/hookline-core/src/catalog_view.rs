//! A live, in-memory view of the event catalog: the built-in types and the operator's
//! file (fixed at start-up) with the types of the compacted event types topic laid over
//! them (owned by the ingest API: one record per type, keyed by name, a deleted type is
//! a tombstone). Every ingest instance and every router holds one, so a type added
//! through one instance is listed and checked by all.
//!
//! Each record's schema is compiled once, when the view applies it; readers take the
//! current [`Catalog`] (an `Arc`, swapped whole on each change) and check events
//! against it without locks held.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::freshness::Freshness;
use crate::kafka;
use crate::view::NotCaughtUp;
use hookline_domain::catalog::{Catalog, CompiledType, EventTypeRecord};

/// How often the background probe confirms the view is caught up.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The event catalog, live.
pub struct CatalogView {
    /// The built-in and file types, with the policy.
    base: Catalog,
    /// The API's types, by name, compiled.
    api: RwLock<BTreeMap<String, Arc<CompiledType>>>,
    /// `base` overlaid with `api`, as of the last record applied.
    current: RwLock<Arc<Catalog>>,
    freshness: Arc<Freshness>,
    consumer: StreamConsumer,
    loaded: prometheus::IntGauge,
}

impl CatalogView {
    /// Starts reading the event types topic from its beginning in the background,
    /// laying its types over `base`.
    pub fn start(
        args: &KafkaArgs,
        client_id: &str,
        base: Catalog,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, client_id)?;
        let topic = args.topics().event_types();
        let freshness = Freshness::new(args, &format!("{client_id}-probe"), topic.clone())?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let loaded = prometheus::IntGauge::new(
            "hookline_event_types_loaded",
            "Event types in this process's catalog (built-in, file and admin API).",
        )?;
        registry.register(Box::new(loaded.clone()))?;
        loaded.set(base.types().count() as i64);
        let view = Arc::new(Self {
            current: RwLock::new(Arc::new(base.clone())),
            base,
            api: RwLock::new(BTreeMap::new()),
            freshness: Arc::new(freshness),
            consumer,
            loaded,
        });
        tokio::spawn(Arc::clone(&view).run());
        tokio::spawn(Arc::clone(&view.freshness).probe_every(PROBE_INTERVAL, "event types"));
        Ok(view)
    }

    async fn run(self: Arc<Self>) {
        loop {
            let message = kafka::next_record(&self.consumer, "event types").await;
            let key = message.key().map(String::from_utf8_lossy);
            self.apply(key.as_deref(), message.payload(), message.offset());
        }
    }

    fn apply(&self, key: Option<&str>, payload: Option<&[u8]>, offset: i64) {
        let changed = {
            let mut api = self.api.write().unwrap_or_else(|p| p.into_inner());
            match (key, payload) {
                (Some(name), None) => api.remove(name).is_some(),
                (Some(name), Some(bytes)) => {
                    match serde_json::from_slice::<EventTypeRecord>(bytes) {
                        Ok(record) if record.name == name => match record.compile() {
                            Ok(compiled) => {
                                api.insert(name.to_owned(), Arc::new(compiled));
                                true
                            }
                            // The API compiled it before writing it: only a record from
                            // another version of Hookline, or not from the API, fails here.
                            Err(err) => {
                                tracing::warn!(offset, key = name, err = %err.message, "event type record does not compile; skipped");
                                false
                            }
                        },
                        Ok(_) => {
                            tracing::warn!(offset, key = name, "event type record key and type differ; skipped");
                            false
                        }
                        Err(err) => {
                            tracing::warn!(offset, key = name, %err, "unreadable event type record; skipped");
                            false
                        }
                    }
                }
                (None, _) => {
                    tracing::warn!(offset, "event type record without key; skipped");
                    false
                }
            }
            .then(|| Arc::new(self.base.overlaid(api.values())))
        };
        if let Some(catalog) = changed {
            self.loaded.set(catalog.types().count() as i64);
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = catalog;
        }
        self.freshness.applied_through(offset);
    }

    /// The catalog as of the last record applied.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The built-in and file types alone (what a deleted API type falls back to).
    pub fn base(&self) -> &Catalog {
        &self.base
    }

    /// Waits until the record at `offset` has been applied.
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.wait_for_offset(offset, timeout).await
    }

    /// Waits until every record written before this call is applied: afterwards, any
    /// type change acknowledged before the call is in [`current`](Self::current).
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.catch_up(timeout).await
    }

    /// How long ago the view was last confirmed to hold every type change written
    /// before that moment (`Duration::MAX` if never).
    pub fn staleness(&self) -> Duration {
        self.freshness.staleness()
    }
}
