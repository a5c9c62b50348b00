//! A JSON client of ingest's HTTP API.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::wait::eventually;

/// A JSON API client for ingest.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client of the ingest at `base`, sending the deployment's
    /// [`ADMIN_TOKEN`](crate::process::ADMIN_TOKEN).
    pub fn new(base: String) -> Self {
        Self::anonymous(base).with_token(crate::process::ADMIN_TOKEN)
    }

    /// A client of the ingest at `base` sending no credential.
    pub fn anonymous(base: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            token: None,
        }
    }

    /// Sends `token` (the admin token or a tenant API key) from now on.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Creates an API key of `tenant` with `roles` (this client must be the admin's);
    /// returns (key id, key).
    pub async fn create_key(
        &self,
        tenant: &str,
        roles: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let (status, created) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/api-keys"),
                Some(serde_json::json!({ "roles": roles })),
            )
            .await?;
        anyhow::ensure!(status == 201, "create API key: {status} {created}");
        Ok((
            created["id"].as_str().unwrap_or_default().to_owned(),
            created["key"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// The subscription as the API shows it.
    pub async fn subscription(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/v1/subscriptions/{id}"),
                None,
            )
            .await?
            .1)
    }

    /// A subscription's attempts, newest first (none when they cannot be read).
    pub async fn attempts(&self, id: &str) -> Vec<Value> {
        match self
            .call(
                reqwest::Method::GET,
                &format!("/v1/subscriptions/{id}/attempts"),
                None,
            )
            .await
        {
            Ok((_, body)) => body["data"].as_array().cloned().unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Polls a subscription's attempts (newest first) until `done` holds or `patience`
    /// passes; returns the last list read.
    pub async fn wait_attempts(
        &self,
        id: &str,
        patience: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let last = Mutex::new(Vec::new());
        eventually(patience, || async {
            let attempts = self.attempts(id).await;
            let held = done(&attempts);
            if let Ok(mut last) = last.lock() {
                *last = attempts;
            }
            held
        })
        .await;
        last.into_inner().unwrap_or_default()
    }

    /// Polls job `id` until `done` holds for it or `patience` passes; returns the job
    /// as last read (`Null` if never).
    pub async fn wait_job(
        &self,
        id: &str,
        patience: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let last = Mutex::new(Value::Null);
        eventually(patience, || async {
            let job = match self
                .call(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
                .await
            {
                Ok((200, job)) => job,
                _ => return false,
            };
            let held = done(&job);
            if let Ok(mut last) = last.lock() {
                *last = job;
            }
            held
        })
        .await;
        last.into_inner().unwrap_or_default()
    }

    /// Starts a job (`POST path`, answered `202` with the job and its `Location`),
    /// then polls it until it is finished (within 60 s); returns the finished job.
    pub async fn run_job(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, job) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        anyhow::ensure!(status == 202, "start a job: {status} {job}");
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        let done = self
            .wait_job(&id, Duration::from_secs(60), |job| {
                matches!(
                    job["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .await;
        anyhow::ensure!(
            done["status"] == "succeeded",
            "job {id} did not succeed: {done}"
        );
        Ok(done)
    }

    /// Any request; returns status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A raw-body POST.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Creates a subscription; returns (id, secret).
    pub async fn subscribe(&self, body: Value) -> anyhow::Result<(String, String)> {
        let (status, created) = self
            .call(reqwest::Method::POST, "/v1/subscriptions", Some(body))
            .await?;
        anyhow::ensure!(status == 201, "create subscription: {status} {created}");
        Ok((
            created["id"].as_str().unwrap_or_default().to_owned(),
            created["secret"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    /// Posts events; returns their ids.
    pub async fn send_events(&self, events: Value) -> anyhow::Result<Vec<String>> {
        let (status, body) = self
            .call(reqwest::Method::POST, "/v1/events", Some(events))
            .await?;
        anyhow::ensure!(status == 202, "post events: {status} {body}");
        Ok(body["ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}
