//! Idempotent `POST /v1/events`, the effects: claims written to the idempotency topic,
//! the wait for them to come back through this instance's view, and the `completed` or
//! `released` record afterwards. What a key's records mean is decided in
//! [`hookline_domain::idempotency`]; see docs/api.md and docs/guarantees.md.
//!
//! Two kinds of key: the `Idempotency-Key` header (the whole request, scoped to the
//! credential's tenant) and, in a request without that header, every producer-supplied
//! event `id` (that event, scoped to its tenant).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::http::HeaderMap;
use chrono::Utc;
use hookline_core::idempotency_view::IdempotencyView;
use hookline_core::produce::{OutRecord, RenewingProducer};
use hookline_domain::access::Principal;
use hookline_domain::event::Event;
use hookline_domain::idempotency::{
    decide, fingerprint, settled, validate_key, Decision, Entry, IdempotencyKey, IdempotencyRecord,
    Scope, CLAIM_TTL,
};
use hookline_domain::ids;
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorKind};

/// The request header naming a request's idempotency key.
pub const HEADER: &str = "idempotency-key";

/// How many times a request claims a key again after the holder let it go.
const ROUNDS: usize = 3;

/// Idempotency of event requests: the view, the producer of claims, the metrics.
pub struct Idempotency {
    view: Arc<IdempotencyView>,
    producer: RenewingProducer,
    topic: String,
    instance: String,
    window: Duration,
    produce_timeout: Duration,
    replays: IntCounterVec,
    conflicts: IntCounterVec,
}

/// What a request body looks like before it is parsed, for its keys: the fingerprint
/// of the whole body, and, per event, whether it carries an `id` and its own
/// fingerprint.
pub struct Shape {
    body: String,
    events: Vec<(bool, String)>,
    batch: bool,
}

impl Shape {
    /// The shape of `body` (one event object or an array of them).
    pub fn of(body: &Value) -> Self {
        let one = |event: &Value| {
            let given = event.get("id").is_some_and(|id| !id.is_null());
            (given, fingerprint(event))
        };
        let events = match body {
            Value::Array(items) => items.iter().map(one).collect(),
            other => vec![one(other)],
        };
        Self {
            body: fingerprint(body),
            events,
            batch: body.is_array(),
        }
    }
}

/// `id` of the `index`-th event, as a field path.
fn event_field(batch: bool, index: usize) -> String {
    if batch {
        format!("[{index}].id")
    } else {
        "id".into()
    }
}

/// One key of a request and how its claim went.
#[derive(Clone)]
struct Claimed {
    /// The request field it answers for (`Idempotency-Key`, `id`, `[3].id`).
    field: String,
    key: IdempotencyKey,
    fingerprint: String,
    /// The events of the request it covers.
    events: Vec<usize>,
    claim: String,
}

/// What a request's keys decided: which events to write, which ids to answer, and the
/// claims to complete (or release) afterwards.
pub struct Plan {
    write: Vec<bool>,
    /// Ids answered for the whole request (a replayed `Idempotency-Key`).
    replayed: Option<Vec<String>>,
    won: Vec<Claimed>,
}

impl Plan {
    /// Every event written, no key.
    pub fn plain(events: usize) -> Self {
        Self {
            write: vec![true; events],
            replayed: None,
            won: Vec::new(),
        }
    }

    /// Whether the `index`-th event is to be written.
    pub fn writes(&self, index: usize) -> bool {
        self.write.get(index).copied().unwrap_or(false)
    }

    /// The ids to answer, when the request was answered before: nothing to write.
    pub fn replayed(&self) -> Option<&[String]> {
        self.replayed.as_deref()
    }
}

fn record(key: &IdempotencyKey, entry: Entry, topic: &str) -> Result<OutRecord, ApiError> {
    let record = IdempotencyRecord {
        key: key.clone(),
        entry,
    };
    let payload = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(OutRecord::new(topic, key.record_key(), Some(payload)))
}

impl Idempotency {
    /// Idempotency over `view`, claims written with `producer` (the control producer).
    pub fn new(
        view: Arc<IdempotencyView>,
        producer: RenewingProducer,
        topic: String,
        window: Duration,
        produce_timeout: Duration,
        registry: &Registry,
    ) -> anyhow::Result<Self> {
        let replays = IntCounterVec::new(
            Opts::new(
                "hookline_ingest_idempotent_replays_total",
                "Idempotency keys of POST /v1/events answered from an earlier request \
                 (nothing written), by scope: request (Idempotency-Key), event (a \
                 producer-supplied event id).",
            ),
            &["scope"],
        )?;
        let conflicts = IntCounterVec::new(
            Opts::new(
                "hookline_ingest_idempotency_conflicts_total",
                "POST /v1/events refused for an idempotency key, by reason: reused (a \
                 different body under the key, 422), in_progress (another request under \
                 the key still running, 409).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(conflicts.clone()))?;
        Ok(Self {
            view,
            producer,
            topic,
            instance: format!("{}-{}", std::process::id(), ulid::Ulid::new()),
            window,
            produce_timeout,
            replays,
            conflicts,
        })
    }

    /// Decides what of `events` (parsed from a body of `shape`) is written, claiming
    /// the request's keys; gives events of an `Idempotency-Key` request that came
    /// without an id their deterministic id. Errors: the key header is invalid (`422`),
    /// a key was used with another body (`422`), another request under a key is still
    /// running (`409`), Kafka did not take a claim (`503`). Every wait ends by
    /// `deadline`, the request's: a request is answered within its produce timeout
    /// whatever its keys cost.
    pub async fn plan(
        &self,
        principal: &Principal,
        headers: &HeaderMap,
        shape: &Shape,
        events: &mut [Event],
        deadline: Instant,
    ) -> Result<Plan, ApiError> {
        let mut keys: Vec<(IdempotencyKey, String, Vec<usize>)> = Vec::new();
        // The request field each key answers for in a `422`.
        let mut fields: Vec<String> = Vec::new();
        if let Some(value) = headers.get(HEADER) {
            let text = value.to_str().map_err(|_| {
                ApiError::new(ErrorKind::InvalidField, "must be visible ASCII characters")
                    .at("Idempotency-Key")
            })?;
            validate_key(text)
                .map_err(|m| ApiError::new(ErrorKind::InvalidField, m).at("Idempotency-Key"))?;
            let key = IdempotencyKey {
                tenant: principal.tenant().map(str::to_owned),
                scope: Scope::Request,
                key: text.to_owned(),
            };
            for (i, event) in events.iter_mut().enumerate() {
                if !shape.events.get(i).is_some_and(|(given, _)| *given) {
                    event.id =
                        ids::idempotent_event_id(key.tenant_or_admin(), text, &shape.body, i);
                }
            }
            keys.push((key, shape.body.clone(), (0..events.len()).collect()));
            fields.push("Idempotency-Key".into());
        } else {
            let mut seen = HashSet::new();
            for (i, event) in events.iter().enumerate() {
                let Some((true, print)) = shape.events.get(i) else {
                    continue;
                };
                if !seen.insert((event.tenant.as_str(), event.id.as_str())) {
                    let field = event_field(shape.batch, i);
                    return Err(ApiError::new(
                        ErrorKind::InvalidField,
                        "the same event id appears twice in the request",
                    )
                    .at(field));
                }
                let key = IdempotencyKey {
                    tenant: Some(event.tenant.clone()),
                    scope: Scope::Event,
                    key: event.id.to_string(),
                };
                keys.push((key, print.clone(), vec![i]));
                fields.push(event_field(shape.batch, i));
            }
        }
        if keys.is_empty() {
            return Ok(Plan::plain(events.len()));
        }
        let request_scope = headers.contains_key(HEADER);
        let mut plan = Plan::plain(events.len());
        for (claimed, decision) in self.claim_all(keys, fields, deadline).await? {
            match decision {
                Decision::Won => plan.won.push(claimed),
                Decision::Replay(ids) => {
                    let scope = if request_scope { "request" } else { "event" };
                    self.replays.with_label_values(&[scope]).inc();
                    for &i in &claimed.events {
                        if let Some(write) = plan.write.get_mut(i) {
                            *write = false;
                        }
                    }
                    if request_scope {
                        plan.replayed = Some(ids);
                    }
                }
                // claim_all answers every other decision with an error.
                _ => {}
            }
        }
        Ok(plan)
    }

    /// Claims every key, waits for the decisions, and settles those in progress; on any
    /// refusal, releases the claims it won.
    async fn claim_all(
        &self,
        keys: Vec<(IdempotencyKey, String, Vec<usize>)>,
        fields: Vec<String>,
        deadline: Instant,
    ) -> Result<Vec<(Claimed, Decision)>, ApiError> {
        let mut pending: Vec<Claimed> = keys
            .into_iter()
            .zip(fields)
            .map(|((key, fingerprint, events), field)| Claimed {
                field,
                key,
                fingerprint,
                events,
                claim: String::new(),
            })
            .collect();
        let mut done: Vec<(Claimed, Decision)> = Vec::new();
        let outcome = async {
            for _ in 0..ROUNDS {
                if pending.is_empty() {
                    break;
                }
                let mut waiting = Vec::new();
                let claims = std::mem::take(&mut pending);
                for (claimed, decision) in self.claim(claims, deadline).await? {
                    match decision {
                        Decision::Won | Decision::Replay(_) => done.push((claimed, decision)),
                        Decision::Reused => return Err(self.reused(&claimed)),
                        Decision::InProgress { holder, until } => {
                            waiting.push((claimed, holder, until))
                        }
                        Decision::Vacated => pending.push(claimed),
                    }
                }
                for (claimed, decision) in self.wait_for_holders(waiting, deadline).await {
                    match decision {
                        Decision::Replay(_) => done.push((claimed, decision)),
                        Decision::Reused => return Err(self.reused(&claimed)),
                        Decision::Vacated => pending.push(claimed),
                        _ => return Err(self.in_progress(&claimed)),
                    }
                }
            }
            match pending.first() {
                Some(claimed) => Err(self.in_progress(claimed)),
                None => Ok(()),
            }
        }
        .await;
        match outcome {
            Ok(()) => Ok(done),
            Err(err) => {
                let won: Vec<Claimed> = done
                    .into_iter()
                    .filter(|(_, d)| *d == Decision::Won)
                    .map(|(c, _)| c)
                    .collect();
                self.release_in_background(&won);
                Err(err)
            }
        }
    }

    fn reused(&self, claimed: &Claimed) -> ApiError {
        self.conflicts.with_label_values(&["reused"]).inc();
        let what = match claimed.key.scope {
            Scope::Request => "Idempotency-Key",
            Scope::Event => "event id",
        };
        let field = claimed.field.clone();
        ApiError::new(
            ErrorKind::IdempotencyKeyReused,
            format!(
                "{what} {:?} was already used with a different request body within the \
                 idempotency window; use a new key for a new request",
                claimed.key.key
            ),
        )
        .at(field)
        .with("key", json!(claimed.key.key))
    }

    fn in_progress(&self, claimed: &Claimed) -> ApiError {
        self.conflicts.with_label_values(&["in_progress"]).inc();
        let mut err = ApiError::new(
            ErrorKind::IdempotencyInProgress,
            format!(
                "a request under the idempotency key {:?} is still in progress; send it \
                 again later to get its answer",
                claimed.key.key
            ),
        )
        .with("key", json!(claimed.key.key));
        err.retry_after = Some(1);
        err
    }

    /// Writes one claim per key and decides each once the view holds its claim, by
    /// `deadline`.
    async fn claim(
        &self,
        mut keys: Vec<Claimed>,
        deadline: Instant,
    ) -> Result<Vec<(Claimed, Decision)>, ApiError> {
        // Claiming again (the holder let go) needs no release of this request's
        // earlier claim: it lost, and a claim that lost never holds the key (`decide`).
        let at = Utc::now();
        let expires = at + chrono::Duration::from_std(CLAIM_TTL).unwrap_or_default();
        let mut records = Vec::with_capacity(keys.len());
        for claimed in &mut keys {
            claimed.claim = ulid::Ulid::new().to_string();
            let entry = Entry::Claim {
                claim: claimed.claim.clone(),
                instance: self.instance.clone(),
                fingerprint: claimed.fingerprint.clone(),
                at,
                expires,
            };
            records.push(record(&claimed.key, entry, &self.topic)?);
        }
        let results = crate::api::send_by(&self.producer, &records, deadline).await;
        let mut last = -1;
        for result in &results {
            match result {
                Ok((_, offset)) => last = last.max(*offset),
                Err(err) => {
                    // Claims that were written hold their keys until they expire.
                    let written: Vec<Claimed> = keys
                        .into_iter()
                        .zip(&results)
                        .filter(|(_, r)| r.is_ok())
                        .map(|(c, _)| c)
                        .collect();
                    self.release_in_background(&written);
                    return Err(ApiError::unavailable(format!(
                        "idempotency claim not stored: {err}"
                    )));
                }
            }
        }
        if let Err(err) = self.view.wait_for_offset(last, left(deadline)).await {
            self.release_in_background(&keys);
            return Err(ApiError::unavailable(format!(
                "idempotency claims not read back: {err}"
            )));
        }
        keys.into_iter()
            .map(|claimed| {
                let history = self.view.history(&claimed.key);
                let decision = decide(&history, &claimed.claim, self.window)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
                Ok((claimed, decision))
            })
            .collect()
    }

    /// Waits until each holder's key is settled, at most until the request's
    /// `deadline`: the others are answered `409` with `Retry-After`.
    async fn wait_for_holders(
        &self,
        waiting: Vec<(Claimed, String, chrono::DateTime<Utc>)>,
        deadline: Instant,
    ) -> Vec<(Claimed, Decision)> {
        let mut out = Vec::with_capacity(waiting.len());
        let mut open = waiting;
        loop {
            let mut still = Vec::new();
            for (claimed, holder, until) in open {
                let history = self.view.history(&claimed.key);
                match settled(
                    &history,
                    &claimed.fingerprint,
                    &holder,
                    until,
                    Utc::now(),
                    self.window,
                ) {
                    Some(decision) => out.push((claimed, decision)),
                    None => still.push((claimed, holder, until)),
                }
            }
            open = still;
            let now = Instant::now();
            if open.is_empty() || now >= deadline {
                break;
            }
            // Woken by the next record, or after a while to see a claim expire.
            let slice = (deadline - now).min(Duration::from_millis(500));
            let _ = self.view.wait_for_offset(self.view.applied(), slice).await;
        }
        out.extend(
            open.into_iter()
                .map(|(claimed, holder, until)| (claimed, Decision::InProgress { holder, until })),
        );
        out
    }

    /// Records the won claims as completed with the ids of their events (all events
    /// of the request acknowledged by Kafka), in the background: the answer does not
    /// wait for it. A failure is logged only: the events are written; a retry meanwhile
    /// is answered `409` with `Retry-After`, and one after the claims expired writes
    /// the same ids again.
    pub fn complete(&self, plan: &Plan, events: &[Event]) {
        let at = Utc::now();
        let records: Result<Vec<OutRecord>, ApiError> = plan
            .won
            .iter()
            .map(|claimed| {
                let ids = claimed
                    .events
                    .iter()
                    .filter_map(|&i| events.get(i))
                    .map(|e| e.id.to_string())
                    .collect();
                let entry = Entry::Completed {
                    claim: claimed.claim.clone(),
                    fingerprint: claimed.fingerprint.clone(),
                    ids,
                    at,
                };
                record(&claimed.key, entry, &self.topic)
            })
            .collect();
        self.send_in_background(records, "completed");
    }

    /// Gives up the won claims of a request whose events were not all acknowledged, so
    /// a retry need not wait for them to expire; in the background, like
    /// [`complete`](Self::complete).
    pub fn abandon(&self, plan: &Plan) {
        self.release_in_background(&plan.won);
    }

    /// Gives up `claims`, in the background.
    fn release_in_background(&self, claims: &[Claimed]) {
        let at = Utc::now();
        let records: Result<Vec<OutRecord>, ApiError> = claims
            .iter()
            .map(|claimed| {
                let entry = Entry::Released {
                    claim: claimed.claim.clone(),
                    at,
                };
                record(&claimed.key, entry, &self.topic)
            })
            .collect();
        self.send_in_background(records, "released");
    }

    /// Writes `records` on a task of its own within the produce timeout, logging what
    /// fails: the answer never waits for it.
    fn send_in_background(&self, records: Result<Vec<OutRecord>, ApiError>, what: &'static str) {
        let records = match records {
            Ok(records) if records.is_empty() => return,
            Ok(records) => records,
            Err(err) => {
                tracing::error!(%err, what, "idempotency record not built");
                return;
            }
        };
        let (producer, timeout) = (self.producer.clone(), self.produce_timeout);
        tokio::spawn(async move {
            let results = crate::api::send_within(&producer, &records, timeout).await;
            if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
                tracing::warn!(%err, what, "idempotency record not stored; the claim expires by itself");
            }
        });
    }
}

/// Time left until `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_marks_given_ids_and_fingerprints_each_event() {
        let body = json!([
            {"type": "a.b", "tenant": "t", "id": "e1"},
            {"type": "a.b", "tenant": "t", "id": null},
            {"type": "a.b", "tenant": "t"},
        ]);
        let shape = Shape::of(&body);
        assert!(shape.batch);
        let given: Vec<bool> = shape.events.iter().map(|(given, _)| *given).collect();
        assert_eq!(given, [true, false, false]);
        assert_eq!(shape.events[0].1, fingerprint(&body[0]));
        assert_ne!(shape.events[0].1, shape.events[2].1);
        assert_eq!(shape.body, fingerprint(&body));
        let one = Shape::of(&body[0]);
        assert!(!one.batch);
        assert_eq!(one.events.len(), 1);
        assert_eq!(event_field(true, 3), "[3].id");
        assert_eq!(event_field(false, 0), "id");
    }
}
