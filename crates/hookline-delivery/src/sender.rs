//! One HTTP attempt: sign, POST, classify the answer. Connections go only to
//! addresses the egress policy permits: reqwest resolves every new connection's host
//! through [`PolicyResolver`], which hands it only checked addresses, so the address
//! checked is the address connected to. Proxy variables of the environment are
//! ignored; an operator-configured egress proxy is described in `docs/security.md`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_core::trace;
use hookline_domain::attempt::{truncate_body, AttemptOutcome, MAX_RESPONSE_BODY};
use hookline_domain::egress::{EgressPolicy, UrlRules};
use hookline_domain::sealing::Keyring;
use hookline_domain::signing::WebhookSecret;
use hookline_domain::subscription::{PayloadMode, Subscription};
use hookline_domain::task::DeliveryTask;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

/// Looks a host name up: the system resolver ([`system_lookup`]), or a stub in tests.
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The operating system's resolver.
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(found.map(|a| a.ip()).collect())
        })
    })
}

/// Every address a name resolved to was refused by the egress policy.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to no permitted address (refused: {refused})")]
struct Refused {
    host: String,
    refused: String,
}

/// Resolves names, keeping only the addresses the policy permits (all of the
/// operator's egress proxy's, which the policy does not judge).
#[derive(Clone)]
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
    lookup: Lookup,
    proxy_host: Option<String>,
}

impl PolicyResolver {
    async fn permitted(
        &self,
        host: String,
    ) -> Result<Vec<IpAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let found = (self.lookup)(host.clone()).await?;
        if self.proxy_host.as_deref() == Some(host.as_str()) {
            return Ok(found);
        }
        let (permitted, refused): (Vec<IpAddr>, Vec<IpAddr>) =
            found.into_iter().partition(|ip| self.policy.permits(*ip));
        if permitted.is_empty() {
            let refused = refused
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Box::new(Refused { host, refused }));
        }
        Ok(permitted)
    }
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let permitted = resolver.permitted(name.as_str().to_owned()).await?;
            let addrs = permitted.into_iter().map(|ip| SocketAddr::new(ip, 0));
            Ok(Box::new(addrs) as Addrs)
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

/// How a [`Sender`] reaches receivers.
pub struct SenderConfig {
    /// Addresses it may connect to.
    pub policy: EgressPolicy,
    /// URLs it may send to (checked before every attempt).
    pub rules: UrlRules,
    /// Opens signing secrets and custom header values.
    pub keyring: Keyring,
    /// Timeout of one request.
    pub timeout: Duration,
    /// The operator's egress proxy, if any: every request goes through it.
    pub proxy: Option<url::Url>,
    /// How host names are looked up.
    pub lookup: Lookup,
    /// Whether requests carry the attempt span's `traceparent` (and `tracestate`).
    pub propagate_trace_context: bool,
}

impl SenderConfig {
    /// A configuration with the system resolver and no proxy.
    pub fn new(policy: EgressPolicy, rules: UrlRules, keyring: Keyring, timeout: Duration) -> Self {
        Self {
            policy,
            rules,
            keyring,
            timeout,
            proxy: None,
            lookup: system_lookup(),
            propagate_trace_context: false,
        }
    }
}

/// Sends webhook requests.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    resolver: PolicyResolver,
    rules: Arc<UrlRules>,
    keyring: Arc<Keyring>,
    propagate_trace_context: bool,
}

impl Sender {
    /// A sender with pooled keep-alive connections, no redirects, and the configured
    /// timeout per request.
    pub fn new(config: SenderConfig) -> anyhow::Result<Self> {
        let resolver = PolicyResolver {
            policy: Arc::new(config.policy),
            lookup: config.lookup,
            proxy_host: config
                .proxy
                .as_ref()
                .and_then(|p| p.host_str())
                .map(str::to_owned),
        };
        let builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(resolver.clone()));
        // HTTP(S)_PROXY and ALL_PROXY would send requests to a proxy the policy does not
        // see past: only a proxy the operator names explicitly is used.
        let builder = match &config.proxy {
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.as_str())?),
            None => builder.no_proxy(),
        };
        Ok(Self {
            client: builder.build()?,
            resolver,
            rules: Arc::new(config.rules),
            keyring: Arc::new(config.keyring),
            propagate_trace_context: config.propagate_trace_context,
        })
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
        // Parsed once, when the subscription was validated; checked again here, since a
        // record may reach the topic without the API, or the rules may have changed.
        let url = subscription.url().clone();
        if let Err(why) = self.rules.check(&url) {
            return failed(AttemptOutcome::Blocked, None, format!("url {why}"));
        }
        // Literal addresses never reach the resolver: check them here.
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.resolver.policy.permits(*ip)) {
            return failed(
                AttemptOutcome::Blocked,
                None,
                format!("address {ip} is not permitted"),
            );
        }
        // Through a proxy, reqwest resolves only the proxy's name: the destination's is
        // checked here (the proxy resolves it again; see docs/security.md).
        if let (Some(_), Some(url::Host::Domain(host))) = (&self.resolver.proxy_host, url.host()) {
            if let Err(err) = self.resolver.permitted(host.to_owned()).await {
                let class = if err.is::<Refused>() {
                    AttemptOutcome::Blocked
                } else {
                    AttemptOutcome::Connect
                };
                return failed(class, None, err.to_string());
            }
        }
        let opened = subscription
            .signing_secrets(&self.keyring, chrono::Utc::now())
            .and_then(|secrets| Ok((secrets, subscription.open_headers(&self.keyring)?)));
        let (secrets, custom) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                return failed(
                    AttemptOutcome::Error,
                    None,
                    format!("cannot open the subscription's secrets: {err}"),
                )
            }
        };
        let body = match subscription.payload() {
            PayloadMode::Full => task.event.webhook_body(),
            PayloadMode::Thin => task.event.thin_webhook_body(),
        };
        let body = match body {
            Ok(body) => body,
            Err(err) => return failed(AttemptOutcome::Error, None, err.to_string()),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = WebhookSecret::sign_all(&secrets, &task.message_id, timestamp, &body);
        let mut headers = HeaderMap::new();
        // The subscription's own headers first: Hookline's below always win (names that
        // collide with them are refused when the subscription is saved).
        for (name, value) in &custom {
            if let (Ok(name), Ok(mut value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                // Often a receiver's credentials: kept out of any Debug output.
                value.set_sensitive(true);
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
        // The attempt number from 1, as the attempt record counts it: receivers tell a
        // retry from a first try without keeping state (a redrive starts again at 1).
        put("webhook-attempt", &(task.attempts + 1).to_string());
        if self.propagate_trace_context {
            // Hookline's context replaces any the subscription set as a custom header.
            headers.remove(trace::TRACEPARENT);
            headers.remove(trace::TRACESTATE);
            // The current span is the attempt's (see `pipeline`): the receiver's spans
            // become its children. Nothing is written while traces are off.
            for (name, value) in trace::span_headers(&tracing::Span::current()) {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
        }
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
            Err(err) if refused(&err) => failed(AttemptOutcome::Blocked, None, error_chain(&err)),
            Err(err) if err.is_connect() => {
                failed(AttemptOutcome::Connect, None, error_chain(&err))
            }
            Err(err) => failed(AttemptOutcome::Error, None, error_chain(&err)),
        }
    }
}

/// Whether the egress policy refused every address of the request's host.
fn refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(cause) = current {
        if cause.is::<Refused>() {
            return true;
        }
        current = cause.source();
    }
    false
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
                    // The attempt number counts from 1 (the tasks sent here are fresh).
                    let first = headers.get("webhook-attempt").is_some_and(|v| v == "1");
                    if all && first {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::BAD_REQUEST
                    }
                }),
            )
            .route(
                "/attempt",
                post(|headers: HeaderMap| async move {
                    let attempt = headers
                        .get("webhook-attempt")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    (StatusCode::OK, attempt)
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

    fn keyring() -> Keyring {
        Keyring::parse(&Keyring::generate_entry("test")).unwrap()
    }

    fn config(allow: &str, timeout: Duration) -> SenderConfig {
        let allow = EgressPolicy::parse_allow_list(allow).unwrap();
        SenderConfig::new(
            EgressPolicy::new(allow),
            UrlRules::new(true, Vec::new()),
            keyring(),
            timeout,
        )
    }

    fn loopback_allowed(timeout: Duration) -> Sender {
        Sender::new(config("127.0.0.0/8", timeout)).unwrap()
    }

    /// A resolver answering from a table, never asking DNS.
    fn stub(table: &[(&'static str, &'static [&'static str])]) -> Lookup {
        let table: std::collections::HashMap<String, Vec<IpAddr>> = table
            .iter()
            .map(|(name, ips)| {
                (
                    name.to_string(),
                    ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                )
            })
            .collect();
        Arc::new(move |host: String| {
            let found = table.get(&host).cloned();
            Box::pin(async move {
                found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, host))
            })
        })
    }

    #[tokio::test]
    async fn every_request_carries_its_attempt_number_from_one() {
        let base = receiver().await;
        let sender = loopback_allowed(Duration::from_secs(1));
        let subscription = Subscription::basic(
            "sub_sender",
            "acme",
            format!("{base}/attempt").parse().unwrap(),
            vec![EventTypePattern::parse("*").unwrap()],
        );
        let mut task = task_for(&subscription);
        for (made, expected) in [(0, "1"), (1, "2"), (7, "8")] {
            task.attempts = made;
            match sender.attempt(&subscription, &task).await.0 {
                Outcome::Delivered { body, .. } => assert_eq!(body, expected, "after {made}"),
                other => panic!("{other:?}"),
            }
        }
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
    async fn hostile_urls_and_names_resolving_to_private_addresses_are_blocked() {
        let base = receiver().await;
        let port = base.rsplit(':').next().unwrap().to_owned();
        let table: &[(&str, &[&str])] = &[
            ("good.test", &["127.0.0.1"]),
            ("metadata.test", &["169.254.169.254"]),
            ("internal.test", &["10.0.0.5", "192.168.1.1"]),
            (
                "rebind.test",
                &["fd00::1", "::ffff:10.0.0.1", "::127.0.0.1"],
            ),
            (
                "tunnel.test",
                &["2002:a00:1::1", "2001::1", "64:ff9b:1::a00:1"],
            ),
            ("sitelocal.test", &["fec0::1", "192.88.99.1"]),
        ];
        let mut with_stub = config("127.0.0.1/32", Duration::from_secs(2));
        with_stub.lookup = stub(table);
        let sender = Sender::new(with_stub).unwrap();
        // The stub is in use: a name it maps to the allowed receiver is delivered.
        assert!(matches!(
            attempt(&sender, &format!("http://good.test:{port}/ok")).await,
            Outcome::Delivered { status: 204, .. }
        ));
        let hostile = [
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "http://[::ffff:169.254.169.254]/".to_owned(),
            "http://[::10.0.0.1]/".to_owned(),
            "http://[2002:7f00:1::1]/".to_owned(),
            "http://[2002:808:808::1]/".to_owned(),
            "http://[2001::1]/".to_owned(),
            "http://[64:ff9b:1::a00:1]/".to_owned(),
            "http://[64:ff9b::7f00:1]/".to_owned(),
            "http://[fec0::1]/".to_owned(),
            "http://192.88.99.1/".to_owned(),
            "http://[fd00::1]/".to_owned(),
            "http://10.0.0.1/".to_owned(),
            // Other spellings of 10.0.0.1 and 192.168.0.1, which the URL parser reads
            // as those addresses.
            "http://0xa000001/".to_owned(),
            "http://167772161/".to_owned(),
            "http://0300.0250.0.1/".to_owned(),
            format!("http://metadata.test:{port}/ok"),
            format!("http://internal.test:{port}/ok"),
            format!("http://rebind.test:{port}/ok"),
            format!("http://tunnel.test:{port}/ok"),
            format!("http://sitelocal.test:{port}/ok"),
        ];
        for url in hostile {
            match attempt(&sender, &url).await {
                Outcome::Failed { class, detail, .. } => {
                    assert_eq!(class, AttemptOutcome::Blocked, "{url}: {detail}");
                    assert!(
                        detail.contains("not permitted") || detail.contains("no permitted address"),
                        "{url}: {detail}"
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn urls_the_rules_refuse_are_blocked_before_any_connection() {
        let base = receiver().await;
        let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
        let mut strict = config("127.0.0.0/8", Duration::from_secs(1));
        strict.rules = UrlRules::default();
        let sender = Sender::new(strict).unwrap();
        match attempt(&sender, &format!("{base}/ok")).await {
            Outcome::Failed { class, detail, .. } => {
                assert_eq!(class, AttemptOutcome::Blocked);
                assert!(detail.contains("must be https"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let mut ports = config("127.0.0.0/8", Duration::from_secs(1));
        ports.rules = UrlRules::new(true, vec![443]);
        let sender = Sender::new(ports).unwrap();
        match attempt(&sender, &format!("{base}/ok")).await {
            Outcome::Failed { class, detail, .. } => {
                assert_eq!(class, AttemptOutcome::Blocked);
                assert!(detail.contains(&format!("port {port}")), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn private_addresses_are_refused_unless_allowed() {
        let base = receiver().await;
        let sender = Sender::new(config("", Duration::from_secs(1))).unwrap();
        assert_eq!(
            attempt(&sender, &format!("{base}/ok")).await.class(),
            AttemptOutcome::Blocked
        );
        // By name too: the resolver drops every address that is not permitted, so the
        // connection is never made.
        let port = base.rsplit(':').next().unwrap();
        match attempt(&sender, &format!("http://localhost:{port}/ok")).await {
            Outcome::Failed { class, detail, .. } => {
                assert_eq!(class, AttemptOutcome::Blocked);
                assert!(detail.contains("no permitted address"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
}
