//! Attempt records: one per HTTP attempt (or skipped attempt), on `<prefix>attempts`,
//! keyed by subscription id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{EventId, MessageId, SubscriptionId};

/// Most response-body bytes kept in an attempt record.
pub const MAX_RESPONSE_BODY: usize = 4096;

/// What happened in one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The delivery's `webhook-id`.
    pub message_id: MessageId,
    /// Subscription.
    pub subscription_id: SubscriptionId,
    /// Event id.
    pub event_id: EventId,
    /// Event type.
    pub event_type: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// `success` or an error class (`http_5xx`, `timeout`, `connect`, `circuit_open`, …).
    pub outcome: String,
    /// HTTP status, when there was an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Error detail for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Start of the response body (at most 4 KiB, lossy UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body: Option<String>,
    /// Duration of the attempt in milliseconds.
    pub duration_ms: u64,
    /// When the attempt started.
    pub at: DateTime<Utc>,
}

/// Keeps at most [`MAX_RESPONSE_BODY`] bytes, cut on a character boundary.
pub fn truncate_body(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_RESPONSE_BODY)]);
    let mut text = text.into_owned();
    while text.len() > MAX_RESPONSE_BODY {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_cut_to_the_limit() {
        assert_eq!(truncate_body(b"ok"), "ok");
        let long = "é".repeat(5000);
        let cut = truncate_body(long.as_bytes());
        assert!(cut.len() <= MAX_RESPONSE_BODY);
        assert!(cut.starts_with("éé"));
    }
}
