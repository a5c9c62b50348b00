//! A per-endpoint circuit breaker. After `threshold` consecutive failures the circuit
//! opens: deliveries skip the HTTP call for `cooldown`, then one probe is let through
//! (half-open); its success closes the circuit, its failure opens it again.

use std::time::{Duration, Instant};

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
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
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

    /// When the open circuit lets a probe through, if it is open.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
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
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let half_open = self.open_until.is_some_and(|until| now >= until);
            if half_open || self.consecutive_failures >= self.threshold {
                self.open_until = Some(now + self.cooldown);
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
        let mut b = CircuitBreaker::new(3, Duration::from_secs(10));
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
    fn a_success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(2, Duration::from_secs(1));
        b.record(false, t0);
        b.record(true, t0);
        assert_eq!(b.record(false, t0), BreakerState::Closed);
    }
}
