//! Replay and redrive as background jobs: the request is answered `202` with a job
//! resource at once, and the scan runs in this process ([`crate::replay`]).
//!
//! Job state lives in the compacted jobs topic, so any ingest instance answers a poll
//! ([`JobView`] reads the whole topic in each). One writer per record: the instance
//! running a job alone writes the job's record (at start, every
//! [`PROGRESS_INTERVAL`] while it runs, and at its end); a cancel, taken by any
//! instance, is a record of its own (`<job id>/cancel`) that the runner watches in its
//! view. A runner that dies leaves its job unfinished with a stale `updated_at`: after
//! `HOOKLINE_JOB_LEASE`, readers show it `failed` as abandoned
//! ([`Job::shown`]); nothing rewrites it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{header, StatusCode};
use axum::Json;
use chrono::Utc;
use hookline_core::config::{parse_duration, KafkaArgs};
use hookline_core::freshness::Freshness;
use hookline_core::kafka;
use hookline_core::produce::OutRecord;
use hookline_domain::access::{Principal, Role};
use hookline_domain::job::{cancel_key, CancelRequest, Ending, Job, JobKey};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::auth::denied;
use crate::error::{ApiError, ErrorKind};
use crate::http::{ApiPath, ApiQuery};
use crate::replay::{Control, Finished, Requeuing, Work};

/// How often a running job's record is written (its progress and heartbeat), and how
/// often its runner looks for a cancel.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Shortest accepted `HOOKLINE_JOB_LEASE`: several progress intervals, so that a
/// slow write or two does not make a live job look abandoned.
pub const MIN_LEASE: Duration = Duration::from_secs(5);

/// How long a write of a job record waits for this process's view to show it.
const VIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of background jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// How long a job may go without its runner writing it before readers show it
    /// `failed` as abandoned (humantime, at least 5s). A running job is written every
    /// second.
    #[arg(long, env = "HOOKLINE_JOB_LEASE", value_parser = parse_duration, default_value = "30s")]
    pub job_lease: Duration,

    /// Most delivery tasks one replay or redrive job re-queues a second (0: as fast as
    /// Kafka takes them), so a large range does not flood the deliveries topic.
    #[arg(long, env = "HOOKLINE_JOB_MAX_RATE", default_value_t = 0)]
    pub job_max_rate: u32,
}

impl JobArgs {
    /// Refuses settings that cannot work, naming them.
    pub fn check(&self) -> Result<(), String> {
        if self.job_lease < MIN_LEASE {
            return Err(format!(
                "HOOKLINE_JOB_LEASE must be at least {MIN_LEASE:?} (a running job is \
                 written every {PROGRESS_INTERVAL:?}), not {:?}",
                self.job_lease
            ));
        }
        Ok(())
    }

    /// The rate limit of one job, if any.
    pub fn max_rate(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.job_max_rate)
    }
}

/// The jobs topic, materialized: job records by id, and the cancels asked.
pub struct JobView {
    jobs: RwLock<HashMap<String, Job>>,
    cancels: RwLock<HashMap<String, CancelRequest>>,
    freshness: Arc<Freshness>,
    consumer: StreamConsumer,
}

impl JobView {
    /// Starts reading the jobs topic from its beginning in the background.
    pub fn start(args: &KafkaArgs, client_id: &str) -> anyhow::Result<Arc<Self>> {
        let consumer: StreamConsumer = kafka::reader(args, client_id)?;
        let topic = args.topics().jobs();
        let freshness = Freshness::new(args, &format!("{client_id}-probe"), topic.clone())?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let view = Arc::new(Self {
            jobs: RwLock::new(HashMap::new()),
            cancels: RwLock::new(HashMap::new()),
            freshness: Arc::new(freshness),
            consumer,
        });
        tokio::spawn(Arc::clone(&view).run());
        Ok(view)
    }

    async fn run(self: Arc<Self>) {
        loop {
            let message = kafka::next_record(&self.consumer, "jobs").await;
            let key = message.key().map(String::from_utf8_lossy);
            self.apply(key.as_deref(), message.payload(), message.offset());
        }
    }

    fn apply(&self, key: Option<&str>, payload: Option<&[u8]>, offset: i64) {
        match (key.and_then(JobKey::parse), payload) {
            (Some(JobKey::Job(id)), Some(bytes)) => match serde_json::from_slice::<Job>(bytes) {
                Ok(job) if job.id == id => {
                    let mut jobs = self.jobs.write().unwrap_or_else(|p| p.into_inner());
                    if jobs.get(id).is_none_or(|held| job.replaces(held)) {
                        jobs.insert(id.to_owned(), job);
                    }
                }
                Ok(_) => tracing::warn!(offset, key = id, "job record key and id differ; skipped"),
                Err(err) => {
                    tracing::warn!(offset, key = id, %err, "unreadable job record; skipped")
                }
            },
            (Some(JobKey::Job(id)), None) => {
                self.jobs
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
            }
            (Some(JobKey::Cancel(id)), Some(bytes)) => {
                match serde_json::from_slice::<CancelRequest>(bytes) {
                    Ok(cancel) if cancel.job_id == id => {
                        self.cancels
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id.to_owned(), cancel);
                    }
                    _ => tracing::warn!(offset, key = id, "unreadable cancel record; skipped"),
                }
            }
            (Some(JobKey::Cancel(id)), None) => {
                self.cancels
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
            }
            (None, _) => tracing::warn!(offset, ?key, "jobs record of an unknown key; skipped"),
        }
        self.freshness.applied_through(offset);
    }

    /// The record of job `id`, as its runner last wrote it.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every job record.
    pub fn all(&self) -> Vec<Job> {
        self.jobs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The cancel asked for job `id`, if one was.
    pub fn cancel_of(&self, id: &str) -> Option<CancelRequest> {
        self.cancels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Waits until the record at `offset` has been applied.
    pub async fn wait_for_offset(&self, offset: i64, timeout: Duration) -> anyhow::Result<()> {
        Ok(self.freshness.wait_for_offset(offset, timeout).await?)
    }
}

/// Background jobs of this process: starts them, runs them, and answers for every
/// instance's from the view.
pub struct Jobs {
    view: Arc<JobView>,
    requeuing: Requeuing,
    topic: String,
    lease: Duration,
    produce_timeout: Duration,
}

impl Jobs {
    /// Jobs over `view`, re-queuing with `requeuing`; writes give up after
    /// `produce_timeout`.
    pub fn new(
        view: Arc<JobView>,
        requeuing: Requeuing,
        lease: Duration,
        produce_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            topic: requeuing.topics.jobs(),
            view,
            requeuing,
            lease,
            produce_timeout,
        })
    }

    /// Stores the queued `job`, starts running `work` for it in the background and
    /// returns it as shown; `503` when Kafka does not take the record (nothing runs).
    pub async fn submit(self: &Arc<Self>, job: Job, work: Work) -> Result<Value, ApiError> {
        let offset = self
            .store(&job)
            .await
            .map_err(|e| ApiError::unavailable(format!("job not stored: {e}")))?;
        tokio::spawn(Arc::clone(self).run(job.clone(), work));
        // So that a poll of this instance right after the answer finds the job.
        if let Err(err) = self.view.wait_for_offset(offset, VIEW_TIMEOUT).await {
            tracing::warn!(id = %job.id, %err, "job view behind");
        }
        Ok(self.public(&job))
    }

    /// Writes `job`'s record; its offset once Kafka acknowledged it.
    async fn store(&self, job: &Job) -> anyhow::Result<i64> {
        let record = OutRecord::json(&self.topic, job.id.as_str(), job)?;
        self.send(record).await
    }

    async fn send(&self, record: OutRecord) -> anyhow::Result<i64> {
        let sent = tokio::time::timeout(
            self.produce_timeout + Duration::from_secs(1),
            self.requeuing
                .producer
                .send_all(std::slice::from_ref(&record), self.produce_timeout),
        )
        .await
        .map_err(|_| anyhow::anyhow!("not acknowledged within {:?}", self.produce_timeout))?;
        match sent.into_iter().next() {
            Some(Ok((_, offset))) => Ok(offset),
            Some(Err(err)) => Err(err.into()),
            None => anyhow::bail!("no delivery report"),
        }
    }

    /// The runner: the only writer of `job`'s record from here on.
    async fn run(self: Arc<Self>, job: Job, work: Work) {
        let id = job.id.clone();
        let control = Arc::new(Control::default());
        let (current, ending) = if self.view.cancel_of(&id).is_some() {
            (job, Ending::Cancelled)
        } else {
            self.work(job, work, &control).await
        };
        match current.finished(ending, control.progress(), Utc::now()) {
            Ok(done) => {
                tracing::info!(%id, status = ?done.status, progress = ?done.progress, error = ?done.error, "job finished");
                self.store_finally(&done).await;
            }
            Err(err) => tracing::error!(%id, %err, "job not finished"),
        }
    }

    /// Runs the work, writing progress every [`PROGRESS_INTERVAL`] and passing a
    /// cancel seen in the view on to it; the job as last written, and how it ended.
    async fn work(&self, job: Job, work: Work, control: &Arc<Control>) -> (Job, Ending) {
        let mut job = match job.started(Utc::now()) {
            Ok(started) => started,
            Err(err) => return (job, Ending::Failed(err.to_string())),
        };
        if let Err(err) = self.store(&job).await {
            return (
                job,
                Ending::Failed(format!("the job's start not stored: {err}")),
            );
        }
        tracing::info!(id = %job.id, kind = ?job.kind, "job started");
        let requeuing = self.requeuing.clone();
        let running = tokio::spawn({
            let control = Arc::clone(control);
            async move { crate::replay::run(&requeuing, work, control).await }
        });
        tokio::pin!(running);
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.tick().await; // the first tick is at once
        loop {
            tokio::select! {
                done = &mut running => {
                    let ending = match done {
                        Ok(Ok(Finished::Completed)) => Ending::Succeeded,
                        Ok(Ok(Finished::Cancelled)) => Ending::Cancelled,
                        Ok(Err(err)) => Ending::Failed(format!("{err:#}")),
                        Err(err) => Ending::Failed(format!("the job's task: {err}")),
                    };
                    return (job, ending);
                }
                _ = tick.tick() => {
                    if !control.is_cancelled() && self.view.cancel_of(&job.id).is_some() {
                        tracing::info!(id = %job.id, "job cancel seen");
                        control.cancel();
                    }
                    if let Ok(next) = job.progressed(control.progress(), Utc::now()) {
                        job = next;
                    }
                    // A missed heartbeat is made good by the next one.
                    if let Err(err) = self.store(&job).await {
                        tracing::warn!(id = %job.id, %err, "job progress not stored");
                    }
                }
            }
        }
    }

    /// The final record, tried until about half the lease is spent (after that the
    /// job shows as abandoned anyway).
    async fn store_finally(&self, job: &Job) {
        let give_up = tokio::time::Instant::now() + self.lease / 2;
        let mut pause = Duration::from_millis(200);
        loop {
            match self.store(job).await {
                Ok(_) => return,
                Err(err) if tokio::time::Instant::now() + pause < give_up => {
                    tracing::warn!(id = %job.id, %err, "job's end not stored; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    tracing::error!(id = %job.id, %err, "job's end not stored; it will show as abandoned");
                    return;
                }
            }
        }
    }

    /// Job `id` as `principal` is shown it: another tenant's is answered as missing.
    fn find(&self, principal: &Principal, id: &str) -> Result<Job, ApiError> {
        principal
            .require(Role::SubscriptionsManage)
            .map_err(|d| denied(d, "job"))?;
        self.view
            .get(id)
            .filter(|job| visible(principal, job))
            .map(|job| job.shown(Utc::now(), self.lease))
            .ok_or_else(|| ApiError::not_found("job"))
    }

    /// A job as the API shows it: its record (abandoned ones as failed) without its
    /// tenant and subscription (the request names it), and when a cancel was asked.
    fn public(&self, job: &Job) -> Value {
        let shown = job.shown(Utc::now(), self.lease);
        let mut value = serde_json::to_value(&shown).unwrap_or_else(|_| json!({}));
        if let Some(object) = value.as_object_mut() {
            // Kept in the record for scoping; the subscription shows in `request`. Top
            // level ids that are sometimes absent would read as links to resources.
            object.remove("tenant");
            object.remove("subscription_id");
            if let Some(cancel) = self.view.cancel_of(&job.id) {
                object.insert("cancel_requested_at".into(), json!(cancel.requested_at));
            }
        }
        value
    }
}

/// Whether `principal` may see `job`: its tenant's keys and the admin; a job of no
/// tenant (a redrive across tenants) is the admin's alone.
fn visible(principal: &Principal, job: &Job) -> bool {
    match &job.tenant {
        Some(tenant) => principal.sees(tenant),
        None => principal.is_admin(),
    }
}

/// The `202` answer of a request that started a job: its resource and where to poll.
pub fn accepted(job: Value) -> (StatusCode, [(header::HeaderName, String); 1], Json<Value>) {
    let location = format!("/v1/jobs/{}", job["id"].as_str().unwrap_or_default());
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job),
    )
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "`job_…`")),
    responses(
        (status = 200, description = "The job.", body = JobSchema),
        (status = 404, description = "No such job (or one of another tenant).", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn get_job(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let job = state.jobs.find(&principal, &id)?;
    Ok(Json(state.jobs.public(&job)))
}

/// Which jobs to list.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsQuery {
    /// Only this subscription's jobs (`sub_…`).
    #[param(min_length = 1)]
    subscription_id: Option<String>,
    /// At most this many (default 50, at most 100).
    limit: Option<usize>,
}

/// Most jobs in one list.
const MAX_LISTED: usize = 100;

/// The caller's tenant's jobs (every job for the admin), newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(JobsQuery),
    responses((status = 200, description = "Jobs, newest first.", body = JobList)))]
pub(crate) async fn list_jobs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    principal
        .require(Role::SubscriptionsManage)
        .map_err(|d| denied(d, "job"))?;
    if query.subscription_id.as_deref() == Some("") {
        return Err(hookline_domain::event::FieldError::new(
            "subscription_id",
            "give a subscription id, or leave the parameter out",
        )
        .into());
    }
    let mut found: Vec<Job> = state
        .jobs
        .view
        .all()
        .into_iter()
        .filter(|job| visible(&principal, job))
        .filter(|job| {
            query
                .subscription_id
                .as_ref()
                .is_none_or(|id| job.subscription_id.as_ref() == Some(id))
        })
        .collect();
    // Ids are ULIDs: by id is by creation time.
    found.sort_by(|a, b| b.id.cmp(&a.id));
    found.truncate(query.limit.unwrap_or(50).min(MAX_LISTED));
    let data: Vec<Value> = found.iter().map(|job| state.jobs.public(job)).collect();
    Ok(Json(json!({ "data": data })))
}

/// Asks the job to stop: its runner sees the cancel within about a second, stops
/// scanning and writing, and ends the job `cancelled`. What it re-queued already
/// stays re-queued.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "`job_…`")),
    responses(
        (status = 202, description = "Cancel asked; poll the job until it is `cancelled` (or finished otherwise first).", body = JobSchema),
        (status = 404, description = "No such job (or one of another tenant).", body = crate::openapi::ErrorBody),
        (status = 409, description = "The job is finished already.", body = crate::openapi::ErrorBody),
    ))]
pub(crate) async fn cancel_job(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let job = state.jobs.find(&principal, &id)?;
    job.cancellable().map_err(|status| {
        ApiError::new(
            ErrorKind::Conflict,
            format!(
                "the job is {} already: there is nothing to cancel",
                json!(status).as_str().unwrap_or("finished")
            ),
        )
    })?;
    if state.jobs.view.cancel_of(&id).is_none() {
        let cancel = CancelRequest {
            job_id: id.clone(),
            requested_at: Utc::now(),
        };
        let record = OutRecord::json(state.jobs.topic.as_str(), cancel_key(&id), &cancel)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let offset = state
            .jobs
            .send(record)
            .await
            .map_err(|e| ApiError::unavailable(format!("cancel not stored: {e}")))?;
        if let Err(err) = state.jobs.view.wait_for_offset(offset, VIEW_TIMEOUT).await {
            tracing::warn!(%id, %err, "job view behind");
        }
        tracing::info!(%id, "job cancel asked");
    }
    Ok((StatusCode::ACCEPTED, Json(state.jobs.public(&job))))
}

/// A background job (replay or redrive).
#[derive(ToSchema)]
#[schema(as = Job)]
#[allow(dead_code)] // read by utoipa's derive only
pub(crate) struct JobSchema {
    /// `job_…`.
    id: String,
    kind: JobKindSchema,
    status: JobStatusSchema,
    /// The request that started it, with the subscription it works for
    /// (`subscription_id`) when one.
    request: Object,
    progress: JobProgressSchema,
    created_at: chrono::DateTime<Utc>,
    started_at: Option<chrono::DateTime<Utc>>,
    finished_at: Option<chrono::DateTime<Utc>>,
    /// When its runner last wrote it (about every second while it runs); a job not
    /// updated for `HOOKLINE_JOB_LEASE` is shown `failed` as abandoned.
    updated_at: chrono::DateTime<Utc>,
    /// Why it failed.
    error: Option<String>,
    /// When a cancel was asked.
    cancel_requested_at: Option<chrono::DateTime<Utc>>,
}

/// Any JSON object.
#[derive(ToSchema)]
#[schema(as = JobRequest)]
#[allow(dead_code)]
pub(crate) struct Object {}

/// What a job does.
#[derive(ToSchema)]
#[schema(as = JobKind, rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum JobKindSchema {
    /// A subscription's events routed again.
    Replay,
    /// Dead letters put back.
    Redrive,
}

/// Where a job is.
#[derive(ToSchema)]
#[schema(as = JobStatus, rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum JobStatusSchema {
    /// Not started yet.
    Queued,
    /// Scanning and re-queuing.
    Running,
    /// Done.
    Succeeded,
    /// Stopped by an error, or abandoned by its runner.
    Failed,
    /// Stopped by a cancel.
    Cancelled,
}

/// How far a job got.
#[derive(ToSchema)]
#[schema(as = JobProgress)]
#[allow(dead_code)]
pub(crate) struct JobProgressSchema {
    /// Records of the range read.
    scanned: u64,
    /// Delivery tasks written back (acknowledged by Kafka).
    requeued: u64,
    /// Records that could not be read.
    unreadable: u64,
    /// Records in the range, at most (known once the scan started).
    total: Option<u64>,
}

/// Jobs, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct JobList {
    data: Vec<JobSchema>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_shorter_than_the_minimum_is_refused_by_name() {
        let args = |lease: u64| JobArgs {
            job_lease: Duration::from_secs(lease),
            job_max_rate: 0,
        };
        assert!(args(5).check().is_ok());
        let refused = args(4).check().unwrap_err();
        assert!(refused.contains("HOOKLINE_JOB_LEASE"), "{refused}");
        assert_eq!(args(30).max_rate(), None, "0: no limit");
    }

    #[test]
    fn the_document_has_the_job_routes_and_the_jobs_they_answer() {
        let doc = crate::openapi::document();
        for (path, method) in [
            ("/v1/jobs", "get"),
            ("/v1/jobs/{id}", "get"),
            ("/v1/jobs/{id}/cancel", "post"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
        for path in ["/v1/subscriptions/{id}/replay", "/v1/dlq/redrive"] {
            let accepted = &doc["paths"][path]["post"]["responses"]["202"];
            assert_eq!(
                accepted["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Job",
                "{path}"
            );
            assert!(accepted["headers"]["Location"].is_object(), "{path}");
        }
        let job = &doc["components"]["schemas"]["Job"];
        assert!(job["properties"]["progress"].is_object(), "{job}");
        let statuses = &doc["components"]["schemas"]["JobStatus"]["enum"];
        assert_eq!(
            statuses,
            &json!(["queued", "running", "succeeded", "failed", "cancelled"])
        );
    }
}
