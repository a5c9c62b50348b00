//! How far a view of a single-partition compacted topic has got, and how recently it
//! was confirmed to hold everything written to the topic. Shared by the subscriptions
//! view and the API keys view.
//!
//! Many callers ask at once: every delivery task whose view is stale, every router
//! batch, each view's background probe. The topic's end is read for all of them by one
//! query at a time, and a caller is served by the first query that *began after it
//! asked* (so "everything written before my call" still holds). A broker that is slow
//! or unreachable then costs one blocked thread, not one per caller: with a thread per
//! caller, a few thousand held tasks once filled the blocking pool with queries on one
//! wedged client, and every catch-up timed out for good. The client that reads the end
//! is built again when a query does not return in time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;

use crate::config::KafkaArgs;
use crate::kafka;

/// The view did not reach the topic's end in time.
#[derive(Debug, thiserror::Error)]
#[error("subscription view not caught up: {0}")]
pub struct NotCaughtUp(pub String);

/// The progress and freshness of one view; see the module docs.
pub struct Freshness {
    topic: String,
    /// What the probe is built from, to build it again.
    args: KafkaArgs,
    client_id: String,
    /// A client for end queries only, so that a query never waits behind the view's
    /// long-polling fetch.
    probe: Mutex<Arc<BaseConsumer>>,
    /// Held by the one end query in flight.
    querying: tokio::sync::Mutex<()>,
    /// The last end query: when it began and what it found.
    last: Mutex<Option<EndQuery>>,
    /// End queries made (for tests and logs).
    queries: AtomicU64,
    /// Next offset of the topic's partition not yet applied.
    position: watch::Sender<i64>,
    /// When the view was last confirmed to hold everything written before that moment.
    fresh_as_of: Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct EndQuery {
    asked_at: Instant,
    end: Result<i64, String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Freshness {
    /// Tracks a view of `topic` (one partition), reading its end with a client of its
    /// own named `client_id`.
    pub fn new(args: &KafkaArgs, client_id: &str, topic: String) -> Result<Self, KafkaError> {
        Ok(Self {
            probe: Mutex::new(Arc::new(kafka::reader(args, client_id)?)),
            topic,
            args: args.clone(),
            client_id: client_id.to_owned(),
            querying: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            queries: AtomicU64::new(0),
            position: watch::Sender::new(0),
            fresh_as_of: Mutex::new(None),
        })
    }

    /// The view applied the record at `offset`.
    pub fn applied_through(&self, offset: i64) {
        self.position.send_replace(offset + 1);
    }

    /// The offset after the last record applied. Read before the view's contents, it is
    /// a lower bound of what they show.
    pub fn applied(&self) -> i64 {
        *self.position.borrow()
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

    /// Waits until every record written to the topic before this call is applied, and
    /// records the view as fresh as of the call.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), NotCaughtUp> {
        let asked_at = Instant::now();
        let end = self.end_since(asked_at, timeout).await?;
        if end > 0 {
            self.wait_for_offset(end - 1, timeout).await?;
        }
        self.confirm_fresh(asked_at);
        Ok(())
    }

    /// The offset after the topic's last record now: every record acknowledged before
    /// this call sits below it.
    pub async fn end_offset(&self, timeout: Duration) -> Result<i64, NotCaughtUp> {
        self.end_since(Instant::now(), timeout).await
    }

    /// The end found by a query that began at `since` or later: the last one if it did,
    /// else a new one, made once the query in flight (if any) is done. Waits at most
    /// `timeout` for its turn, and the query itself is bounded (see
    /// [`kafka::high_watermarks`]).
    async fn end_since(&self, since: Instant, timeout: Duration) -> Result<i64, NotCaughtUp> {
        let fresh_enough = |last: &Option<EndQuery>| {
            last.as_ref()
                .filter(|query| query.asked_at >= since)
                .map(|query| query.end.clone().map_err(NotCaughtUp))
        };
        let Ok(_turn) = tokio::time::timeout(timeout, self.querying.lock()).await else {
            return Err(NotCaughtUp(format!(
                "the topic's end not read within {timeout:?} (an earlier query still runs)"
            )));
        };
        if let Some(found) = fresh_enough(&lock(&self.last)) {
            return found;
        }
        let asked_at = Instant::now();
        self.queries.fetch_add(1, Ordering::Relaxed);
        let probe = Arc::clone(&lock(&self.probe));
        let result = kafka::high_watermarks(probe, self.topic.clone(), timeout).await;
        if let Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut)) = &result {
            // Given up on (its thread still blocked): the client may be wedged.
            self.renew_probe();
        }
        let end = result
            .map(|marks| marks.iter().find(|(p, _)| *p == 0).map_or(0, |(_, h)| *h))
            .map_err(|err| err.to_string());
        *lock(&self.last) = Some(EndQuery {
            asked_at,
            end: end.clone(),
        });
        end.map_err(NotCaughtUp)
    }

    fn renew_probe(&self) {
        match kafka::reader(&self.args, &self.client_id) {
            Ok(fresh) => {
                tracing::warn!(
                    topic = %self.topic,
                    "a query of the topic's end did not return; its client is built again"
                );
                *lock(&self.probe) = Arc::new(fresh);
            }
            Err(err) => {
                tracing::warn!(%err, topic = %self.topic, "could not build the probe again")
            }
        }
    }

    /// Records that the view held everything written before `asked_at` (the caller saw
    /// [`end_offset`](Self::end_offset), asked at `asked_at`, applied).
    pub fn confirm_fresh(&self, asked_at: Instant) {
        let mut fresh = lock(&self.fresh_as_of);
        if fresh.is_none_or(|at| at < asked_at) {
            *fresh = Some(asked_at);
        }
    }

    /// How long ago the view was last confirmed to hold every record written before
    /// that moment (`Duration::MAX` if never).
    pub fn staleness(&self) -> Duration {
        lock(&self.fresh_as_of).map_or(Duration::MAX, |at| at.elapsed())
    }

    /// Confirms freshness every `interval` for good (a catch-up records it); failures
    /// are logged at debug level, naming `what` (they show as staleness).
    pub async fn probe_every(self: Arc<Self>, interval: Duration, what: &'static str) {
        loop {
            if let Err(err) = self.catch_up(Duration::from_secs(5)).await {
                tracing::debug!(%err, what, "view freshness probe failed");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// End queries made so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    fn args(brokers: String) -> KafkaArgs {
        KafkaArgs {
            brokers,
            topic_prefix: "t.".into(),
            topic_partitions: 1,
            topic_replication: crate::config::Replication::Auto,
            properties: Vec::new(),
            statistics_interval: crate::kafka_stats::DEFAULT_INTERVAL,
        }
    }

    /// A freshness of topic `t.view` of `cluster`.
    fn freshness_of<C: rdkafka::ClientContext>(cluster: &MockCluster<'_, C>) -> Arc<Freshness> {
        let args = args(cluster.bootstrap_servers());
        Arc::new(Freshness::new(&args, "test-probe", "t.view".into()).expect("freshness"))
    }

    /// `callers` tasks asking for the end at once, each with `timeout`.
    fn at_once(
        freshness: &Arc<Freshness>,
        callers: usize,
        timeout: Duration,
    ) -> Vec<tokio::task::JoinHandle<Result<i64, NotCaughtUp>>> {
        (0..callers)
            .map(|_| {
                let freshness = Arc::clone(freshness);
                tokio::spawn(async move { freshness.end_offset(timeout).await })
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_callers_at_once_share_a_few_queries_and_each_sees_what_preceded_it() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t.view", 1, 1).expect("topic");
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        for n in 0..3 {
            producer
                .send(
                    BaseRecord::<str, str>::to("t.view")
                        .key("k")
                        .payload(&n.to_string()),
                )
                .expect("queued");
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
        let freshness = freshness_of(&cluster);
        let callers = at_once(&freshness, 200, Duration::from_secs(10));
        for caller in callers {
            let end = caller.await.expect("joined").expect("end read");
            assert_eq!(
                end, 3,
                "every record acknowledged before the call is below it"
            );
        }
        assert!(
            freshness.queries() <= 20,
            "200 callers at once made {} queries",
            freshness.queries()
        );
        // A record written after the last query is seen by the next caller.
        producer
            .send(BaseRecord::<str, str>::to("t.view").key("k").payload("3"))
            .expect("queued");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        let end = freshness.end_offset(Duration::from_secs(10)).await;
        assert_eq!(end.expect("end read"), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_broker_costs_one_query_at_a_time_not_one_per_caller() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t.view", 1, 1).expect("topic");
        let freshness = freshness_of(&cluster);
        cluster.broker_down(1).expect("broker down");
        let callers = at_once(&freshness, 200, Duration::from_millis(300));
        for caller in callers {
            assert!(
                caller.await.expect("joined").is_err(),
                "no end while the broker is down"
            );
        }
        assert!(
            freshness.queries() <= 20,
            "200 callers made {} queries against a broker that is down",
            freshness.queries()
        );
    }
}
