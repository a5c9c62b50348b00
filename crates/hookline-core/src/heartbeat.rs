//! Noticing a loop that stopped turning. A binary's main loop beats at every step it
//! takes (a batch routed, a retry, a wait for records that timed out); each step is
//! bounded, so a loop that has not beaten for much longer than its longest step is
//! wedged: awaiting something that will never complete, or blocked in a call. No error
//! says so, and the rest of the process (its HTTP endpoints, its metrics) looks
//! healthy: the loop's silence is the only sign.
//!
//! A wedged loop turns `/healthz` to 503 (a liveness probe restarts the process), is
//! logged with the step it is stuck in, and, past a second bound, exits the process,
//! so that any supervisor (Kubernetes, systemd, a restart policy) starts it afresh
//! from the committed offsets.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The last beat of one loop; clones share it.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    beat: Arc<Mutex<Beat>>,
    /// How long without a beat before the loop counts as wedged.
    bound: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Beat {
    /// The step the loop began at its last beat.
    step: &'static str,
    at: Instant,
}

/// A loop found wedged: the step it has been in, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wedged {
    /// The step named at the last beat.
    pub step: &'static str,
    /// Time since that beat.
    pub silent_for: Duration,
}

impl Heartbeat {
    /// A heartbeat whose loop is wedged once `bound` passed without a beat.
    pub fn new(bound: Duration) -> Self {
        Self {
            beat: Arc::new(Mutex::new(Beat {
                step: "starting",
                at: Instant::now(),
            })),
            bound,
        }
    }

    /// The loop begins `step`.
    pub fn beat(&self, step: &'static str) {
        self.beat_at(step, Instant::now());
    }

    pub(crate) fn beat_at(&self, step: &'static str, at: Instant) {
        *self.beat.lock().unwrap_or_else(PoisonError::into_inner) = Beat { step, at };
    }

    /// The step the loop is wedged in, if it is.
    pub fn wedged(&self) -> Option<Wedged> {
        self.wedged_at(Instant::now())
    }

    fn wedged_at(&self, now: Instant) -> Option<Wedged> {
        let beat = *self.beat.lock().unwrap_or_else(PoisonError::into_inner);
        let silent_for = now.saturating_duration_since(beat.at);
        (silent_for > self.bound).then_some(Wedged {
            step: beat.step,
            silent_for,
        })
    }

    /// Watches the loop (`name` in logs) for good: logs an error every `bound` while
    /// it is wedged, and exits the process once it has been for `exit_after` (never
    /// when `exit_after` is zero). Run it as its own task: the loop it watches may
    /// block the thread it runs on.
    pub async fn watch(self, name: &'static str, exit_after: Duration) {
        let mut logged: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(wedged) = self.wedged() else {
                logged = None;
                continue;
            };
            if logged.is_none_or(|at| at.elapsed() >= self.bound) {
                tracing::error!(
                    loop_name = name,
                    step = wedged.step,
                    silent_for = ?wedged.silent_for,
                    "loop wedged: no step completed within its bound"
                );
                logged = Some(Instant::now());
            }
            if !exit_after.is_zero() && wedged.silent_for >= exit_after {
                tracing::error!(
                    loop_name = name,
                    step = wedged.step,
                    "loop wedged for too long; exiting so that the process starts afresh"
                );
                std::process::exit(EXIT_WEDGED);
            }
        }
    }
}

/// The exit code of a process whose loop stayed wedged (EX_SOFTWARE).
pub const EXIT_WEDGED: i32 = 70;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_beats_within_its_bound_is_not_wedged() {
        let heartbeat = Heartbeat::new(Duration::from_secs(60));
        let base = Instant::now();
        heartbeat.beat_at("waiting for events", base);
        assert_eq!(heartbeat.wedged_at(base + Duration::from_secs(60)), None);
        heartbeat.beat_at("routing a batch", base + Duration::from_secs(59));
        assert_eq!(heartbeat.wedged_at(base + Duration::from_secs(119)), None);
    }

    #[test]
    fn silence_past_the_bound_names_the_step_it_began() {
        let heartbeat = Heartbeat::new(Duration::from_secs(60));
        let base = Instant::now();
        heartbeat.beat_at("recovering", base);
        assert_eq!(
            heartbeat.wedged_at(base + Duration::from_secs(61)),
            Some(Wedged {
                step: "recovering",
                silent_for: Duration::from_secs(61)
            })
        );
        heartbeat.beat_at("routing a batch", base + Duration::from_secs(62));
        assert_eq!(
            heartbeat.wedged_at(base + Duration::from_secs(63)),
            None,
            "a beat clears it"
        );
    }

    #[test]
    fn clones_share_the_beat() {
        let heartbeat = Heartbeat::new(Duration::from_secs(1));
        let base = Instant::now();
        heartbeat.clone().beat_at("stepping", base);
        assert!(heartbeat.wedged_at(base + Duration::from_secs(2)).is_some());
        heartbeat
            .clone()
            .beat_at("stepping", base + Duration::from_secs(2));
        assert!(heartbeat.wedged_at(base + Duration::from_secs(2)).is_none());
    }
}
