//! Commit tracking for a partition whose records complete out of order: the offset
//! that may be committed is the highest one below which every consumed record is done,
//! so a slow record never holds back others' work and a crash never skips it.

use std::collections::BTreeSet;

/// Offsets consumed and not yet done, for one partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    in_flight: BTreeSet<i64>,
    first_begun: Option<i64>,
    highest_begun: Option<i64>,
    reported: Option<i64>,
    generation: u64,
}

impl OffsetTracker {
    /// A tracker with nothing consumed.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker whose generations all come after `generation`: for a partition that
    /// was revoked and comes back, so that work of its earlier assignment still
    /// running can never complete records of the new one.
    pub fn following(generation: u64) -> Self {
        Self {
            generation: generation + 1,
            ..Self::default()
        }
    }

    /// Records that `offset` was consumed and its work started. Returns the generation
    /// to hand back to [`complete`](Self::complete). A rewind (an offset at or below one
    /// already begun, as after a rebalance or a seek) starts a new generation and
    /// forgets the old one's records.
    pub fn begin(&mut self, offset: i64) -> u64 {
        if self.highest_begun.is_some_and(|h| offset <= h) {
            *self = Self {
                generation: self.generation + 1,
                ..Self::default()
            };
        }
        self.in_flight.insert(offset);
        self.first_begun.get_or_insert(offset);
        self.highest_begun = Some(offset);
        self.generation
    }

    /// Records that `offset`'s work is durably done. Returns the offset of the last
    /// record that may now be committed (Kafka commits it plus one), when that advanced.
    pub fn complete(&mut self, offset: i64, generation: u64) -> Option<i64> {
        if generation != self.generation || !self.in_flight.remove(&offset) {
            return None;
        }
        // Records are begun in offset order, so every record begun below the lowest
        // pending one is done. Offset gaps (compaction, transaction markers) are
        // harmless: the next fetch starts at the committed offset plus one.
        let committable = match self.in_flight.first() {
            Some(&lowest_pending) if self.first_begun == Some(lowest_pending) => return None,
            Some(&lowest_pending) => lowest_pending - 1,
            None => self.highest_begun?,
        };
        if self.reported.is_some_and(|r| committable <= r) {
            return None;
        }
        self.reported = Some(committable);
        Some(committable)
    }

    /// Records still in flight in the current generation.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The current generation (see [`begin`](Self::begin)).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The last offset reported as committable, if any.
    pub fn committable(&self) -> Option<i64> {
        self.reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_done_prefix() {
        let mut t = OffsetTracker::new();
        let g = t.begin(10);
        t.begin(11);
        t.begin(12);
        assert_eq!(t.complete(11, g), None, "10 still pending");
        assert_eq!(t.complete(12, g), None);
        assert_eq!(t.complete(10, g), Some(12));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn advances_past_done_records_while_a_later_one_is_slow() {
        let mut t = OffsetTracker::new();
        let g = t.begin(0);
        t.begin(1);
        t.begin(5); // gap: 2..4 are not on the partition
        t.begin(6);
        assert_eq!(t.complete(0, g), Some(0));
        assert_eq!(t.complete(5, g), None, "1 pending");
        assert_eq!(
            t.complete(1, g),
            Some(5),
            "committable just below pending 6"
        );
        assert_eq!(t.complete(6, g), Some(6));
        assert_eq!(t.committable(), Some(6));
    }

    #[test]
    fn a_rewind_starts_a_new_generation_and_ignores_stale_completions() {
        let mut t = OffsetTracker::new();
        let old = t.begin(100);
        t.begin(101);
        let new = t.begin(90);
        assert_ne!(old, new);
        assert_eq!(t.complete(100, old), None);
        assert_eq!(t.complete(90, new), Some(90));
        assert_eq!(t.complete(90, new), None, "double completion is ignored");
    }

    /// Completing in any order never reports an offset with a pending record at or
    /// below it, and always ends at the highest begun offset.
    #[test]
    fn never_reports_past_a_pending_record() {
        let offsets: Vec<i64> = (0..40).map(|i| i * 2).collect();
        for seed in 0..50u64 {
            let mut order = offsets.clone();
            // Deterministic shuffle (xorshift).
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut t = OffsetTracker::new();
            let g = offsets.iter().map(|&o| t.begin(o)).last().unwrap();
            let mut pending: BTreeSet<i64> = offsets.iter().copied().collect();
            for o in order {
                pending.remove(&o);
                if let Some(c) = t.complete(o, g) {
                    assert!(pending.iter().all(|&p| p > c), "seed {seed}: reported {c}");
                }
            }
            assert_eq!(t.committable(), Some(78));
        }
    }
}
