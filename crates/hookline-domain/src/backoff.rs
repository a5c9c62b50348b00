//! Waits between tries of something that keeps failing: exponential, bounded, endless
//! (`backon`'s schedule), with a reset after a success.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays doubling from a minimum up to a maximum, for as many tries as it takes.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    /// Starts again from the minimum (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_its_bound_and_resets() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(200), ms(2000));
        let first: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(first, vec![200, 400, 800, 1600, 2000, 2000]);
        for _ in 0..100 {
            assert_eq!(backoff.next_delay(), ms(2000), "endless");
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(200));
    }
}
