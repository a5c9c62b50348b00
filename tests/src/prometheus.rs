//! Prometheus's own tools against the binaries: `promtool check metrics` on a scrape,
//! and a real Prometheus server (Debian's `prometheus` package, installed by
//! `scripts/setup.sh`) scraping a deployment, queried with PromQL over its HTTP API.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::wait::eventually;

/// Ports the harness's Prometheus servers may listen on.
const PORTS: std::ops::RangeInclusive<u16> = 19900..=19999;

/// The text of `url` (a `/metrics` endpoint).
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    let response = reqwest::get(url).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    Ok(response.text().await?)
}

/// Runs `promtool check metrics` on `exposition`: `Ok` only when promtool exits 0 and
/// reports nothing, else its complaints.
pub fn promtool_check_metrics(exposition: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool not found (scripts/setup.sh installs Debian's prometheus)")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(exposition.as_bytes())?;
    let output = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !said.trim().is_empty() {
        bail!("promtool check metrics ({}):\n{said}", output.status);
    }
    Ok(())
}

/// Runs `promtool` with `args` in `dir`; `Ok` with its output when it exits 0.
pub fn promtool(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .context("promtool not found (scripts/setup.sh installs Debian's prometheus)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool {args:?} ({}):\n{said}", output.status);
    }
    Ok(said)
}

/// Metric names of an exposition (the `# TYPE` lines), with the series names a
/// histogram or summary adds (`_bucket`, `_sum`, `_count`).
pub fn exported_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_owned());
            if matches!(kind, "histogram" | "summary") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The metric names a text of PromQL expressions (a rule file, a dashboard) refers to:
/// every word starting `hookline_` or `process_` (Hookline's own and the process
/// collector's; `up` and `ALERTS` come from Prometheus itself).
pub fn referenced_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("hookline_") || word.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The PromQL expressions of a Grafana dashboard's panels (`targets[].expr`), checking
/// its structure on the way: unique panel ids, a grid position and type on every panel,
/// and on every non-row panel the datasource `datasource_uid` and at least one target,
/// each with a unique `refId` and an expression.
pub fn dashboard_expressions(
    dashboard: &Value,
    datasource_uid: &str,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(dashboard["uid"].is_string(), "the dashboard has no uid");
    anyhow::ensure!(dashboard["title"].is_string(), "the dashboard has no title");
    anyhow::ensure!(
        dashboard["schemaVersion"].is_u64(),
        "the dashboard has no schemaVersion"
    );
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let mut ids = std::collections::BTreeSet::new();
    let mut expressions = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .with_context(|| format!("panel {title}: no id"))?;
        anyhow::ensure!(ids.insert(id), "panel {title}: id {id} used twice");
        for key in ["h", "w", "x", "y"] {
            anyhow::ensure!(
                panel["gridPos"][key].is_u64(),
                "panel {title}: gridPos.{key} missing"
            );
        }
        let kind = panel["type"]
            .as_str()
            .with_context(|| format!("panel {title}: no type"))?;
        if kind == "row" {
            continue;
        }
        anyhow::ensure!(
            panel["datasource"]["uid"] == datasource_uid,
            "panel {title}: datasource is not {datasource_uid}"
        );
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .with_context(|| format!("panel {title}: no targets"))?;
        let mut refs = std::collections::BTreeSet::new();
        for target in targets {
            let reference = target["refId"].as_str().unwrap_or_default();
            anyhow::ensure!(
                refs.insert(reference.to_owned()),
                "panel {title}: refId {reference:?} missing or used twice"
            );
            let expr = target["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .with_context(|| format!("panel {title}: a target without expr"))?;
            expressions.push(expr.to_owned());
        }
    }
    Ok(expressions)
}

/// A Prometheus server of the test's own, scraping the given targets every second.
pub struct PrometheusServer {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    dir: PathBuf,
}

impl PrometheusServer {
    /// Starts `prometheus` scraping `targets` (job name, address of a `/metrics`) every
    /// second, with `rules` (a rule file's text, may be empty) loaded, on a free port of
    /// 19900-19999; waits until it is ready.
    pub async fn start(targets: &[(&str, SocketAddr)], rules: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "hookline-prometheus-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let rules = if rules.trim().is_empty() {
            "groups: []\n"
        } else {
            rules
        };
        std::fs::write(dir.join("rules.yml"), rules)?;
        let port = free_port().context("no free port in 19900-19999")?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("prometheus not found (scripts/setup.sh installs Debian's prometheus)")?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ready_url = format!("{}/-/ready", server.base);
        let ready = eventually(Duration::from_secs(30), || async {
            matches!(reqwest::get(&ready_url).await, Ok(r) if r.status().is_success())
        })
        .await;
        if !ready {
            bail!("prometheus not ready; log:\n{}", server.log());
        }
        Ok(server)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: each series' labels and value.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<(Value, f64)>> {
        let response: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(
            response["status"] == "success",
            "query {promql}: {response}"
        );
        let series = response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(series
            .into_iter()
            .filter_map(|s| {
                let value = s["value"][1].as_str()?.parse::<f64>().ok()?;
                Some((s["metric"].clone(), value))
            })
            .collect())
    }

    /// The value of a query that yields one series, `None` for none.
    pub async fn scalar(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let series = self.query(promql).await?;
        anyhow::ensure!(series.len() <= 1, "{promql}: {} series", series.len());
        Ok(series.first().map(|(_, v)| *v))
    }

    /// Every loaded rule's health (`ok`, `err`, `unknown`) by name, with its last error.
    pub async fn rule_health(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let response: Value = reqwest::get(format!("{}/api/v1/rules", self.base))
            .await?
            .json()
            .await?;
        let mut rules = Vec::new();
        for group in response["data"]["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                rules.push((
                    rule["name"].as_str().unwrap_or_default().to_owned(),
                    rule["health"].as_str().unwrap_or_default().to_owned(),
                    rule["lastError"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        Ok(rules)
    }

    /// The alerts firing or pending now (`ALERTS`), by name and state.
    pub async fn alerts(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .query("ALERTS")
            .await?
            .into_iter()
            .map(|(labels, _)| {
                (
                    labels["alertname"].as_str().unwrap_or_default().to_owned(),
                    labels["alertstate"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Option<u16> {
    // Start at a random place so that tests running side by side rarely race.
    let span = (PORTS.end() - PORTS.start() + 1) as u64;
    let offset = (ulid::Ulid::new().random() as u64) % span;
    (0..span)
        .map(|i| PORTS.start() + ((offset + i) % span) as u16)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
}
