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
