//! Harness for Hookline's end-to-end tests: the real binaries as child processes, a
//! real Kafka broker (started by `deploy/local/kafka.sh`), and real HTTP receivers.
//!
//! The broker address comes from `HOOKLINE_TEST_KAFKA_BROKERS` (default
//! `127.0.0.1:19092`, the port `scripts/test.sh` starts). Every test gets its own topic
//! prefix and consumer groups, so tests run side by side on one broker. A test that
//! needs a broker of its own (a cold start) starts one with [`Broker::launch`].
//!
//! The binaries see only the deployment's environment on top of the caller's minus
//! every `HOOKLINE_*` variable (see [`is_stray`]): a setting exported in the developer's
//! shell never changes what a test runs.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

/// The broker the tests use.
pub fn brokers() -> String {
    std::env::var("HOOKLINE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A free TCP port on loopback.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HOOKLINE_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// Whether an inherited environment variable is a Hookline setting the harness must not
/// pass on to the binaries it starts: every `HOOKLINE_*` except the harness's own
/// (`HOOKLINE_TEST_*`, `HOOKLINE_BIN_DIR`).
pub fn is_stray(key: &OsStr) -> bool {
    let key = key.to_string_lossy();
    key.starts_with("HOOKLINE_") && !key.starts_with("HOOKLINE_TEST_") && key != "HOOKLINE_BIN_DIR"
}

/// One test's deployment: a topic prefix and the environment every binary shares.
#[derive(Clone)]
pub struct Deployment {
    /// Topic prefix, unique to the test.
    pub prefix: String,
    /// Environment passed to every binary.
    pub env: HashMap<String, String>,
    /// The environment the binaries are started from, stray variables and all; `None`
    /// for this process's own (see [`with_caller_env`](Self::with_caller_env)).
    caller_env: Option<Vec<(OsString, OsString)>>,
}

impl Deployment {
    /// A fresh prefix (`t<ulid>.`) and groups on the test broker; 4 partitions per topic.
    pub fn new() -> Self {
        Self::on(&brokers())
    }

    /// Like [`new`](Self::new), on the broker at `brokers` (e.g. a [`Broker`] of the test's own).
    pub fn on(brokers: &str) -> Self {
        let prefix = format!("t{}.", ulid::Ulid::new().to_string().to_lowercase());
        let env = [
            ("HOOKLINE_KAFKA_BROKERS", brokers.to_owned()),
            ("HOOKLINE_TOPIC_PREFIX", prefix.clone()),
            ("HOOKLINE_TOPIC_PARTITIONS", "4".into()),
            ("HOOKLINE_ROUTER_GROUP", format!("{prefix}router")),
            ("HOOKLINE_DELIVERY_GROUP", format!("{prefix}delivery")),
            ("HOOKLINE_DELIVERY_ALLOW_CIDRS", "127.0.0.0/8".into()),
            ("RUST_LOG", "info,rdkafka=warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            prefix,
            env,
            caller_env: None,
        }
    }

    /// Starts the binaries from `caller_env` instead of this process's environment, as
    /// if the tests had been run from a shell that exported exactly that. Stray
    /// `HOOKLINE_*` variables in it are dropped all the same ([`command`](Self::command)).
    /// Lets a test try settings of the caller's without changing the environment of a
    /// test process shared with other tests.
    pub fn with_caller_env<K, V>(mut self, caller_env: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.caller_env = Some(
            caller_env
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Sets one more environment variable for binaries started after this.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    /// Full name of a topic, e.g. `topic("events")`.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// A command running `program` with the caller's environment (this process's, or
    /// the one given to [`with_caller_env`](Self::with_caller_env)) minus every stray
    /// `HOOKLINE_*` variable ([`is_stray`]), plus the deployment's environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let caller: Vec<(OsString, OsString)> = match &self.caller_env {
            Some(env) => env.clone(),
            None => std::env::vars_os().collect(),
        };
        let mut command = Command::new(program);
        command
            .env_clear()
            .envs(caller.into_iter().filter(|(key, _)| !is_stray(key)))
            .envs(&self.env);
        command
    }

    /// Runs `binary args…` to completion (a one-off command such as `redrive`).
    pub fn run(&self, binary: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(self.command(bin_dir().join(binary)).args(args).output()?)
    }

    /// Starts `binary` on a free port and waits until its `/readyz` answers 200.
    pub async fn start(&self, binary: &str) -> anyhow::Result<Proc> {
        self.start_with(binary, &[]).await
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub async fn start_with(&self, binary: &str, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut proc = self.spawn_with(binary, extra)?;
        // A worker or router is ready once its group assigned it partitions; one that
        // replaces a killed member waits for that member's session to time out (45 s).
        proc.wait_ready(Duration::from_secs(90)).await?;
        Ok(proc)
    }

    /// Starts `binary` on a free port without waiting for it to be ready (see
    /// [`Proc::wait_ready`]).
    pub fn spawn(&self, binary: &str) -> anyhow::Result<Proc> {
        self.spawn_with(binary, &[])
    }

    /// Like [`spawn`](Self::spawn), with extra environment variables.
    pub fn spawn_with(&self, binary: &str, extra: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let addr = free_addr();
        let path = bin_dir().join(binary);
        if !path.exists() {
            bail!(
                "{} missing: run `cargo build --workspace --bins` first",
                path.display()
            );
        }
        let log_path =
            std::env::temp_dir().join(format!("{}{binary}-{}.log", self.prefix, addr.port()));
        let log = std::fs::File::create(&log_path)?;
        let child = self
            .command(&path)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .env("HOOKLINE_HTTP_ADDR", addr.to_string())
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", path.display()))?;
        Ok(Proc {
            child,
            addr,
            log_path,
            name: binary.to_owned(),
        })
    }
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

/// A running binary; killed when dropped.
pub struct Proc {
    child: Child,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Where its logs go.
    pub log_path: PathBuf,
    name: String,
}

impl Proc {
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `/readyz` answers 200; fails when the process exits or `patience` passes.
    pub async fn wait_ready(&mut self, patience: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} during start; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(response) = client.get(format!("{}/readyz", self.url())).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not ready after {patience:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The sum of every series of metric `name` on the process's `/metrics`. `name` may
    /// carry the start of a label set to select series, e.g. `x_total{outcome="ok"`.
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(response) = reqwest::get(format!("{}/metrics", self.url())).await else {
            return 0.0;
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| {
                line.starts_with(name)
                    && (name.contains('{') || line[name.len()..].starts_with(['{', ' ']))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until metric `name` reaches `at_least`; returns whether it did.
    pub async fn wait_metric(&self, name: &str, at_least: f64, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            if self.metric(name).await >= at_least {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Resident memory of the process in KiB (`VmRSS`), 0 when unreadable.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL, no chance to commit anything.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// A broker of a test's own: `deploy/local/kafka.sh` on a free port (the next port is
/// its controller's) with a fresh state directory. It starts in the background, so a
/// test can start the binaries at the same moment; stopped, and its state removed, when
/// dropped. The caller's `HOOKLINE_KAFKA_VERSION` and `HOOKLINE_KAFKA_CACHE` apply, as
/// for the suite's own broker.
pub struct Broker {
    port: u16,
    home: PathBuf,
    /// `kafka.sh start` while it runs: it returns once the broker answers.
    starter: Option<Child>,
}

impl Broker {
    /// Begins starting a brand-new broker and returns at once.
    pub fn launch() -> anyhow::Result<Self> {
        let port = free_port_pair()?;
        let home = std::env::temp_dir().join(format!(
            "hookline-broker-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::create_dir_all(&home)?;
        let log = std::fs::File::create(home.join("kafka.sh.log"))?;
        let starter = kafka_sh(port, &home)
            .arg("start")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("running deploy/local/kafka.sh start")?;
        Ok(Self {
            port,
            home,
            starter: Some(starter),
        })
    }

    /// Its bootstrap address, `127.0.0.1:<port>`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Waits until `kafka.sh start` reported the broker up (it answers on its port and
    /// logged that it started).
    pub async fn wait_started(&mut self, patience: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        while let Some(starter) = &mut self.starter {
            match starter.try_wait()? {
                Some(status) if status.success() => self.starter = None,
                Some(status) => bail!(
                    "kafka.sh start failed ({status}):\n{}",
                    std::fs::read_to_string(self.home.join("kafka.sh.log")).unwrap_or_default()
                ),
                None if tokio::time::Instant::now() > deadline => {
                    bail!("broker not started after {patience:?}")
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.home.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut starter) = self.starter.take() {
            let _ = starter.kill();
            let _ = starter.wait();
        }
        let _ = kafka_sh(self.port, &self.home)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn kafka_sh(port: u16, home: &FsPath) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kafka.sh");
    let mut command = Command::new(script);
    command
        .env("HOOKLINE_KAFKA_PORT", port.to_string())
        .env("HOOKLINE_KAFKA_HOME", home);
    command
}

/// A free loopback port whose successor is free too (a broker's controller port).
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no two consecutive free ports found")
}

/// One webhook request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path segment after `/hooks/`.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// The body parsed.
    pub json: Value,
    /// The status the receiver answered.
    pub status: u16,
    /// When the request arrived.
    pub arrived: std::time::Instant,
}

impl Received {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a receiver answers requests on one path.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 204 at once.
    Ok,
    /// This status for the first `n` requests, then 204.
    FailFirst(u16, usize),
    /// Always this status.
    Always(u16),
    /// Hold the request this long, then 204.
    Hang(Duration),
    /// This status with `Retry-After: <seconds>` for the first `n` requests, then 204.
    RetryAfter(u16, u64, usize),
    /// `302 Found` to this URL, always.
    Redirect(&'static str),
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<HashMap<String, Behaviour>>,
    counts: Mutex<HashMap<String, usize>>,
    /// Requests being handled per path: (now, most ever).
    concurrency: Mutex<HashMap<String, (usize, usize)>>,
}

impl ReceiverState {
    fn enter(&self, path: &str) {
        if let Ok(mut map) = self.concurrency.lock() {
            let entry = map.entry(path.to_owned()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(entry.0);
        }
    }

    fn leave(&self, path: &str) {
        if let Ok(mut map) = self.concurrency.lock() {
            if let Some(entry) = map.get_mut(path) {
                entry.0 = entry.0.saturating_sub(1);
            }
        }
    }
}

/// A real HTTP receiver on loopback that records every request to `/hooks/{path}`.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// Starts a receiver; every path answers 204 unless told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts a receiver on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new()
            .route("/hooks/{path}", post(on_request))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { base, state })
    }

    /// When each request on `path` arrived, in order.
    pub fn arrivals(&self, path: &str) -> Vec<std::time::Instant> {
        self.on(path).iter().map(|r| r.arrived).collect()
    }

    /// The URL of one path.
    pub fn url(&self, path: &str) -> String {
        format!("{}/hooks/{path}", self.base)
    }

    /// Sets how `path` answers.
    pub fn behave(&self, path: &str, behaviour: Behaviour) {
        if let Ok(mut map) = self.state.behaviour.lock() {
            map.insert(path.to_owned(), behaviour);
        }
    }

    /// Requests that reached `path` so far, counted on arrival (before any answer).
    pub fn entered(&self, path: &str) -> usize {
        self.state
            .counts
            .lock()
            .ok()
            .and_then(|c| c.get(path).copied())
            .unwrap_or(0)
    }

    /// The most requests `path` ever had in flight at once.
    pub fn max_concurrency(&self, path: &str) -> usize {
        self.state
            .concurrency
            .lock()
            .ok()
            .and_then(|m| m.get(path).map(|e| e.1))
            .unwrap_or(0)
    }

    /// Requests received so far on `path`.
    pub fn on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Everything received so far (successful or not), in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits until `done(received)` holds or `patience` passes; returns whether it held.
    pub async fn wait_until(&self, patience: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if done(&self.received()) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn on_request(
    State(state): State<Arc<ReceiverState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let arrived = std::time::Instant::now();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behaviour = state
        .behaviour
        .lock()
        .ok()
        .and_then(|m| m.get(&path).copied())
        .unwrap_or(Behaviour::Ok);
    let seen = state
        .counts
        .lock()
        .map(|mut c| {
            let n = c.entry(path.clone()).or_default();
            *n += 1;
            *n
        })
        .unwrap_or(1);
    state.enter(&path);
    if let Behaviour::Hang(duration) = behaviour {
        tokio::time::sleep(duration).await;
    }
    state.leave(&path);
    let status = match behaviour {
        Behaviour::Ok | Behaviour::Hang(_) => 204,
        Behaviour::FailFirst(status, n) | Behaviour::RetryAfter(status, _, n) if seen <= n => {
            status
        }
        Behaviour::FailFirst(..) | Behaviour::RetryAfter(..) => 204,
        Behaviour::Always(status) => status,
        Behaviour::Redirect(_) => 302,
    };
    if let Ok(mut received) = state.received.lock() {
        received.push(Received {
            path,
            headers,
            body,
            json,
            status,
            arrived,
        });
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    match behaviour {
        Behaviour::RetryAfter(_, seconds, n) if seen <= n => {
            if let Ok(value) = seconds.to_string().parse() {
                headers.insert("retry-after", value);
            }
        }
        Behaviour::Redirect(location) => {
            if let Ok(value) = location.parse() {
                headers.insert("location", value);
            }
        }
        _ => {}
    }
    (status, headers)
}

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

/// A JSON API client for ingest.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client of the ingest at `base`.
    pub fn new(base: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            token: None,
        }
    }

    /// Sends a bearer token from now on.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
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

    /// Polls a subscription's attempts (newest first) until `done` holds or `patience`
    /// passes; returns the last list read.
    pub async fn wait_attempts(
        &self,
        id: &str,
        patience: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let attempts = match self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/subscriptions/{id}/attempts"),
                    None,
                )
                .await
            {
                Ok((_, body)) => body["data"].as_array().cloned().unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            if done(&attempts) || tokio::time::Instant::now() > deadline {
                return attempts;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body)
            .send()
            .await?;
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

/// An independent producer (acks=all) to write records straight to a topic.
pub fn producer() -> anyhow::Result<FutureProducer> {
    producer_on(&brokers())
}

/// [`producer`] on the broker at `brokers`.
pub fn producer_on(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .create()?)
}

/// Creates `topic` with `partitions` partitions (replication 1) on the broker at `brokers`.
pub async fn create_topic_on(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .with_context(|| format!("creating {topic}"))?;
    for result in results {
        result.map_err(|(name, code)| anyhow::anyhow!("creating {name}: {code}"))?;
    }
    Ok(())
}

/// Produces one record and waits for its acknowledgement.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: &[u8],
) -> anyhow::Result<()> {
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(value);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("produce to {topic}: {e}"))?;
    Ok(())
}

/// Total records on a topic (sum of high watermarks; 0 when it does not exist).
pub fn record_count(topic: &str) -> anyhow::Result<i64> {
    record_count_on(&brokers(), topic)
}

/// [`record_count`] on the broker at `brokers`.
pub fn record_count_on(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "hookline-test-inspector")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += high - low;
        }
    }
    Ok(total)
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers, as text.
    pub headers: HashMap<String, String>,
}

/// Reads every record currently on `topic` (read_committed).
pub fn read_all(topic: &str) -> anyhow::Result<Vec<Record>> {
    read_all_on(&brokers(), topic)
}

/// [`read_all`] on the broker at `brokers`.
pub fn read_all_on(brokers: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("hookline-test-reader-{}", ulid::Ulid::new()),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    let mut remaining = 0i64;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            if high > low {
                list.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                remaining += 1;
            }
        }
    }
    let mut records = Vec::new();
    if remaining == 0 {
        return Ok(records);
    }
    consumer.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while remaining > 0 && std::time::Instant::now() < deadline {
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            // Each partition reports its end once: everything before it has been read.
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                remaining -= 1;
                continue;
            }
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(message)) => message,
        };
        let mut headers = HashMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                let value = header
                    .value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                headers.insert(header.key.to_owned(), value);
            }
        }
        records.push(Record {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok(records)
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
