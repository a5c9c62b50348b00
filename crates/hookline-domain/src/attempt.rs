//! Attempt records: one per HTTP attempt (or skipped attempt), on `<prefix>attempts`,
//! keyed by subscription id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{EventId, MessageId, SubscriptionId};

/// How one attempt ended, in one spelling for metrics labels, attempt records and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// A 2xx answer.
    Success,
    /// A 3xx answer (redirects are never followed).
    #[serde(rename = "http_3xx")]
    Http3xx,
    /// A 4xx answer.
    #[serde(rename = "http_4xx")]
    Http4xx,
    /// A 5xx answer.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// Any other status.
    HttpOther,
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// The egress policy refused the address.
    Blocked,
    /// Any other failure.
    Error,
    /// Not attempted: the endpoint's circuit was open.
    CircuitOpen,
}

impl AttemptOutcome {
    /// Every outcome, e.g. to initialise metric series.
    pub const ALL: [Self; 10] = [
        Self::Success,
        Self::Http3xx,
        Self::Http4xx,
        Self::Http5xx,
        Self::HttpOther,
        Self::Timeout,
        Self::Connect,
        Self::Blocked,
        Self::Error,
        Self::CircuitOpen,
    ];

    /// Its name: `success`, `http_5xx`, `timeout`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Http3xx => "http_3xx",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::HttpOther => "http_other",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Blocked => "blocked",
            Self::Error => "error",
            Self::CircuitOpen => "circuit_open",
        }
    }

    /// The outcome of an answer with `status`.
    pub fn of_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Success,
            300..=399 => Self::Http3xx,
            400..=499 => Self::Http4xx,
            500..=599 => Self::Http5xx,
            _ => Self::HttpOther,
        }
    }
}

impl std::fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a delivery task ended in one worker, in one spelling for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskOutcome {
    /// Delivered (2xx).
    Delivered,
    /// Handed to a retry tier.
    RetryScheduled,
    /// Written to the deliveries DLQ.
    DeadLettered,
    /// Dropped: a caught-up view shows its subscription deleted.
    SkippedDeleted,
    /// Unreadable or inconsistent task (dead-lettered).
    Invalid,
    /// Not attempted: its endpoint had stalled (every slot taken, none released for a
    /// while), so it went back to the shortest retry tier instead of waiting in its
    /// partition; no attempt is counted.
    Deferred,
}

impl TaskOutcome {
    /// Every outcome.
    pub const ALL: [Self; 6] = [
        Self::Delivered,
        Self::RetryScheduled,
        Self::DeadLettered,
        Self::SkippedDeleted,
        Self::Invalid,
        Self::Deferred,
    ];

    /// Its name: `delivered`, `retry_scheduled`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryScheduled => "retry_scheduled",
            Self::DeadLettered => "dead_lettered",
            Self::SkippedDeleted => "skipped_deleted",
            Self::Invalid => "invalid",
            Self::Deferred => "deferred",
        }
    }
}

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
    /// `success` or an error class (`http_5xx`, `timeout`, `connect`, …).
    pub outcome: AttemptOutcome,
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
    fn outcomes_have_one_spelling() {
        for outcome in AttemptOutcome::ALL {
            let json = serde_json::to_value(outcome).unwrap();
            assert_eq!(json, serde_json::json!(outcome.as_str()));
            assert_eq!(
                serde_json::from_value::<AttemptOutcome>(json).unwrap(),
                outcome
            );
        }
        assert_eq!(AttemptOutcome::of_status(204), AttemptOutcome::Success);
        assert_eq!(AttemptOutcome::of_status(302), AttemptOutcome::Http3xx);
        assert_eq!(AttemptOutcome::of_status(429), AttemptOutcome::Http4xx);
        assert_eq!(AttemptOutcome::of_status(503), AttemptOutcome::Http5xx);
        assert_eq!(AttemptOutcome::of_status(600), AttemptOutcome::HttpOther);
    }

    #[test]
    fn bodies_are_cut_to_the_limit() {
        assert_eq!(truncate_body(b"ok"), "ok");
        let long = "é".repeat(5000);
        let cut = truncate_body(long.as_bytes());
        assert!(cut.len() <= MAX_RESPONSE_BODY);
        assert!(cut.starts_with("éé"));
    }
}
