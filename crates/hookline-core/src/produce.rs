//! Producing records: one owned record type and the ways to send it, shared by every
//! binary (all at once and joined; or retried until Kafka acknowledges it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use hookline_domain::backoff::Backoff;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureRecord, Producer as _};

use crate::kafka::Producer;
use rdkafka::util::Timeout;

/// How to build a producer again.
type Build = dyn Fn() -> Result<Producer, KafkaError> + Send + Sync;

/// An idempotent producer that is built again when librdkafka declares it unusable.
///
/// An idempotent producer can fail fatally: librdkafka was seen to, after brokers came
/// back ("Unable to reconstruct MessageSet ... unable to guarantee consistency"), and
/// every send then fails at once, for good. Senders take the current producer from this
/// handle; after a failed send they call [`renew_if_fatal`](Self::renew_if_fatal),
/// which builds a new producer with the same settings if the current one failed
/// fatally. What the old one still held is reported failed to its senders, who retry
/// (or answer `503`), as after any failed write.
#[derive(Clone)]
pub struct RenewingProducer {
    inner: Arc<Renewing>,
}

struct Renewing {
    current: RwLock<Producer>,
    build: Box<Build>,
    renewals: AtomicU64,
}

impl RenewingProducer {
    /// A producer from `build`, built again by `build` when it fails fatally.
    pub fn new(
        build: impl Fn() -> Result<Producer, KafkaError> + Send + Sync + 'static,
    ) -> Result<Self, KafkaError> {
        let current = build()?;
        Ok(Self {
            inner: Arc::new(Renewing {
                current: RwLock::new(current),
                build: Box::new(build),
                renewals: AtomicU64::new(0),
            }),
        })
    }

    /// The producer to send with now.
    pub fn current(&self) -> Producer {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds the producer again if the current one failed fatally; whether it did.
    /// Concurrent callers build it once. A build that fails (it needs no broker, so it
    /// hardly can) leaves the old one, to be tried again by the next caller.
    pub fn renew_if_fatal(&self) -> bool {
        let fatal = |producer: &Producer| producer.client().fatal_error();
        if fatal(&self.current()).is_none() {
            return false;
        }
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let Some((code, reason)) = fatal(&current) else {
            return false; // another caller renewed it meanwhile
        };
        match (self.inner.build)() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *current, fresh);
                // Dropping a producer purges it and waits for the purge's reports.
                std::thread::spawn(move || drop(old));
                self.inner.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%code, %reason, "producer failed fatally; built it again");
                true
            }
            Err(err) => {
                tracing::error!(%err, %reason, "producer failed fatally and could not be built again");
                false
            }
        }
    }

    /// How many times the producer was built again.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    /// [`send_all`] with the current producer, renewing it if a failure was fatal.
    pub async fn send_all<'a>(
        &self,
        records: impl IntoIterator<Item = &'a OutRecord>,
        timeout: Duration,
    ) -> Vec<Result<(i32, i64), KafkaError>> {
        let results = send_all(&self.current(), records, timeout).await;
        if results.iter().any(Result::is_err) {
            self.renew_if_fatal();
        }
        results
    }
}

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
    producer: &Producer,
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
pub async fn produce_durably(producer: &RenewingProducer, record: &OutRecord) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match producer
            .current()
            .send(
                record.as_future_record(),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
        {
            Ok(_) => return,
            Err((err, _)) => {
                tracing::error!(%err, topic = %record.topic, "write failed; retrying");
                producer.renew_if_fatal();
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Writes `value` as JSON, retrying until Kafka acknowledges it. Returns false only
/// when the value cannot be serialized (logged; nothing is written).
pub async fn produce_json<T: serde::Serialize>(
    producer: &RenewingProducer,
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;

    /// An idempotent producer pointed at no broker: building one needs none.
    fn idempotent() -> Result<Producer, KafkaError> {
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("enable.idempotence", "true")
            .create_with_context(crate::kafka_stats::StatsContext)
    }

    /// Makes `producer` fail fatally, as librdkafka does on an unrecoverable idempotence
    /// error, through librdkafka's own test hook.
    fn fail_fatally(producer: &Producer) {
        let reason = std::ffi::CString::new("test: fatal").expect("no NUL");
        // SAFETY: the client pointer is valid while `producer` lives; the hook only
        // raises a fatal error on it.
        let code = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(
            code,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
    }

    #[test]
    fn a_fatally_failed_producer_is_built_again_once() {
        let producer = RenewingProducer::new(idempotent).expect("producer");
        assert!(!producer.renew_if_fatal(), "a healthy producer stays");
        let failed = producer.current();
        fail_fatally(&failed);
        assert!(failed.client().fatal_error().is_some());
        assert!(producer.renew_if_fatal(), "a failed one is replaced");
        assert!(producer.current().client().fatal_error().is_none());
        assert!(!producer.renew_if_fatal(), "and only once");
        assert_eq!(producer.renewals(), 1);
    }

    #[tokio::test]
    async fn a_send_that_fails_fatally_renews_the_producer() {
        let producer = RenewingProducer::new(idempotent).expect("producer");
        fail_fatally(&producer.current());
        let record = OutRecord::new("t", "k", Some(b"v".to_vec()));
        let results = producer
            .send_all([&record], Duration::from_millis(100))
            .await;
        assert!(
            results[0].is_err(),
            "the failed producer refuses the record"
        );
        assert_eq!(producer.renewals(), 1);
        assert!(producer.current().client().fatal_error().is_none());
    }
}
