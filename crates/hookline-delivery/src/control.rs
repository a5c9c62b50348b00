//! What delivery writes back to the control plane: a subscription's failure clock,
//! disabling a dead endpoint, and the `subscription.disabled` operational event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hookline_core::event::Event;
use hookline_core::ids;
use hookline_core::subscription::Subscription;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::json;

use crate::pipeline::Context;

/// Type of the operational event published when the pipeline disables a subscription.
pub const SUBSCRIPTION_DISABLED: &str = "subscription.disabled";

/// Produces one record, retrying until Kafka acknowledges it.
pub async fn produce_durably(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: Option<&[u8]>,
    headers: Option<rdkafka::message::OwnedHeaders>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(headers) = &headers {
            record = record.headers(headers.clone());
        }
        match producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err((err, _)) => {
                tracing::error!(%err, topic, "write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes `value` as JSON, retrying until Kafka acknowledges it. Returns false only
/// when the value cannot be serialized (logged; nothing is written).
pub async fn produce_json<T: serde::Serialize>(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &T,
) -> bool {
    match serde_json::to_vec(value) {
        Ok(payload) => {
            produce_durably(producer, topic, key.as_bytes(), Some(&payload), None).await;
            true
        }
        Err(err) => {
            tracing::error!(%err, topic, "record not serializable; not written");
            false
        }
    }
}

async fn write(context: &Context, subscription: &Subscription) {
    let topic = context.topics.subscriptions();
    produce_json(&context.producer, &topic, &subscription.id, subscription).await;
}

/// Starts the failure clock of `subscription` if it is not running.
pub async fn mark_failing(context: &Context, subscription: &Subscription, now: DateTime<Utc>) {
    if subscription.failing_since.is_some() {
        return;
    }
    let mut next = subscription.clone();
    next.failing_since = Some(now);
    write(context, &next).await;
}

/// Stops the failure clock after a success.
pub async fn mark_healthy(context: &Context, subscription: &Subscription) {
    if subscription.failing_since.is_none() {
        return;
    }
    let mut next = subscription.clone();
    next.failing_since = None;
    write(context, &next).await;
}

/// Disables `subscription` and tells its tenant with a `subscription.disabled` event.
/// The event id derives from the subscription version disabled, so workers racing to
/// disable the same version publish the same event.
pub async fn disable(context: &Context, subscription: &Subscription, reason: &str) {
    if !subscription.enabled {
        return;
    }
    let now = Utc::now();
    let mut next = subscription.clone();
    next.enabled = false;
    next.disabled_reason = Some(reason.to_owned());
    next.updated_at = now;
    write(context, &next).await;
    tracing::warn!(subscription = %subscription.id, tenant = %subscription.tenant, reason, "subscription disabled");
    context.metrics_disabled();

    let version = format!(
        "{}@{}",
        subscription.id,
        subscription.updated_at.timestamp_micros()
    );
    let event = Event {
        id: ids::operational_event_id(SUBSCRIPTION_DISABLED, &version),
        event_type: SUBSCRIPTION_DISABLED.into(),
        tenant: subscription.tenant.clone(),
        occurred_at: now,
        data: json!({"subscription_id": subscription.id, "url": subscription.url, "reason": reason}),
        channels: Vec::new(),
    };
    produce_json(
        &context.producer,
        &context.topics.events(),
        &event.id,
        &event,
    )
    .await;
}
