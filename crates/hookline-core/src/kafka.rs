//! Kafka clients built the same way in every binary: base settings, then the
//! operator's pass-through properties, so that SASL/SSL and tuning reach every client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::produce::RenewingProducer;
use hookline_domain::backoff::Backoff;
use hookline_domain::position::RecordPosition;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{Client, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::metadata::MetadataTopic;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::kafka_stats::{self, StatsContext};

use crate::config::KafkaArgs;
use crate::telemetry::Readiness;

/// `topic.metadata.refresh.interval.ms` of group consumers (librdkafka's default is 5
/// minutes). A subscribed topic missing from the metadata a consumer joined its group
/// with, such as one created a moment earlier or a retry tier that appears later and
/// matches the pattern, is only picked up at the next refresh.
pub const GROUP_METADATA_REFRESH_MS: &str = "5000";

/// `queued.max.messages.kbytes` of group consumers: records fetched ahead of the
/// application, at most, in KiB.
pub const GROUP_PREFETCH_KBYTES: &str = "8192";

/// `session.timeout.ms` of group consumers (librdkafka's default is 45 s): how long the
/// group waits for a member that stopped heartbeating (a killed process, or a router's
/// consumer replaced after a failure that could not reach the coordinator to leave)
/// before its partitions move to the others. Heartbeats come from librdkafka's own
/// thread every 3 s, so only a process frozen this long loses its partitions.
pub const GROUP_SESSION_TIMEOUT_MS: &str = "10000";

/// `fetch.max.bytes` of group consumers: the largest fetch answer (it must stay above
/// the brokers' `message.max.bytes`, 1 MiB by default).
pub const GROUP_FETCH_MAX_BYTES: &str = "4194304";

/// A topic a binary needs, with how to create it when missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Full topic name.
    pub name: String,
    /// Partitions when created.
    pub partitions: i32,
    /// Topic-level configs when created, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(&'static str, String)>,
}

impl TopicSpec {
    /// A plain (delete-retention) topic with the configured partition count.
    pub fn plain(name: String, args: &KafkaArgs) -> Self {
        Self {
            name,
            partitions: args.topic_partitions,
            configs: Vec::new(),
        }
    }

    /// Whether the topic is compacted (and read as one ordered log).
    pub fn is_compacted(&self) -> bool {
        self.configs
            .iter()
            .any(|(key, value)| *key == "cleanup.policy" && value == "compact")
    }

    /// Whether the topic must have exactly one partition (it is read as one log).
    pub fn is_single_log(&self) -> bool {
        self.partitions == 1
            && (self.is_compacted() || self.configs.iter().any(|(k, _)| *k == "retention.ms"))
    }

    /// A single-partition topic whose records are deleted after `retention` (not
    /// compacted: every record of a key counts, in order), in hourly segments so they
    /// go soon after.
    pub fn ordered_log(name: String, retention: Duration) -> Self {
        let hour = Duration::from_secs(3600);
        Self {
            name,
            partitions: 1,
            configs: vec![
                ("cleanup.policy", "delete".into()),
                ("retention.ms", retention.as_millis().to_string()),
                ("segment.ms", retention.min(hour).as_millis().to_string()),
            ],
        }
    }

    /// A compacted, single-partition topic (small control data, total order).
    pub fn compacted(name: String) -> Self {
        Self {
            name,
            partitions: 1,
            configs: vec![("cleanup.policy", "compact".into())],
        }
    }
}

/// Base client config: brokers, client id, then pass-through properties.
pub fn client_config(args: &KafkaArgs, client_id: &str, base: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", client_id)
        .set("socket.timeout.ms", SOCKET_TIMEOUT_MS);
    for (key, value) in base {
        config.set(*key, *value);
    }
    for (key, value) in &args.properties {
        config.set(key, value);
    }
    config
}

/// How long a request may go unanswered before librdkafka gives up on it and its
/// connection (`socket.timeout.ms`, librdkafka's default 60 s). A broker cut off the
/// network answers nothing and closes nothing: until this passes, every request sent to
/// it, and every record queued behind them for its partitions, waits, even once the
/// partitions have new leaders elsewhere.
const SOCKET_TIMEOUT_MS: &str = "10000";

/// How long a producer lets records gather into a batch (`linger.ms`) for writes
/// that nobody waits on: delivery's attempt records, retries and health.
const THROUGHPUT_LINGER_MS: &str = "5";
/// `linger.ms` of writes whose acknowledgement someone waits on: an HTTP answer, or
/// the router's transaction. Records enqueued together still share a batch.
const LATENCY_LINGER_MS: &str = "1";

/// How long a producer tries to deliver a record before it reports it failed
/// (`message.timeout.ms`), where no caller bounds it tighter.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The producers Hookline builds: their statistics feed [`kafka_stats`].
pub type Producer = FutureProducer<StatsContext>;

/// `statistics.interval.ms` for `args`, telling the statistics sink the interval
/// clients will report at (the operator's `statistics.interval.ms` property, applied
/// last, wins over the setting).
fn statistics_interval(args: &KafkaArgs) -> String {
    let overridden = args
        .property("statistics.interval.ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis);
    kafka_stats::set_interval(overridden.unwrap_or(args.statistics_interval));
    kafka_stats::interval_ms(args.statistics_interval)
}

/// A producer that loses nothing it acknowledged: `acks=all`, idempotent, batching.
pub fn producer(args: &KafkaArgs, client_id: &str) -> Result<Producer, KafkaError> {
    producer_lingering(args, client_id, THROUGHPUT_LINGER_MS, DELIVERY_TIMEOUT)
}

/// A [`producer`] built again whenever it fails fatally (see [`RenewingProducer`]).
pub fn renewing_producer(
    args: &KafkaArgs,
    client_id: &str,
) -> Result<RenewingProducer, KafkaError> {
    let (args, client_id) = (args.clone(), client_id.to_owned());
    RenewingProducer::new(move || producer(&args, &client_id))
}

/// A [`low_latency_producer`] built again whenever it fails fatally (see
/// [`RenewingProducer`]).
pub fn renewing_low_latency_producer(
    args: &KafkaArgs,
    client_id: &str,
    delivery_timeout: Duration,
) -> Result<RenewingProducer, KafkaError> {
    let (args, client_id) = (args.clone(), client_id.to_owned());
    RenewingProducer::new(move || low_latency_producer(&args, &client_id, delivery_timeout))
}

/// A [`producer`] whose acknowledgements are waited on by a caller (ingest's answer),
/// giving up on a record after `delivery_timeout`.
pub fn low_latency_producer(
    args: &KafkaArgs,
    client_id: &str,
    delivery_timeout: Duration,
) -> Result<Producer, KafkaError> {
    producer_lingering(args, client_id, LATENCY_LINGER_MS, delivery_timeout)
}

fn producer_lingering(
    args: &KafkaArgs,
    client_id: &str,
    linger_ms: &str,
    delivery_timeout: Duration,
) -> Result<Producer, KafkaError> {
    let timeout_ms = delivery_timeout.as_millis().max(1).to_string();
    let stats_ms = statistics_interval(args);
    client_config(
        args,
        client_id,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", linger_ms),
            ("compression.type", "lz4"),
            ("message.timeout.ms", &timeout_ms),
            ("statistics.interval.ms", &stats_ms),
        ],
    )
    .create_with_context(StatsContext)
}

/// A transactional producer (`transactional.id` = `transactional_id`). Transactions
/// time out after 10 s, bounding how long a crashed producer's open transaction can
/// hold back `read_committed` readers when no successor fences it sooner.
pub fn transactional_producer(
    args: &KafkaArgs,
    client_id: &str,
    transactional_id: &str,
) -> Result<Producer, KafkaError> {
    let stats_ms = statistics_interval(args);
    client_config(
        args,
        client_id,
        &[
            ("statistics.interval.ms", &stats_ms),
            ("transactional.id", transactional_id),
            ("transaction.timeout.ms", "10000"),
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", LATENCY_LINGER_MS),
            ("compression.type", "lz4"),
        ],
    )
    .create_with_context(StatsContext)
}

/// Settings of a group consumer that never commits an offset on its own: offsets are
/// stored explicitly once the work they stand for is durable, and the stored ones are
/// committed in the background and on revocation (`enable.auto.offset.store=false`).
pub fn group_consumer_config(args: &KafkaArgs, client_id: &str, group: &str) -> ClientConfig {
    // The consumer's statistics (lag) are labelled with its group.
    kafka_stats::consumer_group(client_id, group);
    let stats_ms = statistics_interval(args);
    client_config(
        args,
        client_id,
        &[
            ("group.id", group),
            ("statistics.interval.ms", &stats_ms),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            // librdkafka prefetches up to 64 MiB (and 100,000 records a partition) by
            // default; the binaries hold their own bounded windows of records, so a
            // few MiB ahead keeps fetches busy without the memory.
            ("queued.max.messages.kbytes", GROUP_PREFETCH_KBYTES),
            ("queued.min.messages", "10000"),
            // One fetch answer is held in memory whole until its records are read; the
            // default allows 50 MiB.
            ("fetch.max.bytes", GROUP_FETCH_MAX_BYTES),
            ("session.timeout.ms", GROUP_SESSION_TIMEOUT_MS),
            (
                "topic.metadata.refresh.interval.ms",
                GROUP_METADATA_REFRESH_MS,
            ),
        ],
    )
}

/// A group consumer built from [`group_consumer_config`].
pub fn group_consumer<C>(args: &KafkaArgs, client_id: &str, group: &str) -> Result<C, KafkaError>
where
    C: FromClientConfig,
{
    group_consumer_config(args, client_id, group).create()
}

/// A consumer that reads a whole topic with manual assignment and never commits
/// (used to materialize compacted topics).
pub fn reader<C: FromClientConfig>(args: &KafkaArgs, client_id: &str) -> Result<C, KafkaError> {
    client_config(
        args,
        client_id,
        &[
            ("group.id", client_id),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "false"),
        ],
    )
    .create()
}

/// Creates the topics that do not exist yet (existing ones are left as they are), then
/// waits until every one of them shows in metadata with a leader for every partition,
/// so that a consumer subscribing next finds them. Retries while the cluster is
/// unreachable or still loading; fails after `patience` in all.
pub async fn ensure_topics(
    args: &KafkaArgs,
    specs: &[TopicSpec],
    patience: Duration,
) -> anyhow::Result<()> {
    // Metadata queries below name single topics; they must never auto-create one.
    let admin: AdminClient<DefaultClientContext> = client_config(
        args,
        "hookline-admin",
        &[("allow.auto.create.topics", "false")],
    )
    .create()?;
    let deadline = tokio::time::Instant::now() + patience;
    let cluster = cluster_metadata(&admin, deadline).await?;
    for spec in specs {
        if let Some(&partitions) = cluster.partitions.get(&spec.name) {
            // The views read a compacted topic's partition 0 only: records on any other
            // partition would be missed without a word.
            anyhow::ensure!(
                !spec.is_single_log() || partitions == 1,
                "topic {} has {partitions} partitions; Hookline needs exactly 1 (it is read \
                 as one ordered log)",
                spec.name
            );
        }
    }
    // Only what is missing: an operator who created the topics beforehand need not grant
    // the binaries the right to create any.
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|spec| !cluster.partitions.contains_key(&spec.name))
        .collect();
    // Brokers down at this moment (a rolling restart) are missing from the metadata;
    // the replicas of existing topics, the broker's internal ones included, tell how big
    // the cluster really is.
    let size = cluster.brokers.max(cluster.largest_replication);
    let replication = args.topic_replication.factor(size);
    let min_insync = (replication >= 3).then(|| MIN_INSYNC_REPLICAS.to_owned());
    if !missing.is_empty() {
        tracing::info!(
            brokers = cluster.brokers,
            replication,
            min_insync_replicas = min_insync.as_deref().unwrap_or("broker default"),
            topics = %missing.iter().map(|spec| spec.name.as_str()).collect::<Vec<_>>().join(","),
            "creating missing topics"
        );
    }
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(replication),
            );
            let topic = match &min_insync {
                Some(min) => topic.set("min.insync.replicas", min),
                None => topic,
            };
            spec.configs
                .iter()
                .fold(topic, |topic, (key, value)| topic.set(key, value))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    while !new_topics.is_empty() {
        let outcome = admin.create_topics(new_topics.iter(), &options).await;
        let failure = match outcome {
            Ok(results) => results
                .into_iter()
                .filter_map(|result| match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => None,
                    Err((name, code)) => Some(format!("{name}: {code}")),
                })
                .collect::<Vec<_>>()
                .join(", "),
            Err(err) => err.to_string(),
        };
        if failure.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("could not create topics: {failure}");
        }
        tracing::warn!(%failure, "topic creation failed; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Created (or already there) is not yet usable: the broker answering metadata may
    // not show a new topic for a while, and a consumer that subscribes meanwhile joins
    // its group without it.
    let names = specs.iter().map(|spec| spec.name.clone()).collect();
    await_topics(Arc::new(admin), names, deadline).await
}

/// `min.insync.replicas` of topics created with three or more replicas: a write is
/// acknowledged once two replicas hold it, so one broker can fail without losing it.
const MIN_INSYNC_REPLICAS: &str = "2";

/// What [`ensure_topics`] needs to know of the cluster.
struct ClusterMetadata {
    /// Brokers the metadata lists (those up now).
    brokers: usize,
    /// The most replicas any existing partition has.
    largest_replication: usize,
    /// Partitions of each existing topic.
    partitions: HashMap<String, usize>,
}

/// The cluster's metadata, asked again every second until it answers or `deadline`
/// passes.
async fn cluster_metadata(
    admin: &AdminClient<DefaultClientContext>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<ClusterMetadata> {
    loop {
        match admin
            .inner()
            .fetch_metadata(None::<&str>, Duration::from_secs(5))
        {
            Ok(metadata) => {
                let topics = metadata.topics().iter().filter(|t| t.error().is_none());
                return Ok(ClusterMetadata {
                    brokers: metadata.brokers().len(),
                    largest_replication: topics
                        .clone()
                        .flat_map(|t| t.partitions().iter().map(|p| p.replicas().len()))
                        .max()
                        .unwrap_or(0),
                    partitions: topics
                        .map(|t| (t.name().to_owned(), t.partitions().len()))
                        .collect(),
                });
            }
            Err(err) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("could not read the cluster's metadata: {err}")
            }
            Err(err) => {
                tracing::warn!(%err, "cluster metadata not available; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Waits until every topic of `names` is in `admin`'s metadata with a leader for every
/// partition, querying again with backoff (100 ms doubling up to 2 s) until `deadline`.
async fn await_topics(
    admin: Arc<AdminClient<DefaultClientContext>>,
    names: Vec<String>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let (client, query) = (Arc::clone(&admin), names.clone());
        let problems = tokio::task::spawn_blocking(move || {
            topic_problems(client.inner(), &query, Duration::from_secs(5))
        })
        .await
        .unwrap_or_else(|err| vec![format!("metadata query failed: {err}")]);
        if problems.is_empty() {
            tracing::info!(
                topics = names.len(),
                waited_ms = started.elapsed().as_millis() as u64,
                "topics visible in metadata"
            );
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            anyhow::bail!("topics not usable: {}", problems.join(", "));
        }
        tracing::warn!(problems = %problems.join(", "), "waiting for topics to show in metadata");
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}

/// Why each topic of `names` is not usable yet as `client` sees the cluster: missing,
/// in error, or with a partition without leader. Empty when all are usable. Blocking
/// (one metadata request per topic, each up to `timeout`).
pub fn topic_problems<C: ClientContext>(
    client: &Client<C>,
    names: &[String],
    timeout: Duration,
) -> Vec<String> {
    names
        .iter()
        .filter_map(|name| match client.fetch_metadata(Some(name), timeout) {
            Err(err) => Some(format!("{name}: {err}")),
            Ok(metadata) => match metadata.topics().iter().find(|t| t.name() == name) {
                None => Some(format!("{name}: not in metadata")),
                Some(topic) => topic_problem(topic).map(|problem| format!("{name}: {problem}")),
            },
        })
        .collect()
}

fn topic_problem(topic: &MetadataTopic) -> Option<String> {
    if let Some(err) = topic.error() {
        return Some(RDKafkaErrorCode::from(err).to_string());
    }
    if topic.partitions().is_empty() {
        return Some("no partitions".into());
    }
    // Only a missing leader counts: a partition error such as REPLICA_NOT_AVAILABLE
    // (a follower down) still leaves it usable.
    topic
        .partitions()
        .iter()
        .find(|p| p.leader() < 0)
        .map(|p| format!("partition {} has no leader", p.id()))
}

/// Whether a group consumer has had its first assignment: it joined its group and
/// fetches from here on. Feed it every rebalance ([`observe`](Self::observe)).
#[derive(Clone)]
pub struct FirstAssignment {
    consumer: &'static str,
    assigned: Readiness,
}

impl FirstAssignment {
    /// Not assigned yet; `consumer` names the consumer in the log.
    pub fn new(consumer: &'static str) -> Self {
        Self::sharing(consumer, Readiness::default())
    }

    /// Records into `assigned`, the readiness of a consumer this one replaces.
    pub fn sharing(consumer: &'static str, assigned: Readiness) -> Self {
        Self { consumer, assigned }
    }

    /// Records an assignment (from `post_rebalance`). Any assignment counts, an empty
    /// one included: a member with no partitions has still joined.
    pub fn observe(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            if !self.assigned.get() {
                tracing::info!(
                    consumer = self.consumer,
                    partitions = partitions.count(),
                    "first assignment: consuming"
                );
            } else {
                tracing::debug!(
                    consumer = self.consumer,
                    partitions = partitions.count(),
                    "assigned"
                );
            }
            self.assigned.set(true);
        }
    }

    /// True from the first assignment on.
    pub fn readiness(&self) -> Readiness {
        self.assigned.clone()
    }
}

/// The context of a group consumer that needs no rebalance hooks beyond recording its
/// first assignment.
pub struct AssignmentContext {
    first: FirstAssignment,
    /// What the latest statistics said of the partitions' fetching.
    fetching: Arc<std::sync::Mutex<FetchReport>>,
}

/// What librdkafka last reported (in its statistics) of one assigned partition's
/// fetching: enough to tell, of a partition that is not fetched, where librdkafka's
/// fetcher stands with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFetch {
    /// librdkafka's fetch state (`none`, `offset-query`, `offset-wait`,
    /// `validate-epoch-wait`, `active`, ...).
    pub state: String,
    /// The next offset it fetches from (negative when not known).
    pub next_offset: i64,
    /// The committed offset it knows (negative when not known).
    pub committed_offset: i64,
    /// Records fetched and not yet handed to the application.
    pub queued: i64,
    /// The partition's leader as it knows it (-1 when none).
    pub leader: i32,
}

/// A group consumer's latest statistics about its fetching.
#[derive(Debug, Clone, Default)]
pub struct FetchReport {
    /// The group membership's state and join state, as librdkafka names them.
    pub group: String,
    /// By (topic, partition), every partition assigned at the report.
    pub partitions: HashMap<(String, i32), PartitionFetch>,
}

impl FetchReport {
    fn from_statistics(statistics: &rdkafka::statistics::Statistics) -> Self {
        let partitions = statistics
            .topics
            .iter()
            .flat_map(|(topic, stats)| {
                stats
                    .partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.desired)
                    .map(move |p| {
                        let fetch = PartitionFetch {
                            state: p.fetch_state.clone(),
                            next_offset: p.next_offset,
                            committed_offset: p.committed_offset,
                            queued: p.fetchq_cnt,
                            leader: p.leader,
                        };
                        ((topic.clone(), p.partition), fetch)
                    })
            })
            .collect();
        let group = statistics
            .cgrp
            .as_ref()
            .map(|g| format!("{}/{}", g.state, g.join_state))
            .unwrap_or_default();
        Self { group, partitions }
    }
}

impl AssignmentContext {
    /// A context for the consumer named `consumer` in the log.
    pub fn new(consumer: &'static str) -> Self {
        Self::sharing(consumer, Readiness::default())
    }

    /// A context for a consumer that replaces one whose first assignment was recorded
    /// in `assigned`.
    pub fn sharing(consumer: &'static str, assigned: Readiness) -> Self {
        Self {
            first: FirstAssignment::sharing(consumer, assigned),
            fetching: Arc::default(),
        }
    }

    /// What the consumer's latest statistics said of its partitions' fetching (empty
    /// while statistics are off or none came yet).
    pub fn fetching(&self) -> FetchReport {
        self.fetching
            .lock()
            .map(|report| report.clone())
            .unwrap_or_default()
    }

    /// True from the consumer's first assignment on.
    pub fn readiness(&self) -> Readiness {
        self.first.readiness()
    }
}

impl ClientContext for AssignmentContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        if let Ok(mut report) = self.fetching.lock() {
            *report = FetchReport::from_statistics(&statistics);
        }
        kafka_stats::observe(statistics);
    }
}

impl ConsumerContext for AssignmentContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.first.observe(rebalance);
    }
}

/// Fetches the high watermark (next offset) of each partition of `topic`. Use a client
/// that is not also fetching records: a query queues behind a long-polling fetch on the
/// same broker connection (up to `fetch.wait.max.ms`).
pub async fn high_watermarks<C: Consumer + Send + Sync + 'static>(
    consumer: std::sync::Arc<C>,
    topic: String,
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    let query = tokio::task::spawn_blocking(move || {
        let marks = watermarks(consumer.as_ref(), &topic, timeout)?;
        Ok(marks.into_iter().map(|m| (m.partition, m.high)).collect())
    });
    // Bounded on our own clock too: a blocking thread that is not given in time (the
    // pool busy with calls librdkafka never returned from) must not hold the caller
    // for good. The query itself is bounded by `timeout` (metadata, then the offsets).
    match tokio::time::timeout(timeout * 3, query).await {
        Ok(joined) => joined.unwrap_or(Err(KafkaError::Canceled)),
        Err(_) => Err(KafkaError::Global(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        )),
    }
}

/// Where one partition begins and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// The partition.
    pub partition: i32,
    /// Its first offset.
    pub low: i64,
    /// The offset its next record will get.
    pub high: i64,
}

/// The watermarks of every partition of `topic` (none when it does not exist).
/// Blocking: call from a blocking context or a plain thread.
pub fn watermarks<C: Consumer>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Watermarks>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    partitions
        .into_iter()
        .map(|partition| {
            let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
            Ok(Watermarks {
                partition,
                low,
                high,
            })
        })
        .collect()
}

/// A record's headers as (name, value) pairs; a null value becomes empty.
pub fn record_headers<M: Message>(message: &M) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// Headers of a dead-lettered copy of `message`: the reason and where the original sits
/// (`hookline-dlq-reason`, `hookline-source-topic`, `-partition`, `-offset`), and the
/// original's trace context (`traceparent`, `tracestate`), if it had one.
pub fn dead_letter_headers<M: Message>(message: &M, reason: &str) -> OwnedHeaders {
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    let headers = [
        ("hookline-dlq-reason", reason),
        ("hookline-source-topic", message.topic()),
        ("hookline-source-partition", partition.as_str()),
        ("hookline-source-offset", offset.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    });
    crate::trace::copy_trace_headers(message, headers)
}

/// The next record of `consumer`. A failed read is logged (naming `what` is read) and
/// tried again after a short backoff, so callers see records only. Cancel-safe.
pub async fn next_record<'a, C: ConsumerContext + 'static>(
    consumer: &'a StreamConsumer<C>,
    what: &str,
) -> BorrowedMessage<'a> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match consumer.recv().await {
            Ok(message) => {
                kafka_stats::record_taken(
                    message.topic(),
                    message.partition(),
                    message.timestamp().to_millis(),
                );
                return message;
            }
            Err(err) => {
                tracing::warn!(%err, what, "read failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Where `message` sits, with its Kafka timestamp.
pub fn record_position<M: Message>(message: &M) -> RecordPosition<'_> {
    RecordPosition {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(properties: &[(&str, &str)]) -> KafkaArgs {
        KafkaArgs {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: "t.".into(),
            topic_partitions: 4,
            topic_replication: crate::config::Replication::Auto,
            statistics_interval: Duration::from_secs(5),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn group_consumers_refresh_metadata_every_few_seconds_unless_told_otherwise() {
        let key = "topic.metadata.refresh.interval.ms";
        let config = group_consumer_config(&args(&[]), "c", "g");
        assert_eq!(config.get(key), Some(GROUP_METADATA_REFRESH_MS));
        let config = group_consumer_config(&args(&[(key, "60000")]), "c", "g");
        assert_eq!(config.get(key), Some("60000"), "the operator's value wins");
    }
}
