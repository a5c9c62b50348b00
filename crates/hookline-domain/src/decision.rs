//! What follows from one delivery attempt: the delivery decision, as a pure function
//! of the attempt's result, the attempts made before it, the subscription's failure
//! clock, the retry schedule and the time. The delivery pipeline carries out the
//! decision's effects (a retry record, a dead letter, a disable) and nothing else.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::retry::{OpenCircuit, RetrySchedule, Wait};

/// How one attempt ended, as far as the decision is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The endpoint answered 2xx.
    Delivered,
    /// Any other answer, or none.
    Failed {
        /// HTTP status, when there was an answer.
        status: Option<u16>,
        /// What went wrong (no secrets).
        detail: String,
        /// The endpoint's `Retry-After`, when it gave one.
        retry_after: Option<Duration>,
    },
    /// Not attempted: the endpoint's circuit is open. Costs no attempt.
    CircuitOpen(OpenCircuit),
}

/// What the pipeline does next with the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done: it was delivered.
    Delivered,
    /// Try again after `wait`, with `attempts` recorded on the task.
    Retry {
        /// Why and how long it waits (picks its tier).
        wait: Wait,
        /// Attempts made so far, to store on the task.
        attempts: u32,
        /// The last error, to store on the task.
        error: String,
    },
    /// Give up: to the dead-letter topic with the reason.
    DeadLetter {
        /// Why, for the `hookline-dlq-reason` header.
        reason: String,
        /// The last HTTP status, if any.
        status: Option<u16>,
    },
    /// Disable the subscription for `reason`, and dead-letter the task.
    Disable {
        /// Why the subscription is disabled.
        reason: String,
        /// Why the task is dead-lettered.
        dead_letter: String,
        /// The last HTTP status, if any.
        status: Option<u16>,
    },
}

/// The state the decision reads besides the attempt.
#[derive(Debug, Clone, Copy)]
pub struct Circumstances<'a> {
    /// Attempts made before this one.
    pub attempts_before: u32,
    /// Since when the subscription's endpoint has failed without a success, if it has.
    pub failing_since: Option<DateTime<Utc>>,
    /// A subscription failing this long without a success is disabled.
    pub disable_after: Duration,
    /// The retry schedule.
    pub schedule: &'a RetrySchedule,
    /// Now.
    pub now: DateTime<Utc>,
}

/// Decides what follows from `result`.
pub fn decide(result: AttemptResult, at: Circumstances<'_>) -> Decision {
    let (status, detail, retry_after) = match result {
        AttemptResult::Delivered => return Decision::Delivered,
        AttemptResult::CircuitOpen(circuit) => {
            return Decision::Retry {
                wait: Wait::CircuitOpen(circuit),
                attempts: at.attempts_before,
                error: "circuit open".into(),
            }
        }
        AttemptResult::Failed {
            status,
            detail,
            retry_after,
        } => (status, detail, retry_after),
    };
    if status == Some(410) {
        return Decision::Disable {
            reason: "endpoint answered 410 Gone".into(),
            dead_letter: "subscription disabled: endpoint answered 410 Gone".into(),
            status,
        };
    }
    let failing_for = at
        .failing_since
        .map(|since| (at.now - since).to_std().unwrap_or_default());
    if let Some(failing_for) = failing_for.filter(|f| *f >= at.disable_after) {
        let reason = format!(
            "endpoint failing for {}s without a success",
            failing_for.as_secs()
        );
        return Decision::Disable {
            dead_letter: format!("subscription disabled: {reason}; last: {detail}"),
            reason,
            status,
        };
    }
    let attempts = at.attempts_before + 1;
    match at.schedule.delay_after(attempts) {
        Some(delay) => {
            // 429 and 503 may say when to come back; the schedule bounds it.
            let wait = match (status, retry_after) {
                (Some(429 | 503), Some(hint)) => Wait::RetryAfter(at.schedule.clamp(hint)),
                _ => Wait::Scheduled(delay),
            };
            Decision::Retry {
                wait,
                attempts,
                error: detail,
            }
        }
        None => Decision::DeadLetter {
            reason: format!("{attempts} attempts failed; last: {detail}"),
            status,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn failed(status: Option<u16>, retry_after: Option<Duration>) -> AttemptResult {
        AttemptResult::Failed {
            status,
            detail: "boom".into(),
            retry_after,
        }
    }

    fn at(
        schedule: &RetrySchedule,
        attempts_before: u32,
        failing_for: Option<i64>,
    ) -> Circumstances<'_> {
        let now = Utc::now();
        Circumstances {
            attempts_before,
            failing_since: failing_for.map(|s| now - chrono::Duration::seconds(s)),
            disable_after: secs(3600),
            schedule,
            now,
        }
    }

    #[test]
    fn success_and_the_schedule() {
        let s = RetrySchedule::parse("5s,5m").unwrap();
        assert_eq!(
            decide(AttemptResult::Delivered, at(&s, 2, Some(10))),
            Decision::Delivered
        );
        assert_eq!(
            decide(failed(Some(500), None), at(&s, 0, None)),
            Decision::Retry {
                wait: Wait::Scheduled(secs(5)),
                attempts: 1,
                error: "boom".into()
            }
        );
        assert_eq!(
            decide(failed(None, None), at(&s, 1, Some(10))),
            Decision::Retry {
                wait: Wait::Scheduled(secs(300)),
                attempts: 2,
                error: "boom".into()
            }
        );
        assert_eq!(
            decide(failed(Some(500), None), at(&s, 2, Some(10))),
            Decision::DeadLetter {
                reason: "3 attempts failed; last: boom".into(),
                status: Some(500)
            }
        );
    }

    #[test]
    fn hints_only_from_429_and_503_and_bounded_by_the_schedule() {
        let s = RetrySchedule::parse("5s,5m").unwrap();
        let retry = |status, hint| match decide(failed(Some(status), Some(hint)), at(&s, 0, None)) {
            Decision::Retry { wait, .. } => wait,
            other => panic!("{other:?}"),
        };
        assert_eq!(retry(429, secs(60)), Wait::RetryAfter(secs(60)));
        assert_eq!(retry(503, secs(99_999)), Wait::RetryAfter(secs(300)));
        assert_eq!(retry(503, secs(1)), Wait::RetryAfter(secs(5)));
        assert_eq!(retry(500, secs(60)), Wait::Scheduled(secs(5)));
    }

    #[test]
    fn open_circuits_cost_no_attempt() {
        let s = RetrySchedule::default();
        assert_eq!(
            decide(
                AttemptResult::CircuitOpen(OpenCircuit::new(secs(20), secs(30))),
                at(&s, 3, Some(10))
            ),
            Decision::Retry {
                wait: Wait::CircuitOpen(OpenCircuit::new(secs(20), secs(30))),
                attempts: 3,
                error: "circuit open".into()
            }
        );
    }

    #[test]
    fn gone_or_failing_too_long_disables() {
        let s = RetrySchedule::default();
        assert!(matches!(
            decide(failed(Some(410), None), at(&s, 0, None)),
            Decision::Disable {
                status: Some(410),
                ..
            }
        ));
        match decide(failed(Some(500), None), at(&s, 4, Some(3600))) {
            Decision::Disable {
                reason,
                dead_letter,
                ..
            } => {
                assert_eq!(reason, "endpoint failing for 3600s without a success");
                assert!(dead_letter.ends_with("; last: boom"), "{dead_letter}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(failed(Some(500), None), at(&s, 4, Some(3599))),
            Decision::Retry { .. }
        ));
    }
}
