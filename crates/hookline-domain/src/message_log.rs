//! The message log's pure parts: the order attempts are listed in and the opaque cursor
//! that pages through them, the filters of `GET /v1/subscriptions/{id}/attempts`, and a
//! delivery's status derived from its attempts and dead letters.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::attempt::AttemptOutcome;
use crate::event::FieldError;

/// Where one attempt sits in a subscription's log: its start time (microseconds since
/// the Unix epoch), then its record's partition and offset on the attempts topic, which
/// make the key unique. Logs are listed newest first: by descending key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttemptKey {
    /// When the attempt started, in microseconds since the Unix epoch.
    pub at_micros: i64,
    /// Partition of its record on the attempts topic.
    pub partition: i32,
    /// Offset of its record.
    pub offset: i64,
}

/// Version tag of the cursor's encoding, so that a later encoding can refuse old ones.
const CURSOR_VERSION: u8 = 1;

impl AttemptKey {
    /// The opaque cursor naming this key: a page that ends here continues after it.
    pub fn cursor(&self) -> String {
        let mut bytes = Vec::with_capacity(21);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.at_micros.to_be_bytes());
        bytes.extend_from_slice(&self.partition.to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The key a cursor names, or a field error naming `cursor`.
    pub fn from_cursor(cursor: &str) -> Result<Self, FieldError> {
        let invalid = || FieldError::new("cursor", "not a cursor this API gave out");
        let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
        if bytes.len() != 21 || bytes[0] != CURSOR_VERSION {
            return Err(invalid());
        }
        let at = <[u8; 8]>::try_from(&bytes[1..9]).map_err(|_| invalid())?;
        let partition = <[u8; 4]>::try_from(&bytes[9..13]).map_err(|_| invalid())?;
        let offset = <[u8; 8]>::try_from(&bytes[13..21]).map_err(|_| invalid())?;
        Ok(Self {
            at_micros: i64::from_be_bytes(at),
            partition: i32::from_be_bytes(partition),
            offset: i64::from_be_bytes(offset),
        })
    }
}

/// Which attempts a `status` filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Attempts that ended so.
    Outcome(AttemptOutcome),
    /// Every attempt that did not succeed (`failed`).
    Failed,
}

impl StatusFilter {
    /// Whether an attempt that ended with `outcome` passes.
    pub fn keeps(self, outcome: AttemptOutcome) -> bool {
        match self {
            Self::Outcome(wanted) => outcome == wanted,
            Self::Failed => outcome != AttemptOutcome::Success,
        }
    }
}

/// Default page size of the attempts list.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size of the attempts list.
pub const MAX_LIMIT: usize = 100;

/// The query of `GET /v1/subscriptions/{id}/attempts`, as text.
#[derive(Debug, Clone, Default)]
pub struct AttemptQueryText<'a> {
    /// An outcome (`success`, `http_5xx`, …) or `failed`.
    pub status: Option<&'a str>,
    /// RFC 3339: attempts started at or after.
    pub since: Option<&'a str>,
    /// RFC 3339: attempts started at or before.
    pub until: Option<&'a str>,
    /// Exact event type.
    pub event_type: Option<&'a str>,
    /// A `next_cursor` of an earlier page.
    pub cursor: Option<&'a str>,
    /// Page size.
    pub limit: Option<usize>,
}

/// A validated attempts query.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptQuery {
    /// Only attempts that ended so.
    pub status: Option<StatusFilter>,
    /// Only attempts started at or after this (microseconds since the epoch).
    pub since_micros: Option<i64>,
    /// Only attempts started at or before this (microseconds since the epoch).
    pub until_micros: Option<i64>,
    /// Only attempts at events of this type.
    pub event_type: Option<String>,
    /// Only attempts older (listed after) this key.
    pub after: Option<AttemptKey>,
    /// Page size, 1 to [`MAX_LIMIT`].
    pub limit: usize,
}

fn parse_time(field: &str, text: &str) -> Result<i64, FieldError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .map_err(|e| {
            FieldError::new(
                field,
                format!("an RFC 3339 time, e.g. 2026-12-01T00:00:00Z ({e})"),
            )
        })
}

impl AttemptQuery {
    /// Validates `text`; a field error names the parameter at fault.
    pub fn parse(text: &AttemptQueryText<'_>) -> Result<Self, FieldError> {
        let status = match text.status {
            None => None,
            Some("failed") => Some(StatusFilter::Failed),
            Some(name) => Some(StatusFilter::Outcome(
                AttemptOutcome::ALL
                    .into_iter()
                    .find(|o| o.as_str() == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            AttemptOutcome::ALL.iter().map(|o| o.as_str()).collect();
                        FieldError::new("status", format!("one of failed, {}", names.join(", ")))
                    })?,
            )),
        };
        let since_micros = text.since.map(|t| parse_time("since", t)).transpose()?;
        let until_micros = text.until.map(|t| parse_time("until", t)).transpose()?;
        if let (Some(since), Some(until)) = (since_micros, until_micros) {
            if since > until {
                return Err(FieldError::new("until", "must not be before since"));
            }
        }
        let event_type = match text.event_type {
            Some("") => return Err(FieldError::new("event_type", "must not be empty")),
            other => other.map(str::to_owned),
        };
        let after = text.cursor.map(AttemptKey::from_cursor).transpose()?;
        let limit = text.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(FieldError::new("limit", format!("from 1 to {MAX_LIMIT}")));
        }
        Ok(Self {
            status,
            since_micros,
            until_micros,
            event_type,
            after,
            limit,
        })
    }

    /// Whether an attempt at `key`, ended with `outcome`, at an event of `event_type`,
    /// passes the filters (the cursor aside).
    pub fn keeps(&self, key: &AttemptKey, outcome: AttemptOutcome, event_type: &str) -> bool {
        self.status.is_none_or(|s| s.keeps(outcome))
            && self.since_micros.is_none_or(|since| key.at_micros >= since)
            && self.until_micros.is_none_or(|until| key.at_micros <= until)
            && self.event_type.as_deref().is_none_or(|t| t == event_type)
    }
}

/// One page of a newest-first list: the items, and the cursor of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// Up to `limit` items.
    pub items: Vec<T>,
    /// Set when more items follow: the cursor of the last item given.
    pub next: Option<AttemptKey>,
}

/// Takes up to `limit` items from `newest_first` (already filtered and past the
/// cursor), and whether more follow, without reading more than one item past the page.
pub fn page<T>(
    newest_first: impl Iterator<Item = (AttemptKey, T)>,
    limit: usize,
) -> Page<(AttemptKey, T)> {
    let mut items = Vec::with_capacity(limit.min(MAX_LIMIT));
    let mut more = false;
    for item in newest_first {
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(item);
    }
    let next = if more {
        items.last().map(|(key, _)| *key)
    } else {
        None
    };
    Page { items, next }
}

/// Where one delivery (event × subscription) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued, not attempted yet.
    Pending,
    /// Its latest attempt succeeded.
    Delivered,
    /// Its latest attempt failed and it was not dead-lettered (since): a retry is due,
    /// or the dead letter is being written.
    Retrying,
    /// Dead-lettered after its latest attempt (attempts used up, endpoint gone,
    /// subscription disabled): redrive or resend it to try again.
    DeadLettered,
}

impl DeliveryStatus {
    /// The status of a delivery with `latest` attempt (its start time in microseconds and
    /// outcome) and, if it was dead-lettered, the time of its latest dead letter.
    pub fn derive(latest: Option<(i64, AttemptOutcome)>, dead_lettered: Option<i64>) -> Self {
        match (latest, dead_lettered) {
            (None, None) => Self::Pending,
            (None, Some(_)) => Self::DeadLettered,
            (Some((at, _)), Some(dead)) if dead >= at => Self::DeadLettered,
            (Some((_, AttemptOutcome::Success)), _) => Self::Delivered,
            (Some(_), _) => Self::Retrying,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: i64, partition: i32, offset: i64) -> AttemptKey {
        AttemptKey {
            at_micros: at,
            partition,
            offset,
        }
    }

    #[test]
    fn a_cursor_round_trips_and_nothing_else_passes_for_one() {
        for k in [
            key(0, 0, 0),
            key(1_764_547_200_000_123, 3, 98_765),
            key(-5, i32::MAX, i64::MAX),
        ] {
            assert_eq!(AttemptKey::from_cursor(&k.cursor()), Ok(k));
        }
        let good = key(10, 1, 2).cursor();
        for bad in [
            "",
            "abc",
            "!!!!",
            &good[..good.len() - 1],
            &format!("{good}AA"),
        ] {
            let err = AttemptKey::from_cursor(bad).unwrap_err();
            assert_eq!(err.field, "cursor", "{bad}");
        }
        // Another version's bytes are refused.
        let mut bytes = URL_SAFE_NO_PAD.decode(&good).unwrap();
        bytes[0] = 2;
        assert!(AttemptKey::from_cursor(&URL_SAFE_NO_PAD.encode(bytes)).is_err());
    }

    #[test]
    fn keys_order_by_time_then_position() {
        let mut keys = vec![key(2, 0, 5), key(1, 3, 9), key(2, 0, 4), key(2, 1, 0)];
        keys.sort_by(|a, b| b.cmp(a));
        assert_eq!(
            keys,
            vec![key(2, 1, 0), key(2, 0, 5), key(2, 0, 4), key(1, 3, 9)],
            "newest first; equal times in a stable order"
        );
    }

    #[test]
    fn pages_cover_every_item_once_in_order() {
        let all: Vec<AttemptKey> = (0..23).rev().map(|i| key(i / 2, 0, i)).collect();
        let mut seen = Vec::new();
        let mut after: Option<AttemptKey> = None;
        loop {
            let items = all
                .iter()
                .filter(|k| after.is_none_or(|a| **k < a))
                .map(|k| (*k, ()));
            let page = page(items, 10);
            seen.extend(page.items.iter().map(|(k, _)| *k));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, all);
        // A page exactly full says no more when nothing follows.
        let exact = page(all.iter().take(10).map(|k| (*k, ())), 10);
        assert_eq!((exact.items.len(), exact.next), (10, None));
    }

    #[test]
    fn queries_are_validated_parameter_by_parameter() {
        let parse = |text: AttemptQueryText<'_>| AttemptQuery::parse(&text);
        let q = parse(AttemptQueryText::default()).unwrap();
        assert_eq!((q.limit, q.status, q.after), (DEFAULT_LIMIT, None, None));
        let q = parse(AttemptQueryText {
            status: Some("http_5xx"),
            since: Some("2026-12-01T00:00:00Z"),
            until: Some("2026-12-01T01:00:00+01:00"),
            event_type: Some("invoice.paid"),
            limit: Some(100),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            q.status,
            Some(StatusFilter::Outcome(AttemptOutcome::Http5xx))
        );
        assert_eq!(q.since_micros, q.until_micros, "time zones are honoured");
        assert_eq!(
            parse(AttemptQueryText {
                status: Some("failed"),
                ..Default::default()
            })
            .unwrap()
            .status,
            Some(StatusFilter::Failed)
        );
        for (text, field) in [
            (
                AttemptQueryText {
                    status: Some("ok"),
                    ..Default::default()
                },
                "status",
            ),
            (
                AttemptQueryText {
                    since: Some("yesterday"),
                    ..Default::default()
                },
                "since",
            ),
            (
                AttemptQueryText {
                    until: Some("2026-13-01T00:00:00Z"),
                    ..Default::default()
                },
                "until",
            ),
            (
                AttemptQueryText {
                    since: Some("2026-12-02T00:00:00Z"),
                    until: Some("2026-12-01T00:00:00Z"),
                    ..Default::default()
                },
                "until",
            ),
            (
                AttemptQueryText {
                    event_type: Some(""),
                    ..Default::default()
                },
                "event_type",
            ),
            (
                AttemptQueryText {
                    cursor: Some("nope"),
                    ..Default::default()
                },
                "cursor",
            ),
            (
                AttemptQueryText {
                    limit: Some(0),
                    ..Default::default()
                },
                "limit",
            ),
            (
                AttemptQueryText {
                    limit: Some(101),
                    ..Default::default()
                },
                "limit",
            ),
        ] {
            assert_eq!(parse(text.clone()).unwrap_err().field, field, "{text:?}");
        }
    }

    #[test]
    fn filters_keep_what_they_name() {
        let q = AttemptQuery::parse(&AttemptQueryText {
            status: Some("failed"),
            since: Some("1970-01-01T00:00:00.000010Z"),
            until: Some("1970-01-01T00:00:00.000020Z"),
            event_type: Some("invoice.paid"),
            ..Default::default()
        })
        .unwrap();
        let failed = AttemptOutcome::Http5xx;
        assert!(
            q.keeps(&key(10, 0, 0), failed, "invoice.paid"),
            "bounds included"
        );
        assert!(q.keeps(&key(20, 0, 0), AttemptOutcome::Timeout, "invoice.paid"));
        assert!(!q.keeps(&key(9, 0, 0), failed, "invoice.paid"));
        assert!(!q.keeps(&key(21, 0, 0), failed, "invoice.paid"));
        assert!(!q.keeps(&key(15, 0, 0), AttemptOutcome::Success, "invoice.paid"));
        assert!(!q.keeps(&key(15, 0, 0), failed, "invoice.created"));
    }

    #[test]
    fn a_delivery_status_follows_its_latest_attempt_and_dead_letter() {
        use AttemptOutcome::{Http5xx, Success};
        assert_eq!(DeliveryStatus::derive(None, None), DeliveryStatus::Pending);
        assert_eq!(
            DeliveryStatus::derive(None, Some(5)),
            DeliveryStatus::DeadLettered
        );
        assert_eq!(
            DeliveryStatus::derive(Some((5, Success)), None),
            DeliveryStatus::Delivered
        );
        assert_eq!(
            DeliveryStatus::derive(Some((5, Http5xx)), None),
            DeliveryStatus::Retrying
        );
        assert_eq!(
            DeliveryStatus::derive(Some((5, Http5xx)), Some(6)),
            DeliveryStatus::DeadLettered
        );
        // Resent after its dead letter, and delivered.
        assert_eq!(
            DeliveryStatus::derive(Some((7, Success)), Some(6)),
            DeliveryStatus::Delivered
        );
        assert_eq!(
            serde_json::to_value(DeliveryStatus::DeadLettered).unwrap(),
            serde_json::json!("dead_lettered")
        );
    }
}
