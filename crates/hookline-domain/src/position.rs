//! Where a record sits on its topic, as the domain sees it (no Kafka types).

use chrono::{DateTime, Utc};

/// Where a record sits on its topic.
#[derive(Debug, Clone, Copy)]
pub struct RecordPosition<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, if any.
    pub timestamp: Option<DateTime<Utc>>,
}
