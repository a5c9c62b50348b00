//! Noticing a consumer that stopped fetching some or all of its partitions. librdkafka
//! was seen, around partition leader moves and coordinator failovers, to leave a
//! consumer assigned partitions it fetches nothing from, for good, with no error to
//! tell: the router would route nothing from them while they fill up, even while its
//! other partitions flow. The watch compares, for each assigned partition, where the
//! consumer stands with where the partition ends, every few seconds whether records
//! flow or not; the router builds its consumer again when a partition has had records
//! to hand over and handed over none for the patience.
//!
//! Pure policy: the router feeds it what it reads (positions, committed offsets, the
//! partitions' ends read in the background) and acts on its verdict.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What is known of one assigned partition at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The partition.
    pub partition: i32,
    /// The consumer's position: the next offset it hands over, `None` before it handed
    /// over any record since the partition was assigned.
    pub position: Option<i64>,
    /// The committed offset the consumer started the partition from, when known.
    pub committed: Option<i64>,
    /// The partition's end (its last stable offset), when it could be read.
    pub end: Option<i64>,
    /// Whether records of it are fetched and waiting to be handed over (they get four
    /// times the patience).
    pub queued: bool,
}

impl Sample {
    /// Whether the partition has records the consumer has not handed over, as far as is
    /// known. A partition that never handed over a record is behind once it has any
    /// record past its committed offset, or any record at all when that is unknown.
    fn behind(&self) -> Option<bool> {
        let end = self.end?;
        Some(match self.position.or(self.committed) {
            Some(start) => end > start,
            None => end > 0,
        })
    }
}

/// What the watch concluded at one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to suspect.
    Fetching,
    /// These partitions have had records to hand over and handed over none for the
    /// patience.
    Stalled(Vec<i32>),
    /// No partition assigned for four times the patience while the topic grew.
    Unassigned,
    /// The partitions' ends could not be read for four times the patience, and no
    /// record came either.
    Blind,
}

/// The watch of one consumer.
#[derive(Debug)]
pub struct FetchWatch {
    /// How long a partition may have records to hand over and hand over none.
    patience: Duration,
    /// Since when each partition has been behind with no record handed over, and
    /// whether records of it were fetched and waiting at the last look.
    behind_since: HashMap<i32, (Instant, bool)>,
    /// Partitions that handed over a record since the last look.
    moved: HashSet<i32>,
    /// When the consumer last handed over a record (or was built).
    last_record: Instant,
    /// Since when the consumer has had no partition assigned while the topic grew.
    unassigned_since: Option<Instant>,
    /// The sum of every partition's end at the last look.
    topic_end: Option<i64>,
}

impl FetchWatch {
    /// A watch with `patience`.
    pub fn new(patience: Duration) -> Self {
        Self {
            patience,
            behind_since: HashMap::new(),
            moved: HashSet::new(),
            last_record: Instant::now(),
            unassigned_since: None,
            topic_end: None,
        }
    }

    /// The consumer handed over records of these partitions.
    pub fn fetched(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.last_record = Instant::now();
        self.moved.extend(partitions);
    }

    /// The consumer is new: everything starts over.
    pub fn reset(&mut self) {
        *self = Self::new(self.patience);
    }

    /// Looks at `samples` (every assigned partition, empty when none is assigned),
    /// `topic_end` (the sum of the ends of all the topic's partitions, when read) and
    /// `ends_read` (when the ends were last read).
    pub fn look(
        &mut self,
        samples: &[Sample],
        topic_end: Option<i64>,
        ends_read: Option<Instant>,
    ) -> Verdict {
        self.look_at(samples, topic_end, ends_read, Instant::now())
    }

    fn look_at(
        &mut self,
        samples: &[Sample],
        topic_end: Option<i64>,
        ends_read: Option<Instant>,
        now: Instant,
    ) -> Verdict {
        let moved = std::mem::take(&mut self.moved);
        let assigned: HashSet<i32> = samples.iter().map(|s| s.partition).collect();
        self.behind_since.retain(|p, _| assigned.contains(p));
        for sample in samples {
            if moved.contains(&sample.partition) {
                self.behind_since.remove(&sample.partition);
                continue;
            }
            match sample.behind() {
                // The end is not known: neither cleared nor suspected.
                None => {}
                Some(true) => {
                    let entry = self
                        .behind_since
                        .entry(sample.partition)
                        .or_insert((now, sample.queued));
                    entry.1 = sample.queued;
                }
                Some(false) => {
                    self.behind_since.remove(&sample.partition);
                }
            }
        }
        // Records fetched and waiting are handed over once the router is done with a
        // long batch (a transactional call may take 20 s): they get four times the
        // patience, not for ever, since a queue that is never handed over is a stall too.
        let long = |(since, queued): (Instant, bool)| {
            let patience = if queued {
                self.patience * 4
            } else {
                self.patience
            };
            now.saturating_duration_since(since) >= patience
        };
        let mut stalled: Vec<i32> = self
            .behind_since
            .iter()
            .filter(|(_, state)| long(**state))
            .map(|(partition, _)| *partition)
            .collect();
        if !stalled.is_empty() {
            stalled.sort_unstable();
            return Verdict::Stalled(stalled);
        }
        let blind_for = now.saturating_duration_since(ends_read.unwrap_or(self.last_record));
        let quiet_for = now.saturating_duration_since(self.last_record);
        if blind_for >= self.patience * 4 && quiet_for >= self.patience * 4 {
            return Verdict::Blind;
        }
        let grew = match (self.topic_end, topic_end) {
            (Some(before), Some(after)) => after > before,
            _ => false,
        };
        if topic_end.is_some() {
            self.topic_end = topic_end;
        }
        if !samples.is_empty() {
            self.unassigned_since = None;
            return Verdict::Fetching;
        }
        if grew {
            let since = *self.unassigned_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.patience * 4 {
                return Verdict::Unassigned;
            }
        }
        Verdict::Fetching
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(15);

    fn sample(partition: i32, position: Option<i64>, committed: Option<i64>, end: i64) -> Sample {
        Sample {
            partition,
            position,
            committed,
            end: Some(end),
            queued: false,
        }
    }

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn a_partition_with_records_and_none_handed_over_stalls_after_the_patience() {
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        // Partition 0 flows; partition 1 never began: position unset, committed 40 of 90.
        let samples = [
            sample(0, Some(10), Some(0), 20),
            sample(1, None, Some(40), 90),
        ];
        watch.fetched([0]);
        assert_eq!(
            watch.look_at(&samples, Some(110), Some(start), start),
            Verdict::Fetching
        );
        watch.fetched([0]);
        assert_eq!(
            watch.look_at(&samples, Some(110), Some(at(start, 14)), at(start, 14)),
            Verdict::Fetching,
            "not yet the patience"
        );
        watch.fetched([0]);
        assert_eq!(
            watch.look_at(&samples, Some(110), Some(at(start, 15)), at(start, 15)),
            Verdict::Stalled(vec![1]),
            "records flowing from partition 0 do not hide partition 1"
        );
    }

    #[test]
    fn a_stall_is_seen_when_the_end_stands_still() {
        // The load stopped: the end does not move, the position stays behind it.
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        let samples = [sample(3, Some(500), Some(400), 900)];
        watch.look_at(&samples, Some(900), Some(start), start);
        assert_eq!(
            watch.look_at(&samples, Some(900), Some(at(start, 20)), at(start, 20)),
            Verdict::Stalled(vec![3])
        );
    }

    #[test]
    fn caught_up_moving_or_queued_partitions_do_not_stall() {
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        let quiet = [
            // Nothing past the committed offset, never handed over a record: idle.
            sample(0, None, Some(70), 70),
            // Caught up (the end is a transaction marker's offset away at most).
            sample(1, Some(30), Some(0), 30),
        ];
        for secs in [0, 30, 600] {
            assert_eq!(
                watch.look_at(&quiet, Some(100), Some(at(start, secs)), at(start, secs)),
                Verdict::Fetching
            );
        }
        // Behind, but records arrive between looks.
        let behind = [sample(2, Some(5), Some(0), 50)];
        for secs in [0, 20, 40] {
            watch.fetched([2]);
            assert_eq!(
                watch.look_at(&behind, Some(50), Some(at(start, secs)), at(start, secs)),
                Verdict::Fetching
            );
        }
        // Behind, with fetched records waiting to be handed over (the router was busy):
        // four times the patience, then suspect all the same.
        let waiting = [Sample {
            queued: true,
            ..behind[0]
        }];
        for secs in [40, 60, 80, 99] {
            assert_eq!(
                watch.look_at(&waiting, Some(50), Some(at(start, secs)), at(start, secs)),
                Verdict::Fetching
            );
        }
        assert_eq!(
            watch.look_at(&waiting, Some(50), Some(at(start, 100)), at(start, 100)),
            Verdict::Stalled(vec![2])
        );
    }

    #[test]
    fn an_unknown_end_neither_clears_nor_suspects() {
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        let behind = [sample(0, None, Some(1), 9)];
        let unknown = [Sample {
            end: None,
            ..behind[0]
        }];
        watch.look_at(&behind, Some(9), Some(start), start);
        assert_eq!(
            watch.look_at(&unknown, None, Some(start), at(start, 10)),
            Verdict::Fetching
        );
        assert_eq!(
            watch.look_at(&behind, Some(9), Some(at(start, 16)), at(start, 16)),
            Verdict::Stalled(vec![0]),
            "behind since the first look"
        );
        // Unknown from the start: never suspected on its own.
        let mut fresh = FetchWatch::new(PATIENCE);
        fresh.fetched([0]);
        for secs in [0, 30, 59] {
            assert_eq!(
                fresh.look_at(&unknown, None, None, at(start, secs)),
                Verdict::Fetching
            );
        }
    }

    #[test]
    fn an_unknown_committed_offset_counts_any_record_as_behind() {
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        let empty = [sample(0, None, None, 0)];
        let filled = [sample(0, None, None, 4)];
        watch.look_at(&empty, Some(0), Some(start), start);
        assert_eq!(
            watch.look_at(&empty, Some(0), Some(at(start, 30)), at(start, 30)),
            Verdict::Fetching
        );
        watch.look_at(&filled, Some(4), Some(at(start, 31)), at(start, 31));
        assert_eq!(
            watch.look_at(&filled, Some(4), Some(at(start, 46)), at(start, 46)),
            Verdict::Stalled(vec![0])
        );
    }

    #[test]
    fn a_partition_revoked_is_forgotten_and_a_reset_starts_over() {
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        let behind = [sample(0, None, Some(1), 9)];
        watch.look_at(&behind, Some(9), Some(start), start);
        watch.look_at(&[], Some(9), Some(at(start, 5)), at(start, 5));
        assert_eq!(
            watch.look_at(&behind, Some(9), Some(at(start, 16)), at(start, 16)),
            Verdict::Fetching,
            "assigned again at 16 s: behind since then only"
        );
        watch.reset();
        assert_eq!(
            watch.look_at(&behind, Some(9), Some(at(start, 30)), at(start, 30)),
            Verdict::Fetching
        );
    }

    #[test]
    fn no_assignment_for_long_while_the_topic_grows_is_suspect() {
        let start = Instant::now();
        let mut watch = FetchWatch::new(PATIENCE);
        let look = |watch: &mut FetchWatch, end: i64, secs: u64| {
            let now = at(start, secs);
            watch.fetched([]);
            watch.look_at(&[], Some(end), Some(now), now)
        };
        assert_eq!(look(&mut watch, 100, 0), Verdict::Fetching);
        assert_eq!(look(&mut watch, 110, 15), Verdict::Fetching);
        assert_eq!(look(&mut watch, 120, 74), Verdict::Fetching);
        assert_eq!(look(&mut watch, 130, 75), Verdict::Unassigned);
        // A quiet topic: a router without partitions is only idle.
        let mut quiet = FetchWatch::new(PATIENCE);
        assert_eq!(look(&mut quiet, 100, 0), Verdict::Fetching);
        assert_eq!(look(&mut quiet, 100, 600), Verdict::Fetching);
    }

    #[test]
    fn ends_unknown_for_long_with_no_record_are_suspect() {
        let mut watch = FetchWatch::new(PATIENCE);
        let unknown = [Sample {
            end: None,
            ..sample(0, Some(3), Some(0), 0)
        }];
        let built = watch.last_record;
        assert_eq!(
            watch.look_at(&unknown, None, None, built + Duration::from_secs(59)),
            Verdict::Fetching
        );
        assert_eq!(
            watch.look_at(&unknown, None, None, built + Duration::from_secs(60)),
            Verdict::Blind
        );
        // Ends read lately: not blind, even with no record for long.
        let read = built + Duration::from_secs(50);
        assert_eq!(
            watch.look_at(&unknown, None, Some(read), built + Duration::from_secs(100)),
            Verdict::Fetching
        );
        // Records coming: not blind either, whatever the ends.
        watch.fetched([0]);
        assert_eq!(
            watch.look_at(
                &unknown,
                None,
                None,
                Instant::now() + Duration::from_secs(30)
            ),
            Verdict::Fetching
        );
    }
}
