//! Reading a time range of a topic once, for replay and dead-letter redrive: every
//! partition from the first record at or after `since` (Kafka's offsets-for-times) to
//! its end as of the start of the scan.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaArgs;
use crate::kafka::client_config;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Calls `visit` on every record of `topic` written at or after `since` (all when
/// `None`) and present when the scan starts. Blocking: run it on a blocking thread.
pub fn scan_topic(
    args: &KafkaArgs,
    topic: &str,
    since: Option<DateTime<Utc>>,
    mut visit: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64, KafkaError> {
    scan_topic_while(
        args,
        topic,
        since,
        |_| {},
        |message| {
            visit(message);
            ControlFlow::Continue(())
        },
    )
}

/// Like [`scan_topic`], told first how many records the range holds at most
/// (`range`: the sum of its partitions' offset spans, which transaction markers
/// count too), and stopping early once `visit` breaks. Returns the records visited.
pub fn scan_topic_while(
    args: &KafkaArgs,
    topic: &str,
    since: Option<DateTime<Utc>>,
    range: impl FnOnce(u64),
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
) -> Result<u64, KafkaError> {
    let group = format!("hookline-scan-{}", ulid::Ulid::new());
    let consumer: BaseConsumer = client_config(
        args,
        "hookline-scan",
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
        ],
    )
    .create()?;
    // Where each partition ends now, and where the range starts.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut lows: HashMap<i32, i64> = HashMap::new();
    let mut starts = TopicPartitionList::new();
    for marks in crate::kafka::watermarks(&consumer, topic, TIMEOUT)? {
        let partition = marks.partition;
        ends.insert(partition, marks.high);
        lows.insert(partition, marks.low);
        let start = match since {
            // Kafka's timestamps start at the Unix epoch, and a negative one is not a
            // time to it but an invalid argument: earlier times mean "from the start".
            Some(at) if at.timestamp_millis() > 0 => Offset::Offset(at.timestamp_millis()),
            _ => Offset::Beginning,
        };
        starts.add_partition_offset(topic, partition, start)?;
    }
    let starts = if since.is_some_and(|at| at.timestamp_millis() > 0) {
        consumer.offsets_for_times(starts, TIMEOUT)?
    } else {
        starts
    };
    let mut assignment = TopicPartitionList::new();
    let mut spans = 0u64;
    for element in starts.elements() {
        let end = ends.get(&element.partition()).copied().unwrap_or(0);
        let first = match element.offset() {
            Offset::Offset(o) => Some(o),
            Offset::Beginning => Some(lows.get(&element.partition()).copied().unwrap_or(0)),
            _ => None, // no record at or after `since`
        };
        if let Some(first) = first.filter(|&first| first < end) {
            spans += u64::try_from(end - first).unwrap_or(0);
            assignment.add_partition_offset(topic, element.partition(), element.offset())?;
        }
    }
    range(spans);
    let mut remaining: usize = assignment.count();
    if remaining == 0 {
        return Ok(0);
    }
    consumer.assign(&assignment)?;
    let mut visited = 0u64;
    let mut finished: Vec<i32> = Vec::new();
    while remaining > 0 {
        match consumer.poll(TIMEOUT) {
            None => {
                return Err(KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
                ))
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if !finished.contains(&partition) {
                    finished.push(partition);
                    remaining -= 1;
                }
            }
            Some(Err(err)) => return Err(err),
            Some(Ok(message)) => {
                let end = ends.get(&message.partition()).copied().unwrap_or(0);
                if message.offset() < end {
                    visited += 1;
                    if visit(&message).is_break() {
                        return Ok(visited);
                    }
                }
                if message.offset() + 1 >= end && !finished.contains(&message.partition()) {
                    finished.push(message.partition());
                    remaining -= 1;
                    let mut done = TopicPartitionList::new();
                    done.add_partition(topic, message.partition());
                    consumer.pause(&done)?;
                }
            }
        }
    }
    Ok(visited)
}
