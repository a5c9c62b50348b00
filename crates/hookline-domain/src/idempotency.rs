//! Idempotent ingest, the pure part: what an idempotency key is, the records kept
//! about it on the idempotency topic, the fingerprint of a request body, and the
//! decision an ingest instance takes from a key's records in log order.
//!
//! Claim-then-complete: an instance that receives a request under a key appends a
//! [`Entry::Claim`]; once it has read the topic up to its own claim, [`decide`] says
//! what to do, and every instance reading the same log prefix decides the same (the
//! log order is the lock). The first live claim wins and writes the events, then an
//! [`Entry::Completed`] with their ids; the others answer with those ids once it is
//! there ([`settled`]). A claim whose holder vanished expires after [`CLAIM_TTL`]; a
//! holder that failed appends [`Entry::Released`] so a retry need not wait for that.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long records of a key count, unless configured otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a claim holds its key without a `completed` record: longer than a winner
/// takes to write its events (the produce timeout, 5 s by default).
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// What a key scopes: a whole request (`Idempotency-Key`) or one event (its
/// producer-supplied `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The `Idempotency-Key` header of a `POST /v1/events`.
    Request,
    /// A producer-supplied event `id`.
    Event,
}

/// One idempotency key: unique per (tenant, scope, key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// The tenant the key belongs to; `None` for the admin credential's own keys.
    pub tenant: Option<String>,
    /// What it scopes.
    pub scope: Scope,
    /// The key itself (header value or event id).
    pub key: String,
}

impl IdempotencyKey {
    /// The topic record key: a JSON array, so no tenant or key text can make two keys
    /// collide.
    pub fn record_key(&self) -> String {
        serde_json::json!([self.tenant, self.scope, self.key]).to_string()
    }

    /// The tenant part used in derived ids (`""` for the admin).
    pub fn tenant_or_admin(&self) -> &str {
        self.tenant.as_deref().unwrap_or("")
    }
}

/// Checks an `Idempotency-Key` header value: 1 to [`MAX_KEY_LEN`] visible ASCII
/// characters.
pub fn validate_key(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > MAX_KEY_LEN {
        return Err(format!("must be at most {MAX_KEY_LEN} characters"));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters (no spaces or control characters)".into());
    }
    Ok(())
}

/// One record of the idempotency topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The key it is about.
    pub key: IdempotencyKey,
    /// What it says.
    #[serde(flatten)]
    pub entry: Entry,
}

/// What a record says about its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// An instance asks to handle the request.
    Claim {
        /// Unique per claim.
        claim: String,
        /// The instance that made it (for operators).
        instance: String,
        /// The request body's [`fingerprint`].
        fingerprint: String,
        /// When it was made.
        at: DateTime<Utc>,
        /// When it stops holding the key without a `completed` record.
        expires: DateTime<Utc>,
    },
    /// The winning claim's events are all acknowledged by Kafka.
    Completed {
        /// The claim that wrote them.
        claim: String,
        /// The body's fingerprint.
        fingerprint: String,
        /// The ids answered, in request order.
        ids: Vec<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The claim's holder gives the key up (its write failed, or it lost a race for
    /// another key of the same request): the claim no longer holds it.
    Released {
        /// The claim given up.
        claim: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl Entry {
    /// When the record was made.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Claim { at, .. } | Self::Completed { at, .. } | Self::Released { at, .. } => *at,
        }
    }
}

/// SHA-256 (hex) of `value` written canonically: object keys sorted, no whitespace.
/// Two bodies that differ only in key order or spacing have the same fingerprint.
pub fn fingerprint(value: &Value) -> String {
    let mut text = String::new();
    canonical(value, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// What a claimant does, decided from its key's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Its claim holds the key: it writes the events, then `completed`.
    Won,
    /// The request was completed with the same body: answer these ids, write nothing.
    Replay(Vec<String>),
    /// The key was used with a different body (completed, or held by a live claim).
    Reused,
    /// An earlier live claim with the same body holds the key: wait for it.
    InProgress {
        /// The holding claim.
        holder: String,
        /// When it expires.
        until: DateTime<Utc>,
    },
    /// The holder waited for released or let its claim expire: claim again.
    Vacated,
}

/// `claim` was not among the records given to [`decide`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("claim {0} not among the key's records")]
pub struct MissingClaim(pub String);

/// Records of a key that count for a decision taken at `now`: not older than `window`.
fn in_window(
    history: &[Entry],
    now: DateTime<Utc>,
    window: Duration,
) -> impl Iterator<Item = &Entry> {
    let oldest = now - chrono::Duration::from_std(window).unwrap_or(chrono::TimeDelta::MAX);
    history.iter().filter(move |entry| entry.at() >= oldest)
}

/// The first `completed` record of the window, as the answer to a body of `fingerprint`.
fn completed(
    history: &[Entry],
    fingerprint: &str,
    now: DateTime<Utc>,
    window: Duration,
) -> Option<Decision> {
    in_window(history, now, window).find_map(|entry| match entry {
        Entry::Completed {
            fingerprint: done,
            ids,
            ..
        } => Some(if done == fingerprint {
            Decision::Replay(ids.clone())
        } else {
            Decision::Reused
        }),
        _ => None,
    })
}

fn released(history: &[Entry], claim: &str) -> bool {
    history
        .iter()
        .any(|entry| matches!(entry, Entry::Released { claim: c, .. } if c == claim))
}

/// The decision for claim `mine`, from its key's records in log order up to and
/// including it (records after it are ignored: every instance reading the same prefix
/// decides the same, whatever it has read beyond). The window and expiry are judged at
/// `mine`'s own time, so the decision does not depend on when it is taken either.
///
/// Only a claim that found the key free holds it: a claim made while another held the
/// key lost, and never holds it later, released or not. Otherwise every retry answered
/// `409` would leave a live claim behind, and after the holder's expiry the next
/// retry would find one of those holding the key, and so on for as long as the
/// retries kept coming.
pub fn decide(history: &[Entry], mine: &str, window: Duration) -> Result<Decision, MissingClaim> {
    let position = history
        .iter()
        .position(|entry| matches!(entry, Entry::Claim { claim, .. } if claim == mine))
        .ok_or_else(|| MissingClaim(mine.to_owned()))?;
    let prefix = &history[..=position];
    let Entry::Claim {
        fingerprint, at, ..
    } = &prefix[position]
    else {
        return Err(MissingClaim(mine.to_owned()));
    };
    if let Some(answer) = completed(prefix, fingerprint, *at, window) {
        return Ok(answer);
    }
    // (claim, fingerprint, expires) of the claim holding the key, record by record.
    let mut holder: Option<(&str, &str, DateTime<Utc>)> = None;
    for entry in in_window(prefix, *at, window) {
        match entry {
            Entry::Claim {
                claim,
                fingerprint,
                at,
                expires,
                ..
            } => {
                if holder.is_some_and(|(_, _, until)| until <= *at) {
                    holder = None;
                }
                if holder.is_none() {
                    holder = Some((claim, fingerprint, *expires));
                }
            }
            Entry::Released { claim, .. } => {
                if holder.is_some_and(|(held, _, _)| held == claim) {
                    holder = None;
                }
            }
            Entry::Completed { .. } => {}
        }
    }
    Ok(match holder {
        Some((claim, held, until)) if claim != mine => {
            if held == fingerprint {
                Decision::InProgress {
                    holder: claim.to_owned(),
                    until,
                }
            } else {
                Decision::Reused
            }
        }
        _ => Decision::Won,
    })
}

/// While waiting for `holder` (after [`Decision::InProgress`]): the answer once the
/// key's records (all read so far) settle it, `None` while the holder still holds it.
pub fn settled(
    history: &[Entry],
    fingerprint: &str,
    holder: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
    window: Duration,
) -> Option<Decision> {
    if let Some(answer) = completed(history, fingerprint, now, window) {
        return Some(answer);
    }
    (released(history, holder) || now >= until).then_some(Decision::Vacated)
}

/// Whether a record made at `at` can no longer count for any decision at `now` (older
/// than the window and a claim's lifetime): a view may forget it.
pub fn forgettable(at: DateTime<Utc>, now: DateTime<Utc>, window: Duration) -> bool {
    let keep = chrono::Duration::from_std(window + CLAIM_TTL).unwrap_or(chrono::TimeDelta::MAX);
    at < now - keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn claim(id: &str, fingerprint: &str, at: i64) -> Entry {
        Entry::Claim {
            claim: id.into(),
            instance: "i".into(),
            fingerprint: fingerprint.into(),
            at: t(at),
            expires: t(at) + chrono::Duration::from_std(CLAIM_TTL).unwrap(),
        }
    }

    fn done(id: &str, fingerprint: &str, at: i64) -> Entry {
        Entry::Completed {
            claim: id.into(),
            fingerprint: fingerprint.into(),
            ids: vec![format!("evt_{id}")],
            at: t(at),
        }
    }

    fn released(id: &str, at: i64) -> Entry {
        Entry::Released {
            claim: id.into(),
            at: t(at),
        }
    }

    const W: Duration = DEFAULT_WINDOW;

    #[test]
    fn fingerprint_ignores_key_order_and_spacing_not_values() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&json!({"a": {"x": "s", "y": [2, 1]}, "b": 1}))
        );
        assert_ne!(
            fingerprint(&json!({"a": 1})),
            fingerprint(&json!({"a": "1"}))
        );
        assert_eq!(fingerprint(&a).len(), 64);
    }

    #[test]
    fn two_racing_claims_agree_on_the_first() {
        let log = [claim("a", "f", 0), claim("b", "f", 0)];
        assert_eq!(decide(&log, "a", W), Ok(Decision::Won));
        assert_eq!(
            decide(&log, "b", W),
            Ok(Decision::InProgress {
                holder: "a".into(),
                until: t(30)
            })
        );
        // What comes after a claim does not change its decision.
        let longer = [claim("a", "f", 0), claim("b", "f", 0), done("b", "f", 1)];
        assert_eq!(decide(&longer, "a", W), Ok(Decision::Won));
        assert_eq!(decide(&log, "zz", W), Err(MissingClaim("zz".into())));
    }

    #[test]
    fn a_completed_key_is_replayed_or_refused_for_another_body() {
        let log = [
            claim("a", "f", 0),
            done("a", "f", 1),
            claim("b", "f", 100),
            claim("c", "g", 101),
        ];
        assert_eq!(
            decide(&log, "b", W),
            Ok(Decision::Replay(vec!["evt_a".into()]))
        );
        assert_eq!(decide(&log, "c", W), Ok(Decision::Reused));
    }

    #[test]
    fn a_live_claim_with_another_body_is_refused() {
        let log = [claim("a", "f", 0), claim("b", "g", 1)];
        assert_eq!(decide(&log, "b", W), Ok(Decision::Reused));
    }

    #[test]
    fn an_expired_or_released_claim_no_longer_holds_the_key() {
        let log = [claim("a", "f", 0), claim("b", "g", 31)];
        assert_eq!(decide(&log, "b", W), Ok(Decision::Won));
        let log = [claim("a", "f", 0), released("a", 1), claim("b", "f", 2)];
        assert_eq!(decide(&log, "b", W), Ok(Decision::Won));
    }

    #[test]
    fn a_claim_that_lost_never_holds_the_key() {
        // The holder `a` is never released (its instance died); retries `b`, `c`, `d`
        // come every few seconds, each answered 409 and never released either.
        let log = [
            claim("a", "f", 0),
            claim("b", "f", 1),
            claim("c", "f", 20),
            claim("d", "f", 29),
            claim("e", "f", 31),
        ];
        for loser in ["b", "c", "d"] {
            assert_eq!(
                decide(&log, loser, W),
                Ok(Decision::InProgress {
                    holder: "a".into(),
                    until: t(30)
                }),
                "{loser}"
            );
        }
        // `a` expired at 30: `e` finds the key free, though `c` and `d` are younger
        // than 30 s and were never released.
        assert_eq!(decide(&log, "e", W), Ok(Decision::Won));
        // A loser's release changes nothing; the holder's frees the key.
        let log = [
            claim("a", "f", 0),
            claim("b", "f", 1),
            released("b", 2),
            claim("c", "g", 3),
            released("a", 4),
            claim("d", "g", 5),
            claim("e", "f", 6),
        ];
        assert_eq!(decide(&log, "c", W), Ok(Decision::Reused));
        assert_eq!(decide(&log, "d", W), Ok(Decision::Won));
        assert_eq!(decide(&log, "e", W), Ok(Decision::Reused));
    }

    #[test]
    fn records_older_than_the_window_do_not_count() {
        let day = W.as_secs() as i64;
        let log = [
            claim("a", "f", 0),
            done("a", "f", 1),
            claim("b", "g", day + 2),
        ];
        assert_eq!(decide(&log, "b", W), Ok(Decision::Won));
        assert!(forgettable(t(0), t(day + 31), W));
        assert!(!forgettable(t(0), t(day + 29), W));
    }

    #[test]
    fn a_waiter_settles_on_completion_release_or_expiry() {
        let mut log = vec![claim("a", "f", 0), claim("b", "f", 0)];
        assert_eq!(settled(&log, "f", "a", t(30), t(5), W), None);
        assert_eq!(
            settled(&log, "f", "a", t(30), t(30), W),
            Some(Decision::Vacated)
        );
        log.push(done("a", "f", 6));
        assert_eq!(
            settled(&log, "f", "a", t(30), t(7), W),
            Some(Decision::Replay(vec!["evt_a".into()]))
        );
        let log = [claim("a", "f", 0), released("a", 1)];
        assert_eq!(
            settled(&log, "f", "a", t(30), t(2), W),
            Some(Decision::Vacated)
        );
    }

    #[test]
    fn records_round_trip_and_keys_do_not_collide() {
        let record = IdempotencyRecord {
            key: IdempotencyKey {
                tenant: Some("acme".into()),
                scope: Scope::Request,
                key: "k".into(),
            },
            entry: claim("a", "f", 0),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""kind":"claim""#), "{text}");
        assert_eq!(
            serde_json::from_str::<IdempotencyRecord>(&text).unwrap(),
            record
        );
        let k = |tenant: &str, key: &str| IdempotencyKey {
            tenant: Some(tenant.into()),
            scope: Scope::Event,
            key: key.into(),
        };
        assert_ne!(k("a/b", "c").record_key(), k("a", "b/c").record_key());
    }

    #[test]
    fn header_keys_are_checked() {
        assert!(validate_key("order-42").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_key(&"k".repeat(256)).is_err());
    }
}
