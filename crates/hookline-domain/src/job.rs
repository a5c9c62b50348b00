//! Background jobs (replay, dead-letter redrive): the job record, its state machine,
//! its progress, and the lease that tells a job whose runner died from a live one.
//!
//! One writer per record: only the ingest instance running a job writes the job's
//! record (keyed by job id). A cancel asked through any instance is a record of its
//! own (keyed [`cancel_key`]), which the runner watches; nobody else ever rewrites the
//! job. A job whose runner stopped is therefore never rewritten either: readers derive
//! that it was abandoned from its stale `updated_at` ([`Job::shown`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Prefix of job ids.
pub const JOB_ID_PREFIX: &str = "job_";

/// Suffix of the key of a job's cancel record (`job_…/cancel`).
const CANCEL_SUFFIX: &str = "/cancel";

/// A new, time-sortable job id (`job_…`).
pub fn new_job_id() -> String {
    format!("{JOB_ID_PREFIX}{}", ulid::Ulid::new())
}

/// The key of the cancel record of job `id`.
pub fn cancel_key(id: &str) -> String {
    format!("{id}{CANCEL_SUFFIX}")
}

/// What a record key of the jobs topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKey<'a> {
    /// The job record of this id.
    Job(&'a str),
    /// The cancel record of the job of this id.
    Cancel(&'a str),
}

impl<'a> JobKey<'a> {
    /// Reads a key of the jobs topic; `None` for one that names neither.
    pub fn parse(key: &'a str) -> Option<Self> {
        match key.strip_suffix(CANCEL_SUFFIX) {
            Some(id) if id.starts_with(JOB_ID_PREFIX) => Some(Self::Cancel(id)),
            Some(_) => None,
            None if key.starts_with(JOB_ID_PREFIX) && !key.contains('/') => Some(Self::Job(key)),
            None => None,
        }
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Routes a subscription's events since a time again, to it alone.
    Replay,
    /// Puts dead-lettered deliveries back into the pipeline.
    Redrive,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not started yet.
    Queued,
    /// Scanning and re-queuing.
    Running,
    /// Finished: every record of its range was read and every task re-queued.
    Succeeded,
    /// Stopped by an error (or abandoned by its runner).
    Failed,
    /// Stopped by a cancel.
    Cancelled,
}

impl JobStatus {
    /// Whether the job is over (it changes no more).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// How far a job got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// Records of the range read so far.
    pub scanned: u64,
    /// Delivery tasks written back to the deliveries topic (acknowledged by Kafka).
    pub requeued: u64,
    /// Records that could not be read as tasks or events.
    pub unreadable: u64,
    /// Records in the range, at most (an upper bound taken from the offsets when the
    /// scan starts: transaction markers take offsets too); absent before the scan
    /// knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// A transition the job's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from:?} job cannot become {to:?}")]
pub struct BadTransition {
    /// The job's status.
    pub from: JobStatus,
    /// The status asked for.
    pub to: JobStatus,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Its whole range done.
    Succeeded,
    /// Stopped by this error.
    Failed(String),
    /// Stopped by a cancel.
    Cancelled,
}

/// One background job, as stored in the jobs topic (keyed by its id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `job_…`.
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// The tenant it belongs to (whose keys may see it); `None`: the admin's alone
    /// (a redrive across every tenant's dead letters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The subscription it works for, when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    /// The request that started it, as given.
    pub request: Value,
    /// Where it is.
    pub status: JobStatus,
    /// How far it got.
    pub progress: JobProgress,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// When its runner last wrote it: at least every few seconds while it runs.
    pub updated_at: DateTime<Utc>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Job {
    /// A job just accepted.
    pub fn queued(
        id: String,
        kind: JobKind,
        tenant: Option<String>,
        subscription_id: Option<String>,
        request: Value,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            kind,
            tenant,
            subscription_id,
            request,
            status: JobStatus::Queued,
            progress: JobProgress::default(),
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            error: None,
        }
    }

    /// The job running.
    pub fn started(&self, now: DateTime<Utc>) -> Result<Self, BadTransition> {
        self.allow(JobStatus::Queued, JobStatus::Running)?;
        Ok(Self {
            status: JobStatus::Running,
            started_at: Some(now),
            updated_at: now,
            ..self.clone()
        })
    }

    /// The running job with its progress as of `now` (also its heartbeat: written
    /// when nothing changed, it moves `updated_at`).
    pub fn progressed(
        &self,
        progress: JobProgress,
        now: DateTime<Utc>,
    ) -> Result<Self, BadTransition> {
        self.allow(JobStatus::Running, JobStatus::Running)?;
        Ok(Self {
            progress,
            updated_at: now,
            ..self.clone()
        })
    }

    /// The job over. A queued job may end without running (cancelled before its
    /// start, or failing to start).
    pub fn finished(
        &self,
        ending: Ending,
        progress: JobProgress,
        now: DateTime<Utc>,
    ) -> Result<Self, BadTransition> {
        let (status, error) = match ending {
            Ending::Succeeded => (JobStatus::Succeeded, None),
            Ending::Failed(error) => (JobStatus::Failed, Some(error)),
            Ending::Cancelled => (JobStatus::Cancelled, None),
        };
        if self.status.is_finished() || (status == JobStatus::Succeeded && !self.is_running()) {
            return Err(BadTransition {
                from: self.status,
                to: status,
            });
        }
        Ok(Self {
            status,
            error,
            progress,
            finished_at: Some(now),
            updated_at: now,
            ..self.clone()
        })
    }

    fn is_running(&self) -> bool {
        self.status == JobStatus::Running
    }

    fn allow(&self, from: JobStatus, to: JobStatus) -> Result<(), BadTransition> {
        if self.status == from {
            Ok(())
        } else {
            Err(BadTransition {
                from: self.status,
                to,
            })
        }
    }

    /// Whether the job is unfinished and its runner has not written it for longer
    /// than `lease`: the instance running it stopped (a crash, a restart) and nobody
    /// will finish it.
    pub fn is_abandoned(&self, now: DateTime<Utc>, lease: Duration) -> bool {
        !self.status.is_finished()
            && chrono::Duration::from_std(lease)
                .is_ok_and(|lease| now.signed_duration_since(self.updated_at) > lease)
    }

    /// The job as readers are shown it at `now`: an abandoned one (see
    /// [`is_abandoned`](Self::is_abandoned)) as `failed`, with an error saying so.
    /// The stored record is left as its runner last wrote it.
    pub fn shown(&self, now: DateTime<Utc>, lease: Duration) -> Self {
        if !self.is_abandoned(now, lease) {
            return self.clone();
        }
        Self {
            status: JobStatus::Failed,
            error: Some(format!(
                "abandoned: the instance running it stopped updating it (last update {}, \
                 more than {} ago); the deliveries it re-queued keep their webhook-ids, \
                 so starting it again is safe for receivers",
                self.updated_at.to_rfc3339(),
                humantime::format_duration(lease)
            )),
            ..self.clone()
        }
    }

    /// Whether a reader should take `self` in place of `held`, the record of the same
    /// job it holds: never an unfinished record over a finished one (a late copy of
    /// a progress record cannot bring a finished job back to life).
    pub fn replaces(&self, held: &Job) -> bool {
        !held.status.is_finished() || self.status.is_finished()
    }

    /// Whether a cancel may be asked for the job as shown: only an unfinished one.
    pub fn cancellable(&self) -> Result<(), JobStatus> {
        if self.status.is_finished() {
            Err(self.status)
        } else {
            Ok(())
        }
    }
}

/// A request to cancel a job, stored under [`cancel_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The job to cancel.
    pub job_id: String,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn queued() -> Job {
        Job::queued(
            new_job_id(),
            JobKind::Replay,
            Some("acme".into()),
            Some("sub_1".into()),
            json!({"since": "2020-01-01T00:00:00Z"}),
            at(0),
        )
    }

    #[test]
    fn a_job_runs_progresses_and_succeeds() {
        let job = queued();
        assert_eq!(job.status, JobStatus::Queued);
        let running = job.started(at(1)).unwrap();
        assert_eq!(running.status, JobStatus::Running);
        assert_eq!(running.started_at, Some(at(1)));
        let progress = JobProgress {
            scanned: 10,
            requeued: 4,
            unreadable: 1,
            total: Some(20),
        };
        let later = running.progressed(progress, at(2)).unwrap();
        assert_eq!((later.progress, later.updated_at), (progress, at(2)));
        let done = later.finished(Ending::Succeeded, progress, at(3)).unwrap();
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(done.finished_at, Some(at(3)));
        assert_eq!(done.error, None);
        assert!(done.status.is_finished());
    }

    #[test]
    fn transitions_out_of_order_are_refused() {
        let job = queued();
        assert!(job.progressed(JobProgress::default(), at(1)).is_err());
        assert!(
            job.finished(Ending::Succeeded, JobProgress::default(), at(1))
                .is_err(),
            "a job that never ran did not succeed"
        );
        let running = job.started(at(1)).unwrap();
        assert!(running.started(at(2)).is_err(), "started twice");
        let cancelled = running
            .finished(Ending::Cancelled, JobProgress::default(), at(2))
            .unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        for ending in [
            Ending::Succeeded,
            Ending::Cancelled,
            Ending::Failed("x".into()),
        ] {
            assert!(cancelled
                .finished(ending, JobProgress::default(), at(3))
                .is_err());
        }
        assert!(cancelled.progressed(JobProgress::default(), at(3)).is_err());
    }

    #[test]
    fn a_queued_job_may_be_cancelled_or_fail_before_it_runs() {
        let job = queued();
        let cancelled = job
            .finished(Ending::Cancelled, JobProgress::default(), at(1))
            .unwrap();
        assert_eq!(cancelled.status, JobStatus::Cancelled);
        assert_eq!(cancelled.started_at, None);
        let failed = job
            .finished(
                Ending::Failed("no Kafka".into()),
                JobProgress::default(),
                at(1),
            )
            .unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error.as_deref(), Some("no Kafka"));
    }

    #[test]
    fn a_job_not_updated_for_longer_than_the_lease_is_shown_failed_as_abandoned() {
        let lease = Duration::from_secs(30);
        let running = queued().started(at(0)).unwrap();
        assert!(
            !running.is_abandoned(at(30), lease),
            "at the lease: still held"
        );
        assert_eq!(running.shown(at(30), lease), running);
        assert!(running.is_abandoned(at(31), lease));
        let shown = running.shown(at(31), lease);
        assert_eq!(shown.status, JobStatus::Failed);
        assert!(shown.error.as_deref().unwrap().starts_with("abandoned"));
        assert_eq!(
            shown.updated_at, running.updated_at,
            "the record is not moved"
        );
        assert_eq!(shown.cancellable(), Err(JobStatus::Failed));

        let queued = queued();
        assert!(queued.is_abandoned(at(31), lease), "a queued job too");
        let done = running
            .finished(Ending::Succeeded, JobProgress::default(), at(1))
            .unwrap();
        assert!(
            !done.is_abandoned(at(10_000), lease),
            "a finished job never"
        );
        assert_eq!(done.shown(at(10_000), lease), done);
    }

    #[test]
    fn a_late_unfinished_record_does_not_replace_a_finished_one() {
        let running = queued().started(at(1)).unwrap();
        let later = running.progressed(JobProgress::default(), at(2)).unwrap();
        assert!(later.replaces(&running));
        let done = later
            .finished(Ending::Cancelled, JobProgress::default(), at(3))
            .unwrap();
        assert!(done.replaces(&later));
        assert!(!later.replaces(&done));
        assert!(!running.replaces(&done));
    }

    #[test]
    fn only_unfinished_jobs_are_cancellable() {
        let job = queued();
        assert_eq!(job.cancellable(), Ok(()));
        let running = job.started(at(1)).unwrap();
        assert_eq!(running.cancellable(), Ok(()));
        let done = running
            .finished(Ending::Failed("x".into()), JobProgress::default(), at(2))
            .unwrap();
        assert_eq!(done.cancellable(), Err(JobStatus::Failed));
    }

    #[test]
    fn keys_name_jobs_and_their_cancel_records() {
        let id = new_job_id();
        assert!(id.starts_with("job_"));
        assert_eq!(JobKey::parse(&id), Some(JobKey::Job(&id)));
        let cancel = cancel_key(&id);
        assert_eq!(JobKey::parse(&cancel), Some(JobKey::Cancel(id.as_str())));
        assert_eq!(JobKey::parse("sub_1"), None);
        assert_eq!(JobKey::parse("sub_1/cancel"), None);
        assert_eq!(JobKey::parse("job_1/other"), None);
    }

    #[test]
    fn the_record_reads_back_as_written() {
        let job = queued().started(at(1)).unwrap();
        let text = serde_json::to_value(&job).unwrap();
        assert_eq!(text["status"], "running");
        assert_eq!(text["kind"], "replay");
        assert!(text.get("finished_at").is_none());
        assert!(text["progress"].get("total").is_none());
        let back: Job = serde_json::from_value(text).unwrap();
        assert_eq!(back, job);
    }
}
