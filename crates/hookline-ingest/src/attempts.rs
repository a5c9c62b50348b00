//! The message log: every delivery (event × subscription) and every attempt at it,
//! indexed from the topics (`<prefix>deliveries` for the tasks the router, replays and
//! resends write, `<prefix>attempts` for the workers' attempt records and
//! `<prefix>deliveries.dlq` for dead letters), read from their beginning by every ingest
//! instance, so any instance answers the same.
//!
//! The index holds ids, statuses, times and where each record sits (partition and
//! offset), never payloads: the event and the attempts' error details and response
//! bodies are read back from Kafka by offset when a request asks for them. Its size
//! follows the number of deliveries and attempts the topics hold (see
//! [`APPROX_BYTES_PER_ATTEMPT`], [`APPROX_BYTES_PER_DELIVERY`]): entries whose records
//! the topics' retention deleted are dropped every [`PRUNE_EVERY`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use hookline_core::telemetry::Readiness;
use hookline_core::topics::Topics;
use hookline_domain::attempt::{AttemptOutcome, AttemptRecord};
use hookline_domain::message_log::{page, AttemptKey, AttemptQuery, DeliveryStatus, Page};
use hookline_domain::task::DeliveryTask;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Roughly what one attempt costs the index, in bytes, whatever its response body: its
/// key and entry in the subscription's ordered map (24 + 32 bytes, plus the map's node
/// overhead) and its key in its delivery's list (24, plus the list's spare capacity).
pub const APPROX_BYTES_PER_ATTEMPT: usize = 120;
/// Roughly what one delivery costs the index, in bytes, plus twice its event id's
/// length: its entry in the map by `webhook-id` (16 + at most 152 bytes, at the map's
/// load factor) and in the map by event id (a key and a short list), with their
/// allocations.
pub const APPROX_BYTES_PER_DELIVERY: usize = 350;
/// How often entries whose records retention deleted are dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Longest ingest waits at start for the log to read what the topics held then; past
/// it ingest gets ready anyway (the log keeps filling in), with a warning.
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// Where a record sits on its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// One attempt as the index holds it.
struct Attempt {
    message: u128,
    attempt: u32,
    duration_ms: u32,
    status: Option<u16>,
    outcome: AttemptOutcome,
}

/// One delivery as the index holds it.
struct Delivery {
    subscription: Arc<str>,
    event_id: Box<str>,
    event_type: Arc<str>,
    /// The event's tenant, once a task or dead letter of it was read.
    tenant: Option<Arc<str>>,
    /// The latest task record of it still held (the event is read back from it).
    task: Option<Position>,
    /// When the router (or a replay, resend) first wrote it, in microseconds.
    routed_at: Option<i64>,
    /// Its attempts, oldest first.
    attempts: Vec<AttemptKey>,
    /// Its latest dead letter's time, in microseconds.
    dead_lettered: Option<i64>,
}

#[derive(Default)]
struct Index {
    /// Subscription ids, tenants and event types, each held once.
    names: HashSet<Arc<str>>,
    deliveries: HashMap<u128, Delivery>,
    by_event: HashMap<Box<str>, Vec<u128>>,
    by_subscription: HashMap<Arc<str>, BTreeMap<AttemptKey, Attempt>>,
}

/// The key of a `webhook-id` (`msg_` and 32 hex digits, as [`hookline_domain::ids`]
/// derives them); `None` for anything else.
pub fn message_key(id: &str) -> Option<u128> {
    let hex = id.strip_prefix(hookline_domain::ids::MESSAGE_ID_PREFIX)?;
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

fn message_id(key: u128) -> String {
    format!("{}{key:032x}", hookline_domain::ids::MESSAGE_ID_PREFIX)
}

fn micros(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp_micros()
}

fn time(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

impl Index {
    fn name(&mut self, text: &str) -> Arc<str> {
        if let Some(held) = self.names.get(text) {
            return Arc::clone(held);
        }
        let name: Arc<str> = Arc::from(text);
        self.names.insert(Arc::clone(&name));
        name
    }

    fn delivery(
        &mut self,
        key: u128,
        subscription: &str,
        event_id: &str,
        event_type: &str,
    ) -> &mut Delivery {
        use std::collections::hash_map::Entry;
        let (subscription, event_type) = (self.name(subscription), self.name(event_type));
        match self.deliveries.entry(key) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(slot) => {
                self.by_event
                    .entry(Box::from(event_id))
                    .or_default()
                    .push(key);
                slot.insert(Delivery {
                    subscription,
                    event_id: Box::from(event_id),
                    event_type,
                    tenant: None,
                    task: None,
                    routed_at: None,
                    attempts: Vec::new(),
                    dead_lettered: None,
                })
            }
        }
    }

    /// The delivery `task` is of, made if new, with its tenant; `None` for a task whose
    /// `webhook-id` is not one Hookline makes.
    fn delivery_of(&mut self, task: &DeliveryTask) -> Option<&mut Delivery> {
        let key = message_key(&task.message_id)?;
        let tenant = self.name(&task.event.tenant);
        let delivery = self.delivery(
            key,
            &task.subscription_id,
            &task.event.id,
            &task.event.event_type,
        );
        delivery.tenant = Some(tenant);
        Some(delivery)
    }

    fn add_task(&mut self, task: &DeliveryTask, at: Position) {
        let Some(delivery) = self.delivery_of(task) else {
            return;
        };
        if delivery.task.is_none_or(|held| held.offset < at.offset) {
            delivery.task = Some(at);
        }
        let routed = micros(task.routed_at);
        delivery.routed_at = Some(delivery.routed_at.map_or(routed, |r| r.min(routed)));
    }

    fn add_dead_letter(&mut self, task: &DeliveryTask, written_micros: i64) {
        let Some(delivery) = self.delivery_of(task) else {
            return;
        };
        delivery.dead_lettered = delivery.dead_lettered.max(Some(written_micros));
    }

    fn add_attempt(&mut self, record: &AttemptRecord, at: Position) {
        let Some(message) = message_key(&record.message_id) else {
            return;
        };
        let key = AttemptKey {
            at_micros: micros(record.at),
            partition: at.partition,
            offset: at.offset,
        };
        let delivery = self.delivery(
            message,
            &record.subscription_id,
            &record.event_id,
            &record.event_type,
        );
        let slot = delivery.attempts.partition_point(|k| *k < key);
        if delivery.attempts.get(slot) == Some(&key) {
            return; // read twice (a rebalance): once is enough
        }
        delivery.attempts.insert(slot, key);
        let subscription = Arc::clone(&delivery.subscription);
        self.by_subscription
            .entry(subscription)
            .or_default()
            .insert(
                key,
                Attempt {
                    message,
                    attempt: record.attempt,
                    duration_ms: u32::try_from(record.duration_ms).unwrap_or(u32::MAX),
                    status: record.status,
                    outcome: record.outcome,
                },
            );
    }

    /// Drops what retention deleted: attempts below the attempts topic's low
    /// watermarks, tasks below the deliveries topic's, then deliveries left with neither.
    fn prune(&mut self, attempts_low: &HashMap<i32, i64>, tasks_low: &HashMap<i32, i64>) {
        let kept = |low: &HashMap<i32, i64>, partition: i32, offset: i64| {
            offset >= low.get(&partition).copied().unwrap_or(0)
        };
        for log in self.by_subscription.values_mut() {
            log.retain(|k, _| kept(attempts_low, k.partition, k.offset));
        }
        self.by_subscription.retain(|_, log| !log.is_empty());
        for delivery in self.deliveries.values_mut() {
            delivery
                .attempts
                .retain(|k| kept(attempts_low, k.partition, k.offset));
            if delivery
                .task
                .is_some_and(|t| !kept(tasks_low, t.partition, t.offset))
            {
                delivery.task = None;
            }
        }
        self.deliveries
            .retain(|_, d| d.task.is_some() || !d.attempts.is_empty());
        let deliveries = &self.deliveries;
        for keys in self.by_event.values_mut() {
            keys.retain(|k| deliveries.contains_key(k));
        }
        self.by_event.retain(|_, keys| !keys.is_empty());
        self.names.retain(|name| Arc::strong_count(name) > 1);
    }

    fn summary(&self, subscription: &str, key: AttemptKey, attempt: &Attempt) -> AttemptSummary {
        let delivery = self.deliveries.get(&attempt.message);
        AttemptSummary {
            position: Position {
                partition: key.partition,
                offset: key.offset,
            },
            key,
            record: AttemptRecord {
                message_id: message_id(attempt.message).into(),
                subscription_id: subscription.into(),
                event_id: delivery.map(|d| d.event_id.as_ref()).unwrap_or("").into(),
                event_type: delivery
                    .map(|d| d.event_type.as_ref())
                    .unwrap_or("")
                    .to_owned(),
                attempt: attempt.attempt,
                outcome: attempt.outcome,
                status: attempt.status,
                error: None,
                response_body: None,
                duration_ms: u64::from(attempt.duration_ms),
                at: time(key.at_micros),
            },
        }
    }

    fn view(&self, key: u128) -> Option<DeliveryView> {
        let delivery = self.deliveries.get(&key)?;
        let log = self.by_subscription.get(&delivery.subscription);
        let attempts: Vec<AttemptSummary> = delivery
            .attempts
            .iter()
            .filter_map(|k| {
                log.and_then(|l| l.get(k))
                    .map(|a| self.summary(&delivery.subscription, *k, a))
            })
            .collect();
        let latest = attempts.last().map(|a| (a.key.at_micros, a.record.outcome));
        Some(DeliveryView {
            message_id: message_id(key),
            subscription_id: delivery.subscription.to_string(),
            event_id: delivery.event_id.to_string(),
            event_type: delivery.event_type.to_string(),
            tenant: delivery.tenant.as_deref().map(str::to_owned),
            task: delivery.task,
            routed_at: delivery.routed_at.map(time),
            delivered_at: attempts
                .iter()
                .find(|a| a.record.outcome == AttemptOutcome::Success)
                .map(|a| a.record.at),
            dead_lettered_at: delivery.dead_lettered.map(time),
            status: DeliveryStatus::derive(latest, delivery.dead_lettered),
            attempts,
        })
    }
}

/// One attempt read from the index: its record without error detail and response body
/// (those stay in Kafka), and where the full record sits.
#[derive(Debug, Clone)]
pub struct AttemptSummary {
    /// Its place in the subscription's log.
    pub key: AttemptKey,
    /// Its record on the attempts topic.
    pub position: Position,
    /// The record, `error` and `response_body` left out.
    pub record: AttemptRecord,
}

/// One delivery read from the index.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    /// Its `webhook-id`.
    pub message_id: String,
    /// The subscription.
    pub subscription_id: String,
    /// The event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The event's tenant, when a task or dead letter of it was read.
    pub tenant: Option<String>,
    /// Its latest task record still held on the deliveries topic.
    pub task: Option<Position>,
    /// When it was first queued.
    pub routed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its first successful attempt's start.
    pub delivered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its latest dead letter's time.
    pub dead_lettered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Its attempts, oldest first.
    pub attempts: Vec<AttemptSummary>,
}

/// Which topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Tasks,
    Attempts,
    DeadLetters,
}

/// The message log of this process, filled from the topics.
pub struct AttemptLog {
    index: RwLock<Index>,
    /// True once the consumer got its (first) assignment.
    assigned: Readiness,
    /// True once the log read every record the topics held when it started (or
    /// [`CATCH_UP_LIMIT`] passed).
    caught_up: Readiness,
    /// Counts the records added, so that a caller can wait for one ([`Self::wait_for`]).
    added: tokio::sync::watch::Sender<u64>,
    /// Where full records are read back from; `None` in unit tests.
    kafka: Option<(KafkaArgs, Topics)>,
}

impl Default for AttemptLog {
    fn default() -> Self {
        Self {
            index: RwLock::default(),
            assigned: Readiness::default(),
            caught_up: Readiness::default(),
            added: tokio::sync::watch::Sender::new(0),
            kafka: None,
        }
    }
}

impl AttemptLog {
    /// Reads the deliveries, attempts and dead-letter topics from their beginning in
    /// the background, and prunes what their retention deletes.
    pub fn start(args: &KafkaArgs) -> anyhow::Result<Arc<Self>> {
        let topics = args.topics();
        // A group of its own (this process alone, never committing) is assigned every
        // partition, including ones the topic's metadata did not show yet right after
        // it was created.
        let group = format!(
            "hookline-ingest-log-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let consumer: StreamConsumer<kafka::AssignmentContext> = kafka::client_config(
            args,
            "hookline-ingest-log",
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                (
                    "topic.metadata.refresh.interval.ms",
                    kafka::GROUP_METADATA_REFRESH_MS,
                ),
            ],
        )
        .create_with_context(kafka::AssignmentContext::new("message log"))?;
        let (deliveries, attempts, dlq) = (
            topics.deliveries(),
            topics.attempts(),
            topics.deliveries_dlq(),
        );
        consumer.subscribe(&[&deliveries, &attempts, &dlq])?;
        let consumer = Arc::new(consumer);
        let log = Arc::new(Self {
            assigned: consumer.context().readiness(),
            kafka: Some((args.clone(), topics)),
            ..Self::default()
        });
        tokio::spawn(catch_up(
            args.clone(),
            Arc::clone(&consumer),
            vec![deliveries.clone(), attempts.clone(), dlq],
            log.caught_up.clone(),
        ));
        let filler = Arc::clone(&log);
        tokio::spawn(async move {
            loop {
                let message = kafka::next_record(&consumer, "message log").await;
                let source = if message.topic() == attempts {
                    Source::Attempts
                } else if message.topic() == deliveries {
                    Source::Tasks
                } else {
                    Source::DeadLetters
                };
                let at = Position {
                    partition: message.partition(),
                    offset: message.offset(),
                };
                let written = message.timestamp().to_millis().unwrap_or(0) * 1000;
                if !filler.apply(source, at, written, message.payload().unwrap_or_default()) {
                    tracing::debug!(
                        topic = message.topic(),
                        offset = at.offset,
                        "unreadable record"
                    );
                }
            }
        });
        let pruner = Arc::clone(&log);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRUNE_EVERY).await;
                if let Err(err) = pruner.prune_deleted().await {
                    tracing::warn!(%err, "message log: low watermarks not read");
                }
            }
        });
        Ok(log)
    }

    /// True once the consumer joined its group and reads.
    pub fn assigned(&self) -> Readiness {
        self.assigned.clone()
    }

    /// True once the log read every record the topics held when it started, so that
    /// this instance answers as the others do (or once [`CATCH_UP_LIMIT`] passed).
    pub fn caught_up(&self) -> Readiness {
        self.caught_up.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Indexes one record; false when it does not read as its topic's kind.
    fn apply(&self, source: Source, at: Position, written_micros: i64, payload: &[u8]) -> bool {
        let added = match source {
            Source::Attempts => serde_json::from_slice::<AttemptRecord>(payload)
                .map(|record| self.write().add_attempt(&record, at))
                .is_ok(),
            Source::Tasks => serde_json::from_slice::<DeliveryTask>(payload)
                .map(|task| self.write().add_task(&task, at))
                .is_ok(),
            Source::DeadLetters => serde_json::from_slice::<DeliveryTask>(payload)
                .map(|task| self.write().add_dead_letter(&task, written_micros))
                .is_ok(),
        };
        self.added.send_modify(|n| *n = n.wrapping_add(1));
        added
    }

    async fn prune_deleted(&self) -> anyhow::Result<()> {
        let Some((args, topics)) = self.kafka.clone() else {
            return Ok(());
        };
        let (attempts_low, tasks_low) = tokio::task::spawn_blocking(move || {
            let reader: BaseConsumer = kafka::reader(&args, "hookline-ingest-log-prune")?;
            let lows = |topic: &str| -> anyhow::Result<HashMap<i32, i64>> {
                Ok(kafka::watermarks(&reader, topic, Duration::from_secs(10))?
                    .into_iter()
                    .map(|m| (m.partition, m.low))
                    .collect())
            };
            anyhow::Ok((lows(&topics.attempts())?, lows(&topics.deliveries())?))
        })
        .await??;
        self.write().prune(&attempts_low, &tasks_low);
        Ok(())
    }

    /// The delivery with `webhook-id` `message_id`, if the log holds it.
    pub fn delivery(&self, message_id: &str) -> Option<DeliveryView> {
        self.read().view(message_key(message_id)?)
    }

    /// The deliveries of event `event_id` (of any tenant: the caller filters), in
    /// subscription order.
    pub fn event(&self, event_id: &str) -> Vec<DeliveryView> {
        let index = self.read();
        let mut found: Vec<DeliveryView> = index
            .by_event
            .get(event_id)
            .into_iter()
            .flatten()
            .filter_map(|key| index.view(*key))
            .collect();
        found.sort_by(|a, b| a.subscription_id.cmp(&b.subscription_id));
        found
    }

    /// One page of `subscription_id`'s attempts passing `query`, newest first.
    pub fn attempts(&self, subscription_id: &str, query: &AttemptQuery) -> Page<AttemptSummary> {
        let index = self.read();
        let Some(log) = index.by_subscription.get(subscription_id) else {
            return Page {
                items: Vec::new(),
                next: None,
            };
        };
        let range = match query.after {
            Some(after) => log.range(..after),
            None => log.range(..),
        };
        let passing = range.rev().filter(|(key, attempt)| {
            let event_type = index
                .deliveries
                .get(&attempt.message)
                .map_or("", |d| d.event_type.as_ref());
            query.keeps(key, attempt.outcome, event_type)
        });
        let found = page(passing.map(|(k, a)| (*k, a)), query.limit);
        Page {
            items: found
                .items
                .into_iter()
                .map(|(k, a)| index.summary(subscription_id, k, a))
                .collect(),
            next: found.next,
        }
    }

    /// The full records of `summaries`, read back from the attempts topic; a record no
    /// longer there (retention) is given as its summary.
    pub async fn full(&self, summaries: Vec<AttemptSummary>) -> Vec<AttemptRecord> {
        let positions: Vec<Position> = summaries.iter().map(|s| s.position).collect();
        let mut fetched = match &self.kafka {
            Some((args, topics)) => fetch(args, topics.attempts(), positions).await,
            None => HashMap::new(),
        };
        summaries
            .into_iter()
            .map(|s| {
                fetched
                    .remove(&(s.position.partition, s.position.offset))
                    .and_then(|bytes| serde_json::from_slice::<AttemptRecord>(&bytes).ok())
                    .filter(|full| full.message_id == s.record.message_id)
                    .unwrap_or(s.record)
            })
            .collect()
    }

    /// The task record at `at` on the deliveries topic, if it is still there.
    pub async fn task(&self, at: Position) -> Option<DeliveryTask> {
        let (args, topics) = self.kafka.as_ref()?;
        let mut fetched = fetch(args, topics.deliveries(), vec![at]).await;
        fetched
            .remove(&(at.partition, at.offset))
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    /// The first attempt at message `message_id` of `subscription_id`, waiting up to
    /// `patience` for it to be read from the attempts topic; `None` if it was not.
    pub async fn wait_for(
        &self,
        subscription_id: &str,
        message_id: &str,
        patience: Duration,
    ) -> Option<AttemptRecord> {
        // Subscribed before looking, so a record added in between is not missed.
        let mut added = self.added.subscribe();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let first = self
                .delivery(message_id)
                .filter(|d| d.subscription_id == subscription_id)
                .and_then(|d| d.attempts.into_iter().next());
            if let Some(found) = first {
                return self.full(vec![found]).await.into_iter().next();
            }
            match tokio::time::timeout_at(deadline, added.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

/// Sets `caught_up` once `consumer`'s position reached, on every partition of `topics`
/// holding records, the end that partition had when this started; or after
/// [`CATCH_UP_LIMIT`], or at once when the ends cannot be read (the log then fills in
/// while ingest serves).
async fn catch_up<C: rdkafka::consumer::ConsumerContext + 'static>(
    args: KafkaArgs,
    consumer: Arc<StreamConsumer<C>>,
    topics: Vec<String>,
    caught_up: Readiness,
) {
    let started = tokio::time::Instant::now();
    let ends = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = kafka::reader(&args, "hookline-ingest-log-ends")?;
        let mut ends = Vec::new();
        for topic in topics {
            for marks in kafka::watermarks(&reader, &topic, Duration::from_secs(10))? {
                if marks.high > marks.low {
                    ends.push((topic.clone(), marks.partition, marks.high));
                }
            }
        }
        anyhow::Ok(ends)
    })
    .await;
    let ends = match ends {
        Ok(Ok(ends)) => ends,
        Ok(Err(err)) => {
            tracing::warn!(%err, "message log: the topics' ends not read; not waiting for it");
            caught_up.set(true);
            return;
        }
        Err(err) => {
            tracing::warn!(%err, "message log: the topics' ends not read; not waiting for it");
            caught_up.set(true);
            return;
        }
    };
    loop {
        let reached = consumer.position().is_ok_and(|positions| {
            ends.iter().all(|(topic, partition, end)| {
                positions
                    .find_partition(topic, *partition)
                    .is_some_and(|p| matches!(p.offset(), Offset::Offset(at) if at >= *end))
            })
        });
        if reached {
            tracing::info!(partitions = ends.len(), waited = ?started.elapsed(), "message log caught up");
            break;
        }
        if started.elapsed() >= CATCH_UP_LIMIT {
            tracing::warn!(
                limit = ?CATCH_UP_LIMIT,
                "message log still reading the topics; ready anyway, it keeps filling in"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caught_up.set(true);
}

/// Most records skipped over before a fetch seeks instead of reading on.
const READ_ON: i64 = 500;
/// How long one poll of a fetch waits.
const FETCH_POLL: Duration = Duration::from_secs(5);

/// Reads the records of `topic` at `positions`, by offset; what cannot be read (deleted,
/// or Kafka not answering) is left out, with a warning for the latter.
async fn fetch(
    args: &KafkaArgs,
    topic: String,
    positions: Vec<Position>,
) -> HashMap<(i32, i64), Vec<u8>> {
    if positions.is_empty() {
        return HashMap::new();
    }
    let args = args.clone();
    let read = tokio::task::spawn_blocking(move || fetch_blocking(&args, &topic, positions)).await;
    match read {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => {
            tracing::warn!(%err, "message log: records not read back from Kafka");
            HashMap::new()
        }
        Err(err) => {
            tracing::warn!(%err, "message log: read-back task failed");
            HashMap::new()
        }
    }
}

fn fetch_blocking(
    args: &KafkaArgs,
    topic: &str,
    positions: Vec<Position>,
) -> Result<HashMap<(i32, i64), Vec<u8>>, rdkafka::error::KafkaError> {
    let group = format!("hookline-ingest-fetch-{}", ulid::Ulid::new());
    let consumer: BaseConsumer = kafka::client_config(
        args,
        "hookline-ingest-fetch",
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ],
    )
    .create()?;
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for p in positions {
        by_partition.entry(p.partition).or_default().push(p.offset);
    }
    let mut found = HashMap::new();
    for (partition, mut offsets) in by_partition {
        offsets.sort_unstable();
        offsets.dedup();
        let mut next = 0;
        'seeks: while next < offsets.len() {
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(topic, partition, Offset::Offset(offsets[next]))?;
            consumer.assign(&assignment)?;
            loop {
                let message = match consumer.poll(FETCH_POLL) {
                    Some(Ok(message)) => message,
                    // The end, or no answer: what is left of the partition is not there.
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => break 'seeks,
                    Some(Err(err)) => return Err(err),
                };
                let offset = message.offset();
                // Offsets passed over are gone (retention) or were never records.
                while next < offsets.len() && offsets[next] < offset {
                    next += 1;
                }
                if offsets.get(next) == Some(&offset) {
                    found.insert(
                        (partition, offset),
                        message.payload().unwrap_or_default().to_vec(),
                    );
                    next += 1;
                }
                match offsets.get(next) {
                    None => break 'seeks,
                    Some(wanted) if *wanted > offset + READ_ON => continue 'seeks,
                    Some(_) => {}
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hookline_domain::message_log::AttemptQueryText;

    const MSG_A: &str = "msg_0000000000000000000000000000000a";
    const MSG_B: &str = "msg_0000000000000000000000000000000b";

    fn attempt(message_id: &str, attempt: u32, outcome: &str, second: u32) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "message_id": message_id, "subscription_id": "sub_1", "event_id": format!("evt_{message_id}"),
            "event_type": "invoice.paid", "attempt": attempt, "outcome": outcome,
            "status": if outcome == "success" { 204 } else { 500 },
            "response_body": "x".repeat(4000),
            "duration_ms": 3, "at": format!("2026-12-01T00:00:{second:02}Z")
        }))
        .unwrap()
    }

    fn task(message_id: &str, tenant: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "message_id": message_id, "subscription_id": "sub_1",
            "event": {"id": format!("evt_{message_id}"), "type": "invoice.paid", "tenant": tenant,
                "occurred_at": "2026-12-01T00:00:00Z", "data": {}},
            "routed_at": "2026-12-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn at(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn only_derived_webhook_ids_have_keys() {
        let id = hookline_domain::ids::message_id("evt_1", "sub_1");
        assert_eq!(message_key(&id).map(message_id), Some(id.to_string()));
        for bad in [
            "",
            "msg_",
            "msg_XYZ",
            "evt_0000000000000000000000000000000a",
            "msg_0000000000000000000000000000000A",
        ] {
            assert_eq!(message_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_delivery_gathers_its_task_attempts_and_dead_letter_in_any_order() {
        let log = AttemptLog::default();
        // The attempt may be read before its task (two topics, one consumer).
        assert!(log.apply(
            Source::Attempts,
            at(1, 7),
            0,
            &attempt(MSG_A, 1, "http_5xx", 1)
        ));
        assert!(log.apply(Source::Tasks, at(0, 3), 0, &task(MSG_A, "acme")));
        let shown = log.delivery(MSG_A).unwrap();
        assert_eq!(shown.tenant.as_deref(), Some("acme"));
        assert_eq!(shown.task, Some(at(0, 3)));
        assert_eq!(shown.status, DeliveryStatus::Retrying);
        assert!(log.apply(
            Source::Attempts,
            at(1, 9),
            0,
            &attempt(MSG_A, 2, "success", 2)
        ));
        // Read twice (a rebalance): counted once.
        assert!(log.apply(
            Source::Attempts,
            at(1, 9),
            0,
            &attempt(MSG_A, 2, "success", 2)
        ));
        let shown = log.delivery(MSG_A).unwrap();
        assert_eq!(shown.status, DeliveryStatus::Delivered);
        let numbers: Vec<u32> = shown.attempts.iter().map(|a| a.record.attempt).collect();
        assert_eq!(numbers, [1, 2], "oldest first");
        assert_eq!(shown.attempts[1].record.status, Some(204));
        assert_eq!(
            shown.attempts[0].record.response_body, None,
            "bodies stay in Kafka"
        );
        assert!(shown.delivered_at.is_some());
        // Dead-lettered later: the status says so.
        let written = micros("2026-12-01T00:01:00Z".parse().unwrap());
        assert!(log.apply(Source::DeadLetters, at(0, 0), written, &task(MSG_A, "acme")));
        assert_eq!(
            log.delivery(MSG_A).unwrap().status,
            DeliveryStatus::DeadLettered
        );
        assert_eq!(log.event(&format!("evt_{MSG_A}")).len(), 1);
        assert!(log.delivery(MSG_B).is_none());
        assert!(!log.apply(Source::Tasks, at(0, 4), 0, b"not json"));
    }

    #[test]
    fn attempts_page_newest_first_with_filters_and_no_cap() {
        let log = AttemptLog::default();
        for i in 0..150u32 {
            let outcome = if i % 3 == 0 { "http_5xx" } else { "success" };
            let id = format!("msg_{:032x}", i + 1);
            log.apply(
                Source::Attempts,
                at(2, i64::from(i)),
                0,
                &attempt(&id, 1, outcome, i % 60),
            );
        }
        let query = |status: Option<&str>, cursor: Option<&str>| {
            AttemptQuery::parse(&AttemptQueryText {
                status,
                cursor,
                limit: Some(40),
                ..Default::default()
            })
            .unwrap()
        };
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = log.attempts("sub_1", &query(None, cursor.as_deref()));
            seen.extend(page.items.iter().map(|a| a.key));
            match page.next {
                Some(next) => cursor = Some(next.cursor()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 150, "more than the old 100");
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!(seen, sorted, "newest first, each once");
        let failed = log.attempts("sub_1", &query(Some("failed"), None));
        assert_eq!(failed.items.len(), 40);
        assert!(failed
            .items
            .iter()
            .all(|a| a.record.outcome == AttemptOutcome::Http5xx));
        assert!(log.attempts("sub_2", &query(None, None)).items.is_empty());
    }

    #[test]
    fn what_retention_deleted_is_dropped() {
        let log = AttemptLog::default();
        log.apply(Source::Tasks, at(0, 1), 0, &task(MSG_A, "acme"));
        log.apply(
            Source::Attempts,
            at(0, 1),
            0,
            &attempt(MSG_A, 1, "success", 1),
        );
        log.apply(Source::Tasks, at(0, 5), 0, &task(MSG_B, "acme"));
        log.apply(
            Source::Attempts,
            at(0, 5),
            0,
            &attempt(MSG_B, 1, "success", 5),
        );
        log.write()
            .prune(&HashMap::from([(0, 3)]), &HashMap::from([(0, 3)]));
        assert!(log.delivery(MSG_A).is_none());
        assert!(log.event(&format!("evt_{MSG_A}")).is_empty());
        assert_eq!(log.delivery(MSG_B).unwrap().attempts.len(), 1);
    }

    #[test]
    fn index_entries_stay_small() {
        // The documented per-entry costs rest on these sizes.
        assert!(std::mem::size_of::<Attempt>() <= 32);
        assert!(std::mem::size_of::<AttemptKey>() <= 24);
        assert!(std::mem::size_of::<Delivery>() <= 152);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_first_attempt_at_its_message_once_it_is_read() {
        let log = Arc::new(AttemptLog::default());
        log.apply(
            Source::Attempts,
            at(0, 0),
            0,
            &attempt(MSG_B, 1, "success", 0),
        );
        let waiter = {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.wait_for("sub_1", MSG_A, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        log.apply(
            Source::Attempts,
            at(0, 1),
            0,
            &attempt(MSG_A, 1, "success", 1),
        );
        log.apply(
            Source::Attempts,
            at(0, 2),
            0,
            &attempt(MSG_A, 2, "success", 2),
        );
        let found = waiter.await.unwrap().expect("the attempt was added");
        assert_eq!(found.message_id.as_str(), MSG_A);
        assert_eq!(found.attempt, 1);
        assert_eq!(found.outcome, AttemptOutcome::Success);
        // Already there: answered at once.
        let again = log.wait_for("sub_1", MSG_A, Duration::ZERO).await;
        assert_eq!(again.map(|a| a.attempt), Some(1));
        // Another subscription's, or a patience run out: none.
        assert!(log.wait_for("sub_2", MSG_A, Duration::ZERO).await.is_none());
        assert!(log
            .wait_for("sub_1", "msg_none", Duration::from_millis(20))
            .await
            .is_none());
    }
}
