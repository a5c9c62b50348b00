//! Producing records: one owned record type and the ways to send it, shared by every
//! binary (all at once and joined; or retried until Kafka acknowledges it).

use std::time::Duration;

use futures::future::join_all;
use hookline_domain::backoff::Backoff;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// A record to produce, owning its parts.
#[derive(Debug, Clone)]
pub struct OutRecord {
    /// Topic.
    pub topic: String,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value; `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers, if any.
    pub headers: Option<OwnedHeaders>,
}

impl OutRecord {
    /// A record for `topic` with `key` and `payload`.
    pub fn new(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        payload: Option<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            payload,
            headers: None,
        }
    }

    /// `value` as JSON, keyed by `key`.
    pub fn json<T: serde::Serialize>(
        topic: impl Into<String>,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> serde_json::Result<Self> {
        Ok(Self::new(topic, key, Some(serde_json::to_vec(value)?)))
    }

    /// The same record with `headers`.
    pub fn with_headers(mut self, headers: OwnedHeaders) -> Self {
        self.headers = Some(headers);
        self
    }

    /// The record as rdkafka takes it.
    pub fn as_future_record(&self) -> FutureRecord<'_, [u8], [u8]> {
        let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        if let Some(headers) = &self.headers {
            record = record.headers(headers.clone());
        }
        record
    }
}

/// Sends every record at once and waits for all; one result per record, in order:
/// its (partition, offset) or why it was not written.
pub async fn send_all<'a>(
    producer: &FutureProducer,
    records: impl IntoIterator<Item = &'a OutRecord>,
    timeout: Duration,
) -> Vec<Result<(i32, i64), KafkaError>> {
    join_all(records.into_iter().map(|record| async move {
        producer
            .send(record.as_future_record(), Timeout::After(timeout))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(err, _)| err)
    }))
    .await
}

/// Produces `record`, retrying with backoff (100 ms doubling to 5 s) until Kafka
/// acknowledges it: for writes that must not be lost and have nowhere else to go.
pub async fn produce_durably(producer: &FutureProducer, record: &OutRecord) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match producer
            .send(
                record.as_future_record(),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
        {
            Ok(_) => return,
            Err((err, _)) => {
                tracing::error!(%err, topic = %record.topic, "write failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Writes `value` as JSON, retrying until Kafka acknowledges it. Returns false only
/// when the value cannot be serialized (logged; nothing is written).
pub async fn produce_json<T: serde::Serialize>(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &T,
) -> bool {
    match OutRecord::json(topic, key, value) {
        Ok(record) => {
            produce_durably(producer, &record).await;
            true
        }
        Err(err) => {
            tracing::error!(%err, topic, "record not serializable; not written");
            false
        }
    }
}
