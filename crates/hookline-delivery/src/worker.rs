//! The consumer loop of a delivery worker. It reads the deliveries topic and every
//! retry tier in one consumer group and:
//!
//! - runs many tasks at once (a window per partition, a cap per process), storing each
//!   partition's offset only up to its contiguous done prefix;
//! - holds a retry partition (paused, no polling, no sleeping in the loop) while its
//!   head record is not due, and resumes it when the head falls due;
//! - on shutdown, and when a rebalance revokes partitions, lets the tasks in flight
//!   finish up to a grace period and commits what is done.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hookline_core::config::KafkaArgs;
use hookline_core::heartbeat::Heartbeat;
use hookline_core::kafka;
use hookline_core::telemetry::Readiness;
use hookline_domain::tracker::OffsetTracker;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use hookline_domain::subscription::Subscription;

use crate::pipeline::{find_subscription, process, Context, RetryPath, TaskRecord};

/// A topic partition.
type Tp = (Arc<str>, i32);

/// A finished record, reported to the loop: its partition.
type Done = Tp;

/// A retry record read before it is due: the record, when it is due, its generation.
type Held = (TaskRecord, Instant, u64);

/// What the loop, the tasks and the rebalance callback share: per partition, the offset
/// tracker and the number of running tasks of its current generation.
#[derive(Default)]
struct Progress {
    trackers: HashMap<Tp, OffsetTracker>,
    running: HashMap<Tp, (u64, usize)>,
    /// The last generation of each partition whose tracker was dropped on revocation.
    retired: HashMap<Tp, u64>,
}

impl Progress {
    /// Begins tracking `offset`; returns its generation.
    fn begin(&mut self, tp: &Tp, offset: i64) -> u64 {
        let retired = self.retired.get(tp).copied();
        self.trackers
            .entry(tp.clone())
            .or_insert_with(|| retired.map_or_else(OffsetTracker::new, OffsetTracker::following))
            .begin(offset)
    }

    /// Whether work of `generation` on `tp` is still this worker's to finish.
    fn is_current(&self, tp: &Tp, generation: u64) -> bool {
        self.trackers
            .get(tp)
            .is_some_and(|t| t.generation() == generation)
    }

    fn started(&mut self, tp: &Tp, generation: u64) {
        let entry = self.running.entry(tp.clone()).or_insert((generation, 0));
        if entry.0 != generation {
            *entry = (generation, 0);
        }
        entry.1 += 1;
    }

    fn running(&self, tp: &Tp) -> usize {
        self.running.get(tp).map_or(0, |(_, n)| *n)
    }

    /// Forgets a revoked partition; returns its committable offset.
    fn retire(&mut self, tp: &Tp) -> Option<i64> {
        self.running.remove(tp);
        let tracker = self.trackers.remove(tp)?;
        self.retired.insert(tp.clone(), tracker.generation());
        tracker.committable()
    }
}

type SharedProgress = Arc<Mutex<Progress>>;

fn lock(progress: &SharedProgress) -> MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(|p| p.into_inner())
}

/// The consumer's context: on revocation it waits for the revoked partitions' running
/// tasks (up to the grace period), commits what is done, and tells the loop to forget
/// their waiting records. Also exports how many partitions this worker holds.
pub struct RebalanceLog {
    progress: SharedProgress,
    grace: Duration,
    revoked: Mutex<Vec<Tp>>,
    assigned: prometheus::IntGauge,
    first: kafka::FirstAssignment,
}

impl RebalanceLog {
    fn new(
        progress: SharedProgress,
        grace: Duration,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let assigned = prometheus::IntGauge::new(
            "hookline_delivery_assigned_partitions",
            "Partitions (deliveries and retry tiers) assigned to this worker.",
        )?;
        registry.register(Box::new(assigned.clone()))?;
        Ok(Self {
            progress,
            grace,
            revoked: Mutex::new(Vec::new()),
            assigned,
            first: kafka::FirstAssignment::new("deliveries"),
        })
    }

    /// Blocks (this runs inside the consumer's poll) until no task of `revoked` runs, or
    /// the grace period ends, then commits their done prefixes.
    fn drain_revoked(&self, consumer: &BaseConsumer<Self>, revoked: &[Tp]) {
        let deadline = std::time::Instant::now() + self.grace;
        // This runs on a runtime worker (inside the loop's `recv`): hand the worker's
        // other tasks to the rest of the runtime while this thread waits for them.
        tokio::task::block_in_place(|| loop {
            let busy: usize = {
                let progress = lock(&self.progress);
                revoked.iter().map(|tp| progress.running(tp)).sum()
            };
            if busy == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    busy,
                    "grace period over during rebalance; unfinished tasks go to the new owner"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        });
        let mut commit = TopicPartitionList::new();
        {
            let mut progress = lock(&self.progress);
            for tp in revoked {
                if let Some(offset) = progress.retire(tp) {
                    let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(offset + 1));
                }
            }
        }
        if commit.count() > 0 {
            if let Err(err) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(%err, "commit on revocation failed; the new owner redelivers from the last commit");
            }
        }
    }
}

impl ClientContext for RebalanceLog {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        hookline_core::kafka_stats::observe(statistics);
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let revoked: Vec<Tp> = list
                .elements()
                .iter()
                .map(|e| (Arc::from(e.topic()), e.partition()))
                .collect();
            tracing::info!(
                partitions = revoked.len(),
                "partitions revoked; finishing their tasks"
            );
            self.drain_revoked(consumer, &revoked);
            self.revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            // librdkafka keeps a partition's pause flag across revocation and
            // reassignment, while the loop forgot the held record that paused it: a
            // partition that comes back must start unpaused.
            if let Err(err) = consumer.resume(assigned) {
                tracing::warn!(%err, "resuming assigned partitions failed");
            }
        }
        self.first.observe(rebalance);
        if let Ok(assignment) = consumer.assignment() {
            self.assigned.set(assignment.count() as i64);
        }
    }
}

/// Sizing of the loop.
#[derive(Debug, Clone)]
pub struct WorkerLimits {
    /// Most tasks in flight in this process.
    pub concurrency: usize,
    /// Most tasks in flight per partition.
    pub partition_window: usize,
    /// How long shutdown and revocation wait for in-flight tasks.
    pub grace: Duration,
}

/// What a task needs to report its end: shared progress, the consumer to store the
/// offset on, and the loop's channel.
#[derive(Clone)]
struct Finisher {
    progress: SharedProgress,
    consumer: Arc<StreamConsumer<RebalanceLog>>,
    done_tx: mpsc::UnboundedSender<Done>,
}

impl Finisher {
    /// Marks the record done: its partition's done prefix may be committed now.
    fn finish(&self, tp: Tp, offset: i64, generation: u64) {
        {
            let mut progress = lock(&self.progress);
            if let Some((current, running)) = progress.running.get_mut(&tp) {
                if *current == generation {
                    *running = running.saturating_sub(1);
                }
            }
            let committable = progress
                .trackers
                .get_mut(&tp)
                .and_then(|tracker| tracker.complete(offset, generation));
            // Stored under the lock: two tasks finishing together must not store their
            // offsets in the opposite order, or the stored offset would go backwards.
            if let Some(offset) = committable {
                if let Err(err) = self.consumer.store_offset(&tp.0, tp.1, offset) {
                    // Revoked meanwhile: its new owner redelivers from the last commit.
                    tracing::debug!(%err, topic = %tp.0, partition = tp.1, "offset not stored");
                }
            }
        }
        let _ = self.done_tx.send(tp);
    }

    /// Whether work of `generation` on `tp` is still this worker's.
    fn is_current(&self, tp: &Tp, generation: u64) -> bool {
        lock(&self.progress).is_current(tp, generation)
    }
}

/// A record routed to a lane: its partition, the record, its generation.
type LaneItem = (Tp, TaskRecord, u64);

/// One subscription's sequential lane.
struct Lane {
    tx: mpsc::UnboundedSender<LaneItem>,
    /// Records sent to the lane and not yet handled by it; a lane at zero is idle and
    /// may be dropped (only the loop sends, so nothing can arrive meanwhile).
    pending: Arc<AtomicUsize>,
}

/// How often idle lanes are dropped.
const LANE_PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// How long the delivery loop may go without a turn before it counts as wedged: it
/// turns at least every [`LANE_PRUNE_INTERVAL`], and no branch of it waits.
const LOOP_BOUND: Duration = Duration::from_secs(60);

/// Retry records held in memory until due, over all tier partitions, before a tier
/// partition that gets another one is paused. Pausing is the last resort: librdkafka
/// restarts a resumed partition's fetching slowly, and a tier partition paused and
/// resumed every few seconds (a hanging endpoint's tasks cycling through it) held back
/// the fetches of the deliveries partitions too, by seconds.
const HELD_IN_MEMORY: usize = 4096;

/// The consumer side of one delivery process.
pub struct Worker {
    consumer: Arc<StreamConsumer<RebalanceLog>>,
    context: Arc<Context>,
    limits: WorkerLimits,
    progress: SharedProgress,
    /// Retry records read but not yet due, per tier partition, oldest first (in due
    /// order: a tier partition's due times never decrease).
    held: HashMap<Tp, VecDeque<Held>>,
    /// Records in `held`.
    held_count: usize,
    /// Tier partitions paused because `held` reached [`HELD_IN_MEMORY`].
    paused: HashSet<Tp>,
    /// Records waiting for their partition's window, oldest first. Waiting in memory
    /// instead of pausing the partition: a resumed partition restarts fetching slowly.
    backlog: HashMap<Tp, VecDeque<(TaskRecord, u64)>>,
    /// One sequential lane per ordered (or not yet known) subscription with work, fed
    /// in offset order; idle lanes are dropped.
    lanes: HashMap<String, Lane>,
    lanes_gauge: prometheus::IntGauge,
    /// Records in `held`, by tier topic.
    held_gauge: prometheus::IntGaugeVec,
    /// Records taken from Kafka and not finished (running or in the backlog).
    in_flight: usize,
    /// Beaten at every turn of the loop (at least every [`LANE_PRUNE_INTERVAL`]).
    heartbeat: Heartbeat,
}

impl Worker {
    /// Subscribes to the deliveries topic and the retry tiers in group `group`.
    pub fn new(
        args: &KafkaArgs,
        group: &str,
        limits: WorkerLimits,
        context: Context,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let mut config = kafka::group_consumer_config(args, "hookline-delivery", group);
        // The worker reads several topics (deliveries and retry tiers); the range
        // assignor spreads each topic's partitions over the workers, where a sticky one
        // balances only the total and may leave one worker all of `deliveries`.
        if args.property("partition.assignment.strategy").is_none() {
            config.set("partition.assignment.strategy", "range");
        }
        // Tasks arrive in router transactions; a read_committed fetch parked on the
        // broker is not woken by a commit marker, so a long fetch wait (librdkafka's
        // default 500 ms) shows up as delivery latency.
        if args.property("fetch.wait.max.ms").is_none() {
            config.set("fetch.wait.max.ms", "50");
        }
        let progress = SharedProgress::default();
        let lanes_gauge = prometheus::IntGauge::new(
            "hookline_delivery_lanes",
            "Subscription lanes (ordered delivery) with work in this worker.",
        )?;
        registry.register(Box::new(lanes_gauge.clone()))?;
        let held_gauge = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "hookline_delivery_retry_held_records",
                "Retry records read but not due yet, held in memory, by tier topic.",
            ),
            &["topic"],
        )?;
        registry.register(Box::new(held_gauge.clone()))?;
        let log = RebalanceLog::new(Arc::clone(&progress), limits.grace, registry)?;
        let consumer: StreamConsumer<RebalanceLog> = config.create_with_context(log)?;
        // Every retry tier by pattern, so that records in tiers of an earlier schedule
        // are still read after the schedule changes.
        let deliveries = context.topics.deliveries();
        let retry_tiers = context.topics.deliveries_retry_pattern();
        consumer.subscribe(&[&deliveries, &retry_tiers])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            context: Arc::new(context),
            limits,
            progress,
            held: HashMap::new(),
            held_count: 0,
            paused: HashSet::new(),
            backlog: HashMap::new(),
            lanes: HashMap::new(),
            lanes_gauge,
            held_gauge,
            in_flight: 0,
            heartbeat: Heartbeat::new(LOOP_BOUND),
        })
    }

    /// True once the group gave this worker its first assignment (it really consumes).
    pub fn assigned(&self) -> Readiness {
        self.consumer.context().first.readiness()
    }

    /// Beaten at every turn of the delivery loop: silent while it is wedged.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Delivers until `stop` turns true, then drains and commits.
    pub async fn run(
        mut self,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        self.heartbeat.beat("loading the subscriptions view");
        while let Err(err) = self.context.view.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view");
            self.heartbeat.beat("loading the subscriptions view");
        }
        readiness.set(true);
        tracing::info!("ready");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let finisher = Finisher {
            progress: Arc::clone(&self.progress),
            consumer: Arc::clone(&self.consumer),
            done_tx,
        };
        let consumer = Arc::clone(&self.consumer);
        let mut prune = tokio::time::interval(LANE_PRUNE_INTERVAL);
        loop {
            self.heartbeat.beat("delivering");
            let next_due = self.next_due();
            tokio::select! {
                biased;
                Some(tp) = done_rx.recv() => self.on_done(tp, &finisher),
                _ = stop.wait_for(|s| *s) => break,
                _ = prune.tick() => self.prune_lanes(),
                () = sleep_until(next_due) => self.release_due(&finisher),
                message = kafka::next_record(&consumer, "deliveries"), if self.in_flight < self.limits.concurrency => {
                    // A rebalance runs inside the read: forget what it revoked first.
                    self.forget_revoked();
                    self.on_message(message.detach(), &finisher);
                }
            }
        }
        self.drain(&mut done_rx, &finisher).await;
        Ok(())
    }

    fn on_message(&mut self, message: OwnedMessage, finisher: &Finisher) {
        let tp: Tp = (Arc::from(message.topic()), message.partition());
        // Begin tracking at once, so the commit never passes a held record.
        let generation = lock(&self.progress).begin(&tp, message.offset());
        let record = TaskRecord::read(message);
        if self
            .context
            .topics
            .is_deliveries_retry(record.message.topic())
        {
            let wait = record.due_in();
            let already_holding = self.held.get(&tp).is_some_and(|q| !q.is_empty());
            if already_holding || !wait.is_zero() {
                if self.held_count >= HELD_IN_MEMORY && self.paused.insert(tp.clone()) {
                    self.pause(&tp);
                }
                let held = (record, Instant::now() + wait, generation);
                self.held_gauge.with_label_values(&[&tp.0]).inc();
                self.held.entry(tp).or_default().push_back(held);
                self.held_count += 1;
                return;
            }
        }
        self.admit(tp, record, generation, finisher);
    }

    /// Admits a record: it starts at once, or waits for its partition's window behind the
    /// records already waiting there.
    fn admit(&mut self, tp: Tp, record: TaskRecord, generation: u64, finisher: &Finisher) {
        self.in_flight += 1;
        self.context.metrics.in_flight.inc();
        let running = lock(&self.progress).running(&tp);
        // Behind records already waiting, never beside them: a slot freed by a finished
        // task goes to the oldest waiting record (in `on_done`), and a record read in the
        // meantime must not overtake it, or an ordered subscription's lane would get its
        // records out of order.
        let waiting = self.backlog.get(&tp).is_some_and(|queue| !queue.is_empty());
        if waiting || running >= self.limits.partition_window {
            self.backlog
                .entry(tp)
                .or_default()
                .push_back((record, generation));
            return;
        }
        self.start(tp, record, generation, finisher);
    }

    fn start(&mut self, tp: Tp, record: TaskRecord, generation: u64, finisher: &Finisher) {
        lock(&self.progress).started(&tp, generation);
        let context = Arc::clone(&self.context);
        // Ordered subscriptions go through their lane, one task at a time, in the order
        // this loop reads them; everything else runs at once. A subscription this
        // process's view does not know yet may be an ordered one: it takes the lane too
        // (the lane's task catches the view up and then knows).
        let id = record
            .message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok());
        let needs_lane = id.is_some_and(|id| takes_lane(self.context.view.get(id).as_deref()));
        if let (true, Some(id)) = (needs_lane, id) {
            let lane = self.lanes.entry(id.to_owned()).or_insert_with(|| {
                self.lanes_gauge.inc();
                spawn_lane(Arc::clone(&context), finisher.clone())
            });
            lane.pending.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::error::SendError((tp, record, generation))) =
                lane.tx.send((tp, record, generation))
            {
                tracing::error!(topic = %tp.0, partition = tp.1, "subscription lane stopped");
                finisher.finish(tp, record.message.offset(), generation);
            }
            return;
        }
        let finisher = finisher.clone();
        tokio::spawn(async move {
            let offset = record.message.offset();
            process(&context, record, RetryPath::Tier).await;
            finisher.finish(tp, offset, generation);
        });
    }

    /// Drops lanes with nothing to do; their tasks end.
    fn prune_lanes(&mut self) {
        self.lanes
            .retain(|_, lane| lane.pending.load(Ordering::Acquire) > 0);
        self.lanes_gauge.set(self.lanes.len() as i64);
    }

    fn on_done(&mut self, tp: Tp, finisher: &Finisher) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.context.metrics.in_flight.dec();
        if let Some((record, generation)) = self.backlog.get_mut(&tp).and_then(VecDeque::pop_front)
        {
            self.start(tp, record, generation, finisher);
        }
    }

    /// Forgets records that have not started (shutdown, revocation); they are not
    /// committed, so they are delivered again later.
    fn drop_backlog(&mut self, tp: &Tp) {
        if let Some(waiting) = self.backlog.remove(tp) {
            self.in_flight = self.in_flight.saturating_sub(waiting.len());
            self.context.metrics.in_flight.sub(waiting.len() as i64);
        }
    }

    /// When the earliest held record falls due.
    fn next_due(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|q| q.front().map(|(_, due, _)| *due))
            .min()
    }

    /// Starts every held record that is due; resumes partitions left with none.
    fn release_due(&mut self, finisher: &Finisher) {
        let now = Instant::now();
        let partitions: Vec<Tp> = self.held.keys().cloned().collect();
        for tp in partitions {
            while let Some(queue) = self.held.get_mut(&tp) {
                match queue.front() {
                    Some((_, due, _)) if *due <= now => {}
                    Some(_) => break,
                    None => {
                        self.held.remove(&tp);
                        if self.paused.remove(&tp) {
                            self.resume(&tp);
                        }
                        break;
                    }
                }
                let Some((record, _, generation)) = queue.pop_front() else {
                    break;
                };
                self.held_count = self.held_count.saturating_sub(1);
                self.held_gauge.with_label_values(&[&tp.0]).dec();
                self.admit(tp.clone(), record, generation, finisher);
            }
        }
    }

    fn pause(&self, tp: &Tp) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&tp.0, tp.1);
        if let Err(err) = self.consumer.pause(&list) {
            tracing::debug!(%err, topic = %tp.0, partition = tp.1, "pause failed");
        }
    }

    fn resume(&self, tp: &Tp) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&tp.0, tp.1);
        if let Err(err) = self.consumer.resume(&list) {
            tracing::debug!(%err, topic = %tp.0, partition = tp.1, "resume failed");
        }
    }

    /// Drops the held and waiting records of partitions a rebalance revoked; their new
    /// owners read them again from the commit made on revocation.
    fn forget_revoked(&mut self) {
        let revoked: Vec<Tp> = {
            let mut log = self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *log)
        };
        for tp in revoked {
            if let Some(dropped) = self.held.remove(&tp) {
                self.held_count = self.held_count.saturating_sub(dropped.len());
                self.held_gauge
                    .with_label_values(&[&tp.0])
                    .sub(dropped.len() as i64);
            }
            // Resumed on reassignment (`post_rebalance`).
            self.paused.remove(&tp);
            self.drop_backlog(&tp);
        }
    }

    async fn drain(&mut self, done_rx: &mut mpsc::UnboundedReceiver<Done>, finisher: &Finisher) {
        let waiting: Vec<Tp> = self.backlog.keys().cloned().collect();
        for tp in &waiting {
            self.drop_backlog(tp);
        }
        tracing::info!(
            in_flight = self.in_flight,
            "shutting down: draining in-flight deliveries"
        );
        let deadline = Instant::now() + self.limits.grace;
        while self.in_flight > 0 {
            self.heartbeat.beat("draining");
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(tp)) => self.on_done(tp, finisher),
                _ => break,
            }
        }
        let assigned = self.consumer.assignment().unwrap_or_default();
        let mut list = TopicPartitionList::new();
        for (tp, tracker) in &lock(&self.progress).trackers {
            if let (Some(offset), Some(_)) =
                (tracker.committable(), assigned.find_partition(&tp.0, tp.1))
            {
                let _ = list.add_partition_offset(&tp.0, tp.1, Offset::Offset(offset + 1));
            }
        }
        if list.count() > 0 {
            match self.consumer.commit(&list, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = list.count(), "offsets committed"),
                Err(err) => {
                    tracing::warn!(%err, "final commit failed; those tasks will be delivered again")
                }
            }
        }
        if self.in_flight > 0 {
            tracing::warn!(
                in_flight = self.in_flight,
                "grace period over; unfinished tasks will be delivered again"
            );
        }
    }
}

/// A task that works one subscription's records one after the other. Records of a
/// partition revoked since they were queued are skipped (their new owner has them),
/// and an in-place retry stops once its partition is revoked.
fn spawn_lane(context: Arc<Context>, finisher: Finisher) -> Lane {
    let (tx, mut lane_rx) = mpsc::unbounded_channel::<LaneItem>();
    let pending = Arc::new(AtomicUsize::new(0));
    let handled = Arc::clone(&pending);
    tokio::spawn(async move {
        while let Some((tp, record, generation)) = lane_rx.recv().await {
            let offset = record.message.offset();
            if !finisher.is_current(&tp, generation) {
                finisher.finish(tp, offset, generation);
                handled.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let id = record
                .message
                .key()
                .and_then(|key| std::str::from_utf8(key).ok())
                .unwrap_or_default();
            if takes_lane(find_subscription(&context, id).await.as_deref()) {
                let still_owned = || finisher.is_current(&tp, generation);
                process(
                    &context,
                    record,
                    RetryPath::Lane {
                        still_owned: &still_owned,
                    },
                )
                .await;
                finisher.finish(tp, offset, generation);
            } else {
                // Not ordered after all: run it alongside the others.
                let (context, finisher) = (Arc::clone(&context), finisher.clone());
                tokio::spawn(async move {
                    process(&context, record, RetryPath::Tier).await;
                    finisher.finish(tp, offset, generation);
                });
            }
            handled.fetch_sub(1, Ordering::AcqRel);
        }
    });
    Lane { tx, pending }
}

/// Whether a task of `subscription` runs through the subscription's lane: the one rule
/// for ordered delivery. A subscription the view does not show (not yet, or no more)
/// may be ordered, so its tasks take the lane too; the lane looks it up again.
fn takes_lane(subscription: Option<&Subscription>) -> bool {
    subscription.is_none_or(Subscription::ordered)
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> Tp {
        (Arc::from("t.deliveries"), partition)
    }

    #[test]
    fn work_of_a_revoked_assignment_never_counts_for_the_next() {
        let mut progress = Progress::default();
        let p = tp(0);
        let old = progress.begin(&p, 10);
        progress.started(&p, old);
        assert!(progress.is_current(&p, old));
        assert_eq!(progress.running(&p), 1);

        // Revoked, then assigned again: the earlier generation is stale for good.
        assert_eq!(
            progress.retire(&p),
            None,
            "nothing was done, nothing to commit"
        );
        assert!(!progress.is_current(&p, old));
        let new = progress.begin(&p, 10);
        assert_ne!(new, old, "generations are never reused");
        assert!(progress.is_current(&p, new));
        assert!(!progress.is_current(&p, old));
        progress.started(&p, new);
        assert_eq!(
            progress.running(&p),
            1,
            "only the new assignment's task counts"
        );

        // The old task finishing completes nothing of the new assignment.
        let tracker = progress.trackers.get_mut(&p).unwrap();
        assert_eq!(tracker.complete(10, old), None);
        assert_eq!(tracker.complete(10, new), Some(10));
    }

    #[test]
    fn retiring_reports_the_done_prefix() {
        let mut progress = Progress::default();
        let p = tp(1);
        let generation = progress.begin(&p, 5);
        progress.begin(&p, 6);
        let tracker = progress.trackers.get_mut(&p).unwrap();
        assert_eq!(tracker.complete(5, generation), Some(5));
        assert_eq!(progress.retire(&p), Some(5), "offset 5 is done, 6 is not");
        assert!(progress.trackers.is_empty() && progress.running.is_empty());
    }

    #[test]
    fn only_ordered_or_unknown_subscriptions_take_a_lane() {
        let url = "https://erp.example/hooks".parse().unwrap();
        let plain = Subscription::basic("sub_a", "acme", url, Vec::new());
        assert!(!takes_lane(Some(&plain)));
        let request: hookline_domain::subscription::NewSubscription = serde_json::from_value(
            serde_json::json!({"tenant": "acme", "url": "https://erp.example/hooks",
                               "event_types": ["*"], "ordered": true}),
        )
        .unwrap();
        let keyring = hookline_domain::sealing::Keyring::parse(
            &hookline_domain::sealing::Keyring::generate_entry("k"),
        )
        .unwrap();
        let saving = hookline_domain::subscription::Saving {
            rules: &Default::default(),
            keyring: &keyring,
        };
        let (ordered, _) = request
            .into_subscription("sub_b".into(), chrono::Utc::now(), saving)
            .unwrap();
        assert!(takes_lane(Some(&ordered)));
        assert!(takes_lane(None), "unknown yet: it may be ordered");
    }
}
