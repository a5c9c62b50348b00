//! A live, in-memory view of the idempotency topic (one partition, written by ingest
//! instances only): every record of every key still inside the idempotency window, in
//! log order. Every ingest instance holds one; an instance that claimed a key waits
//! until its view has applied its own claim, and then holds every record written
//! before it, whichever instance wrote them (see `hookline_domain::idempotency`).
//!
//! It holds every key used within the window (plus a claim's lifetime) in memory; older
//! records are forgotten about once a minute, and deleted from the topic by retention.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::freshness::{Freshness, NotCaughtUp};
use crate::kafka;
use hookline_domain::idempotency::{forgettable, Entry, IdempotencyKey, IdempotencyRecord};

/// How often records past the window are forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The idempotency topic, materialized: each key's records in log order.
pub struct IdempotencyView {
    keys: RwLock<HashMap<String, Vec<Entry>>>,
    freshness: Arc<Freshness>,
    consumer: StreamConsumer,
    window: Duration,
    last_sweep: Mutex<Instant>,
    held: prometheus::IntGauge,
}

impl IdempotencyView {
    /// Starts reading the idempotency topic from its beginning in the background,
    /// keeping records of the last `window`.
    pub fn start(
        args: &KafkaArgs,
        client_id: &str,
        window: Duration,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, client_id)?;
        let topic = args.topics().idempotency();
        let freshness = Freshness::new(args, &format!("{client_id}-probe"), topic.clone())?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let held = prometheus::IntGauge::new(
            "hookline_idempotency_keys_held",
            "Idempotency keys (request keys and producer event ids) held in this \
             process's view of the idempotency topic.",
        )?;
        registry.register(Box::new(held.clone()))?;
        let view = Arc::new(Self {
            keys: RwLock::new(HashMap::new()),
            freshness: Arc::new(freshness),
            consumer,
            window,
            last_sweep: Mutex::new(Instant::now()),
            held,
        });
        tokio::spawn(Arc::clone(&view).run());
        Ok(view)
    }

    async fn run(self: Arc<Self>) {
        loop {
            let message = kafka::next_record(&self.consumer, "idempotency").await;
            self.apply(message.payload(), message.offset());
        }
    }

    fn apply(&self, payload: Option<&[u8]>, offset: i64) {
        {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            match payload.map(serde_json::from_slice::<IdempotencyRecord>) {
                Some(Ok(record)) => keys
                    .entry(record.key.record_key())
                    .or_default()
                    .push(record.entry),
                Some(Err(err)) => {
                    tracing::warn!(offset, %err, "unreadable idempotency record; skipped")
                }
                None => {}
            }
            let mut last_sweep = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                *last_sweep = Instant::now();
                let now = Utc::now();
                keys.retain(|_, entries| {
                    entries.retain(|entry| !forgettable(entry.at(), now, self.window));
                    !entries.is_empty()
                });
            }
            self.held.set(keys.len() as i64);
        }
        self.freshness.applied_through(offset);
    }

    /// The records of `key` applied so far, in log order.
    pub fn history(&self, key: &IdempotencyKey) -> Vec<Entry> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key.record_key())
            .cloned()
            .unwrap_or_default()
    }

    /// The offset after the last record applied.
    pub fn applied(&self) -> i64 {
        self.freshness.applied()
    }

    /// Waits until the record at `offset` has been applied.
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.wait_for_offset(offset, timeout).await
    }

    /// Waits until every record written before this call is applied.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        self.freshness.catch_up(timeout).await
    }
}
