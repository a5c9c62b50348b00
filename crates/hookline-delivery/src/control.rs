//! What delivery writes back about a subscription: its delivery health (the failure
//! clock and automatic disabling) on the health topic, which delivery workers alone
//! write, and the `subscription.disabled` operational event. Nothing here ever writes
//! the subscription's configuration record, which belongs to the API: an operator's
//! delete, disable or edit made while an attempt runs is never reverted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hookline_core::topics::Topics;
use hookline_domain::event::Event;
use hookline_domain::health::SubscriptionHealth;
use hookline_domain::ids::{self, SubscriptionId};
use hookline_domain::subscription::Subscription;
use serde_json::json;

use hookline_core::produce::{produce_durably, produce_json, OutRecord, RenewingProducer};

/// Type of the operational event published when the pipeline disables a subscription.
pub const SUBSCRIPTION_DISABLED: &str = "subscription.disabled";

/// How long this worker trusts its own last health write over its view's copy: long
/// enough for the write to reach the view, short enough that another worker's later
/// write (after a rebalance) wins.
const OWN_WRITE_TRUST: Duration = Duration::from_secs(10);

/// Writes subscription health.
pub struct HealthWriter {
    producer: RenewingProducer,
    topics: Topics,
    /// This worker's latest write per subscription, until its view shows it: tasks of
    /// one subscription run concurrently, and the view lags a write by a few ms.
    recent: Mutex<HashMap<SubscriptionId, (Option<SubscriptionHealth>, Instant)>>,
    disabled: prometheus::IntCounter,
}

impl HealthWriter {
    /// A writer producing with `producer`.
    pub fn new(
        producer: RenewingProducer,
        topics: Topics,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let disabled = prometheus::IntCounter::new(
            "hookline_delivery_subscriptions_disabled_total",
            "Subscriptions disabled by the pipeline (410 Gone or failing too long).",
        )?;
        registry.register(Box::new(disabled.clone()))?;
        Ok(Self {
            producer,
            topics,
            recent: Mutex::new(HashMap::new()),
            disabled,
        })
    }

    /// The health that holds for `subscription`: this worker's own recent write, else
    /// the view's.
    pub fn health(&self, subscription: &Subscription) -> Option<SubscriptionHealth> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let own = recent
            .get(subscription.id())
            .filter(|(_, at)| at.elapsed() < OWN_WRITE_TRUST)
            .map(|(health, _)| health.clone());
        own.unwrap_or_else(|| subscription.current_health().cloned())
            .filter(|h| h.applies_to(subscription.enabled_revision()))
    }

    /// Since when `subscription` has been failing, if it has.
    pub fn failing_since(&self, subscription: &Subscription) -> Option<DateTime<Utc>> {
        self.health(subscription).and_then(|h| h.failing_since)
    }

    async fn write(&self, id: &str, health: Option<SubscriptionHealth>) {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(SubscriptionId::from(id), (health.clone(), Instant::now()));
        let topic = self.topics.subscription_health();
        match &health {
            Some(health) => {
                produce_json(&self.producer, &topic, id, health).await;
            }
            None => produce_durably(&self.producer, &OutRecord::new(topic, id, None)).await,
        }
    }

    /// Starts the failure clock of `subscription` if it is not running.
    pub async fn mark_failing(&self, subscription: &Subscription, now: DateTime<Utc>) {
        if self.failing_since(subscription).is_some() {
            return;
        }
        let health = SubscriptionHealth::failing(subscription.enabled_revision(), now);
        self.write(subscription.id(), Some(health)).await;
    }

    /// Stops the failure clock after a success.
    pub async fn mark_healthy(&self, subscription: &Subscription) {
        if self.health(subscription).is_none() {
            return;
        }
        self.write(subscription.id(), None).await;
    }

    /// Forgets the health of a deleted subscription (a tombstone, so compaction drops it).
    pub async fn forget(&self, id: &str, known: bool) {
        if known {
            self.write(id, None).await;
        }
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Disables `subscription` (for its current enable generation) and tells its tenant
    /// with a `subscription.disabled` event. The event id derives from that
    /// generation, so workers racing to disable the same one publish the same event.
    pub async fn disable(&self, subscription: &Subscription, reason: &str) {
        let current = self.health(subscription);
        if current.as_ref().is_some_and(|h| h.disabled.is_some()) {
            return;
        }
        let now = Utc::now();
        let health = current
            .unwrap_or_else(|| SubscriptionHealth::failing(subscription.enabled_revision(), now))
            .disabled(reason, now);
        self.write(subscription.id(), Some(health)).await;
        tracing::warn!(subscription = %subscription.id(), tenant = %subscription.tenant(), reason, "subscription disabled");
        self.disabled.inc();

        let generation = format!("{}@{}", subscription.id(), subscription.enabled_revision());
        let event = Event {
            id: ids::operational_event_id(SUBSCRIPTION_DISABLED, &generation),
            event_type: SUBSCRIPTION_DISABLED.into(),
            tenant: subscription.tenant().to_owned(),
            occurred_at: now,
            data: json!({"subscription_id": subscription.id(), "url": subscription.url(), "reason": reason}).into(),
            channels: Vec::new(),
        };
        produce_json(&self.producer, &self.topics.events(), &event.id, &event).await;
    }
}
