//! Noticing a consumer that stopped fetching. librdkafka was seen, around partition
//! leader moves and coordinator failovers, to leave a consumer that fetches nothing
//! more, for good, with no error to tell: a router would then route nothing while its
//! partitions fill up. The watch compares, while the router waits for records, where
//! the consumer stands with where its partitions end; the router builds its consumer
//! again when the ends move and it does not.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Where one assigned partition stands: the consumer's position (the next offset it
/// hands over, -1 when unknown) and the partition's end (its last stable offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The partition.
    pub partition: i32,
    /// The consumer's position in it.
    pub position: i64,
    /// The partition's end.
    pub end: i64,
}

/// The watch of one consumer.
#[derive(Debug)]
pub struct FetchWatch {
    /// How long without a record before the marks are compared.
    patience: Duration,
    /// When the consumer last handed over a record (or was built).
    last_record: Instant,
    /// The marks of the last comparison, by partition.
    marks: HashMap<i32, Mark>,
    /// Since when the consumer has had no partition assigned while the topic grew.
    unassigned_since: Option<Instant>,
    /// The sum of every partition's end at the last comparison.
    topic_end: Option<i64>,
    /// Since when the partitions' ends could not be read.
    blind_since: Option<Instant>,
}

impl FetchWatch {
    /// A watch that looks once `patience` passed without a record.
    pub fn new(patience: Duration) -> Self {
        Self {
            patience,
            last_record: Instant::now(),
            marks: HashMap::new(),
            unassigned_since: None,
            topic_end: None,
            blind_since: None,
        }
    }

    /// The consumer handed over a record (or is new): nothing to suspect.
    pub fn fetched(&mut self) {
        self.last_record = Instant::now();
        self.marks.clear();
        self.unassigned_since = None;
        self.topic_end = None;
        self.blind_since = None;
    }

    /// The partitions' ends could not be read: no comparison. Suspect once that lasted
    /// four times the patience with no record either: the watch would otherwise stay
    /// blind for good while the client it reads with, or the consumer, is wedged.
    pub fn blind(&mut self) -> bool {
        self.blind_at(Instant::now())
    }

    fn blind_at(&mut self, now: Instant) -> bool {
        let since = *self.blind_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.patience * 4
    }

    /// Whether it is time to compare marks.
    pub fn due(&self) -> bool {
        self.last_record.elapsed() >= self.patience
    }

    /// The marks of the last comparison, by partition, as `partition:position/end`
    /// (for the warning that the consumer is built again).
    pub fn describe(&self) -> String {
        let mut marks: Vec<&Mark> = self.marks.values().collect();
        marks.sort_by_key(|mark| mark.partition);
        let described: Vec<String> = marks
            .iter()
            .map(|mark| format!("{}:{}/{}", mark.partition, mark.position, mark.end))
            .collect();
        if described.is_empty() {
            "no partition assigned".to_owned()
        } else {
            described.join(" ")
        }
    }

    /// Compares `marks` (every assigned partition; empty when none is assigned) and
    /// `topic_end` (the sum of the ends of all the topic's partitions) with the last
    /// ones: stuck when a partition's end moved while the position stayed behind it, or
    /// when no partition has been assigned for four times the patience while the topic
    /// grew. Keeps both for the next comparison.
    pub fn stuck(&mut self, marks: &[Mark], topic_end: i64) -> bool {
        self.stuck_at(marks, topic_end, Instant::now())
    }

    fn stuck_at(&mut self, marks: &[Mark], topic_end: i64, now: Instant) -> bool {
        self.blind_since = None;
        let grew = self.topic_end.is_some_and(|before| topic_end > before);
        self.topic_end = Some(topic_end);
        let behind = marks.iter().any(|mark| {
            self.marks.get(&mark.partition).is_some_and(|before| {
                mark.end > before.end
                    && mark.position == before.position
                    && mark.end > mark.position
            })
        });
        self.marks = marks.iter().map(|mark| (mark.partition, *mark)).collect();
        if !marks.is_empty() || !grew {
            self.unassigned_since = None;
            return behind;
        }
        let since = *self.unassigned_since.get_or_insert(now);
        now.saturating_duration_since(since) >= self.patience * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(partition: i32, position: i64, end: i64) -> Mark {
        Mark {
            partition,
            position,
            end,
        }
    }

    #[test]
    fn a_position_left_behind_a_growing_partition_is_stuck() {
        let mut watch = FetchWatch::new(Duration::from_secs(15));
        assert!(
            !watch.stuck(&[mark(0, 10, 20), mark(1, 5, 5)], 25),
            "first look: nothing to compare"
        );
        assert!(watch.stuck(&[mark(0, 10, 25), mark(1, 5, 5)], 30));
    }

    #[test]
    fn a_caught_up_or_moving_consumer_is_not_stuck() {
        let mut watch = FetchWatch::new(Duration::from_secs(15));
        watch.stuck(&[mark(0, 10, 11)], 11);
        // The end stays put (a transaction marker after the last record): not stuck.
        assert!(!watch.stuck(&[mark(0, 10, 11)], 11));
        // The position follows the end.
        assert!(!watch.stuck(&[mark(0, 14, 15)], 15));
        // A partition seen for the first time has nothing to compare with.
        assert!(!watch.stuck(&[mark(0, 14, 15), mark(3, 0, 90)], 105));
    }

    #[test]
    fn no_assignment_for_long_while_the_topic_grows_is_stuck() {
        let mut watch = FetchWatch::new(Duration::from_secs(15));
        let start = Instant::now();
        assert!(
            !watch.stuck_at(&[], 100, start),
            "first look: growth unknown"
        );
        assert!(!watch.stuck_at(&[], 110, start + Duration::from_secs(15)));
        assert!(!watch.stuck_at(&[], 120, start + Duration::from_secs(74)));
        assert!(watch.stuck_at(&[], 130, start + Duration::from_secs(75)));
        // A quiet topic: a router without partitions is only idle.
        let mut quiet = FetchWatch::new(Duration::from_secs(15));
        assert!(!quiet.stuck_at(&[], 100, start));
        assert!(!quiet.stuck_at(&[], 100, start + Duration::from_secs(600)));
    }

    #[test]
    fn ends_unknown_for_long_are_suspect() {
        let mut watch = FetchWatch::new(Duration::from_secs(15));
        let start = Instant::now();
        assert!(!watch.blind_at(start));
        assert!(!watch.blind_at(start + Duration::from_secs(59)));
        assert!(watch.blind_at(start + Duration::from_secs(60)));
        // Ends read again: blind no more, and the clock starts over.
        watch.stuck_at(&[mark(0, 1, 1)], 1, start + Duration::from_secs(61));
        assert!(!watch.blind_at(start + Duration::from_secs(62)));
        assert!(!watch.blind_at(start + Duration::from_secs(121)));
        watch.fetched();
        assert!(
            !watch.blind_at(start + Duration::from_secs(200)),
            "a record clears it"
        );
    }

    #[test]
    fn the_description_names_each_partition_position_and_end() {
        let mut watch = FetchWatch::new(Duration::from_secs(15));
        assert_eq!(watch.describe(), "no partition assigned");
        watch.stuck(&[mark(1, 5, 9), mark(0, 10, 20)], 29);
        assert_eq!(watch.describe(), "0:10/20 1:5/9");
    }

    #[test]
    fn a_record_clears_the_suspicion() {
        let mut watch = FetchWatch::new(Duration::ZERO);
        watch.stuck(&[mark(0, 10, 20)], 20);
        watch.fetched();
        assert!(
            !watch.stuck(&[mark(0, 10, 25)], 25),
            "compared with nothing after a record"
        );
    }
}
