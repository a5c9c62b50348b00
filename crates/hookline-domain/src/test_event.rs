//! Test events: `POST /v1/subscriptions/{id}/test` sends a `webhook.test` event to one
//! subscription, as the test hooks receivers use to check their setup. The event goes
//! to that subscription alone (no type matching, channels or filter), through the
//! delivery pipeline like any other task: signed, held to the egress policy, retried.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::event::{Event, FieldError};
use crate::ids;
use crate::subscription::Subscription;
use crate::task::DeliveryTask;

/// The type of a test event.
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// How long the call waits for the attempt when neither the request nor the operator
/// (`HOOKLINE_SUBSCRIPTION_TEST_WAIT`) says.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The longest wait a request may ask for: a client's HTTP timeout is rarely longer.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The optional body of a test request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// How long to wait for the attempt's outcome (humantime, e.g. `5s`; `0s`: do not
    /// wait). At most [`MAX_WAIT`]; the operator's default when absent.
    pub wait: Option<String>,
}

impl TestRequest {
    /// The wait the request asks for (`default` when it does not say), or a field
    /// error naming `wait`.
    pub fn wait(&self, default: Duration) -> Result<Duration, FieldError> {
        let Some(text) = self.wait.as_deref() else {
            return Ok(default.min(MAX_WAIT));
        };
        let wait = crate::duration::parse_duration(text).map_err(|e| FieldError::new("wait", e))?;
        if wait > MAX_WAIT {
            return Err(FieldError::new(
                "wait",
                format!("at most {}s", MAX_WAIT.as_secs()),
            ));
        }
        Ok(wait)
    }
}

/// A fresh test event for `subscription` (a new id each time, so each test is its own
/// message with its own `webhook-id`), as a delivery task to it alone.
pub fn test_task(subscription: &Subscription, now: DateTime<Utc>) -> DeliveryTask {
    let event = Event {
        id: ids::new_event_id(),
        event_type: TEST_EVENT_TYPE.to_owned(),
        tenant: subscription.tenant().to_owned(),
        occurred_at: now,
        data: json!({
            "subscription_id": subscription.id().as_str(),
            "message": "A test event from Hookline: your endpoint received and can verify it.",
        })
        .into(),
        channels: Vec::new(),
    };
    DeliveryTask::new(event, subscription.id(), now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::EventTypePattern;

    fn subscription() -> Subscription {
        Subscription::basic(
            "sub_1",
            "acme",
            "https://erp.example/h".parse().unwrap(),
            vec![EventTypePattern::parse("invoice.*").unwrap()],
        )
    }

    #[test]
    fn a_test_task_targets_its_subscription_alone_with_a_fresh_message() {
        let now = Utc::now();
        let a = test_task(&subscription(), now);
        let b = test_task(&subscription(), now);
        assert_eq!(a.subscription_id.as_str(), "sub_1");
        assert_eq!(a.event.tenant, "acme");
        assert_eq!(a.event.event_type, TEST_EVENT_TYPE);
        assert_eq!(a.event.data.value()["subscription_id"], "sub_1");
        assert_eq!(a.attempts, 0);
        assert_ne!(a.message_id, b.message_id, "each test is its own message");
        assert_eq!(a.message_id, ids::message_id(&a.event.id, "sub_1"));
        // It is delivered though the subscription's patterns do not name it.
        assert!(!subscription().wants("acme", TEST_EVENT_TYPE));
    }

    #[test]
    fn the_wait_is_bounded_and_named_when_wrong() {
        let wait = |text: Option<&str>| {
            TestRequest {
                wait: text.map(str::to_owned),
            }
            .wait(DEFAULT_WAIT)
        };
        assert_eq!(wait(None).unwrap(), DEFAULT_WAIT);
        let short = TestRequest::default().wait(Duration::from_secs(1));
        assert_eq!(short.unwrap(), Duration::from_secs(1));
        assert_eq!(wait(Some("0s")).unwrap(), Duration::ZERO);
        assert_eq!(wait(Some("2s")).unwrap(), Duration::from_secs(2));
        assert_eq!(wait(Some("60s")).unwrap(), MAX_WAIT);
        for bad in ["61s", "soon", "5", ""] {
            let err = wait(Some(bad)).unwrap_err();
            assert_eq!(err.field, "wait", "{bad}");
        }
    }
}
