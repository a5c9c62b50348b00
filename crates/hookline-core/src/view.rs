//! A live, in-memory view of the compacted subscriptions topic. Ingest, the router and
//! delivery workers each hold one, so a change reaches every process without restarts.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::kafka;
use crate::matching::SubscriptionIndex;
use crate::subscription::Subscription;

/// The subscriptions topic, materialized.
pub struct SubscriptionView {
    index: RwLock<SubscriptionIndex>,
    /// Next offset of the (single) subscriptions partition not yet applied.
    position: watch::Sender<i64>,
    consumer: StreamConsumer,
    /// A second client for watermark queries, idle otherwise, so that a query never
    /// waits behind the reader's long-polling fetch.
    probe: Arc<BaseConsumer>,
    topic: String,
    loaded: prometheus::IntGauge,
}

/// The view did not reach the topic's end in time.
#[derive(Debug, thiserror::Error)]
#[error("subscription view not caught up: {0}")]
pub struct NotCaughtUp(pub String);

impl SubscriptionView {
    /// Starts reading the subscriptions topic from its beginning in the background.
    pub fn start(
        args: &KafkaArgs,
        client_id: &str,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, client_id)?;
        let probe: BaseConsumer = kafka::reader(args, &format!("{client_id}-probe"))?;
        let topic = args.topics().subscriptions();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let loaded = prometheus::IntGauge::new(
            "hookline_subscriptions_loaded",
            "Subscriptions held in this process's view of the subscriptions topic.",
        )?;
        registry.register(Box::new(loaded.clone()))?;
        let view = Arc::new(Self {
            index: RwLock::new(SubscriptionIndex::new()),
            position: watch::Sender::new(0),
            consumer,
            probe: Arc::new(probe),
            topic,
            loaded,
        });
        tokio::spawn(Arc::clone(&view).run());
        Ok(view)
    }

    async fn run(self: Arc<Self>) {
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    let key = message.key().map(String::from_utf8_lossy);
                    self.apply(key.as_deref(), message.payload(), message.offset());
                }
                Err(err) => {
                    tracing::warn!(%err, "subscriptions topic read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
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
                    Ok(sub) if sub.id == id => index.upsert(sub),
                    Ok(sub) => {
                        tracing::warn!(offset, key = id, id = %sub.id, "subscription record key and id differ; skipped")
                    }
                    Err(err) => {
                        tracing::warn!(offset, key = id, %err, "unreadable subscription record; skipped")
                    }
                },
                (None, _) => tracing::warn!(offset, "subscription record without key; skipped"),
            }
            self.loaded.set(index.len() as i64);
        }
        self.position.send_replace(offset + 1);
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
        let mut position = self.position.subscribe();
        tokio::time::timeout(timeout, position.wait_for(|next| *next > offset))
            .await
            .map_err(|_| NotCaughtUp(format!("offset {offset} not applied within {timeout:?}")))?
            .map_err(|_| NotCaughtUp("view stopped".into()))?;
        Ok(())
    }

    /// Waits until every record written to the topic before this call is applied:
    /// afterwards, any subscription change acknowledged before the call is visible.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        let marks = kafka::high_watermarks(Arc::clone(&self.probe), self.topic.clone(), timeout)
            .await
            .map_err(|e| NotCaughtUp(e.to_string()))?;
        let high = marks.iter().find(|(p, _)| *p == 0).map_or(0, |(_, h)| *h);
        if high == 0 {
            return Ok(());
        }
        self.wait_for_offset(high - 1, timeout).await
    }
}
