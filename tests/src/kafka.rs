//! Straight to the broker: the test broker's address, a broker of a test's own,
//! creating topics, producing records, counting and reading back what a topic holds.
//! Clients are built, topics created, watermarks fetched and topics read with
//! `hookline_core`'s own functions (`kafka::client_config`, `kafka::ensure_topics`,
//! `kafka::high_watermarks`, `scan::scan_topic`).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use hookline_core::config::KafkaArgs;
use hookline_core::kafka;
use hookline_core::scan::scan_topic;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::process::log_tail;
use crate::wait::eventually;

/// The broker the tests use.
pub fn brokers() -> String {
    std::env::var("HOOKLINE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
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
        let mut failure = None;
        let started = eventually(patience, || {
            let Some(starter) = &mut self.starter else {
                return true;
            };
            match starter.try_wait() {
                Ok(None) => false,
                Ok(Some(status)) if status.success() => {
                    self.starter = None;
                    true
                }
                Ok(Some(status)) => {
                    failure = Some(anyhow!(
                        "kafka.sh start failed ({status}):\n{}",
                        std::fs::read_to_string(self.home.join("kafka.sh.log")).unwrap_or_default()
                    ));
                    true
                }
                Err(err) => {
                    failure = Some(err.into());
                    true
                }
            }
        })
        .await;
        match failure {
            Some(err) => Err(err),
            None if started => Ok(()),
            None => bail!("broker not started after {patience:?}"),
        }
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.home.join("server.log"))
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

pub use hookline_core::kafka::TopicSpec;

/// Connection settings of the broker at `brokers` in the binaries' own form, for
/// `hookline_core`'s functions. Topics created with them are replicated as the
/// binaries' defaults replicate them (three replicas on three brokers, else one).
fn args_on(brokers: &str) -> KafkaArgs {
    KafkaArgs {
        brokers: brokers.to_owned(),
        topic_prefix: String::new(),
        topic_partitions: 4,
        topic_replication: hookline_core::config::Replication::Auto,
        properties: Vec::new(),
        statistics_interval: hookline_core::kafka_stats::DEFAULT_INTERVAL,
    }
}

/// Settings of a client of the test broker, built like every binary's
/// (`hookline_core::kafka::client_config`): brokers, `client_id`, then `base`.
pub fn client_config(client_id: &str, base: &[(&str, &str)]) -> ClientConfig {
    client_config_on(&brokers(), client_id, base)
}

/// [`client_config`] on the brokers at `brokers`.
pub fn client_config_on(brokers: &str, client_id: &str, base: &[(&str, &str)]) -> ClientConfig {
    kafka::client_config(&args_on(brokers), client_id, base)
}

/// An independent producer (acks=all) to write records straight to a topic.
pub fn producer() -> anyhow::Result<FutureProducer> {
    producer_on(&brokers())
}

/// [`producer`] on the broker at `brokers`.
pub fn producer_on(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(kafka::client_config(
        &args_on(brokers),
        "hookline-test-producer",
        &[("acks", "all")],
    )
    .create()?)
}

/// Creates the topics of `specs` that do not exist yet on the test broker, and waits
/// until they show in metadata (`hookline_core::kafka::ensure_topics`, as the binaries
/// create theirs).
pub async fn create_topics(specs: &[TopicSpec]) -> anyhow::Result<()> {
    create_topics_on(&brokers(), specs).await
}

/// [`create_topics`] on the broker at `brokers`.
pub async fn create_topics_on(brokers: &str, specs: &[TopicSpec]) -> anyhow::Result<()> {
    kafka::ensure_topics(&args_on(brokers), specs, Duration::from_secs(30)).await
}

/// Creates `topic` with `partitions` partitions (replication 1) on the broker at
/// `brokers` (see [`create_topics`]).
pub async fn create_topic_on(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let spec = TopicSpec {
        name: topic.to_owned(),
        partitions,
        configs: Vec::new(),
    };
    create_topics_on(brokers, &[spec]).await
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
pub async fn record_count(topic: &str) -> anyhow::Result<i64> {
    record_count_on(&brokers(), topic).await
}

/// [`record_count`] on the broker at `brokers`.
pub async fn record_count_on(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = kafka::reader(&args_on(brokers), "hookline-test-inspector")?;
    let watermarks = kafka::high_watermarks(
        Arc::new(consumer),
        topic.to_owned(),
        Duration::from_secs(10),
    )
    .await?;
    Ok(watermarks.iter().map(|(_, high)| high).sum())
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers, as text.
    pub headers: HashMap<String, String>,
}

/// Reads every record on `topic` when called (read_committed), in partition order.
/// Blocking.
pub fn read_all(topic: &str) -> anyhow::Result<Vec<Record>> {
    read_all_on(&brokers(), topic)
}

/// [`read_all`] on the broker at `brokers`.
pub fn read_all_on(brokers: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    scan_topic(&args_on(brokers), topic, None, |message| {
        records.push(Record {
            partition: message.partition(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: kafka::record_headers(message)
                .into_iter()
                .map(|(key, value)| (key, String::from_utf8_lossy(&value).into_owned()))
                .collect(),
        });
    })
    .with_context(|| format!("reading {topic}"))?;
    Ok(records)
}
