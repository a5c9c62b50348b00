//! One HTTP attempt: sign, POST, classify the answer. Connections go only to
//! addresses the egress policy permits; the resolver hands reqwest the checked
//! addresses, so the address checked is the address connected to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_domain::attempt::{truncate_body, AttemptOutcome, MAX_RESPONSE_BODY};
use hookline_domain::egress::EgressPolicy;
use hookline_domain::subscription::{PayloadMode, Subscription};
use hookline_domain::task::DeliveryTask;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

/// Resolves names, keeping only the addresses the policy permits.
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(format!("{host} resolves to no permitted address").into());
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered {
        /// HTTP status.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// Anything else.
    Failed {
        /// What kind of failure.
        class: AttemptOutcome,
        /// HTTP status, when there was an answer.
        status: Option<u16>,
        /// Human-readable detail (no secrets).
        detail: String,
        /// `Retry-After` in seconds, when given (429/503).
        retry_after: Option<Duration>,
        /// Start of the response body, when there was one.
        body: Option<String>,
    },
}

impl Outcome {
    /// Whether the endpoint answered (any status), as opposed to a timeout, a refused
    /// or failed connection, or a request never sent.
    pub fn answered(&self) -> bool {
        match self {
            Self::Delivered { .. } => true,
            Self::Failed { status, .. } => status.is_some(),
        }
    }

    /// Its class, for metrics, attempt records and logs.
    pub fn class(&self) -> AttemptOutcome {
        match self {
            Self::Delivered { .. } => AttemptOutcome::Success,
            Self::Failed { class, .. } => *class,
        }
    }
}

/// Sends webhook requests.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl Sender {
    /// A sender with pooled keep-alive connections, no redirects, and `timeout` per request.
    pub fn new(policy: EgressPolicy, timeout: Duration) -> anyhow::Result<Self> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(PolicyResolver {
                policy: Arc::clone(&policy),
            }))
            .build()?;
        Ok(Self { client, policy })
    }

    /// Signs and POSTs `task` to `subscription`'s URL.
    pub async fn attempt(
        &self,
        subscription: &Subscription,
        task: &DeliveryTask,
    ) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = self.send(subscription, task).await;
        (outcome, started.elapsed())
    }

    async fn send(&self, subscription: &Subscription, task: &DeliveryTask) -> Outcome {
        // Parsed once, when the subscription was validated.
        let url = subscription.url().clone();
        // Literal addresses never reach the resolver: check them here.
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.policy.permits(*ip)) {
            return failed(
                AttemptOutcome::Blocked,
                None,
                format!("address {ip} is not permitted"),
            );
        }
        let body = match subscription.payload() {
            PayloadMode::Full => task.event.webhook_body(),
            PayloadMode::Thin => task.event.thin_webhook_body(),
        };
        let body = match body {
            Ok(body) => body,
            Err(err) => return failed(AttemptOutcome::Error, None, err.to_string()),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = subscription
            .secret()
            .sign(&task.message_id, timestamp, &body);
        let mut headers = HeaderMap::new();
        // The subscription's own headers first: Hookline's below always win (names that
        // collide with them are refused when the subscription is saved).
        for (name, value) in subscription.headers() {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let mut put = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        put("webhook-id", &task.message_id);
        put("webhook-timestamp", &timestamp.to_string());
        put("webhook-signature", &signature);
        put("idempotency-key", &task.message_id);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("Hookline/", env!("CARGO_PKG_VERSION"))),
        );

        match self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(response) => classify(response).await,
            Err(err) if err.is_timeout() => {
                failed(AttemptOutcome::Timeout, None, "request timed out".into())
            }
            Err(err) if err.is_connect() => {
                failed(AttemptOutcome::Connect, None, error_chain(&err))
            }
            Err(err) => failed(AttemptOutcome::Error, None, error_chain(&err)),
        }
    }
}

/// A failure without an HTTP answer.
fn failed(class: AttemptOutcome, status: Option<u16>, detail: String) -> Outcome {
    Outcome::Failed {
        class,
        status,
        detail,
        retry_after: None,
        body: None,
    }
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of the answer; the rest is discarded.
async fn body_start(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < MAX_RESPONSE_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            _ => break,
        }
    }
    truncate_body(&kept)
}

async fn classify(response: reqwest::Response) -> Outcome {
    let status = response.status();
    if status.is_success() {
        return Outcome::Delivered {
            status: status.as_u16(),
            body: body_start(response).await,
        };
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Outcome::Failed {
        class: AttemptOutcome::of_status(status.as_u16()),
        status: Some(status.as_u16()),
        detail: format!("HTTP {status}"),
        retry_after,
        body: Some(body_start(response).await),
    }
}

/// The error and its causes on one line (reqwest hides the useful part in sources).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use chrono::Utc;
    use hookline_domain::event::{Defaults, Event};
    use hookline_domain::subscription::EventTypePattern;

    /// A real HTTP server on loopback answering each path its own way.
    async fn receiver() -> String {
        let app = axum::Router::new()
            .route(
                "/ok",
                post(|headers: HeaderMap| async move {
                    // The Standard Webhooks headers are all there.
                    let all = ["webhook-id", "webhook-timestamp", "webhook-signature"]
                        .iter()
                        .all(|h| headers.contains_key(*h));
                    if all {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::BAD_REQUEST
                    }
                }),
            )
            .route(
                "/busy",
                post(|| async { (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7")]) }),
            )
            .route(
                "/moved",
                post(|| async { (StatusCode::FOUND, [("location", "/ok")]) }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    StatusCode::OK
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    fn task_for(subscription: &Subscription) -> DeliveryTask {
        let event = Event::from_json(
            serde_json::json!({"type": "invoice.paid", "tenant": "acme", "data": {"n": 1}}),
            Defaults::Fresh,
        )
        .unwrap();
        DeliveryTask::new(event, subscription.id(), Utc::now())
    }

    async fn attempt(sender: &Sender, url: &str) -> Outcome {
        let subscription = Subscription::basic(
            "sub_sender",
            "acme",
            url.parse().unwrap(),
            vec![EventTypePattern::parse("*").unwrap()],
        );
        sender
            .attempt(&subscription, &task_for(&subscription))
            .await
            .0
    }

    fn loopback_allowed(timeout: Duration) -> Sender {
        let allow = EgressPolicy::parse_allow_list("127.0.0.0/8").unwrap();
        Sender::new(EgressPolicy::new(allow), timeout).unwrap()
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let base = receiver().await;
        let sender = loopback_allowed(Duration::from_secs(1));
        assert!(matches!(
            attempt(&sender, &format!("{base}/ok")).await,
            Outcome::Delivered { status: 204, .. }
        ));
        match attempt(&sender, &format!("{base}/busy")).await {
            Outcome::Failed {
                class,
                status,
                retry_after,
                ..
            } => {
                assert_eq!(class, AttemptOutcome::Http5xx);
                assert_eq!(status, Some(503));
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("{other:?}"),
        }
        // Redirects are never followed: a 3xx is a failed attempt.
        assert_eq!(
            attempt(&sender, &format!("{base}/moved")).await.class(),
            AttemptOutcome::Http3xx
        );
        assert_eq!(
            attempt(&sender, &format!("{base}/slow")).await.class(),
            AttemptOutcome::Timeout
        );
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        let base = receiver().await;
        let sender = Sender::new(EgressPolicy::new(Vec::new()), Duration::from_secs(1)).unwrap();
        assert_eq!(
            attempt(&sender, &format!("{base}/ok")).await.class(),
            AttemptOutcome::Blocked
        );
        // By name too: the resolver drops every address that is not permitted, so the
        // connection is never made.
        let port = base.rsplit(':').next().unwrap();
        match attempt(&sender, &format!("http://localhost:{port}/ok")).await {
            Outcome::Failed { class, detail, .. } => {
                assert_eq!(class, AttemptOutcome::Connect);
                assert!(detail.contains("no permitted address"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
}
