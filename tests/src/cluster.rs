//! A three-node KRaft cluster for the fault tests: started by `scripts/test.sh` (or by
//! hand) with `deploy/local/kafka.sh start --nodes 3` on `HOOKLINE_TEST_KAFKA_CLUSTER_PORT`
//! (its first client port; the nodes listen on it, +2 and +4). The tests kill, pause
//! and restart its nodes through the same script, and read which node leads which
//! partition from the cluster's metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::kafka::client_config_on;
use crate::wait::eventually;

/// The nodes of the cluster.
pub const NODES: u32 = 3;

/// The test cluster; every node is running again when it is dropped (a test that fails
/// half-way leaves no node down for the next).
pub struct Cluster {
    port: u16,
}

impl Cluster {
    /// The cluster at `HOOKLINE_TEST_KAFKA_CLUSTER_PORT`, once every node answers (a node
    /// a previous test left down is started again).
    pub async fn get() -> anyhow::Result<Self> {
        let port = std::env::var("HOOKLINE_TEST_KAFKA_CLUSTER_PORT")
            .context(
                "HOOKLINE_TEST_KAFKA_CLUSTER_PORT is not set: run the cluster tests with \
                 scripts/test.sh, or start a cluster with `HOOKLINE_KAFKA_PORT=<port> \
                 deploy/local/kafka.sh start --nodes 3` and set it",
            )?
            .parse()
            .context("HOOKLINE_TEST_KAFKA_CLUSTER_PORT is not a port")?;
        let cluster = Self { port };
        cluster.heal()?;
        Ok(cluster)
    }

    /// The bootstrap list naming all three nodes, as `kafka.sh brokers` gives it
    /// (127.0.0.1, or the nodes' own addresses in a `--netns` cluster).
    pub fn brokers(&self) -> String {
        self.command(&["brokers"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .filter(|list| !list.is_empty())
            .unwrap_or_else(|| {
                (1..=NODES)
                    .map(|node| format!("127.0.0.1:{}", self.port + 2 * (node as u16 - 1)))
                    .collect::<Vec<_>>()
                    .join(",")
            })
    }

    /// Whether the nodes run in network namespaces of their own (`kafka.sh start
    /// --netns`), so that one can be cut off the network with [`cut`](Self::cut).
    pub fn isolated(&self) -> bool {
        !self.brokers().starts_with("127.0.0.1:")
    }

    /// `kill -9` of `node`.
    pub fn kill(&self, node: u32) -> anyhow::Result<()> {
        self.script(&["kill", &node.to_string()])
    }

    /// Starts `node` again and waits until it answers.
    pub fn restart(&self, node: u32) -> anyhow::Result<()> {
        self.script(&["restart", &node.to_string()])
    }

    /// Freezes `node` (SIGSTOP): it holds its connections but answers nothing, as a
    /// broker cut off the network or stuck in a long pause would.
    pub fn pause(&self, node: u32) -> anyhow::Result<()> {
        self.signal(node, "-STOP")
    }

    /// Thaws a node frozen by [`pause`](Self::pause).
    pub fn resume(&self, node: u32) -> anyhow::Result<()> {
        self.signal(node, "-CONT")
    }

    /// Cuts `node` off the network (its link down): it keeps running, reaches no one
    /// and no one reaches it. Only in an [`isolated`](Self::isolated) cluster.
    pub fn cut(&self, node: u32) -> anyhow::Result<()> {
        self.script(&["cut", &node.to_string()])
    }

    /// Connects a node [`cut`](Self::cut) off again.
    pub fn mend(&self, node: u32) -> anyhow::Result<()> {
        self.script(&["mend", &node.to_string()])
    }

    /// Connects every cut node again, resumes every paused one and starts every node
    /// that is down.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.script(&["mend"])?;
        let running = self.pids()?;
        for node in 1..=NODES {
            match running.get(&node) {
                Some(pid) => {
                    Command::new("kill").args(["-CONT", pid]).status()?;
                }
                None => self.restart(node)?,
            }
        }
        Ok(())
    }

    /// How many partitions of `topic` each node leads (nodes leading none are absent).
    pub fn leaders(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, usize>> {
        let mut leaders = BTreeMap::new();
        for leader in self.partition_leaders(topic)?.into_values() {
            *leaders.entry(leader).or_insert(0) += 1;
        }
        Ok(leaders)
    }

    /// The leader of each partition of `topic` (-1: none).
    pub fn partition_leaders(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i32>> {
        let consumer: BaseConsumer =
            client_config_on(&self.brokers(), "hookline-test-leaders", &[]).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| (p.id(), p.leader()))
            .collect())
    }

    /// Whether `node` is an in-sync replica of every partition of `topic` (its replicas
    /// caught up).
    pub fn in_sync(&self, topic: &str, node: u32) -> anyhow::Result<bool> {
        let consumer: BaseConsumer =
            client_config_on(&self.brokers(), "hookline-test-isr", &[]).create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions: Vec<_> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .collect();
        Ok(!partitions.is_empty() && partitions.iter().all(|p| p.isr().contains(&(node as i32))))
    }

    /// The node leading the most partitions of `topic`.
    pub fn busiest_leader(&self, topic: &str) -> anyhow::Result<u32> {
        let leaders = self.leaders(topic)?;
        match leaders
            .iter()
            .filter(|(node, _)| **node > 0)
            .max_by_key(|(_, n)| **n)
        {
            Some((node, _)) => Ok(*node as u32),
            None => bail!("no partition of {topic} has a leader"),
        }
    }

    /// The cluster's active controller: the node leading the controller quorum.
    pub fn controller(&self) -> anyhow::Result<u32> {
        let output = self.command(&["controller"]).output()?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .with_context(|| {
                format!(
                    "kafka.sh controller: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    }

    /// Waits until every partition of every topic in `topics` has a leader again.
    pub async fn wait_leaders(&self, topics: &[String], patience: Duration) -> bool {
        eventually(patience, || {
            topics.iter().all(|topic| {
                self.leaders(topic)
                    .map(|leaders| !leaders.is_empty() && !leaders.contains_key(&-1))
                    .unwrap_or(false)
            })
        })
        .await
    }

    fn pids(&self) -> anyhow::Result<BTreeMap<u32, String>> {
        let output = self.command(&["pids"]).output()?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (node, pid) = line.split_once(' ')?;
                Some((node.parse().ok()?, pid.to_owned()))
            })
            .collect())
    }

    fn signal(&self, node: u32, signal: &str) -> anyhow::Result<()> {
        let pids = self.pids()?;
        let Some(pid) = pids.get(&node) else {
            bail!("node {node} is not running");
        };
        let status = Command::new("kill").args([signal, pid]).status()?;
        if !status.success() {
            bail!("kill {signal} {pid} failed");
        }
        Ok(())
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = self.command(args).output()?;
        if !output.status.success() {
            bail!(
                "kafka.sh {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn command(&self, args: &[&str]) -> Command {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/kafka.sh");
        let mut command = Command::new(script);
        command
            .args(args)
            .env("HOOKLINE_KAFKA_PORT", self.port.to_string())
            .env("HOOKLINE_KAFKA_NODES", NODES.to_string());
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.heal() {
            eprintln!("could not heal the test cluster: {err}");
        }
    }
}
