//! Straight to the broker: the test broker's address, a broker of a test's own,
//! producing records, counting and reading back what a topic holds.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

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
