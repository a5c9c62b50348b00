//! What the topics hold at the end of the run, read back `read_committed` (the way
//! delivery workers read): the events in partition order, the routed tasks, the dead
//! letters and the attempt records.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hookline_e2e::{read_all_on, Deployment};
use serde_json::Value;

/// A task as a topic holds it.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    /// Its `webhook-id`.
    pub message_id: String,
    /// Its subscription.
    pub subscription_id: String,
    /// Its event.
    pub event_id: String,
}

/// The topics, read.
#[derive(Debug, Default)]
pub struct Topics {
    /// Records on the events topic.
    pub event_records: usize,
    /// Each event id's place on the events topic: (key, index of its first record among
    /// the records of that key).
    pub event_positions: HashMap<String, (String, usize)>,
    /// Records on the deliveries topic (committed), copies included.
    pub task_records: usize,
    /// Routed tasks by `webhook-id`.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Dead-lettered tasks by `webhook-id`, with the reason header.
    pub dead_letters: BTreeMap<String, (TaskRecord, String)>,
    /// Records on the dead-letter topic, copies included.
    pub dead_letter_records: usize,
    /// `webhook-id`s with an attempt record whose outcome is `success`.
    pub succeeded: BTreeSet<String>,
    /// Attempt records.
    pub attempt_records: usize,
    /// Records on the events dead-letter topic (unreadable events).
    pub invalid_events: usize,
}

fn task_of(value: &Value) -> Option<TaskRecord> {
    Some(TaskRecord {
        message_id: value["message_id"].as_str()?.to_owned(),
        subscription_id: value["subscription_id"].as_str()?.to_owned(),
        event_id: value["event"]["id"].as_str()?.to_owned(),
    })
}

fn json_of(value: &Option<Vec<u8>>) -> Value {
    value
        .as_deref()
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or(Value::Null)
}

/// Reads the deployment's topics on `brokers` (blocking).
pub fn read(brokers: &str, deployment: &Deployment) -> anyhow::Result<Topics> {
    let mut topics = Topics::default();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for record in read_all_on(brokers, &deployment.topic("events"))? {
        topics.event_records += 1;
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        let Some(id) = json_of(&record.value)["id"].as_str().map(str::to_owned) else {
            continue;
        };
        let next = per_key.entry(key.clone()).or_default();
        topics.event_positions.entry(id).or_insert((key, *next));
        *next += 1;
    }
    for record in read_all_on(brokers, &deployment.topic("deliveries"))? {
        topics.task_records += 1;
        if let Some(task) = task_of(&json_of(&record.value)) {
            topics.tasks.entry(task.message_id.clone()).or_insert(task);
        }
    }
    for record in read_all_on(brokers, &deployment.topic("deliveries.dlq"))? {
        topics.dead_letter_records += 1;
        if let Some(task) = task_of(&json_of(&record.value)) {
            let reason = record
                .headers
                .get("hookline-dlq-reason")
                .cloned()
                .unwrap_or_default();
            topics
                .dead_letters
                .entry(task.message_id.clone())
                .or_insert((task, reason));
        }
    }
    for record in read_all_on(brokers, &deployment.topic("attempts"))? {
        topics.attempt_records += 1;
        let attempt = json_of(&record.value);
        if attempt["outcome"] == "success" {
            if let Some(id) = attempt["message_id"].as_str() {
                topics.succeeded.insert(id.to_owned());
            }
        }
    }
    topics.invalid_events = read_all_on(brokers, &deployment.topic("events.dlq"))?.len();
    Ok(topics)
}

/// The router group as the coordinator holds it at the end of the run: each member's
/// assigned `events` partitions, and each partition's committed offset against its end.
/// A partition no member holds, or whose committed offset stays behind its end, names
/// a routing stall (blocking; a note of the report, not a check).
pub fn router_group(brokers: &str, deployment: &Deployment) -> anyhow::Result<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use std::time::Duration;
    let group = format!("{}router", deployment.prefix);
    let events = deployment.topic("events");
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("isolation.level", "read_committed")
        .create()?;
    let timeout = Duration::from_secs(10);
    let mut members = Vec::new();
    for info in client.fetch_group_list(Some(&group), timeout)?.groups() {
        members.push(format!("state {}", info.state()));
        for member in info.members() {
            let assigned = member
                .assignment()
                .map(|bytes| assigned_partitions(bytes, &events))
                .unwrap_or_default();
            members.push(format!("{} {assigned:?}", member.id()));
        }
    }
    let metadata = client.fetch_metadata(Some(&events), timeout)?;
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        list.add_partition(&events, partition.id());
    }
    let committed = client.committed_offsets(list, timeout)?;
    let mut offsets = Vec::new();
    for element in committed.elements() {
        let (_, end) = client.fetch_watermarks(&events, element.partition(), timeout)?;
        let at = match element.offset() {
            Offset::Offset(offset) => offset.to_string(),
            other => format!("{other:?}"),
        };
        offsets.push(format!("{}:{at}/{end}", element.partition()));
    }
    Ok(format!(
        "router group {group}: {}; committed/end {}",
        members.join(", "),
        offsets.join(" ")
    ))
}

/// The partitions of `topic` in a consumer protocol assignment (version, then topics
/// with their partitions, then user data); empty when it cannot be read.
fn assigned_partitions(bytes: &[u8], topic: &str) -> Vec<i32> {
    fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = bytes.split_first_chunk::<N>()?;
        *bytes = rest;
        Some(*head)
    }
    let mut rest = bytes;
    let mut found = Vec::new();
    let parsed = (|| {
        take::<2>(&mut rest)?;
        let topics = i32::from_be_bytes(take::<4>(&mut rest)?);
        for _ in 0..topics.max(0) {
            let len = usize::from(u16::from_be_bytes(take::<2>(&mut rest)?));
            let name = rest.get(..len)?;
            rest = rest.get(len..)?;
            let count = i32::from_be_bytes(take::<4>(&mut rest)?);
            for _ in 0..count.max(0) {
                let partition = i32::from_be_bytes(take::<4>(&mut rest)?);
                if name == topic.as_bytes() {
                    found.push(partition);
                }
            }
        }
        Some(())
    })();
    if parsed.is_none() {
        return Vec::new();
    }
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    #[test]
    fn an_assignment_is_read_topic_by_topic() {
        // Version 1; two topics: "ev" [3, 2] and "other" [0]; empty user data.
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        bytes.extend([0, 2, b'e', b'v', 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 2]);
        bytes.extend([0, 5, b'o', b't', b'h', b'e', b'r', 0, 0, 0, 1, 0, 0, 0, 0]);
        bytes.extend([0, 0, 0, 0]);
        assert_eq!(assigned_partitions(&bytes, "ev"), vec![2, 3]);
        assert_eq!(assigned_partitions(&bytes, "other"), vec![0]);
        assert_eq!(assigned_partitions(&bytes, "none"), Vec::<i32>::new());
        assert_eq!(assigned_partitions(&bytes[..9], "ev"), Vec::<i32>::new());
    }
}
