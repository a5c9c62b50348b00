//! The chaos ledger: what the receivers got and what the topics hold, checked against
//! what was sent, what the subscriptions were at each moment, and the faults' windows.
//!
//! ## Expected, allowed, and the grey window
//!
//! A subscription's configuration changes at the moment the API acknowledged the
//! change (`Change::acked`). Routing applies a change to every event routed after it,
//! and an event is routed some time between its first send and a little after its
//! acknowledgement. So each event has a *routing interval*
//! `[first send, acknowledgement + ROUTING_MARGIN]`, and every configuration valid at
//! some moment of that interval is a *candidate* for it:
//!
//! - the pair (event, subscription) is **expected** when the event was acknowledged and
//!   every candidate matches it (enabled, tenant, type pattern, filter);
//! - it is **allowed** when some candidate matches it; a request for a pair that is not
//!   allowed is a violation ("unexpected");
//! - the pairs allowed but not expected are the **grey window** of a change: events
//!   sent before its acknowledgement and acknowledged less than `ROUTING_MARGIN` before
//!   it. Events first sent after the acknowledgement follow the new configuration
//!   strictly (docs/guarantees.md: a change acknowledged before an event's batch is
//!   routed applies to that event).
//!
//! ## After a delete or a disable
//!
//! docs/guarantees.md: once a delete or disable is acknowledged, no new request reaches
//! the URL after the change has propagated: a worker never starts an attempt with a view
//! not confirmed caught up within `HOOKLINE_DELIVERY_VIEW_MAX_STALENESS` (5 s). A
//! request arriving later than the acknowledgement plus [`PROPAGATION_BOUND`] (those 5 s
//! plus 3 s for a loaded two-core machine between an attempt's start and its arrival) is
//! a violation; so is a request on a moved subscription's old URL after that bound.
//! An expected pair of a deleted subscription that was routed but not delivered before
//! the delete is *dropped as deleted*, as documented; of a disabled one, dead-lettered.
//!
//! ## Tasks from the topics
//!
//! Every routed task (`webhook-id` on the deliveries topic, `read_committed`) must end
//! as one of: an attempt record with outcome `success`, a dead letter, or (its
//! subscription deleted) nothing, which is what "dropped as deleted" leaves on the
//! topics. Anything else is a task lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hookline_domain::filter::Filter;
use hookline_domain::ids::message_id;
use hookline_domain::subscription::EventTypePattern;
use hookline_e2e::{genuine, Received};

use crate::load::{LoadStats, SentEvent, Via};
use crate::setup::{moved_path, refilter, Change, Created, Ending, Fate, ProcMetrics, Rx};
use crate::topics::Topics;

/// How long after its acknowledgement an event may still be routed (router restarts,
/// broker outages and rebalances included).
pub const ROUTING_MARGIN: Duration = Duration::from_secs(30);

/// The documented propagation bound of a delete or disable
/// (`HOOKLINE_DELIVERY_VIEW_MAX_STALENESS`, 5 s) plus 3 s of slack for the machine.
pub const PROPAGATION_BOUND: Duration = Duration::from_secs(5 + 3);

/// A fault's window: from its injection to its healing plus the recovery time after.
#[derive(Debug, Clone)]
pub struct Window {
    /// What was done.
    pub name: String,
    /// When the fault began.
    pub start: Instant,
    /// When it was healed.
    pub healed: Instant,
    /// End of the recovery time after it.
    pub end: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        self.start <= at && at < self.end
    }
}

/// One configuration of a subscription, valid from `from` (None: from its creation).
#[derive(Debug)]
struct Config {
    from: Option<Instant>,
    active: bool,
    filter: Option<Filter>,
}

/// A subscription as the ledger models it.
struct Model<'a> {
    created: &'a Created,
    patterns: Vec<EventTypePattern>,
    configs: Vec<Config>,
    /// When a delete, disable or URL move was acknowledged.
    cut: Option<Instant>,
}

impl<'a> Model<'a> {
    fn new(created: &'a Created, changes: &[Change]) -> Self {
        let filter_of =
            |value: &Option<serde_json::Value>| value.as_ref().and_then(|v| Filter::parse(v).ok());
        let mut configs = vec![Config {
            from: None,
            active: true,
            filter: filter_of(&created.spec.filter),
        }];
        let mut cut = None;
        for change in changes.iter().filter(|c| c.id == created.id) {
            match change.fate {
                Fate::Deleted | Fate::Disabled => {
                    cut = Some(change.acked);
                    configs.push(Config {
                        from: Some(change.acked),
                        active: false,
                        filter: None,
                    });
                }
                Fate::Moved => cut = Some(change.acked),
                Fate::Refiltered => configs.push(Config {
                    from: Some(change.acked),
                    active: true,
                    filter: filter_of(&Some(refilter())),
                }),
                Fate::Kept => {}
            }
        }
        let patterns = created
            .spec
            .patterns
            .iter()
            .filter_map(|p| EventTypePattern::parse(p).ok())
            .collect();
        Self {
            created,
            patterns,
            configs,
            cut,
        }
    }

    fn matches(&self, config: &Config, event: &SentEvent) -> bool {
        config.active
            && event.tenant == self.created.spec.tenant
            && self.patterns.iter().any(|p| p.matches(&event.event_type))
            && config
                .filter
                .as_ref()
                .is_none_or(|f| f.matches(&event.data))
    }

    /// The configurations valid at some moment of the event's routing interval.
    fn candidates(&self, event: &SentEvent, end: Instant) -> impl Iterator<Item = &Config> {
        let low = event.first_sent;
        let high = event.accepted.unwrap_or(end) + ROUTING_MARGIN;
        self.configs
            .iter()
            .enumerate()
            .filter(move |(i, config)| {
                let starts_before_high = config.from.is_none_or(|from| from <= high);
                let ends_after_low = self
                    .configs
                    .get(i + 1)
                    .is_none_or(|next| next.from.is_some_and(|to| to > low));
                starts_before_high && ends_after_low
            })
            .map(|(_, config)| config)
    }

    fn expected(&self, event: &SentEvent, end: Instant) -> bool {
        event.accepted.is_some() && self.candidates(event, end).all(|c| self.matches(c, event))
    }

    fn allowed(&self, event: &SentEvent, end: Instant) -> bool {
        self.candidates(event, end).any(|c| self.matches(c, event))
    }

    /// Whether an expected pair of this subscription may end in the DLQ: its endpoint
    /// fails on purpose (outage, half its requests) or it was disabled.
    fn may_dead_letter(&self) -> bool {
        self.created.spec.fate == Fate::Disabled
            || self.created.spec.rx == Rx::Outage
            || matches!(
                self.created.spec.behaviour,
                hookline_e2e::Behaviour::FailEvery(_, 2)
            )
    }
}

/// Everything the ledger reads.
pub struct Inputs<'a> {
    /// What the load sent.
    pub load: &'a LoadStats,
    /// The subscriptions as created.
    pub created: &'a [Created],
    /// Subscription changes, acknowledged.
    pub changes: &'a [Change],
    /// Every request every receiver got.
    pub received: &'a [(Rx, Received)],
    /// The topics at the end.
    pub topics: &'a Topics,
    /// The faults.
    pub windows: &'a [Window],
    /// Metrics of every process that ran.
    pub metrics: &'a [ProcMetrics],
    /// Binaries that exited by themselves, with their logs.
    pub exits: &'a [(String, String)],
    /// When the ledger was taken.
    pub end: Instant,
    /// When the run began.
    pub began: Instant,
    /// When the load stopped sending.
    pub load_stopped: Instant,
}

/// Per-window figures.
#[derive(Debug, Default, Clone)]
pub struct WindowFigures {
    /// Copies beyond the first 2xx of their pair, arriving in the window.
    pub duplicates: usize,
    /// Longest gap between two first deliveries at the steady receiver in the window.
    pub longest_gap: Duration,
    /// Longest time from acknowledgement to first delivery of an event acknowledged in
    /// the window, to a steady-receiver subscription.
    pub longest_latency: Duration,
    /// The subscription of that longest latency.
    pub slowest: &'static str,
}

/// The ledger's result.
#[derive(Debug, Default)]
pub struct Book {
    /// Pairs expected.
    pub expected: usize,
    /// Pairs delivered (2xx) at least once, expected or in the grey window.
    pub delivered: usize,
    /// Expected pairs delivered.
    pub expected_delivered: usize,
    /// Grey-window pairs delivered / not delivered.
    pub grey: (usize, usize),
    /// Expected pairs dead-lettered instead.
    pub dead_lettered: usize,
    /// Expected pairs routed and dropped because their subscription was deleted.
    pub dropped_deleted: usize,
    /// Requests in all, and 2xx copies beyond the first of their pair.
    pub requests: usize,
    /// Duplicates.
    pub duplicates: usize,
    /// Duplicates by subscription name.
    pub duplicates_by_subscription: BTreeMap<String, usize>,
    /// Ordered subscriptions: (first deliveries checked, in order).
    pub ordered: (usize, usize),
    /// Per window.
    pub windows: Vec<(Window, WindowFigures)>,
    /// Everything that broke a promise.
    pub violations: Vec<String>,
    /// Facts that are not violations but worth reading.
    pub notes: Vec<String>,
}

/// Caps how many violations of one kind are listed.
const LIST: usize = 15;

fn push_capped(list: &mut Vec<String>, counter: &mut usize, text: String) {
    *counter += 1;
    if *counter <= LIST {
        list.push(text);
    }
}

/// First 2xx arrival of each pair, and every request's verdict.
struct Deliveries {
    /// (event, subscription) → first 2xx arrival.
    first: BTreeMap<(String, String), Instant>,
    /// 2xx copies after the first, by arrival.
    copies: Vec<Instant>,
    /// 2xx copies after the first, by subscription name.
    copies_by_subscription: BTreeMap<String, usize>,
    requests: usize,
}

/// Takes the ledger.
pub fn take(inputs: &Inputs<'_>) -> Book {
    let mut book = Book::default();
    let models: Vec<Model<'_>> = inputs
        .created
        .iter()
        .map(|c| Model::new(c, inputs.changes))
        .collect();
    let events: HashMap<&str, &SentEvent> = inputs
        .load
        .events
        .iter()
        .map(|e| (e.id.as_str(), e))
        .collect();
    let deliveries = check_requests(inputs, &models, &events, &mut book);
    book.requests = deliveries.requests;
    book.duplicates = deliveries.copies.len();
    book.duplicates_by_subscription = deliveries.copies_by_subscription.clone();
    book.delivered = deliveries.first.len();
    check_expected(inputs, &models, &deliveries, &mut book);
    check_order(inputs, &models, &deliveries, &mut book);
    check_tasks(inputs, &models, &deliveries, &mut book);
    check_events(inputs, &mut book);
    book.windows = window_figures(inputs, &models, &events, &deliveries);
    for (label, log) in inputs.exits {
        book.violations
            .push(format!("{label} exited by itself; log tail:\n{log}"));
    }
    let load = inputs.load;
    if load.unavailable_without_retry_after > 0 {
        book.violations.push(format!(
            "{} 503 answers without Retry-After",
            load.unavailable_without_retry_after
        ));
    }
    if load.in_progress_without_retry_after > 0 {
        book.violations.push(format!(
            "{} 409 idempotency_in_progress answers without Retry-After",
            load.in_progress_without_retry_after
        ));
    }
    for refused in load.refused.iter().take(LIST) {
        book.violations
            .push(format!("event refused by ingest: {refused}"));
    }
    book
}

/// Which subscription a request on `path` of receiver `rx` is for, and whether it came
/// on the subscription's original URL.
fn owner<'m, 'a>(models: &'m [Model<'a>], rx: Rx, path: &str) -> Option<(&'m Model<'a>, bool)> {
    models.iter().find_map(|m| {
        if m.created.spec.rx == rx && path == m.created.id {
            Some((m, true))
        } else if rx == Rx::Steady && path == moved_path(&m.created.id) {
            Some((m, false))
        } else {
            None
        }
    })
}

fn check_requests(
    inputs: &Inputs<'_>,
    models: &[Model<'_>],
    events: &HashMap<&str, &SentEvent>,
    book: &mut Book,
) -> Deliveries {
    let now = chrono::Utc::now().timestamp();
    let mut deliveries = Deliveries {
        first: BTreeMap::new(),
        copies: Vec::new(),
        copies_by_subscription: BTreeMap::new(),
        requests: 0,
    };
    let (mut unexpected, mut bad, mut late) = (0, 0, 0);
    let mut sorted: Vec<&(Rx, Received)> = inputs.received.iter().collect();
    sorted.sort_by_key(|(_, r)| r.arrived);
    for (rx, r) in sorted {
        deliveries.requests += 1;
        let event_id = r.json["id"].as_str().unwrap_or_default();
        let Some((model, original_url)) = owner(models, *rx, &r.path) else {
            push_capped(
                &mut book.violations,
                &mut unexpected,
                format!("request on unknown path {:?} {}", rx, r.path),
            );
            continue;
        };
        let sub = &model.created;
        let Some(event) = events.get(event_id) else {
            push_capped(
                &mut book.violations,
                &mut unexpected,
                format!("{event_id} to {}: never sent", sub.spec.name),
            );
            continue;
        };
        if !model.allowed(event, inputs.end) {
            push_capped(
                &mut book.violations,
                &mut unexpected,
                format!("{event_id} ({} {}) to {}: no configuration it could have been routed with matches it", event.event_type, event.data, sub.spec.name),
            );
            continue;
        }
        let webhook_id = r.header("webhook-id");
        if !genuine(r, &sub.secret, event_id, &sub.id, now, 3 * 3600) {
            push_capped(
                &mut book.violations,
                &mut bad,
                format!(
                    "{event_id} to {}: webhook-id {webhook_id}: signature or id not genuine",
                    sub.spec.name
                ),
            );
            continue;
        }
        if let Some(cut) = model.cut {
            let after = r.arrived.saturating_duration_since(cut);
            let cut_applies = match sub.spec.fate {
                Fate::Deleted | Fate::Disabled => true,
                Fate::Moved => original_url,
                _ => false,
            };
            if cut_applies && r.arrived > cut + PROPAGATION_BOUND {
                push_capped(
                    &mut book.violations,
                    &mut late,
                    format!(
                        "{event_id} reached {} ({:?}{}) {after:?} after the change was acknowledged (bound {PROPAGATION_BOUND:?})",
                        sub.spec.name,
                        sub.spec.fate,
                        if original_url { ", old URL" } else { "" }
                    ),
                );
            }
        }
        if (200..300).contains(&r.status) {
            let pair = (event_id.to_owned(), sub.id.clone());
            match deliveries.first.entry(pair) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    deliveries.copies.push(r.arrived);
                    *deliveries
                        .copies_by_subscription
                        .entry(sub.spec.name.to_owned())
                        .or_default() += 1;
                }
                std::collections::btree_map::Entry::Vacant(first) => {
                    first.insert(r.arrived);
                }
            }
        }
    }
    for (count, what) in [
        (unexpected, "unexpected requests"),
        (bad, "bad signatures or webhook-ids"),
        (late, "requests after a delete/disable/move propagated"),
    ] {
        if count > LIST {
            book.violations.push(format!("… {count} {what} in all"));
        }
    }
    deliveries
}

fn check_expected(
    inputs: &Inputs<'_>,
    models: &[Model<'_>],
    deliveries: &Deliveries,
    book: &mut Book,
) {
    let topics = inputs.topics;
    let mut missing = 0;
    let mut wrongly_dead = 0;
    for model in models {
        let sub = &model.created;
        for event in &inputs.load.events {
            let pair = (event.id.clone(), sub.id.clone());
            let delivered = deliveries.first.contains_key(&pair);
            if !model.expected(event, inputs.end) {
                if model.allowed(event, inputs.end) {
                    if delivered {
                        book.grey.0 += 1;
                    } else {
                        book.grey.1 += 1;
                    }
                }
                continue;
            }
            book.expected += 1;
            if delivered {
                book.expected_delivered += 1;
                continue;
            }
            let id = message_id(&event.id, &sub.id).as_str().to_owned();
            if let Some((_, reason)) = topics.dead_letters.get(&id) {
                book.dead_lettered += 1;
                if !model.may_dead_letter() {
                    push_capped(
                        &mut book.violations,
                        &mut wrongly_dead,
                        format!(
                            "{} to {} dead-lettered at an endpoint that never fails: {reason}",
                            event.id, sub.spec.name
                        ),
                    );
                }
                continue;
            }
            let routed = topics.tasks.contains_key(&id);
            if routed && sub.spec.fate == Fate::Deleted {
                book.dropped_deleted += 1;
                continue;
            }
            push_capped(
                &mut book.violations,
                &mut missing,
                format!(
                    "MISSING {} ({:?}, {}) to {}: routed {routed}, on the events topic {}, attempt succeeded {}",
                    event.id,
                    event.via,
                    event.event_type,
                    sub.spec.name,
                    topics.event_positions.contains_key(&event.id),
                    topics.succeeded.contains(&id)
                ),
            );
        }
    }
    if missing > LIST {
        book.violations
            .push(format!("… {missing} expected pairs missing in all"));
    }
}

fn check_order(
    inputs: &Inputs<'_>,
    models: &[Model<'_>],
    deliveries: &Deliveries,
    book: &mut Book,
) {
    let positions = &inputs.topics.event_positions;
    let mut out_of_order = 0;
    for model in models.iter().filter(|m| m.created.spec.ordered) {
        // key → first deliveries (arrival, index on the key, event id), by arrival.
        let mut lanes: BTreeMap<&str, Vec<(Instant, usize, &str)>> = BTreeMap::new();
        for ((event, sub), arrived) in &deliveries.first {
            if sub != &model.created.id {
                continue;
            }
            if let Some((key, index)) = positions.get(event) {
                lanes
                    .entry(key.as_str())
                    .or_default()
                    .push((*arrived, *index, event.as_str()));
            }
        }
        for (key, mut lane) in lanes {
            lane.sort();
            book.ordered.0 += lane.len();
            book.ordered.1 += 1.min(lane.len());
            for pair in lane.windows(2) {
                if pair[1].1 > pair[0].1 {
                    book.ordered.1 += 1;
                } else {
                    push_capped(
                        &mut book.violations,
                        &mut out_of_order,
                        format!(
                            "{} key {key}: {} (record {} of the key) first delivered after {} (record {})",
                            model.created.spec.name, pair[0].2, pair[0].1, pair[1].2, pair[1].1
                        ),
                    );
                }
            }
        }
    }
}

fn check_tasks(
    inputs: &Inputs<'_>,
    models: &[Model<'_>],
    deliveries: &Deliveries,
    book: &mut Book,
) {
    let topics = inputs.topics;
    let deleted: BTreeSet<&str> = models
        .iter()
        .filter(|m| m.created.spec.fate == Fate::Deleted)
        .map(|m| m.created.id.as_str())
        .collect();
    let delivered_ids: BTreeSet<String> = deliveries
        .first
        .keys()
        .map(|(event, sub)| message_id(event, sub).as_str().to_owned())
        .collect();
    let (mut by_attempt, mut by_dlq, mut by_delete, mut lost) = (0, 0, 0, 0);
    for (id, task) in &topics.tasks {
        if topics.succeeded.contains(id) {
            by_attempt += 1;
        } else if topics.dead_letters.contains_key(id) {
            by_dlq += 1;
        } else if deleted.contains(task.subscription_id.as_str()) {
            by_delete += 1;
        } else {
            lost += 1;
            if lost <= LIST {
                book.violations.push(format!(
                    "TASK LOST {id} (event {} to {}): routed, but no successful attempt record, no dead letter, and its subscription exists; delivered to the receiver: {}",
                    task.event_id,
                    task.subscription_id,
                    delivered_ids.contains(id)
                ));
            }
        }
    }
    if lost > LIST {
        book.violations.push(format!("… {lost} tasks lost in all"));
    }
    let phantom: Vec<&String> = topics
        .succeeded
        .iter()
        .filter(|id| !delivered_ids.contains(*id))
        .collect();
    for id in phantom.iter().take(LIST) {
        book.violations.push(format!(
            "attempt record says {id} succeeded, but no receiver answered it 2xx"
        ));
    }
    let untasked = delivered_ids
        .iter()
        .filter(|id| !topics.tasks.contains_key(*id))
        .count();
    if untasked > 0 {
        book.violations.push(format!(
            "{untasked} pairs delivered without a routed task on the deliveries topic"
        ));
    }
    let unrecorded = delivered_ids
        .iter()
        .filter(|id| !topics.succeeded.contains(*id))
        .count();
    book.notes.push(format!(
        "tasks from the topics: {} routed ({} records, read_committed) = {by_attempt} with a successful attempt record + {by_dlq} dead-lettered + {by_delete} dropped as deleted + {lost} lost; {} attempt records; {} dead-letter records; {unrecorded} pairs delivered without a successful attempt record (a worker killed between the answer and the record, its task then dropped as deleted or dead-lettered)",
        topics.tasks.len(),
        topics.task_records,
        topics.attempt_records,
        topics.dead_letter_records
    ));
    book.notes.push(metrics_account(inputs.metrics, topics));
}

/// The account of the binaries' own counters, summed over every process that ran
/// (last scraped just before each was killed or stopped).
fn metrics_account(metrics: &[ProcMetrics], topics: &Topics) -> String {
    let sum = |key: &str| -> f64 {
        metrics
            .iter()
            .filter_map(|m| m.values.get(key))
            .sum::<f64>()
            + 0.0
    };
    let killed = metrics
        .iter()
        .filter(|m| m.ending == Ending::Killed)
        .count();
    let [delivered, dead, deleted, retried, deferred, invalid] = [
        "delivery_delivered",
        "delivery_dead_lettered",
        "delivery_skipped_deleted",
        "delivery_retry_scheduled",
        "delivery_deferred",
        "delivery_invalid",
    ]
    .map(sum);
    let processes: Vec<String> = metrics
        .iter()
        .map(|m| format!("{} ({:?})", m.name, m.ending))
        .collect();
    format!(
        "tasks from /metrics (summed over {} processes, {killed} of them killed -9: {}): routers wrote {} tasks (hookline_router_tasks_total); workers finished delivered {delivered} + dead_lettered {dead} + skipped_deleted {deleted} = {} (plus retry_scheduled {retried}, deferred {deferred}, invalid {invalid}) against {} distinct routed tasks on the topic. The two differ by design: a task redone after a kill or rebalance is counted twice, counts of a process since its last scrape die with it, and router counters include tasks of transactions that later aborted",
        metrics.len(),
        processes.join(", "),
        sum("router_tasks"),
        delivered + dead + deleted,
        topics.tasks.len()
    )
}

fn check_events(inputs: &Inputs<'_>, book: &mut Book) {
    let positions = &inputs.topics.event_positions;
    let lost: Vec<&SentEvent> = inputs
        .load
        .events
        .iter()
        .filter(|e| e.accepted.is_some() && !positions.contains_key(&e.id))
        .collect();
    for event in lost.iter().take(LIST) {
        book.violations.push(format!(
            "EVENT LOST: {} ({:?}) acknowledged but not on the events topic",
            event.id, event.via
        ));
    }
    if lost.len() > LIST {
        book.violations.push(format!(
            "… {} acknowledged events not on the events topic",
            lost.len()
        ));
    }
    if inputs.topics.invalid_events > 0 {
        book.violations.push(format!(
            "{} records on the events dead-letter topic",
            inputs.topics.invalid_events
        ));
    }
}

fn window_figures(
    inputs: &Inputs<'_>,
    models: &[Model<'_>],
    events: &HashMap<&str, &SentEvent>,
    deliveries: &Deliveries,
) -> Vec<(Window, WindowFigures)> {
    let steady: BTreeSet<&str> = models
        .iter()
        .filter(|m| m.created.spec.rx == Rx::Steady && m.created.spec.fate != Fate::Moved)
        .map(|m| m.created.id.as_str())
        .collect();
    let mut steady_arrivals: Vec<Instant> = deliveries
        .first
        .iter()
        .filter(|((_, sub), _)| steady.contains(sub.as_str()))
        .map(|(_, at)| *at)
        .collect();
    steady_arrivals.sort();
    let baseline = Window {
        name: "whole run (while the load ran)".into(),
        start: inputs.began,
        healed: inputs.load_stopped,
        end: inputs.load_stopped,
    };
    std::iter::once(baseline)
        .chain(inputs.windows.iter().cloned())
        .map(|window| {
            let mut figures = WindowFigures {
                duplicates: deliveries
                    .copies
                    .iter()
                    .filter(|at| window.contains(**at))
                    .count(),
                ..WindowFigures::default()
            };
            let inside: Vec<Instant> = steady_arrivals
                .iter()
                .copied()
                .filter(|at| window.contains(*at))
                .collect();
            let edges = std::iter::once(window.start)
                .chain(inside.iter().copied())
                .chain(std::iter::once(window.end.min(inputs.end)));
            let edges: Vec<Instant> = edges.collect();
            figures.longest_gap = edges
                .windows(2)
                .map(|w| w[1].saturating_duration_since(w[0]))
                .max()
                .unwrap_or_default();
            for ((event, sub), at) in &deliveries.first {
                let Some(accepted) = events.get(event.as_str()).and_then(|e| e.accepted) else {
                    continue;
                };
                let latency = at.saturating_duration_since(accepted);
                if steady.contains(sub.as_str())
                    && window.contains(accepted)
                    && latency > figures.longest_latency
                {
                    figures.longest_latency = latency;
                    figures.slowest = models
                        .iter()
                        .find(|m| &m.created.id == sub)
                        .map(|m| m.created.spec.name)
                        .unwrap_or("?");
                }
            }
            (window, figures)
        })
        .collect()
}

/// The printed report.
pub fn report(book: &Book, inputs: &Inputs<'_>, settings: &str) -> String {
    let load = inputs.load;
    let mut out = String::new();
    let by = |via: Via| load.events.iter().filter(|e| e.via == via).count();
    let at = |i: Instant| i.saturating_duration_since(inputs.began).as_secs_f64();
    let _ = writeln!(out, "==== chaos ledger ====");
    let _ = writeln!(out, "settings: {settings}");
    let _ = writeln!(
        out,
        "events sent {} (HTTP {}, Kafka {}), accepted {}; 503s {}, 409 in progress {}, send errors retried {}, slowest HTTP answer {:?}",
        load.events.len(),
        by(Via::Http),
        by(Via::Kafka),
        load.accepted(),
        load.unavailable,
        load.in_progress,
        load.send_errors,
        load.slowest_answer
    );
    let _ = writeln!(
        out,
        "events topic: {} records ({} distinct ids)",
        inputs.topics.event_records,
        inputs.topics.event_positions.len()
    );
    let _ = writeln!(
        out,
        "pairs expected {}: delivered {}, dead-lettered {}, dropped as deleted {}; grey window: {} delivered, {} not",
        book.expected, book.expected_delivered, book.dead_lettered, book.dropped_deleted, book.grey.0, book.grey.1
    );
    let _ = writeln!(
        out,
        "requests {}, pairs delivered {}, duplicates {} (each with its first copy's webhook-id)",
        book.requests, book.delivered, book.duplicates
    );
    let mut by_subscription: Vec<(&String, &usize)> =
        book.duplicates_by_subscription.iter().collect();
    by_subscription.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let listed: Vec<String> = by_subscription
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    let _ = writeln!(out, "duplicates by subscription: {}", listed.join(", "));
    let _ = writeln!(
        out,
        "ordered subscriptions: {} first deliveries checked, {} in order",
        book.ordered.0, book.ordered.1
    );
    for change in inputs.changes {
        let name = inputs
            .created
            .iter()
            .find(|c| c.id == change.id)
            .map(|c| c.spec.name)
            .unwrap_or("?");
        let _ = writeln!(
            out,
            "change at {:>6.1}s: {name} {:?}",
            at(change.acked),
            change.fate
        );
    }
    let _ = writeln!(
        out,
        "{:<58} {:>7} {:>7} {:>6} {:>11} {:>12}",
        "window", "from s", "healed", "dups", "longest gap", "max latency"
    );
    for (window, figures) in &book.windows {
        let _ = writeln!(
            out,
            "{:<58} {:>7.1} {:>7.1} {:>6} {:>10.1}s {:>11.1}s  {}",
            window.name,
            at(window.start),
            at(window.healed),
            figures.duplicates,
            figures.longest_gap.as_secs_f64(),
            figures.longest_latency.as_secs_f64(),
            figures.slowest
        );
    }
    for note in &book.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if book.violations.is_empty() {
        let _ = writeln!(out, "violations: none");
    } else {
        let _ = writeln!(out, "VIOLATIONS ({}):", book.violations.len());
        for violation in &book.violations {
            let _ = writeln!(out, "  - {violation}");
        }
    }
    out
}
