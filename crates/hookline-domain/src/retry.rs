//! The retry schedule and its delay tiers. Each distinct delay has its own retry
//! topic (`<prefix>deliveries.retry.<tier>`), so a record waits only behind records
//! with the same delay, which fall due in the order they were written.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::duration::parse_duration;

/// Delays between attempts: the first attempt is immediate, attempt `n + 1` follows
/// attempt `n` after `delays[n - 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    /// The distinct delays, shortest first, derived once from `delays`.
    tiers: Vec<Duration>,
}

/// Standard Webhooks' recommended schedule after the immediate first attempt.
const STANDARD: [u64; 9] = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::from_delays(STANDARD.iter().map(|s| Duration::from_secs(*s)).collect())
    }
}

impl RetrySchedule {
    /// Parses a comma-separated list of delays such as `5s,5m,30m,2h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err("the retry schedule needs at least one delay".into());
        }
        if delays.iter().any(|d| d.is_zero()) {
            return Err("retry delays must be positive".into());
        }
        Ok(Self::from_delays(delays))
    }

    fn from_delays(delays: Vec<Duration>) -> Self {
        let mut tiers = delays.clone();
        tiers.sort();
        tiers.dedup();
        Self { delays, tiers }
    }

    /// Attempts in all: the immediate one plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The delay after `attempts_made` failed attempts, or `None` when none is left.
    pub fn delay_after(&self, attempts_made: u32) -> Option<Duration> {
        let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
        self.delays.get(index).copied()
    }

    /// The distinct delays, shortest first: one retry topic each.
    pub fn tiers(&self) -> &[Duration] {
        &self.tiers
    }

    /// The tier a task waiting for `wait` goes to. A tier topic holds back every record
    /// behind a head that is not due, so each record of a tier must wait about the
    /// tier's own delay: the tier is picked from the schedule's delay (never from a
    /// jittered one), from the shortest tier not shorter than a `Retry-After` hint (so
    /// the hint is honoured), and for an open circuit from its open period: the
    /// shortest tier that outlasts the period if that tier is at most twice as long,
    /// else the longest tier within the period (the task comes back and checks again).
    ///
    /// The circuit's rule weighs churn against recovery: every hop through a tier
    /// rewrites the task, so a circuit open for minutes at a time (its backlog growing)
    /// parks its tasks in one tier that outlasts the period, while a short period hops
    /// through a short tier rather than wait far beyond it (with the default tiers of
    /// 5 s and 5 min, a 30 s period hops every 5 s; one of 150 s or more waits 5 min).
    /// The period, not the time left of it: judged by the time left, every task skipped
    /// in the second half of a long period would hop again.
    pub fn tier_for(&self, wait: Wait) -> Duration {
        let tiers = self.tiers();
        let (shortest, longest) = match (tiers.first(), tiers.last()) {
            (Some(first), Some(last)) => (*first, *last),
            _ => return wait.delay(),
        };
        match wait {
            Wait::Scheduled(delay) => delay,
            Wait::RetryAfter(hint) => tiers
                .iter()
                .copied()
                .find(|t| *t >= hint)
                .unwrap_or(longest),
            Wait::CircuitOpen(OpenCircuit { period, .. }) => {
                match tiers.iter().copied().find(|t| *t >= period) {
                    Some(outlasting) if outlasting <= period * 2 => outlasting,
                    _ => longest_within(tiers, period).unwrap_or(shortest),
                }
            }
            Wait::Deferred(stalled) => longest_within(tiers, stalled).unwrap_or(shortest),
        }
    }

    /// The tier and the due time, after `now`, of a task handed to a tier for `wait`.
    /// `clock` holds the due times already given per tier (see [`DueClock`]).
    pub fn plan(
        &self,
        wait: Wait,
        now: DateTime<Utc>,
        clock: &mut DueClock,
    ) -> (Duration, DateTime<Utc>) {
        let tier = self.tier_for(wait);
        let delay = match wait {
            // The hint is a minimum: never earlier, even when jitter shortens the tier.
            Wait::RetryAfter(hint) => jittered(tier).max(self.clamp(hint)),
            Wait::Scheduled(_) | Wait::CircuitOpen(_) | Wait::Deferred(_) => jittered(tier),
        };
        let due = now + chrono::Duration::from_std(delay).unwrap_or_default();
        (tier, clock.next(tier, due))
    }

    /// `delay` within the schedule's bounds (shortest to longest delay).
    pub fn clamp(&self, delay: Duration) -> Duration {
        let tiers = self.tiers();
        match (tiers.first(), tiers.last()) {
            (Some(min), Some(max)) => delay.clamp(*min, *max),
            _ => delay,
        }
    }
}

/// An open circuit, as a task refused by it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCircuit {
    /// How long until it lets a request through (or, while its probe is out, about
    /// when that probe's answer is known).
    pub remaining: Duration,
    /// How long it stays open each time now (its cooldown, grown by failed probes).
    pub period: Duration,
}

impl OpenCircuit {
    /// A circuit open for `period` at a time, `remaining` of it left.
    pub fn new(remaining: Duration, period: Duration) -> Self {
        Self { remaining, period }
    }
}

/// The longest of `tiers` (shortest first) not longer than `wait`.
fn longest_within(tiers: &[Duration], wait: Duration) -> Option<Duration> {
    tiers.iter().rev().copied().find(|t| *t <= wait)
}

/// Why a task waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The schedule's delay after the attempts made so far.
    Scheduled(Duration),
    /// The endpoint's `Retry-After` hint (429, 503).
    RetryAfter(Duration),
    /// The endpoint's circuit is open.
    CircuitOpen(OpenCircuit),
    /// Not attempted because the endpoint has stalled for this long: back in the
    /// longest tier not longer than the stall (the shortest at first), so that a task
    /// of an endpoint that hangs for hours is not taken up every few seconds.
    Deferred(Duration),
}

impl Wait {
    /// How long a task retried in place (ordered lanes) sleeps: the delay with jitter
    /// for a scheduled retry, the wait itself otherwise.
    pub fn delay(self) -> Duration {
        match self {
            Self::Scheduled(delay) => jittered(delay),
            Self::RetryAfter(wait) => wait,
            Self::CircuitOpen(circuit) => circuit.remaining,
            // Never waited in place (only unordered tasks are deferred).
            Self::Deferred(stalled) => stalled,
        }
    }
}

/// The latest due time handed out per tier by one writer, so that the due times it
/// writes into any partition of a tier never decrease and a paused tier partition never
/// holds back a record that is due. Jitter stays within its bounds: a due time is
/// raised only to one given earlier with the same tier, hence at most the tier's
/// jitter range later than its own.
#[derive(Debug, Default)]
pub struct DueClock {
    latest: HashMap<Duration, DateTime<Utc>>,
}

impl DueClock {
    /// `due`, raised to the latest due time given in `tier` so far; remembered.
    pub fn next(&mut self, tier: Duration, due: DateTime<Utc>) -> DateTime<Utc> {
        let latest = self.latest.entry(tier).or_insert(due);
        *latest = (*latest).max(due);
        *latest
    }
}

/// A tier's topic-name suffix: `5s`, `5m`, `2h`, `1500ms`.
pub fn tier_name(delay: Duration) -> String {
    let millis = delay.as_millis();
    match millis {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// `delay` spread by up to ±10 %, so retries of many tasks failed together do not
/// arrive together.
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_follows_standard_webhooks() {
        let s = RetrySchedule::default();
        assert_eq!(s.max_attempts(), 10);
        assert_eq!(s.delay_after(1), Some(secs(5)));
        assert_eq!(s.delay_after(2), Some(secs(300)));
        assert_eq!(s.delay_after(9), Some(secs(86400)));
        assert_eq!(s.delay_after(10), None);
        assert_eq!(s.delay_after(0), None);
    }

    #[test]
    fn parses_and_derives_tiers() {
        let s = RetrySchedule::parse("1s, 2s,1s,5m").unwrap();
        assert_eq!(s.max_attempts(), 5);
        assert_eq!(s.tiers(), vec![secs(1), secs(2), secs(300)]);
        assert_eq!(s.clamp(secs(3600)), secs(300));
        assert_eq!(s.clamp(Duration::ZERO), secs(1));
        assert!(RetrySchedule::parse("").is_err());
        assert!(RetrySchedule::parse("5s,soon").is_err());
        assert!(RetrySchedule::parse("0s").is_err());
    }

    #[test]
    fn tiers_come_from_the_schedule_never_from_jitter() {
        let s = RetrySchedule::default();
        // A 5 min retry jittered down by up to 10 % stays in the 5 min tier.
        assert_eq!(s.tier_for(Wait::Scheduled(secs(300))), secs(300));
        let mut clock = DueClock::default();
        let now = Utc::now();
        for _ in 0..200 {
            let (tier, due) = s.plan(Wait::Scheduled(secs(300)), now, &mut clock);
            assert_eq!(tier, secs(300));
            let wait = (due - now).num_milliseconds();
            assert!((270_000..=330_000).contains(&wait), "{wait}");
        }
        // A hint goes to the shortest tier that honours it, and is never shortened.
        assert_eq!(s.tier_for(Wait::RetryAfter(secs(60))), secs(300));
        assert_eq!(s.tier_for(Wait::RetryAfter(secs(5))), secs(5));
        assert_eq!(s.tier_for(Wait::RetryAfter(secs(999_999))), secs(86400));
        for _ in 0..100 {
            let (_, due) = s.plan(Wait::RetryAfter(secs(5)), now, &mut DueClock::default());
            assert!(due - now >= chrono::Duration::seconds(5));
        }
        // An open circuit waits in the tier outlasting its cool-down if that is at most
        // twice as long, else hops through the longest tier within it.
        // (What is left of the period does not matter: judged by it, every task
        // refused late in a long period would hop again.)
        let open =
            |left: u64, period: u64| Wait::CircuitOpen(OpenCircuit::new(secs(left), secs(period)));
        assert_eq!(s.tier_for(open(30, 30)), secs(5));
        assert_eq!(s.tier_for(open(1, 30)), secs(5));
        assert_eq!(s.tier_for(open(149, 149)), secs(5));
        assert_eq!(s.tier_for(open(150, 150)), secs(300));
        assert_eq!(s.tier_for(open(240, 240)), secs(300));
        assert_eq!(s.tier_for(open(3, 240)), secs(300));
        assert_eq!(s.tier_for(open(300, 300)), secs(300));
        assert_eq!(s.tier_for(open(4, 4)), secs(5));
        assert_eq!(
            s.tier_for(Wait::CircuitOpen(OpenCircuit::new(
                Duration::from_millis(100),
                Duration::from_millis(100)
            ))),
            secs(5)
        );
        assert_eq!(s.tier_for(open(400, 400)), secs(300));
        // In place (an ordered lane), the wait is what is left.
        assert_eq!(open(3, 240).delay(), secs(3));
        assert_eq!(s.tier_for(Wait::Deferred(secs(1))), secs(5));
        assert_eq!(s.tier_for(Wait::Deferred(secs(600))), secs(300));
    }

    #[test]
    fn due_times_never_decrease_within_a_tier() {
        let s = RetrySchedule::parse("1s,3s").unwrap();
        let mut clock = DueClock::default();
        let start = Utc::now();
        let mut last: HashMap<Duration, DateTime<Utc>> = HashMap::new();
        for step in 0..500 {
            let now = start + chrono::Duration::milliseconds(step * 7);
            let wait = match step % 3 {
                0 => Wait::Scheduled(secs(1)),
                1 => Wait::Scheduled(secs(3)),
                _ => Wait::RetryAfter(Duration::from_millis(1500)),
            };
            let (tier, due) = s.plan(wait, now, &mut clock);
            if let Some(previous) = last.insert(tier, due) {
                assert!(due >= previous, "{tier:?}: {due} before {previous}");
            }
            // Raised at most by the tier's jitter range.
            let over = (due - now).to_std().unwrap();
            assert!(
                over <= tier.mul_f64(1.1) + Duration::from_millis(1500),
                "{over:?}"
            );
        }
    }

    #[test]
    fn tier_names_are_short_and_distinct() {
        assert_eq!(tier_name(secs(5)), "5s");
        assert_eq!(tier_name(secs(300)), "5m");
        assert_eq!(tier_name(secs(7200)), "2h");
        assert_eq!(tier_name(secs(86400)), "24h");
        assert_eq!(tier_name(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let j = jittered(secs(100));
            assert!(j >= secs(90) && j <= secs(110), "{j:?}");
        }
    }
}
