//! Identifiers: generated ones are prefixed ULIDs (time-sortable); derived ones are
//! deterministic hashes, so that re-processing the same input yields the same id.

use sha2::{Digest, Sha256};

/// Prefix of event ids.
pub const EVENT_ID_PREFIX: &str = "evt_";
/// Prefix of subscription ids.
pub const SUBSCRIPTION_ID_PREFIX: &str = "sub_";
/// Prefix of webhook message ids (`webhook-id`).
pub const MESSAGE_ID_PREFIX: &str = "msg_";

/// A new, time-sortable event id.
pub fn new_event_id() -> String {
    format!("{EVENT_ID_PREFIX}{}", ulid::Ulid::new())
}

/// A new, time-sortable subscription id.
pub fn new_subscription_id() -> String {
    format!("{SUBSCRIPTION_ID_PREFIX}{}", ulid::Ulid::new())
}

/// The id of an event that arrived on a topic without one: a hash of where it sits,
/// so every router (and every re-read after a crash) derives the same id.
pub fn derived_event_id(topic: &str, partition: i32, offset: i64) -> String {
    format!(
        "{EVENT_ID_PREFIX}{}",
        short_hash(&[
            topic.as_bytes(),
            &partition.to_be_bytes(),
            &offset.to_be_bytes()
        ])
    )
}

/// The `webhook-id` of one event's delivery to one subscription: stable across
/// retries, redrives and replays, unique per (event, subscription).
pub fn message_id(event_id: &str, subscription_id: &str) -> String {
    format!(
        "{MESSAGE_ID_PREFIX}{}",
        short_hash(&[event_id.as_bytes(), subscription_id.as_bytes()])
    )
}

/// The id of an event Hookline itself publishes (`kind`, e.g. `subscription.disabled`)
/// about `subject` (e.g. one version of a subscription): two processes publishing the
/// same fact derive the same id.
pub fn operational_event_id(kind: &str, subject: &str) -> String {
    format!(
        "{EVENT_ID_PREFIX}{}",
        short_hash(&[kind.as_bytes(), subject.as_bytes()])
    )
}

/// First 128 bits of SHA-256 over length-prefixed parts, as lowercase hex.
/// Length prefixes keep ("ab","c") and ("a","bc") apart.
fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_deterministic_and_position_specific() {
        let a = derived_event_id("hookline.events", 3, 42);
        assert_eq!(a, derived_event_id("hookline.events", 3, 42));
        assert_ne!(a, derived_event_id("hookline.events", 3, 43));
        assert_ne!(a, derived_event_id("hookline.events", 4, 42));
        assert_ne!(a, derived_event_id("other.events", 3, 42));
        assert!(a.starts_with("evt_"));
        assert_eq!(a.len(), 4 + 32);
    }

    #[test]
    fn message_id_is_stable_per_pair_and_unambiguous() {
        let id = message_id("evt_1", "sub_2");
        assert_eq!(id, message_id("evt_1", "sub_2"));
        assert_ne!(id, message_id("evt_1", "sub_3"));
        assert_ne!(id, message_id("evt_2", "sub_2"));
        assert_ne!(message_id("ab", "c"), message_id("a", "bc"));
        assert!(id.starts_with("msg_"));
    }

    #[test]
    fn generated_ids_are_unique_and_prefixed() {
        let (a, b) = (new_event_id(), new_event_id());
        assert_ne!(a, b);
        assert!(a.starts_with("evt_") && new_subscription_id().starts_with("sub_"));
    }
}
