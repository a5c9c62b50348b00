//! Topic names, all derived from one prefix (`HOOKLINE_TOPIC_PREFIX`).

/// The topics of one Hookline deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics named `<prefix><name>`, e.g. `hookline.events`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Incoming finance events (written by ingest and by producers directly).
    pub fn events(&self) -> String {
        self.name("events")
    }

    /// Event records the router could not read, with the reason in headers.
    pub fn events_dlq(&self) -> String {
        self.name("events.dlq")
    }

    /// Subscriptions, compacted, keyed by subscription id.
    pub fn subscriptions(&self) -> String {
        self.name("subscriptions")
    }

    /// Delivery health per subscription (failure clock, automatic disabling), compacted,
    /// keyed by subscription id; written by delivery workers only.
    pub fn subscription_health(&self) -> String {
        self.name("subscriptions.health")
    }

    /// Tenant API keys (hashes only), compacted, keyed by key id; a revoked key is a
    /// tombstone. Written by the ingest API only.
    pub fn api_keys(&self) -> String {
        self.name("api-keys")
    }

    /// Event types added through the admin API (with their JSON Schemas), compacted,
    /// keyed by type name; a deleted type is a tombstone. Written by the ingest API only.
    pub fn event_types(&self) -> String {
        self.name("event-types")
    }

    /// Delivery tasks: one per (event, matching subscription), keyed by subscription.
    pub fn deliveries(&self) -> String {
        self.name("deliveries")
    }

    /// Delivery tasks that could not be delivered, with the last error.
    pub fn deliveries_dlq(&self) -> String {
        self.name("deliveries.dlq")
    }

    /// Delivery tasks waiting for their next attempt, one topic per delay tier
    /// (`deliveries.retry.5m`).
    pub fn deliveries_retry(&self, tier: std::time::Duration) -> String {
        self.name(&format!(
            "deliveries.retry.{}",
            hookline_domain::retry::tier_name(tier)
        ))
    }

    /// A librdkafka subscription pattern matching every retry tier topic, current or
    /// left over from an earlier schedule.
    pub fn deliveries_retry_pattern(&self) -> String {
        format!("^{}deliveries\\.retry\\..+", regex_escape(&self.prefix))
    }

    /// Whether `topic` is a retry tier topic of this deployment.
    pub fn is_deliveries_retry(&self, topic: &str) -> bool {
        topic.strip_prefix(&self.prefix).is_some_and(|rest| {
            rest.starts_with("deliveries.retry.") && rest.len() > "deliveries.retry.".len()
        })
    }

    /// Idempotency claims and completions of `POST /v1/events` (`Idempotency-Key`,
    /// producer-supplied event ids): one partition, so the log order decides races;
    /// time retention past the idempotency window. Written and read by ingest only.
    pub fn idempotency(&self) -> String {
        self.name("idempotency")
    }

    /// One record per delivery attempt.
    pub fn attempts(&self) -> String {
        self.name("attempts")
    }

    /// Background jobs (replay, redrive), compacted: a job's record keyed by job id,
    /// written only by the ingest instance running it; a cancel asked for it keyed
    /// `<job id>/cancel`, written by the instance that took the request.
    pub fn jobs(&self) -> String {
        self.name("jobs")
    }
}

/// Escapes the characters a POSIX extended regular expression treats specially.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let t = Topics::new("test-1.");
        assert_eq!(t.events(), "test-1.events");
        assert_eq!(t.events_dlq(), "test-1.events.dlq");
        assert_eq!(t.subscriptions(), "test-1.subscriptions");
        assert_eq!(t.api_keys(), "test-1.api-keys");
        assert_eq!(t.event_types(), "test-1.event-types");
        assert_eq!(t.deliveries(), "test-1.deliveries");
        assert_eq!(t.deliveries_dlq(), "test-1.deliveries.dlq");
        assert_eq!(
            t.deliveries_retry(std::time::Duration::from_secs(300)),
            "test-1.deliveries.retry.5m"
        );
        assert_eq!(t.attempts(), "test-1.attempts");
        assert_eq!(t.idempotency(), "test-1.idempotency");
        assert_eq!(t.jobs(), "test-1.jobs");
        assert_eq!(
            t.deliveries_retry_pattern(),
            "^test-1\\.deliveries\\.retry\\..+"
        );
        assert!(t.is_deliveries_retry("test-1.deliveries.retry.5m"));
        assert!(!t.is_deliveries_retry("test-1.deliveries.retry."));
        assert!(!t.is_deliveries_retry("test-1.deliveries"));
        assert!(!t.is_deliveries_retry("other.deliveries.retry.5m"));
    }
}
