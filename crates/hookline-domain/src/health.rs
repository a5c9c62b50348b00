//! Delivery health of a subscription: its failure clock and whether the pipeline
//! disabled it. Health is owned by delivery workers and lives in a topic of its own
//! (`<prefix>subscriptions.health`, compacted, keyed by subscription id), apart from
//! the configuration the API owns, so that neither party ever rewrites the other's
//! record from a stale copy.
//!
//! A health record names the *enable generation* of the configuration it applies to
//! ([`Subscription::enabled_revision`](crate::subscription::Subscription)); an operator
//! re-enabling a subscription starts a new generation, which leaves older health
//! records without effect: the failure clock restarts and an automatic disable no
//! longer holds.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One subscription's delivery health, as written by delivery workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionHealth {
    /// The enable generation of the subscription this record applies to.
    pub enabled_revision: u64,
    /// Since when its endpoint has failed without a success in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    /// Set when the pipeline disabled the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<AutoDisable>,
}

/// Why and when the pipeline disabled a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoDisable {
    /// Human-readable reason (`endpoint answered 410 Gone`, …).
    pub reason: String,
    /// When it was disabled.
    pub at: DateTime<Utc>,
}

impl SubscriptionHealth {
    /// A failure clock started at `since` for enable generation `enabled_revision`.
    pub fn failing(enabled_revision: u64, since: DateTime<Utc>) -> Self {
        Self {
            enabled_revision,
            failing_since: Some(since),
            disabled: None,
        }
    }

    /// This health with the subscription disabled for `reason` at `at`.
    pub fn disabled(mut self, reason: &str, at: DateTime<Utc>) -> Self {
        self.disabled = Some(AutoDisable {
            reason: reason.to_owned(),
            at,
        });
        self
    }

    /// Whether this record still holds for a subscription of generation `enabled_revision`.
    pub fn applies_to(&self, enabled_revision: u64) -> bool {
        self.enabled_revision == enabled_revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_applies_to_its_generation_only() {
        let at = Utc::now();
        let health = SubscriptionHealth::failing(3, at).disabled("gone", at);
        let text = serde_json::to_string(&health).unwrap();
        assert_eq!(
            serde_json::from_str::<SubscriptionHealth>(&text).unwrap(),
            health
        );
        assert!(health.applies_to(3));
        assert!(!health.applies_to(4));
        assert_eq!(
            serde_json::to_value(SubscriptionHealth::default()).unwrap(),
            serde_json::json!({"enabled_revision": 0})
        );
    }
}
