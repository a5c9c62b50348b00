//! Writing records that must not be lost: retried until Kafka acknowledges them.

use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Produces one record (a `None` payload is a tombstone), retrying until Kafka
/// acknowledges it.
pub async fn produce_durably(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(headers) = &headers {
            record = record.headers(headers.clone());
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((err, _)) => {
                tracing::error!(%err, topic, "write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
    match serde_json::to_vec(value) {
        Ok(payload) => {
            produce_durably(producer, topic, key.as_bytes(), Some(&payload), None).await;
            true
        }
        Err(err) => {
            tracing::error!(%err, topic, "record not serializable; not written");
            false
        }
    }
}
