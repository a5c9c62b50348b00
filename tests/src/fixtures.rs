//! Fixtures: the whole pipeline of one test, and helpers to compare what a test got.

use serde_json::Value;

use crate::api::Api;
use crate::process::{Deployment, Proc};
use crate::receiver::Receiver;

/// The three binaries on one deployment, a receiver, and an API client.
pub struct Pipeline {
    /// The deployment (prefix, environment).
    pub deployment: Deployment,
    /// hookline-ingest.
    pub ingest: Proc,
    /// hookline-router.
    pub router: Proc,
    /// hookline-delivery workers.
    pub workers: Vec<Proc>,
    /// The receiver all test subscriptions point at.
    pub receiver: Receiver,
    /// Client of the ingest API.
    pub api: Api,
}

impl Pipeline {
    /// Starts ingest, router and one delivery worker.
    pub async fn start(deployment: Deployment) -> anyhow::Result<Self> {
        let ingest = deployment.start("hookline-ingest").await?;
        let router = deployment.start("hookline-router").await?;
        let workers = vec![deployment.start("hookline-delivery").await?];
        let receiver = Receiver::start().await?;
        let api = Api::new(ingest.url());
        Ok(Self {
            deployment,
            ingest,
            router,
            workers,
            receiver,
            api,
        })
    }

    /// Creates a subscription of `tenant` to `patterns` at the receiver's `path`;
    /// `extra` fields are merged into the request. Returns (id, secret).
    pub async fn subscribe(
        &self,
        tenant: &str,
        patterns: &[&str],
        path: &str,
        extra: Value,
    ) -> anyhow::Result<(String, String)> {
        let mut body = serde_json::json!({"tenant": tenant, "url": self.receiver.url(path), "event_types": patterns});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.api.subscribe(body).await
    }

    /// Sends `count` events of `event_type` for `tenant`, with `data.seq` 0..count.
    pub async fn send(
        &self,
        tenant: &str,
        event_type: &str,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::new();
        let all: Vec<usize> = (0..count).collect();
        for chunk in all.chunks(500) {
            let events: Vec<Value> = chunk
                .iter()
                .map(|seq| serde_json::json!({"type": event_type, "tenant": tenant, "data": {"seq": seq}}))
                .collect();
            ids.extend(self.api.send_events(Value::Array(events)).await?);
        }
        Ok(ids)
    }
}

/// Asserts two sets are equal, showing only what differs (at most 20 of each side).
pub fn assert_same<T: Ord + std::fmt::Debug>(
    got: &std::collections::BTreeSet<T>,
    want: &std::collections::BTreeSet<T>,
    what: &str,
) {
    let missing: Vec<&T> = want.difference(got).take(20).collect();
    let unexpected: Vec<&T> = got.difference(want).take(20).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{what}: {} expected, {} got; missing (first 20): {missing:?}; unexpected (first 20): {unexpected:?}",
        want.len(),
        got.len()
    );
}
