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

async fn write(context: &Context, subscription: &Subscription) {
    match serde_json::to_vec(subscription) {
        Ok(payload) => {
            produce_durably(
                &context.producer,
                &context.topics.subscriptions(),
                subscription.id.as_bytes(),
                Some(&payload),
                None,
            )
            .await
        }
        Err(err) => tracing::error!(%err, "subscription not serializable"),
    }
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
    match serde_json::to_vec(&event) {
        Ok(payload) => {
            produce_durably(
                &context.producer,
                &context.topics.events(),
                event.id.as_bytes(),
                Some(&payload),
                None,
            )
            .await
        }
        Err(err) => tracing::error!(%err, "event not serializable"),
    }
}
