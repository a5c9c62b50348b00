//! librdkafka's own statistics (`statistics.interval.ms`) as Prometheus metrics, and
//! consumer lag per group, topic and partition in records and in seconds.
//!
//! Clients built by [`crate::kafka`] with a [`StatsContext`] (producers) or whose
//! context forwards to [`observe`] (group consumers) hand every statistics report to one
//! process-wide sink: librdkafka clients are created in many places and renewed after
//! failures, and one sink spares threading a handle through every constructor. The sink
//! keeps the latest report of each client instance; [`register`] adds a collector that
//! turns them into metrics at scrape time, so closed clients simply drop out.
//!
//! Labels stay bounded: `client` is the configured `client.id` (never librdkafka's
//! per-instance name), `broker` a broker's node id, `topic`/`partition` only those
//! assigned to this process's group consumers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

/// Default `statistics.interval.ms` (see `HOOKLINE_KAFKA_STATISTICS_INTERVAL`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// A client instance's report is dropped when it has not been renewed for this many
/// intervals (the client was closed or replaced).
const STALE_AFTER_INTERVALS: u32 = 3;

/// The context of producers: forwards statistics to the sink.
#[derive(Clone, Copy, Default)]
pub struct StatsContext;

impl ClientContext for StatsContext {
    fn stats(&self, statistics: Statistics) {
        observe(statistics);
    }
}

/// One client instance's latest report.
struct Report {
    received: Instant,
    /// The consumer group, for group consumers.
    group: Option<String>,
    stats: Statistics,
}

/// Cumulative broker counters seen last per client instance, to turn them into deltas.
#[derive(Default, Clone, Copy)]
struct BrokerTotals {
    tx_errors: u64,
    rx_errors: u64,
    request_timeouts: u64,
    tx_retries: u64,
}

#[derive(Default)]
struct Sink {
    /// By librdkafka's instance name (`client.id#producer-N`).
    reports: HashMap<String, Report>,
    /// Group of each group consumer's `client.id`, recorded when it is configured.
    groups: HashMap<String, String>,
    /// Last cumulative broker counters, by (instance name, broker node id).
    last: HashMap<(String, i32), BrokerTotals>,
    /// Timestamp (ms) of the last record handed to the application, by (topic, partition).
    taken: HashMap<String, HashMap<i32, i64>>,
    /// Since when a partition with no record taken yet has been behind.
    lagging_since: HashMap<(String, i32), Instant>,
    interval: Duration,
}

struct Counters {
    tx_errors: IntCounterVec,
    rx_errors: IntCounterVec,
    request_timeouts: IntCounterVec,
    tx_retries: IntCounterVec,
}

struct Shared {
    sink: Mutex<Sink>,
    counters: Counters,
}

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["client", "type", "broker"])
                .expect("valid metric")
        };
        Arc::new(Shared {
            sink: Mutex::new(Sink {
                interval: DEFAULT_INTERVAL,
                ..Sink::default()
            }),
            counters: Counters {
                tx_errors: counter(
                    "hookline_kafka_broker_tx_errors_total",
                    "Requests librdkafka failed to send to a broker (produce errors among \
                     them), by client.id, client type and broker node id.",
                ),
                rx_errors: counter(
                    "hookline_kafka_broker_rx_errors_total",
                    "Errors librdkafka met reading a broker's responses.",
                ),
                request_timeouts: counter(
                    "hookline_kafka_broker_request_timeouts_total",
                    "Requests to a broker that timed out.",
                ),
                tx_retries: counter(
                    "hookline_kafka_broker_tx_retries_total",
                    "Requests librdkafka sent to a broker again.",
                ),
            },
        })
    })
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Sink> {
    shared.sink.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the reporting interval the sink expects (to tell closed clients from quiet
/// ones); call with the value given to `statistics.interval.ms`.
pub fn set_interval(interval: Duration) {
    lock(shared()).interval = interval;
}

/// Records that the group consumer with `client_id` belongs to `group`, so that its
/// lag is labelled with the group.
pub fn consumer_group(client_id: &str, group: &str) {
    lock(shared())
        .groups
        .insert(client_id.to_owned(), group.to_owned());
}

/// Records that a record of `topic`/`partition` with Kafka timestamp `timestamp_ms`
/// was handed to the application: the reference for seconds of lag.
pub fn record_taken(topic: &str, partition: i32, timestamp_ms: Option<i64>) {
    let Some(ts) = timestamp_ms else { return };
    let mut sink = lock(shared());
    match sink.taken.get_mut(topic) {
        Some(partitions) => {
            partitions.insert(partition, ts);
        }
        None => {
            sink.taken
                .insert(topic.to_owned(), HashMap::from([(partition, ts)]));
        }
    }
}

/// Takes one statistics report (from a client context's `stats`).
pub fn observe(stats: Statistics) {
    let shared = shared();
    let mut sink = lock(shared);
    let now = Instant::now();
    for broker in stats.brokers.values() {
        if broker.nodeid < 0 {
            continue; // bootstrap and coordinator pseudo-brokers
        }
        let current = BrokerTotals {
            tx_errors: broker.txerrs,
            rx_errors: broker.rxerrs,
            request_timeouts: broker.req_timeouts,
            tx_retries: broker.txretries,
        };
        let last = sink
            .last
            .insert((stats.name.clone(), broker.nodeid), current)
            .unwrap_or_default();
        let labels = [
            stats.client_id.as_str(),
            stats.client_type.as_str(),
            &broker.nodeid.to_string(),
        ];
        for (counter, now_value, last_value) in [
            (
                &shared.counters.tx_errors,
                current.tx_errors,
                last.tx_errors,
            ),
            (
                &shared.counters.rx_errors,
                current.rx_errors,
                last.rx_errors,
            ),
            (
                &shared.counters.request_timeouts,
                current.request_timeouts,
                last.request_timeouts,
            ),
            (
                &shared.counters.tx_retries,
                current.tx_retries,
                last.tx_retries,
            ),
        ] {
            counter
                .with_label_values(&labels)
                .inc_by(now_value.saturating_sub(last_value));
        }
    }
    let group = sink.groups.get(&stats.client_id).cloned();
    let stale = sink.interval * STALE_AFTER_INTERVALS;
    sink.reports
        .retain(|_, report| now.duration_since(report.received) < stale);
    sink.reports.insert(
        stats.name.clone(),
        Report {
            received: now,
            group: group.filter(|_| stats.client_type == "consumer"),
            stats,
        },
    );
    let Sink { reports, last, .. } = &mut *sink;
    last.retain(|(name, _), _| reports.contains_key(name));
}

/// Lag of one assigned partition of a group consumer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionLag {
    /// Records on the partition this consumer has not taken yet: the end (last stable
    /// offset, as the consumers read committed) minus the consumer's position.
    pub records: i64,
    /// How far behind in time: 0 when caught up, else the age of the last record taken
    /// (an upper bound on the age of the oldest record not taken), or since when the
    /// partition has been seen behind if none was taken yet.
    pub seconds: f64,
}

/// The lag of a partition from its statistics, `taken_ms` (the timestamp of the last
/// record taken) and `lagging_for` (how long it has been seen behind without a record
/// taken). `None` when librdkafka does not know the end offset yet.
pub fn partition_lag(
    partition: &rdkafka::statistics::Partition,
    now_ms: i64,
    taken_ms: Option<i64>,
    lagging_for: Duration,
) -> Option<PartitionLag> {
    let end = if partition.ls_offset >= 0 {
        partition.ls_offset
    } else {
        partition.hi_offset
    };
    if end < 0 {
        return None;
    }
    // The position past the last record taken (librdkafka moves it over transaction
    // markers too, so a caught-up consumer of a transactional topic shows 0).
    let position = [partition.app_offset, partition.committed_offset]
        .into_iter()
        .find(|offset| *offset >= 0)
        .unwrap_or(partition.lo_offset.max(0));
    let records = (end - position).max(0);
    let seconds = if records == 0 {
        0.0
    } else {
        match taken_ms {
            Some(ts) => (now_ms.saturating_sub(ts)).max(0) as f64 / 1000.0,
            None => lagging_for.as_secs_f64(),
        }
    };
    Some(PartitionLag { records, seconds })
}

/// Registers the Kafka client metrics and consumer lag in `registry`.
pub fn register(registry: &Registry) -> anyhow::Result<()> {
    let shared = shared();
    let counters = &shared.counters;
    for counter in [
        &counters.tx_errors,
        &counters.rx_errors,
        &counters.request_timeouts,
        &counters.tx_retries,
    ] {
        registry.register(Box::new(counter.clone()))?;
    }
    registry.register(Box::new(StatsCollector::new(Arc::clone(shared))?))?;
    Ok(())
}

/// Builds gauges from the latest reports at scrape time.
struct StatsCollector {
    shared: Arc<Shared>,
    templates: Gauges,
}

struct Gauges {
    lag_records: IntGaugeVec,
    lag_seconds: GaugeVec,
    rtt_avg: GaugeVec,
    rtt_p99: GaugeVec,
    outbuf: IntGaugeVec,
    waitresp: IntGaugeVec,
    queue_messages: IntGaugeVec,
    queue_bytes: IntGaugeVec,
    fetch_queue: IntGaugeVec,
    brokers_up: IntGaugeVec,
}

impl Gauges {
    fn new() -> prometheus::Result<Self> {
        let partition_labels = &["group", "topic", "partition"];
        let broker_labels = &["client", "type", "broker"];
        let client_labels = &["client", "type"];
        Ok(Self {
            lag_records: IntGaugeVec::new(
                Opts::new(
                    "hookline_consumer_lag_records",
                    "Records of an assigned partition this process's group consumer has \
                     not taken yet (end offset minus position), by group, topic and \
                     partition.",
                ),
                partition_labels,
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "hookline_consumer_lag_seconds",
                    "How far behind a group consumer is on an assigned partition: 0 when \
                     caught up, else the age of the last record it took.",
                ),
                partition_labels,
            )?,
            rtt_avg: GaugeVec::new(
                Opts::new(
                    "hookline_kafka_broker_rtt_avg_seconds",
                    "Average broker round-trip time over the last statistics interval.",
                ),
                broker_labels,
            )?,
            rtt_p99: GaugeVec::new(
                Opts::new(
                    "hookline_kafka_broker_rtt_p99_seconds",
                    "99th percentile of the broker round-trip time over the last \
                     statistics interval.",
                ),
                broker_labels,
            )?,
            outbuf: IntGaugeVec::new(
                Opts::new(
                    "hookline_kafka_broker_outbuf_requests",
                    "Requests waiting to be sent to a broker.",
                ),
                broker_labels,
            )?,
            waitresp: IntGaugeVec::new(
                Opts::new(
                    "hookline_kafka_broker_waitresp_requests",
                    "Requests sent to a broker and waiting for its response.",
                ),
                broker_labels,
            )?,
            queue_messages: IntGaugeVec::new(
                Opts::new(
                    "hookline_kafka_producer_queue_messages",
                    "Records in the producer's queues, not yet acknowledged.",
                ),
                client_labels,
            )?,
            queue_bytes: IntGaugeVec::new(
                Opts::new(
                    "hookline_kafka_producer_queue_bytes",
                    "Bytes of the records in the producer's queues.",
                ),
                client_labels,
            )?,
            fetch_queue: IntGaugeVec::new(
                Opts::new(
                    "hookline_kafka_consumer_fetch_queue_messages",
                    "Records fetched and queued in librdkafka, not yet taken by the \
                     application, by group.",
                ),
                &["group"],
            )?,
            brokers_up: IntGaugeVec::new(
                Opts::new(
                    "hookline_kafka_brokers_up",
                    "Brokers a client has an open connection to.",
                ),
                client_labels,
            )?,
        })
    }

    fn collectors(&self) -> [&dyn Collector; 10] {
        [
            &self.lag_records,
            &self.lag_seconds,
            &self.rtt_avg,
            &self.rtt_p99,
            &self.outbuf,
            &self.waitresp,
            &self.queue_messages,
            &self.queue_bytes,
            &self.fetch_queue,
            &self.brokers_up,
        ]
    }
}

impl StatsCollector {
    fn new(shared: Arc<Shared>) -> prometheus::Result<Self> {
        Ok(Self {
            shared,
            templates: Gauges::new()?,
        })
    }
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.templates
            .collectors()
            .into_iter()
            .flat_map(|c| c.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(gauges) = Gauges::new() else {
            return Vec::new();
        };
        let mut sink = lock(&self.shared);
        let now = Instant::now();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let stale = sink.interval * STALE_AFTER_INTERVALS;
        // Newest first: a partition reported by two instances (a consumer being
        // replaced) takes the newest report's figures.
        let mut reports: Vec<&Report> = sink
            .reports
            .values()
            .filter(|r| now.duration_since(r.received) < stale)
            .collect();
        reports.sort_by_key(|r| std::cmp::Reverse(r.received));
        let mut seen_partitions = std::collections::HashSet::new();
        let mut lagging: Vec<((String, i32), bool)> = Vec::new();
        for report in &reports {
            let stats = &report.stats;
            let client = [stats.client_id.as_str(), stats.client_type.as_str()];
            let mut up = 0;
            for broker in stats.brokers.values().filter(|b| b.nodeid >= 0) {
                let labels = [client[0], client[1], &broker.nodeid.to_string()];
                if broker.state == "UP" {
                    up += 1;
                }
                if let Some(rtt) = &broker.rtt {
                    if rtt.cnt > 0 {
                        // librdkafka reports microseconds.
                        gauges
                            .rtt_avg
                            .with_label_values(&labels)
                            .set(rtt.avg as f64 / 1e6);
                        gauges
                            .rtt_p99
                            .with_label_values(&labels)
                            .set(rtt.p99 as f64 / 1e6);
                    }
                }
                gauges
                    .outbuf
                    .with_label_values(&labels)
                    .add(broker.outbuf_cnt);
                gauges
                    .waitresp
                    .with_label_values(&labels)
                    .add(broker.waitresp_cnt);
            }
            gauges.brokers_up.with_label_values(&client).add(up);
            if stats.client_type == "producer" {
                gauges
                    .queue_messages
                    .with_label_values(&client)
                    .add(stats.msg_cnt as i64);
                gauges
                    .queue_bytes
                    .with_label_values(&client)
                    .add(stats.msg_size as i64);
            }
            let Some(group) = &report.group else { continue };
            for (topic, t) in &stats.topics {
                for p in t.partitions.values() {
                    if p.partition < 0 || !p.desired {
                        continue;
                    }
                    gauges
                        .fetch_queue
                        .with_label_values(&[group])
                        .add(p.fetchq_cnt);
                    if !seen_partitions.insert((group.clone(), topic.clone(), p.partition)) {
                        continue;
                    }
                    let key = (topic.clone(), p.partition);
                    let taken = sink
                        .taken
                        .get(topic)
                        .and_then(|m| m.get(&p.partition))
                        .copied();
                    let lagging_for = sink
                        .lagging_since
                        .get(&key)
                        .map_or(Duration::ZERO, |since| now.duration_since(*since));
                    let Some(lag) = partition_lag(p, now_ms, taken, lagging_for) else {
                        continue;
                    };
                    lagging.push((key, lag.records > 0));
                    let labels = [group.as_str(), topic.as_str(), &p.partition.to_string()];
                    gauges
                        .lag_records
                        .with_label_values(&labels)
                        .set(lag.records);
                    gauges
                        .lag_seconds
                        .with_label_values(&labels)
                        .set(lag.seconds);
                }
            }
        }
        for (key, behind) in lagging {
            if behind {
                sink.lagging_since.entry(key).or_insert(now);
            } else {
                sink.lagging_since.remove(&key);
            }
        }
        drop(sink);
        gauges
            .collectors()
            .into_iter()
            .flat_map(|c| c.collect())
            .collect()
    }
}

/// The `statistics.interval.ms` value for `interval` (0 turns statistics off).
pub fn interval_ms(interval: Duration) -> String {
    interval.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn partition(app: i64, committed: i64, ls: i64) -> rdkafka::statistics::Partition {
        rdkafka::statistics::Partition {
            desired: true,
            app_offset: app,
            committed_offset: committed,
            stored_offset: -1001,
            lo_offset: 0,
            hi_offset: ls,
            ls_offset: ls,
            ..Default::default()
        }
    }

    #[test]
    fn caught_up_is_zero_records_and_zero_seconds() {
        let lag = partition_lag(&partition(10, 5, 10), 100_000, Some(1_000), Duration::ZERO);
        assert_eq!(
            lag,
            Some(PartitionLag {
                records: 0,
                seconds: 0.0
            })
        );
    }

    #[test]
    fn behind_counts_from_the_position_and_the_last_record_taken() {
        let lag = partition_lag(&partition(7, 5, 10), 100_000, Some(40_000), Duration::ZERO);
        assert_eq!(
            lag,
            Some(PartitionLag {
                records: 3,
                seconds: 60.0
            })
        );
    }

    #[test]
    fn nothing_taken_yet_uses_the_committed_offset_and_time_seen_behind() {
        let lag = partition_lag(
            &partition(-1001, 4, 10),
            100_000,
            None,
            Duration::from_secs(9),
        );
        assert_eq!(
            lag,
            Some(PartitionLag {
                records: 6,
                seconds: 9.0
            })
        );
    }

    /// A consumer's report with one assigned and one revoked partition of `topic`.
    fn consumer_report(name: &str, client_id: &str, topic: &str, txerrs: u64) -> Statistics {
        let mut assigned = partition(7, 5, 10);
        assigned.partition = 0;
        let mut revoked = partition(0, 0, 10);
        revoked.partition = 1;
        revoked.desired = false;
        let broker = rdkafka::statistics::Broker {
            nodeid: 1,
            state: "UP".into(),
            txerrs,
            ..Default::default()
        };
        Statistics {
            name: name.into(),
            client_id: client_id.into(),
            client_type: "consumer".into(),
            brokers: HashMap::from([("b1".to_owned(), broker)]),
            topics: HashMap::from([(
                topic.to_owned(),
                rdkafka::statistics::Topic {
                    topic: topic.into(),
                    partitions: HashMap::from([(0, assigned), (1, revoked)]),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        }
    }

    fn exposition(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .expect("encodes");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn reports_become_lag_of_assigned_partitions_and_counters_of_deltas() {
        let registry = Registry::new();
        register(&registry).expect("registers");
        // Names of this test's own, as the sink is process-wide.
        consumer_group("stats-test-client", "stats-test-group");
        record_taken(
            "stats-test-topic",
            0,
            Some(chrono::Utc::now().timestamp_millis()),
        );
        observe(consumer_report(
            "stats-test-client#consumer-1",
            "stats-test-client",
            "stats-test-topic",
            4,
        ));
        let text = exposition(&registry);
        let lag = text
            .lines()
            .find(|l| {
                l.starts_with("hookline_consumer_lag_records{") && l.contains("stats-test-topic")
            })
            .expect("a lag series");
        assert!(
            lag.contains("group=\"stats-test-group\"") && lag.contains("partition=\"0\""),
            "{lag}"
        );
        assert!(lag.ends_with(" 3"), "{lag}");
        assert!(
            !text
                .lines()
                .any(|l| l.contains("stats-test-topic") && l.contains("partition=\"1\"")),
            "a revoked partition has no series"
        );
        let errors = |text: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("hookline_kafka_broker_tx_errors_total{")
                        && l.contains("stats-test-client")
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(errors(&text).as_deref(), Some("4"));
        // The same client reports a higher cumulative count; a client built again
        // starts from zero, which must not lower the counter.
        observe(consumer_report(
            "stats-test-client#consumer-1",
            "stats-test-client",
            "stats-test-topic",
            6,
        ));
        observe(consumer_report(
            "stats-test-client#consumer-2",
            "stats-test-client",
            "stats-test-topic",
            1,
        ));
        assert_eq!(errors(&exposition(&registry)).as_deref(), Some("7"));
    }

    #[test]
    fn unknown_end_offset_is_no_figure() {
        assert_eq!(
            partition_lag(&partition(3, 3, -1001), 0, None, Duration::ZERO),
            None
        );
    }
}
