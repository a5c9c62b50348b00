//! Whether a binary gets its Kafka work done: a process whose writes keep failing or
//! hang (a partition without leader, a fenced producer, a stuck call) answers `/readyz`
//! with 503 instead of looking healthy while nothing moves.
//!
//! The work is what the binary makes durable in Kafka (ingest's acknowledged events,
//! the router's committed batches, delivery's attempt and retry records): never a
//! receiver's answer, so a slow endpoint does not make a worker unready.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Tracks work taken on and completed; clones share the state.
#[derive(Clone, Debug)]
pub struct Progress {
    state: Arc<Mutex<State>>,
    stall: Duration,
}

#[derive(Debug)]
struct State {
    /// Work started and not finished yet.
    in_flight: usize,
    /// When work last completed, or when the process went from idle to busy.
    last_progress: Instant,
    /// The last work to finish failed (it will be tried again, or was refused).
    failing: bool,
}

impl Progress {
    /// Not stalled until work has waited `stall` without any completing.
    pub fn new(stall: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                in_flight: 0,
                last_progress: Instant::now(),
                failing: false,
            })),
            stall,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// One piece of work begins; finish it with [`succeeded`](Self::succeeded) or
    /// [`failed`](Self::failed).
    pub fn started(&self) {
        self.started_at(Instant::now());
    }

    fn started_at(&self, now: Instant) {
        self.with(|state| {
            // Idle until now: the stall clock starts with this work, unless the work
            // before it failed (a retry does not restart the clock).
            if state.in_flight == 0 && !state.failing {
                state.last_progress = now;
            }
            state.in_flight += 1;
        });
    }

    /// The work completed.
    pub fn succeeded(&self) {
        self.succeeded_at(Instant::now());
    }

    fn succeeded_at(&self, now: Instant) {
        self.with(|state| {
            state.in_flight = state.in_flight.saturating_sub(1);
            state.last_progress = now;
            state.failing = false;
        });
    }

    /// Runs `work` as one piece of work that succeeds when it completes (work that
    /// retries until it is done, such as [`produce_durably`](crate::produce::produce_durably)).
    pub async fn track<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.started();
        let output = work.await;
        self.succeeded();
        output
    }

    /// The work failed.
    pub fn failed(&self) {
        self.with(|state| {
            state.in_flight = state.in_flight.saturating_sub(1);
            state.failing = true;
        });
    }

    /// Whether work has been outstanding, or failing, for longer than the stall
    /// threshold with none completing.
    pub fn stalled(&self) -> bool {
        self.stalled_at(Instant::now())
    }

    fn stalled_at(&self, now: Instant) -> bool {
        self.with(|state| {
            (state.in_flight > 0 || state.failing)
                && now.saturating_duration_since(state.last_progress) > self.stall
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn idle_is_never_stalled() {
        let progress = Progress::new(STALL);
        let base = Instant::now();
        assert!(!progress.stalled_at(at(base, 3600)));
    }

    #[test]
    fn work_outstanding_past_the_threshold_is_a_stall_until_some_completes() {
        let progress = Progress::new(STALL);
        let base = Instant::now();
        progress.started_at(at(base, 100));
        assert!(
            !progress.stalled_at(at(base, 109)),
            "idle time before does not count"
        );
        assert!(progress.stalled_at(at(base, 111)));
        progress.started_at(at(base, 112));
        progress.succeeded_at(at(base, 113));
        assert!(!progress.stalled_at(at(base, 114)), "one completed: moving");
        assert!(progress.stalled_at(at(base, 124)), "the other still hangs");
        progress.succeeded_at(at(base, 125));
        assert!(!progress.stalled_at(at(base, 500)));
    }

    #[test]
    fn failures_and_their_retries_keep_the_clock_running() {
        let progress = Progress::new(STALL);
        let base = Instant::now();
        progress.started_at(at(base, 0));
        for second in 1..=12 {
            progress.failed();
            progress.started_at(at(base, second));
        }
        assert!(progress.stalled_at(at(base, 12)), "a retry is not progress");
        progress.failed();
        assert!(
            progress.stalled_at(at(base, 13)),
            "failing, with nothing in flight"
        );
        progress.started_at(at(base, 14));
        progress.succeeded_at(at(base, 14));
        assert!(!progress.stalled_at(at(base, 15)));
    }
}
