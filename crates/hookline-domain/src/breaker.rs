//! A per-endpoint circuit breaker. After `threshold` consecutive failures the circuit
//! opens: deliveries skip the HTTP call for `cooldown`, then one probe is let through
//! (half-open); its success closes the circuit, its failure opens it again for twice
//! as long as the last time, up to `max_cooldown`.
//!
//! The growing cooldown is about the endpoint's backlog more than about probes: every
//! task skipped while the circuit is open is deferred and comes back when it may be
//! let through, so with a fixed cooldown an endpoint down for an hour would cycle its
//! whole backlog (growing all the while) through the retry tiers every cooldown.

use std::time::{Duration, Instant};

use crate::retry::OpenCircuit;

/// Breaker state, as exported in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are skipped until the cooldown ends.
    Open,
    /// One probe request is in flight or allowed.
    HalfOpen,
}

/// What the breaker says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Allow,
    /// Send it as the half-open probe.
    Probe,
    /// Skip the HTTP call: the circuit is open.
    Reject,
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    max_cooldown: Duration,
    /// How long the circuit stays open this time: `cooldown`, doubled by each failed
    /// probe, at most `max_cooldown`.
    open_for: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl CircuitBreaker {
    /// A closed breaker: open for `cooldown` after `threshold` consecutive failures,
    /// for twice as long after each failed probe, never longer than `max_cooldown`
    /// (raised to `cooldown` if below it).
    pub fn new(threshold: u32, cooldown: Duration, max_cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            max_cooldown: max_cooldown.max(cooldown),
            open_for: cooldown,
            consecutive_failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// How long a request refused at `now` ([`Admission::Reject`]) should wait before
    /// it asks again: until the open circuit lets a probe through, or, while the probe
    /// is in flight, one base cooldown (the probe's answer decides what comes next;
    /// asking sooner would only be refused again). Zero when closed.
    pub fn retry_in(&self, now: Instant) -> Duration {
        match self.state(now) {
            BreakerState::Closed => Duration::ZERO,
            BreakerState::Open => self
                .open_until
                .map_or(Duration::ZERO, |until| until.saturating_duration_since(now)),
            BreakerState::HalfOpen if self.probing => self.cooldown,
            BreakerState::HalfOpen => Duration::ZERO,
        }
    }

    /// The circuit as a request refused at `now` sees it: [`retry_in`](Self::retry_in)
    /// and the current open period.
    pub fn open_circuit(&self, now: Instant) -> OpenCircuit {
        OpenCircuit::new(self.retry_in(now), self.open_for)
    }

    /// Whether a request may go out at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Allow,
            BreakerState::Open => Admission::Reject,
            BreakerState::HalfOpen if self.probing => Admission::Reject,
            BreakerState::HalfOpen => {
                self.probing = true;
                Admission::Probe
            }
        }
    }

    /// Records a request's result; returns the state afterwards.
    pub fn record(&mut self, success: bool, now: Instant) -> BreakerState {
        self.probing = false;
        if success {
            self.consecutive_failures = 0;
            self.open_until = None;
            self.open_for = self.cooldown;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            match self.open_until {
                // The probe failed: open again, longer.
                Some(until) if now >= until => {
                    self.open_for = (self.open_for * 2).min(self.max_cooldown);
                    self.open_until = Some(now + self.open_for);
                }
                // A request let through before the circuit opened answered late.
                Some(_) => {}
                None if self.consecutive_failures >= self.threshold => {
                    self.open_for = self.cooldown;
                    self.open_until = Some(now + self.open_for);
                }
                None => {}
            }
        }
        self.state(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(b.record(false, t0), BreakerState::Closed);
        assert_eq!(b.record(false, t0), BreakerState::Closed);
        assert_eq!(b.admit(t0), Admission::Allow);
        assert_eq!(b.record(false, t0), BreakerState::Open);
        assert_eq!(b.admit(t0 + Duration::from_secs(5)), Admission::Reject);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.admit(later), Admission::Reject, "one probe at a time");
        assert_eq!(
            b.record(false, later),
            BreakerState::Open,
            "failed probe reopens"
        );
        let much_later = later + Duration::from_secs(11);
        assert_eq!(b.admit(much_later), Admission::Probe);
        assert_eq!(b.record(true, much_later), BreakerState::Closed);
        assert_eq!(b.admit(much_later), Admission::Allow);
    }

    #[test]
    fn each_failed_probe_doubles_the_cooldown_up_to_the_cap_and_a_success_resets_it() {
        let secs = Duration::from_secs;
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(1, secs(10), secs(35));
        assert_eq!(b.record(false, t0), BreakerState::Open);
        assert_eq!(b.retry_in(t0), secs(10));
        assert_eq!(
            b.open_circuit(t0 + secs(4)),
            OpenCircuit::new(secs(6), secs(10))
        );
        // Probes fail at the end of each open period: 20 s, then 35 s (capped), again 35.
        let mut now = t0 + secs(10);
        for expected in [20, 35, 35] {
            assert_eq!(b.admit(now), Admission::Probe);
            assert_eq!(b.record(false, now), BreakerState::Open);
            assert_eq!(b.retry_in(now), secs(expected));
            assert_eq!(b.open_circuit(now).period, secs(expected));
            assert_eq!(b.admit(now + secs(expected) - secs(1)), Admission::Reject);
            now += secs(expected);
        }
        assert_eq!(b.admit(now), Admission::Probe);
        assert_eq!(b.record(true, now), BreakerState::Closed);
        assert_eq!(b.retry_in(now), Duration::ZERO);
        // Opened again later: from the base cooldown.
        assert_eq!(b.record(false, now), BreakerState::Open);
        assert_eq!(b.retry_in(now), secs(10));
    }

    #[test]
    fn a_request_refused_while_the_probe_is_out_waits_a_base_cooldown() {
        let secs = Duration::from_secs;
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(1, secs(10), secs(300));
        b.record(false, t0);
        let half_open = t0 + secs(10);
        assert_eq!(b.retry_in(half_open), Duration::ZERO, "the probe may go");
        assert_eq!(b.admit(half_open), Admission::Probe);
        // The probe hangs: the others wait a cooldown, not a moment (they would come
        // back again and again for as long as the probe takes).
        assert_eq!(b.admit(half_open + secs(1)), Admission::Reject);
        assert_eq!(b.retry_in(half_open + secs(1)), secs(10));
        // A request sent before the circuit opened and failing late changes nothing.
        let mut c = CircuitBreaker::new(1, secs(10), secs(300));
        c.record(false, t0);
        c.record(false, t0 + secs(1));
        assert_eq!(c.retry_in(t0 + secs(1)), secs(9));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(2, Duration::from_secs(1), Duration::from_secs(1));
        b.record(false, t0);
        b.record(true, t0);
        assert_eq!(b.record(false, t0), BreakerState::Closed);
    }
}
