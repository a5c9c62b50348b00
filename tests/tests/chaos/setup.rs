//! What the chaos run deploys: the binaries (a fleet of routers and workers that grows,
//! shrinks and is killed), three receivers, and the subscriptions of three tenants.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hookline_e2e::{Api, Behaviour, Deployment, Proc, Received, Receiver};
use serde_json::{json, Value};

/// The receivers: `steady` always answers at once (unless a path is told otherwise),
/// `outage` is taken off the network and brought back, `moody` answers slowly on some
/// paths and fails half the requests on another.
pub struct Receivers {
    /// Healthy endpoint.
    pub steady: Receiver,
    /// Taken down and brought back.
    pub outage: Receiver,
    /// Slow and flaky paths.
    pub moody: Receiver,
}

/// Which receiver a subscription points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rx {
    /// [`Receivers::steady`].
    Steady,
    /// [`Receivers::outage`].
    Outage,
    /// [`Receivers::moody`].
    Moody,
}

impl Receivers {
    /// Starts the three receivers.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            steady: Receiver::start().await?,
            outage: Receiver::start().await?,
            moody: Receiver::start().await?,
        })
    }

    /// One receiver.
    pub fn get(&self, rx: Rx) -> &Receiver {
        match rx {
            Rx::Steady => &self.steady,
            Rx::Outage => &self.outage,
            Rx::Moody => &self.moody,
        }
    }

    /// Everything every receiver got, each request with its receiver.
    pub fn received(&self) -> Vec<(Rx, Received)> {
        [Rx::Steady, Rx::Outage, Rx::Moody]
            .into_iter()
            .flat_map(|rx| self.get(rx).received().into_iter().map(move |r| (rx, r)))
            .collect()
    }
}

/// What happens to a subscription during the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Nothing: it lives through the run as created.
    Kept,
    /// Deleted while its (slow) attempts are in flight.
    Deleted,
    /// Disabled (`PATCH {"enabled": false}`) while its attempts are in flight.
    Disabled,
    /// Its URL is moved from a slow path to the steady receiver while attempts are in
    /// flight.
    Moved,
    /// Its filter is replaced.
    Refiltered,
}

/// A subscription of the run as created.
#[derive(Debug, Clone)]
pub struct SubSpec {
    /// Short name, for the report.
    pub name: &'static str,
    /// Tenant.
    pub tenant: &'static str,
    /// Type patterns.
    pub patterns: &'static [&'static str],
    /// Filter, if any.
    pub filter: Option<Value>,
    /// `"ordered": true`.
    pub ordered: bool,
    /// Its receiver.
    pub rx: Rx,
    /// How its path answers.
    pub behaviour: Behaviour,
    /// What happens to it.
    pub fate: Fate,
}

/// The filter [`Fate::Refiltered`] subscriptions get.
pub fn refilter() -> Value {
    json!({"field": "currency", "op": "eq", "value": "EUR"})
}

/// The run's subscriptions: three tenants, ordered and unordered, some filtered.
pub fn subscription_specs() -> Vec<SubSpec> {
    let big = json!({"field": "amount", "op": "gte", "value": 5000});
    let spec = |name, tenant, patterns, rx, fate| SubSpec {
        name,
        tenant,
        patterns,
        filter: None,
        ordered: false,
        rx,
        behaviour: Behaviour::Ok,
        fate,
    };
    let slow = Behaviour::Hang(Duration::from_millis(700));
    vec![
        spec("acme-all", "acme", &["*"], Rx::Steady, Fate::Kept),
        SubSpec {
            ordered: true,
            behaviour: Behaviour::FailEvery(503, 10),
            ..spec(
                "acme-pay-ordered",
                "acme",
                &["payment.*"],
                Rx::Steady,
                Fate::Kept,
            )
        },
        SubSpec {
            filter: Some(big.clone()),
            ..spec(
                "acme-inv-big",
                "acme",
                &["invoice.*"],
                Rx::Steady,
                Fate::Kept,
            )
        },
        SubSpec {
            behaviour: slow,
            ..spec(
                "acme-cust-deleted",
                "acme",
                &["customer.changed", "expense.created"],
                Rx::Moody,
                Fate::Deleted,
            )
        },
        SubSpec {
            filter: Some(big),
            ..spec(
                "acme-pay-refiltered",
                "acme",
                &["payment.*"],
                Rx::Steady,
                Fate::Refiltered,
            )
        },
        SubSpec {
            ordered: true,
            ..spec(
                "globex-all-ordered",
                "globex",
                &["*"],
                Rx::Steady,
                Fate::Kept,
            )
        },
        SubSpec {
            filter: Some(json!({"field": "currency", "op": "in", "value": ["EUR", "USD"]})),
            ..spec(
                "globex-exp-inv-eurusd",
                "globex",
                &["expense.*", "invoice.*"],
                Rx::Outage,
                Fate::Kept,
            )
        },
        spec(
            "globex-pay",
            "globex",
            &["payment.succeeded", "payment.failed"],
            Rx::Outage,
            Fate::Kept,
        ),
        SubSpec {
            behaviour: slow,
            ..spec(
                "globex-inv-disabled",
                "globex",
                &["invoice.*"],
                Rx::Moody,
                Fate::Disabled,
            )
        },
        SubSpec {
            behaviour: slow,
            ..spec(
                "initech-all-moved",
                "initech",
                &["*"],
                Rx::Moody,
                Fate::Moved,
            )
        },
        SubSpec {
            ordered: true,
            ..spec(
                "initech-inv-ordered",
                "initech",
                &["invoice.*"],
                Rx::Steady,
                Fate::Kept,
            )
        },
        SubSpec {
            behaviour: Behaviour::FailEvery(500, 2),
            ..spec(
                "initech-pay-flaky",
                "initech",
                &["payment.*"],
                Rx::Moody,
                Fate::Kept,
            )
        },
    ]
}

/// A subscription as created: its spec, id and secret.
#[derive(Debug, Clone)]
pub struct Created {
    /// How it was created.
    pub spec: SubSpec,
    /// Its id (also its receiver path).
    pub id: String,
    /// Its signing secret.
    pub secret: String,
}

/// The receiver path a [`Fate::Moved`] subscription is moved to, on the steady receiver.
pub fn moved_path(id: &str) -> String {
    format!("{id}.moved")
}

/// Creates every subscription at `receivers` (path = subscription id) and sets each
/// path's behaviour.
pub async fn create_subscriptions(
    api: &Api,
    receivers: &Receivers,
) -> anyhow::Result<Vec<Created>> {
    let mut created = Vec::new();
    for spec in subscription_specs() {
        let receiver = receivers.get(spec.rx);
        let mut body = json!({"tenant": spec.tenant, "url": receiver.url(spec.name),
                              "event_types": spec.patterns, "ordered": spec.ordered,
                              "description": spec.name});
        if let Some(filter) = &spec.filter {
            body["filter"] = filter.clone();
        }
        let (id, secret) = api.subscribe(body).await?;
        // The path is the subscription id, so the ledger tells requests apart by path.
        let (status, answer) = api
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/subscriptions/{id}"),
                Some(json!({"url": receiver.url(&id)})),
            )
            .await?;
        anyhow::ensure!(
            status == 200,
            "patching the URL of {}: {status} {answer}",
            spec.name
        );
        receiver.behave(&id, spec.behaviour);
        created.push(Created { spec, id, secret });
    }
    Ok(created)
}

/// How a process of the fleet ended, for the metrics account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Still running at the end.
    Running,
    /// `kill -9`.
    Killed,
    /// SIGTERM (removed from its group).
    Terminated,
    /// Exited by itself (a pipeline failure).
    Exited,
}

/// The last metrics scraped from one process.
#[derive(Debug, Clone)]
pub struct ProcMetrics {
    /// `<binary> <label>`.
    pub name: String,
    /// Metric series → value, as last scraped (before it was killed or stopped).
    pub values: BTreeMap<String, f64>,
    /// How it ended.
    pub ending: Ending,
}

/// Delivery task outcomes counted by `hookline_delivery_tasks_total`.
pub const TASK_OUTCOMES: [&str; 6] = [
    "delivered",
    "retry_scheduled",
    "dead_lettered",
    "skipped_deleted",
    "invalid",
    "deferred",
];

/// One running member of the fleet.
pub struct Member {
    /// `router r1`, `delivery w2`, `ingest`.
    pub label: String,
    /// The process.
    pub proc: Proc,
    /// Environment it was started with beyond the deployment's.
    pub extra: Vec<(String, String)>,
}

impl Member {
    /// Scrapes the metrics this run accounts with.
    pub async fn scrape(&self) -> BTreeMap<String, f64> {
        let mut values = BTreeMap::new();
        for outcome in TASK_OUTCOMES {
            let series = format!("hookline_delivery_tasks_total{{outcome=\"{outcome}\"");
            values.insert(
                format!("delivery_{outcome}"),
                self.proc.metric(&series).await,
            );
        }
        values.insert(
            "router_tasks".into(),
            self.proc.metric("hookline_router_tasks_total").await,
        );
        values
    }
}

/// The binaries of the run, with the metrics of every process that ever ran.
pub struct Fleet {
    /// The deployment.
    pub deployment: Deployment,
    /// Ingest's current base URL, shared with the load.
    pub ingest_url: Arc<RwLock<String>>,
    /// Ingest.
    pub ingest: Member,
    /// Routers.
    pub routers: Vec<Member>,
    /// Delivery workers.
    pub workers: Vec<Member>,
    /// Metrics of every process that ended, and exits seen.
    pub ended: Vec<ProcMetrics>,
    /// Binaries found exited by themselves: (label, log tail).
    pub exits: Vec<(String, String)>,
    next_worker: usize,
    next_router: usize,
}

impl Fleet {
    /// Starts ingest, `routers` routers (instance ids `r1`…) and `workers` workers.
    pub async fn start(
        deployment: Deployment,
        routers: usize,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let ingest = deployment.start("hookline-ingest").await?;
        let ingest_url = Arc::new(RwLock::new(ingest.url()));
        let mut fleet = Self {
            ingest: Member {
                label: "ingest".into(),
                proc: ingest,
                extra: Vec::new(),
            },
            deployment,
            ingest_url,
            routers: Vec::new(),
            workers: Vec::new(),
            ended: Vec::new(),
            exits: Vec::new(),
            next_worker: 0,
            next_router: 0,
        };
        for _ in 0..routers {
            fleet.add_router().await?;
        }
        for _ in 0..workers {
            fleet.add_worker().await?;
        }
        Ok(fleet)
    }

    /// A client of the current ingest.
    pub fn api(&self) -> Api {
        Api::new(self.ingest.proc.url())
    }

    async fn start_member(
        &self,
        label: String,
        binary: &str,
        extra: Vec<(String, String)>,
    ) -> anyhow::Result<Member> {
        let env: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let proc = self.deployment.start_with(binary, &env).await?;
        Ok(Member { label, proc, extra })
    }

    /// Starts one more router with a fresh instance id; returns its label.
    pub async fn add_router(&mut self) -> anyhow::Result<String> {
        self.next_router += 1;
        let id = format!("r{}", self.next_router);
        let extra = vec![("HOOKLINE_ROUTER_INSTANCE_ID".to_owned(), id.clone())];
        let member = self
            .start_member(format!("router {id}"), "hookline-router", extra)
            .await?;
        self.routers.push(member);
        Ok(id)
    }

    /// Starts one more delivery worker; returns its label.
    pub async fn add_worker(&mut self) -> anyhow::Result<String> {
        self.next_worker += 1;
        let label = format!("delivery w{}", self.next_worker);
        let member = self
            .start_member(label.clone(), "hookline-delivery", Vec::new())
            .await?;
        self.workers.push(member);
        Ok(label)
    }

    async fn retire(&mut self, member: &mut Member, ending: Ending) {
        let values = member.scrape().await;
        match ending {
            Ending::Terminated => {
                let _ = member.proc.terminate();
            }
            _ => member.proc.kill_hard(),
        }
        self.ended.push(ProcMetrics {
            name: member.label.clone(),
            values,
            ending,
        });
    }

    /// `kill -9` of router `index`, restarted at once with the same instance id (which
    /// fences its open transaction).
    pub async fn kill_router(&mut self, index: usize) -> anyhow::Result<()> {
        let mut member = self.routers.remove(index);
        self.retire(&mut member, Ending::Killed).await;
        let restarted = self
            .start_member(
                member.label.clone(),
                "hookline-router",
                member.extra.clone(),
            )
            .await?;
        self.routers.insert(index, restarted);
        Ok(())
    }

    /// `kill -9` of worker `index`, replaced by a fresh worker once `down` has passed.
    pub async fn kill_worker(&mut self, index: usize, down: Duration) -> anyhow::Result<()> {
        let mut member = self.workers.remove(index);
        self.retire(&mut member, Ending::Killed).await;
        tokio::time::sleep(down).await;
        let label = match member.label.strip_suffix(" (restarted)") {
            Some(base) => format!("{base} (restarted)"),
            None => format!("{} (restarted)", member.label),
        };
        let restarted = self
            .start_member(label, "hookline-delivery", Vec::new())
            .await?;
        self.workers.insert(index, restarted);
        Ok(())
    }

    /// `kill -9` of ingest, restarted after `down` (on a new port the load follows).
    pub async fn kill_ingest(&mut self, down: Duration) -> anyhow::Result<()> {
        let values = self.ingest.scrape().await;
        self.ingest.proc.kill_hard();
        self.ended.push(ProcMetrics {
            name: "ingest".into(),
            values,
            ending: Ending::Killed,
        });
        tokio::time::sleep(down).await;
        let proc = self.deployment.start("hookline-ingest").await?;
        if let Ok(mut url) = self.ingest_url.write() {
            *url = proc.url();
        }
        self.ingest.proc = proc;
        Ok(())
    }

    /// Removes the last router or worker with SIGTERM (it leaves the group after its
    /// in-flight work).
    pub async fn remove_last(&mut self, worker: bool) -> Option<String> {
        let mut member = if worker {
            self.workers.pop()?
        } else {
            self.routers.pop()?
        };
        self.retire(&mut member, Ending::Terminated).await;
        Some(member.label)
    }

    /// Binaries that exited by themselves since the last look: each is recorded (with
    /// its log) and started again, so the run goes on and the exit is reported.
    pub async fn check_running(&mut self) -> anyhow::Result<Vec<String>> {
        let mut exited = Vec::new();
        if !self.ingest.proc.is_running() {
            exited.push(("ingest".to_owned(), self.ingest.proc.log_tail()));
            let proc = self.deployment.start("hookline-ingest").await?;
            if let Ok(mut url) = self.ingest_url.write() {
                *url = proc.url();
            }
            self.ingest.proc = proc;
        }
        for (group, binary) in [(0, "hookline-router"), (1, "hookline-delivery")] {
            let count = if group == 0 {
                self.routers.len()
            } else {
                self.workers.len()
            };
            for index in 0..count {
                let member = if group == 0 {
                    &mut self.routers[index]
                } else {
                    &mut self.workers[index]
                };
                if member.proc.is_running() {
                    continue;
                }
                exited.push((member.label.clone(), member.proc.log_tail()));
                self.ended.push(ProcMetrics {
                    name: member.label.clone(),
                    values: BTreeMap::new(),
                    ending: Ending::Exited,
                });
                let extra = member.extra.clone();
                let label = member.label.clone();
                let replacement = self.start_member(label, binary, extra).await?;
                if group == 0 {
                    self.routers[index] = replacement;
                } else {
                    self.workers[index] = replacement;
                }
            }
        }
        let labels = exited.iter().map(|(l, _)| l.clone()).collect();
        self.exits.extend(exited);
        Ok(labels)
    }

    /// Scrapes every running process, for the final account.
    pub async fn final_metrics(&self) -> Vec<ProcMetrics> {
        let mut all = self.ended.clone();
        for member in std::iter::once(&self.ingest)
            .chain(&self.routers)
            .chain(&self.workers)
        {
            all.push(ProcMetrics {
                name: member.label.clone(),
                values: member.scrape().await,
                ending: Ending::Running,
            });
        }
        all
    }
}

/// When a subscription change was acknowledged by the API.
#[derive(Debug, Clone)]
pub struct Change {
    /// The subscription.
    pub id: String,
    /// What changed.
    pub fate: Fate,
    /// When the API answered.
    pub acked: Instant,
}

/// Applies `fate` to subscription `created` through the API; returns when it was
/// acknowledged.
pub async fn change(api: &Api, receivers: &Receivers, created: &Created) -> anyhow::Result<Change> {
    let path = format!("/v1/subscriptions/{}", created.id);
    let (method, body) = match created.spec.fate {
        Fate::Kept => anyhow::bail!("{} has nothing to change", created.spec.name),
        Fate::Deleted => (reqwest::Method::DELETE, None),
        Fate::Disabled => (reqwest::Method::PATCH, Some(json!({"enabled": false}))),
        Fate::Moved => (
            reqwest::Method::PATCH,
            Some(json!({"url": receivers.steady.url(&moved_path(&created.id))})),
        ),
        Fate::Refiltered => (reqwest::Method::PATCH, Some(json!({"filter": refilter()}))),
    };
    let (status, answer) = api.call(method, &path, body).await?;
    let acked = Instant::now();
    anyhow::ensure!(
        (200..300).contains(&status),
        "changing {} ({:?}): {status} {answer}",
        created.spec.name,
        created.spec.fate
    );
    Ok(Change {
        id: created.id.clone(),
        fate: created.spec.fate,
        acked,
    })
}
