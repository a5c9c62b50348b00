//! The retry schedule and its delay tiers. Each distinct delay has its own retry
//! topic (`<prefix>deliveries.retry.<tier>`), so a record waits only behind records
//! with the same delay, which fall due in the order they were written.

use std::time::Duration;

use rand::Rng;

use crate::config::parse_duration;

/// Delays between attempts: the first attempt is immediate, attempt `n + 1` follows
/// attempt `n` after `delays[n - 1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

/// Standard Webhooks' recommended schedule after the immediate first attempt.
const STANDARD: [u64; 9] = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            delays: STANDARD.iter().map(|s| Duration::from_secs(*s)).collect(),
        }
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
        Ok(Self { delays })
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
    pub fn tiers(&self) -> Vec<Duration> {
        let mut tiers = self.delays.clone();
        tiers.sort();
        tiers.dedup();
        tiers
    }

    /// The tier for a wait of `delay`: the longest tier not longer than it (so the
    /// record is read before it is due), or the shortest tier.
    pub fn tier_for(&self, delay: Duration) -> Duration {
        let tiers = self.tiers();
        tiers
            .iter()
            .rev()
            .find(|t| **t <= delay)
            .or(tiers.first())
            .copied()
            .unwrap_or(delay)
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
        assert_eq!(s.tier_for(secs(1)), secs(1));
        assert_eq!(s.tier_for(secs(60)), secs(2));
        assert_eq!(s.tier_for(Duration::from_millis(10)), secs(1));
        assert_eq!(s.clamp(secs(3600)), secs(300));
        assert_eq!(s.clamp(Duration::ZERO), secs(1));
        assert!(RetrySchedule::parse("").is_err());
        assert!(RetrySchedule::parse("5s,soon").is_err());
        assert!(RetrySchedule::parse("0s").is_err());
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
