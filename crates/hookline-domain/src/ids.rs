//! Identifiers: generated ones are prefixed ULIDs (time-sortable); derived ones are
//! deterministic hashes, so that re-processing the same input yields the same id.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Declares a string newtype for one kind of id: serialized as the bare string, read as
/// `&str` where text is needed, never mixed up with another kind of id.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

string_id!(
    /// An event's id (`evt_…` when Hookline made it; any non-empty text from producers).
    EventId
);
string_id!(
    /// A subscription's id (`sub_…`).
    SubscriptionId
);
string_id!(
    /// A delivery's id, sent as `webhook-id` and `idempotency-key` (`msg_…`).
    MessageId
);

/// Prefix of event ids.
pub const EVENT_ID_PREFIX: &str = "evt_";
/// Prefix of subscription ids.
pub const SUBSCRIPTION_ID_PREFIX: &str = "sub_";
/// Prefix of webhook message ids (`webhook-id`).
pub const MESSAGE_ID_PREFIX: &str = "msg_";

/// A new, time-sortable event id.
pub fn new_event_id() -> EventId {
    EventId(format!("{EVENT_ID_PREFIX}{}", ulid::Ulid::new()))
}

/// A new, time-sortable subscription id.
pub fn new_subscription_id() -> SubscriptionId {
    SubscriptionId(format!("{SUBSCRIPTION_ID_PREFIX}{}", ulid::Ulid::new()))
}

/// The id of an event that arrived on a topic without one: a hash of where it sits,
/// so every router (and every re-read after a crash) derives the same id.
pub fn derived_event_id(topic: &str, partition: i32, offset: i64) -> EventId {
    EventId(format!(
        "{EVENT_ID_PREFIX}{}",
        short_hash(&[
            topic.as_bytes(),
            &partition.to_be_bytes(),
            &offset.to_be_bytes()
        ])
    ))
}

/// The Hookline id of a CloudEvent: unique per (`source`, `id`), as CloudEvents are.
pub fn cloudevent_id(source: &str, id: &str) -> EventId {
    EventId(format!(
        "{EVENT_ID_PREFIX}{}",
        short_hash(&[source.as_bytes(), id.as_bytes()])
    ))
}

/// The `webhook-id` of one event's delivery to one subscription: stable across
/// retries, redrives and replays, unique per (event, subscription).
pub fn message_id(event_id: &str, subscription_id: &str) -> MessageId {
    MessageId(format!(
        "{MESSAGE_ID_PREFIX}{}",
        short_hash(&[event_id.as_bytes(), subscription_id.as_bytes()])
    ))
}

/// The id of an event Hookline itself publishes (`kind`, e.g. `subscription.disabled`)
/// about `subject` (e.g. one version of a subscription): two processes publishing the
/// same fact derive the same id.
pub fn operational_event_id(kind: &str, subject: &str) -> EventId {
    EventId(format!(
        "{EVENT_ID_PREFIX}{}",
        short_hash(&[kind.as_bytes(), subject.as_bytes()])
    ))
}

/// The id of the `index`-th event of a request sent with an idempotency key, when the
/// producer gave the event no id: the same for every retry of that request (same
/// tenant, key and body fingerprint), so a retry after a crash between writing the
/// events and recording the request as completed writes the same ids again.
pub fn idempotent_event_id(tenant: &str, key: &str, fingerprint: &str, index: usize) -> EventId {
    EventId(format!(
        "{EVENT_ID_PREFIX}{}",
        short_hash(&[
            b"idempotency-key",
            tenant.as_bytes(),
            key.as_bytes(),
            fingerprint.as_bytes(),
            &(index as u64).to_be_bytes()
        ])
    ))
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
