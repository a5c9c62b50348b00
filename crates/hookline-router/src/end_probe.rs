//! Reading the events topic's ends in the background for the fetch watch, so that the
//! routing loop compares positions with the latest ends without ever waiting on a
//! broker: a query can take seconds while brokers fail, and the loop looks every few
//! seconds, whether records flow or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use rdkafka::consumer::BaseConsumer;

/// How long one query of the ends may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Failed queries in a row after which the probe's client is built again: its metadata
/// was seen to stay stale (every query failing `NotLeaderForPartition`) long after the
/// cluster had recovered.
const FAILURES_BEFORE_RENEWAL: u32 = 3;

/// The latest ends read.
#[derive(Debug, Clone, Default)]
pub struct Ends {
    /// Each partition's end (its last stable offset), by partition.
    pub by_partition: HashMap<i32, i64>,
    /// When they were read; `None` before the first successful query.
    pub read_at: Option<Instant>,
}

impl Ends {
    /// The sum of every partition's end, when read.
    pub fn total(&self) -> Option<i64> {
        self.read_at.map(|_| self.by_partition.values().sum())
    }
}

/// Reads the ends every interval until dropped.
pub struct EndProbe {
    latest: Arc<Mutex<Ends>>,
    task: tokio::task::JoinHandle<()>,
}

impl EndProbe {
    /// Starts reading `topic`'s ends every `interval` with a client of its own
    /// (`client_id`), one that fetches no records: a query on a fetching consumer's
    /// connection queues behind its long-polling fetches.
    pub fn spawn(
        args: &KafkaArgs,
        client_id: &'static str,
        topic: String,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let mut probe: Arc<BaseConsumer> = Arc::new(kafka::reader(args, client_id)?);
        let latest = Arc::new(Mutex::new(Ends::default()));
        let shared = Arc::clone(&latest);
        let args = args.clone();
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match kafka::high_watermarks(Arc::clone(&probe), topic.clone(), QUERY_TIMEOUT).await
                {
                    Ok(ends) => {
                        failures = 0;
                        if let Ok(mut latest) = shared.lock() {
                            *latest = Ends {
                                by_partition: ends.into_iter().collect(),
                                read_at: Some(Instant::now()),
                            };
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        tracing::warn!(%err, failures, "events topic ends not known: the fetch watch cannot tell whether the consumer fetches");
                        if failures >= FAILURES_BEFORE_RENEWAL {
                            failures = 0;
                            probe = renewed(&args, client_id, probe);
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        Ok(Self { latest, task })
    }

    /// The latest ends read.
    pub fn latest(&self) -> Ends {
        self.latest
            .lock()
            .map(|ends| ends.clone())
            .unwrap_or_default()
    }
}

impl Drop for EndProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A new client for the probe, or the old one if it cannot be built.
fn renewed(args: &KafkaArgs, client_id: &'static str, old: Arc<BaseConsumer>) -> Arc<BaseConsumer> {
    match kafka::reader(args, client_id) {
        Ok(probe) => Arc::new(probe),
        Err(err) => {
            tracing::warn!(%err, "could not build the probe again");
            old
        }
    }
}
