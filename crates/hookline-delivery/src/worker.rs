//! The consumer loop of a delivery worker. It reads the deliveries topic and every
//! retry tier in one consumer group and:
//!
//! - runs many tasks at once (a window per partition, a cap per process), storing each
//!   partition's offset only up to its contiguous done prefix;
//! - holds a retry partition (paused, no polling, no sleeping in the loop) while its
//!   head record is not due, and resumes it when the head falls due;
//! - on shutdown stops fetching, lets in-flight work finish up to a grace period, and
//!   commits what is done.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use hookline_core::task::DeliveryTask;
use hookline_core::telemetry::Readiness;
use hookline_core::tracker::OffsetTracker;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::pipeline::{due_in, process, Context, RetryPath};

/// A topic partition.
type Tp = (Arc<str>, i32);

/// A finished record: where it was and the tracker generation it began in.
type Done = (Tp, i64, u64);

/// A retry record read before it is due: the record, when it is due, its generation.
type Held = (OwnedMessage, Instant, u64);

/// Remembers partitions revoked by rebalances, for the loop to forget their state, and
/// exports how many partitions this worker holds.
pub struct RebalanceLog {
    revoked: Mutex<Vec<(String, i32)>>,
    assigned: prometheus::IntGauge,
}

impl RebalanceLog {
    /// A log exporting `hookline_delivery_assigned_partitions`.
    pub fn new(registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let assigned = prometheus::IntGauge::new(
            "hookline_delivery_assigned_partitions",
            "Partitions (deliveries and retry tiers) assigned to this worker.",
        )?;
        registry.register(Box::new(assigned.clone()))?;
        Ok(Self {
            revoked: Mutex::new(Vec::new()),
            assigned,
        })
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            for element in list.elements() {
                revoked.push((element.topic().to_owned(), element.partition()));
            }
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
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
    /// How long shutdown waits for in-flight tasks.
    pub grace: Duration,
}

/// The consumer side of one delivery process.
pub struct Worker {
    consumer: StreamConsumer<RebalanceLog>,
    context: Arc<Context>,
    limits: WorkerLimits,
    retry_topics: HashSet<String>,
    trackers: HashMap<Tp, OffsetTracker>,
    /// Retry records read but not yet due, per paused partition, oldest first.
    held: HashMap<Tp, VecDeque<Held>>,
    /// Tasks running per partition (at most the window).
    running: HashMap<Tp, usize>,
    /// Records waiting for their partition's window, oldest first. Waiting in memory
    /// instead of pausing the partition: a resumed partition restarts fetching slowly.
    backlog: HashMap<Tp, VecDeque<(OwnedMessage, u64)>>,
    /// One sequential lane per ordered subscription, fed in offset order.
    lanes: HashMap<String, mpsc::UnboundedSender<(Tp, OwnedMessage, u64)>>,
    in_flight: usize,
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
        if !args
            .properties
            .iter()
            .any(|(key, _)| key == "partition.assignment.strategy")
        {
            config.set("partition.assignment.strategy", "range");
        }
        let consumer: StreamConsumer<RebalanceLog> =
            config.create_with_context(RebalanceLog::new(registry)?)?;
        let retry_topics: HashSet<String> = context
            .schedule
            .tiers()
            .into_iter()
            .map(|tier| context.topics.deliveries_retry(tier))
            .collect();
        let mut topics: Vec<String> = retry_topics.iter().cloned().collect();
        topics.push(context.topics.deliveries());
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        Ok(Self {
            consumer,
            context: Arc::new(context),
            limits,
            retry_topics,
            trackers: HashMap::new(),
            held: HashMap::new(),
            running: HashMap::new(),
            backlog: HashMap::new(),
            lanes: HashMap::new(),
            in_flight: 0,
        })
    }

    /// Delivers until `stop` turns true, then drains and commits.
    pub async fn run(
        mut self,
        readiness: Readiness,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        while let Err(err) = self.context.view.catch_up(Duration::from_secs(10)).await {
            tracing::warn!(%err, "waiting for the subscriptions view");
        }
        readiness.set(true);
        tracing::info!("ready");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        loop {
            let next_due = self.next_due();
            tokio::select! {
                biased;
                Some(done) = done_rx.recv() => self.on_done(done, &done_tx),
                _ = stop.wait_for(|s| *s) => break,
                () = sleep_until(next_due) => self.release_due(&done_tx),
                received = self.consumer.recv(), if self.in_flight < self.limits.concurrency => {
                    match received {
                        Ok(message) => {
                            let message = message.detach();
                            self.forget_revoked();
                            self.on_message(message, &done_tx);
                        }
                        Err(err) => {
                            tracing::warn!(%err, "deliveries read failed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
        self.drain(&mut done_rx, &done_tx).await;
        Ok(())
    }

    fn on_message(&mut self, message: OwnedMessage, done_tx: &mpsc::UnboundedSender<Done>) {
        let tp: Tp = (Arc::from(message.topic()), message.partition());
        // Begin tracking at once, so the commit never passes a held record.
        let generation = self
            .trackers
            .entry(tp.clone())
            .or_default()
            .begin(message.offset());
        if self.retry_topics.contains(message.topic()) {
            let wait = message
                .payload()
                .and_then(|p| serde_json::from_slice::<DeliveryTask>(p).ok())
                .map_or(Duration::ZERO, |task| due_in(&task));
            let already_holding = self.held.get(&tp).is_some_and(|q| !q.is_empty());
            if already_holding || !wait.is_zero() {
                if !already_holding {
                    self.pause(&tp);
                }
                let held = (message, Instant::now() + wait, generation);
                self.held.entry(tp).or_default().push_back(held);
                return;
            }
        }
        self.spawn(tp, message, generation, done_tx);
    }

    /// Admits a record: it starts at once, or waits for its partition's window.
    fn spawn(
        &mut self,
        tp: Tp,
        message: OwnedMessage,
        generation: u64,
        done_tx: &mpsc::UnboundedSender<Done>,
    ) {
        self.in_flight += 1;
        self.context.metrics.in_flight.inc();
        let running = self.running.get(&tp).copied().unwrap_or(0);
        if running >= self.limits.partition_window {
            self.backlog
                .entry(tp)
                .or_default()
                .push_back((message, generation));
            return;
        }
        self.start(tp, message, generation, done_tx);
    }

    fn start(
        &mut self,
        tp: Tp,
        message: OwnedMessage,
        generation: u64,
        done_tx: &mpsc::UnboundedSender<Done>,
    ) {
        *self.running.entry(tp.clone()).or_default() += 1;
        let offset = message.offset();
        let context = Arc::clone(&self.context);
        let done_tx = done_tx.clone();
        // Ordered subscriptions go through their lane, one task at a time, in the order
        // this loop reads them; everything else runs at once.
        let ordered = message
            .key()
            .and_then(|key| std::str::from_utf8(key).ok())
            .and_then(|id| self.context.view.get(id))
            .filter(|subscription| subscription.ordered);
        if let Some(subscription) = ordered {
            let lane = self
                .lanes
                .entry(subscription.id.clone())
                .or_insert_with(|| spawn_lane(Arc::clone(&context), done_tx));
            if let Err(mpsc::error::SendError((tp, _, _))) = lane.send((tp, message, generation)) {
                tracing::error!(topic = %tp.0, partition = tp.1, "ordered lane stopped");
            }
            return;
        }
        tokio::spawn(async move {
            process(&context, message, RetryPath::Tier).await;
            let _ = done_tx.send((tp, offset, generation));
        });
    }

    fn on_done(&mut self, (tp, offset, generation): Done, done_tx: &mpsc::UnboundedSender<Done>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.context.metrics.in_flight.dec();
        if let Some(running) = self.running.get_mut(&tp) {
            *running = running.saturating_sub(1);
        }
        if let Some(tracker) = self.trackers.get_mut(&tp) {
            if let Some(committable) = tracker.complete(offset, generation) {
                if let Err(err) = self.consumer.store_offset(&tp.0, tp.1, committable) {
                    // Revoked meanwhile: its new owner redelivers from the last commit.
                    tracing::debug!(%err, topic = %tp.0, partition = tp.1, "offset not stored");
                }
            }
        }
        if let Some((message, generation)) = self.backlog.get_mut(&tp).and_then(VecDeque::pop_front)
        {
            self.start(tp, message, generation, done_tx);
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
    fn release_due(&mut self, done_tx: &mpsc::UnboundedSender<Done>) {
        let now = Instant::now();
        let partitions: Vec<Tp> = self.held.keys().cloned().collect();
        for tp in partitions {
            while let Some(queue) = self.held.get_mut(&tp) {
                match queue.front() {
                    Some((_, due, _)) if *due <= now => {}
                    Some(_) => break,
                    None => {
                        self.held.remove(&tp);
                        self.resume(&tp);
                        break;
                    }
                }
                let Some((message, _, generation)) = queue.pop_front() else {
                    break;
                };
                self.spawn(tp.clone(), message, generation, done_tx);
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

    /// Drops held records and window state of partitions revoked by a rebalance; their
    /// uncommitted records go to the partitions' new owners.
    fn forget_revoked(&mut self) {
        let revoked: Vec<(String, i32)> = {
            let mut log = self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *log)
        };
        for (topic, partition) in revoked {
            let tp: Tp = (Arc::from(topic.as_str()), partition);
            self.held.remove(&tp);
            self.drop_backlog(&tp);
            self.running.remove(&tp);
            self.trackers.remove(&tp);
        }
    }

    async fn drain(
        &mut self,
        done_rx: &mut mpsc::UnboundedReceiver<Done>,
        done_tx: &mpsc::UnboundedSender<Done>,
    ) {
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
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => self.on_done(done, done_tx),
                _ => break,
            }
        }
        let assigned = self.consumer.assignment().unwrap_or_default();
        let mut list = TopicPartitionList::new();
        for (tp, tracker) in &self.trackers {
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

/// A task that works an ordered subscription's records one after the other.
fn spawn_lane(
    context: Arc<Context>,
    done_tx: mpsc::UnboundedSender<Done>,
) -> mpsc::UnboundedSender<(Tp, OwnedMessage, u64)> {
    let (lane_tx, mut lane_rx) = mpsc::unbounded_channel::<(Tp, OwnedMessage, u64)>();
    tokio::spawn(async move {
        while let Some((tp, message, generation)) = lane_rx.recv().await {
            let offset = message.offset();
            process(&context, message, RetryPath::InPlace).await;
            let _ = done_tx.send((tp, offset, generation));
        }
    });
    lane_tx
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
