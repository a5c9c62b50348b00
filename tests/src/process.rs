//! The binaries as child processes: a deployment's environment (with stray `HOOKLINE_*`
//! settings of the caller scrubbed), starting, readiness, logs, metrics and stopping.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::kafka::brokers;
use crate::wait::eventually;

/// The admin token every [`Deployment`] gives ingest (`HOOKLINE_ADMIN_TOKEN`), and
/// every [`Api`](crate::Api) client sends unless told otherwise: ingest refuses to start
/// without one.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-not-a-secret";

/// An HTTP client sending the [`ADMIN_TOKEN`] on every request.
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer e2e-admin-token-not-a-secret"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// A free TCP port on loopback.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// Where the workspace's binaries are (`HOOKLINE_BIN_DIR`, else the target's `debug`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("HOOKLINE_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// The path of the built binary `name` (e.g. `hookline`, the CLI), where
/// [`Deployment::start`] finds the binaries.
pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// Whether an inherited environment variable is a Hookline setting the harness must not
/// pass on to the binaries it starts: every `HOOKLINE_*` except the harness's own
/// (`HOOKLINE_TEST_*`, `HOOKLINE_BIN_DIR`), and every OpenTelemetry `OTEL_*` (a shell's
/// collector would turn traces on).
pub fn is_stray(key: &OsStr) -> bool {
    let key = key.to_string_lossy();
    (key.starts_with("HOOKLINE_")
        && !key.starts_with("HOOKLINE_TEST_")
        && key != "HOOKLINE_BIN_DIR")
        || key.starts_with("OTEL_")
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
    /// A fresh prefix (`t<ulid>.`) and groups on the test broker; 4 partitions per topic;
    /// the [`ADMIN_TOKEN`].
    pub fn new() -> Self {
        Self::on(&brokers())
    }

    /// Like [`new`](Self::new), on the broker at `brokers` (e.g. a [`Broker`](crate::Broker) of the test's own).
    pub fn on(brokers: &str) -> Self {
        let prefix = format!("t{}.", ulid::Ulid::new().to_string().to_lowercase());
        let env = [
            ("HOOKLINE_KAFKA_BROKERS", brokers.to_owned()),
            ("HOOKLINE_TOPIC_PREFIX", prefix.clone()),
            ("HOOKLINE_TOPIC_PARTITIONS", "4".into()),
            ("HOOKLINE_ROUTER_GROUP", format!("{prefix}router")),
            ("HOOKLINE_DELIVERY_GROUP", format!("{prefix}delivery")),
            ("HOOKLINE_DELIVERY_ALLOW_CIDRS", "127.0.0.0/8".into()),
            ("HOOKLINE_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            // The receivers speak plain http on loopback.
            ("HOOKLINE_DELIVERY_ALLOW_HTTP", "true".into()),
            // Most tests send synthetic payloads (`{"seq": n}`) under finance types;
            // the catalog's tests (`catalog::`) turn schema validation back on.
            ("HOOKLINE_EVENT_VALIDATION", "false".into()),
            // A key of the deployment's own: ingest and delivery must share it.
            (
                "HOOKLINE_SECRETS_KEYS",
                hookline_domain::sealing::Keyring::generate_entry("test"),
            ),
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
        // replaces a killed member waits for that member's session to time out (10 s).
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

/// The last 40 lines of the log file at `path` ("" when unreadable).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
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
        let url = format!("{}/readyz", self.url());
        // The exit (or the error asking for it) that ended the wait, if one did.
        let ended: Mutex<Option<std::io::Result<ExitStatus>>> = Mutex::new(None);
        let ready = {
            let child = Mutex::new(&mut self.child);
            eventually(patience, || async {
                let exit = match child.lock() {
                    Ok(mut child) => child.try_wait().transpose(),
                    Err(_) => None,
                };
                if let Some(exit) = exit {
                    if let Ok(mut ended) = ended.lock() {
                        *ended = Some(exit);
                    }
                    return true;
                }
                matches!(client.get(&url).send().await, Ok(response) if response.status().is_success())
            })
            .await
        };
        match ended.into_inner().unwrap_or(None) {
            Some(Ok(status)) => bail!(
                "{} exited with {status} during start; log:\n{}",
                self.name,
                self.log_tail()
            ),
            Some(Err(err)) => Err(err.into()),
            None if ready => Ok(()),
            None => bail!(
                "{} not ready after {patience:?}; log:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
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
        eventually(patience, || async { self.metric(name).await >= at_least }).await
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

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
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
