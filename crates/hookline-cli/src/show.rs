//! The pure parts: human lines for the API's JSON, times given on the command line,
//! which attempts are new to a tail, and a job's exit code.

use std::collections::HashSet;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A JSON string as text, anything else as JSON (`-` for none).
pub fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// `sub_… tenant url [types] enabled|disabled`.
pub fn subscription(s: &Value) -> String {
    let types: Vec<String> = s["event_types"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    let state = if s["enabled"] == Value::Bool(false) {
        "disabled"
    } else {
        "enabled"
    };
    format!(
        "{} {} {} [{}] {state}",
        text(&s["id"]),
        text(&s["tenant"]),
        text(&s["url"]),
        types.join(",")
    )
}

/// A created subscription, with its secret (the only time the API shows it).
pub fn subscription_created(s: &Value) -> String {
    format!("created {}\nsecret {}", subscription(s), text(&s["secret"]))
}

/// The outcome of a test event.
pub fn test_outcome(answer: &Value) -> String {
    let head = format!(
        "{} {} {}",
        text(&answer["status"]),
        text(&answer["message_id"]),
        text(&answer["event_type"])
    );
    if answer["attempt"].is_object() {
        let verdict = if answer["delivered"] == Value::Bool(true) {
            "delivered"
        } else {
            "not delivered"
        };
        format!("{head} {verdict}: {}", attempt(&answer["attempt"]))
    } else {
        head
    }
}

/// `at message_id #n outcome status duration event_type [error]`.
pub fn attempt(a: &Value) -> String {
    let mut line = format!(
        "{} {} #{} {} {} {}ms {}",
        text(&a["at"]),
        text(&a["message_id"]),
        text(&a["attempt"]),
        text(&a["outcome"]),
        text(&a["status"]),
        text(&a["duration_ms"]),
        text(&a["event_type"])
    );
    if let Some(error) = a["error"].as_str() {
        line.push_str(&format!(" error: {error}"));
    }
    line
}

/// `job_… kind status scanned=… requeued=… unreadable=… [total=…] [error: …]`.
pub fn job(j: &Value) -> String {
    let progress = &j["progress"];
    let mut line = format!(
        "{} {} {} scanned={} requeued={} unreadable={}",
        text(&j["id"]),
        text(&j["kind"]),
        text(&j["status"]),
        text(&progress["scanned"]),
        text(&progress["requeued"]),
        text(&progress["unreadable"])
    );
    if !progress["total"].is_null() {
        line.push_str(&format!(" total={}", text(&progress["total"])));
    }
    if j["cancel_requested_at"].is_string() && !is_finished(j) {
        line.push_str(" (cancel asked)");
    }
    if let Some(error) = j["error"].as_str() {
        line.push_str(&format!(" error: {error}"));
    }
    line
}

/// Whether a job is over.
pub fn is_finished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// 0 for a job that succeeded; 1 for one that failed or was cancelled.
pub fn exit_for(job: &Value) -> ExitCode {
    if job["status"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A time given on the command line: RFC 3339, or a duration back from `now`
/// (`90m`, `1h 30m`).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        format!("`{text}`: give an RFC 3339 time or a duration back from now (`1h`)")
    })?;
    chrono::Duration::from_std(back)
        .ok()
        .and_then(|back| now.checked_sub_signed(back))
        .ok_or_else(|| format!("`{text}`: too far back"))
}

/// The attempts a tail printed already.
#[derive(Debug, Default)]
pub struct Seen {
    printed: HashSet<(String, u64, String)>,
}

impl Seen {
    /// The attempts of an attempts list (newest first) not printed yet, oldest first.
    pub fn new_ones(&mut self, listed: &Value) -> Vec<Value> {
        let mut fresh: Vec<Value> = listed["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| {
                // One attempt: its delivery, its number, its start.
                let key = (
                    text(&a["message_id"]),
                    a["attempt"].as_u64().unwrap_or(0),
                    text(&a["at"]),
                );
                self.printed.insert(key)
            })
            .cloned()
            .collect();
        fresh.reverse();
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_rfc_3339_or_back_from_now() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("2025-12-31T23:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2025-12-31T22:00:00+00:00"
        );
        assert_eq!(
            parse_time("90m", now).unwrap().to_rfc3339(),
            "2026-01-02T01:30:00+00:00"
        );
        assert!(parse_time("yesterday", now)
            .unwrap_err()
            .contains("RFC 3339"));
    }

    #[test]
    fn a_tail_prints_each_attempt_once_oldest_first() {
        let a =
            |id: &str, n: u64| json!({"message_id": id, "attempt": n, "at": format!("t{n}{id}")});
        let mut seen = Seen::default();
        let first = seen.new_ones(&json!({"data": [a("m2", 1), a("m1", 1)]}));
        assert_eq!(first, vec![a("m1", 1), a("m2", 1)]);
        let next = seen.new_ones(&json!({"data": [a("m1", 2), a("m2", 1), a("m1", 1)]}));
        assert_eq!(next, vec![a("m1", 2)]);
        assert!(seen.new_ones(&json!({"data": []})).is_empty());
    }

    #[test]
    fn jobs_read_as_one_line_and_exit_by_their_status() {
        let running = json!({"id": "job_1", "kind": "replay", "status": "running",
            "progress": {"scanned": 10, "requeued": 4, "unreadable": 0, "total": 20},
            "cancel_requested_at": "2026-01-01T00:00:00Z"});
        assert_eq!(
            job(&running),
            "job_1 replay running scanned=10 requeued=4 unreadable=0 total=20 (cancel asked)"
        );
        assert!(!is_finished(&running));
        let failed = json!({"id": "job_1", "kind": "redrive", "status": "failed",
            "progress": {"scanned": 0, "requeued": 0, "unreadable": 0}, "error": "no Kafka"});
        assert_eq!(
            job(&failed),
            "job_1 redrive failed scanned=0 requeued=0 unreadable=0 error: no Kafka"
        );
        assert!(is_finished(&failed));
        assert_eq!(exit_for(&failed), ExitCode::FAILURE);
        assert_eq!(exit_for(&json!({"status": "succeeded"})), ExitCode::SUCCESS);
    }

    #[test]
    fn subscriptions_and_attempts_read_as_lines() {
        let s = json!({"id": "sub_1", "tenant": "acme", "url": "https://x/h",
            "event_types": ["invoice.*", "payment.paid"], "enabled": true, "secret": "whsec_x"});
        assert_eq!(
            subscription(&s),
            "sub_1 acme https://x/h [invoice.*,payment.paid] enabled"
        );
        assert!(subscription_created(&s).ends_with("secret whsec_x"));
        let attempt_line = attempt(&json!({"at": "T", "message_id": "msg_1", "attempt": 2,
            "outcome": "http_5xx", "status": 500, "duration_ms": 12, "event_type": "invoice.paid",
            "error": "HTTP 500"}));
        assert_eq!(
            attempt_line,
            "T msg_1 #2 http_5xx 500 12ms invoice.paid error: HTTP 500"
        );
    }
}
