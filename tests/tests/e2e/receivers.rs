//! The example receivers of docs/receivers.md (`examples/receivers/python` and
//! `examples/receivers/typescript`, each on the official Standard Webhooks library of
//! its language, and `examples/receivers/rust`, on `hookline-domain`'s verifier) as real
//! processes, against real deliveries from the running pipeline:
//! each verifies and records every event once, answers a redelivered `webhook-id` with a
//! `2xx` without processing it again, and refuses a tampered, a foreign, a stale and an
//! unsigned request. Python 3 with `standardwebhooks` and Node.js with the example's npm
//! packages must be installed (`scripts/setup.sh` does it); without them the test fails
//! saying so.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hookline_domain::signing::WebhookSecret;
use hookline_e2e::process::log_tail;
use hookline_e2e::{eventually, free_addr, Deployment, Pipeline};
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Language {
    Python,
    TypeScript,
    Rust,
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Python => "python",
            Language::TypeScript => "typescript",
            Language::Rust => "rust",
        })
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/receivers")
}

/// Runs `program args` to completion in `dir`; fails the test, saying `why` and what it
/// printed, unless it succeeds.
fn run_or_fail(dir: &Path, program: &str, args: &[&str], why: &str) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("{program} does not run ({err}): {why}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {why}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The command that runs the example receiver of `language`, after checking that its
/// runtime and library are installed (and, for TypeScript, compiling it).
fn receiver_command(language: Language) -> Command {
    let dir = examples().join(language.to_string());
    match language {
        Language::Python => {
            run_or_fail(
                &dir,
                "python3",
                &["-c", "import standardwebhooks"],
                "the Python example receiver needs python3 and the standardwebhooks package \
                 (scripts/setup.sh installs them: pip install -r examples/receivers/python/requirements.txt)",
            );
            let mut command = Command::new("python3");
            command.arg("receiver.py").env("PYTHONUNBUFFERED", "1");
            command.current_dir(dir);
            command
        }
        Language::TypeScript => {
            for package in ["standardwebhooks", "typescript"] {
                assert!(
                    dir.join("node_modules")
                        .join(package)
                        .join("package.json")
                        .exists(),
                    "the TypeScript example receiver's npm package {package} is not installed \
                     (scripts/setup.sh runs npm ci in examples/receivers/typescript)"
                );
            }
            run_or_fail(
                &dir,
                "node",
                &["node_modules/typescript/bin/tsc", "-p", "."],
                "compiling the TypeScript example receiver (Node.js is installed by scripts/setup.sh)",
            );
            let mut command = Command::new("node");
            command.arg("dist/receiver.js").current_dir(dir);
            command
        }
        Language::Rust => {
            let binary = hookline_e2e::process::bin_dir().join("hookline-example-receiver");
            assert!(
                binary.exists(),
                "{} is missing: the Rust example receiver is built by `cargo build --workspace --bins`",
                binary.display()
            );
            Command::new(binary)
        }
    }
}

/// One example receiver running as a process; killed when dropped.
struct ExampleReceiver {
    language: Language,
    child: Child,
    addr: SocketAddr,
    /// Its file of processed messages, a JSON object per line.
    record: PathBuf,
    log: PathBuf,
}

impl ExampleReceiver {
    /// Starts the example of `language` on `addr` with the subscription's `secret`, and
    /// waits until it answers `/healthz`.
    async fn start(language: Language, addr: SocketAddr, secret: &str, prefix: &str) -> Self {
        let mut command = receiver_command(language);
        let record = std::env::temp_dir().join(format!("{prefix}receiver-{language}.jsonl"));
        let log = std::env::temp_dir().join(format!("{prefix}receiver-{language}.log"));
        let _ = std::fs::remove_file(&record);
        let out = std::fs::File::create(&log).expect("create the receiver's log");
        let child = command
            .env("WEBHOOK_SECRET", secret)
            .env("HOST", addr.ip().to_string())
            .env("PORT", addr.port().to_string())
            .env("RECEIVED_FILE", &record)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|err| panic!("start the {language} example receiver: {err}"));
        let mut receiver = Self {
            language,
            child,
            addr,
            record,
            log,
        };
        let health = format!("http://{addr}/healthz");
        let ready = eventually(Duration::from_secs(30), || async {
            matches!(reqwest::get(&health).await, Ok(r) if r.status() == 200)
        })
        .await;
        let exited = receiver.child.try_wait().ok().flatten();
        assert!(
            ready && exited.is_none(),
            "the {language} example receiver did not get ready (exit: {exited:?}):\n{}",
            receiver.log()
        );
        receiver
    }

    fn url(&self) -> String {
        format!("http://{}/webhooks", self.addr)
    }

    /// The messages it processed, in order (complete lines only).
    fn processed(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn processed_ids(&self) -> Vec<String> {
        self.processed()
            .iter()
            .map(|p| p["webhook_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn log(&self) -> String {
        log_tail(&self.log)
    }

    /// Posts `body` with the given Standard Webhooks headers (none when `headers` is
    /// `None`); returns the status and the JSON answer.
    async fn post(&self, headers: Option<(&str, i64, &str)>, body: &str) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(self.url())
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some((id, timestamp, signature)) = headers {
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .header("webhook-attempt", "1");
        }
        let response = request.send().await.unwrap_or_else(|err| {
            panic!(
                "{} receiver unreachable: {err}\n{}",
                self.language,
                self.log()
            )
        });
        let status = response.status().as_u16();
        let answer = response.json().await.unwrap_or(Value::Null);
        (status, answer)
    }
}

impl Drop for ExampleReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many of `attempts` were 2xx answers whose body carries `status` (the example
/// receivers answer `{"status": "accepted" | "duplicate", …}`).
fn answered(attempts: &[Value], status: &str) -> usize {
    attempts
        .iter()
        .filter(|a| a["outcome"] == "success")
        .filter(|a| {
            a["response_body"]
                .as_str()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                .is_some_and(|b| b["status"] == status)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_typescript_and_rust_example_receivers_verify_and_deduplicate_real_deliveries() {
    let pipeline = Pipeline::start(Deployment::new()).await.unwrap();
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);

    // As an integrator does it: the subscription first, then the receiver configured
    // with the secret its creation answered.
    let mut receivers = Vec::new();
    for language in [Language::Python, Language::TypeScript, Language::Rust] {
        let addr = free_addr();
        let (sub, secret) = pipeline
            .api
            .subscribe(
                json!({"tenant": "acme", "url": format!("http://{addr}/webhooks"),
                              "event_types": ["invoice.*"]}),
            )
            .await
            .unwrap();
        let receiver =
            ExampleReceiver::start(language, addr, &secret, &pipeline.deployment.prefix).await;
        receivers.push((sub, secret, receiver));
    }

    let events: Vec<Value> = (1..=3)
        .map(|n| {
            json!({"id": format!("evt_recv_{n}"), "type": "invoice.paid", "tenant": "acme",
                   "data": {"invoice_id": format!("in_{n}"), "amount_paid": 1000 * n, "currency": "EUR"}})
        })
        .collect();
    let sent: BTreeSet<String> = pipeline
        .api
        .send_events(Value::Array(events))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(sent.len(), 3);

    // Every event reaches each receiver once, verified with the library and recorded.
    let mut first_ids = Vec::new();
    for (sub, _, receiver) in &receivers {
        let language = receiver.language;
        let arrived = eventually(Duration::from_secs(60), || receiver.processed().len() >= 3).await;
        assert!(
            arrived,
            "{language}: processed {:?}\n{}",
            receiver.processed(),
            receiver.log()
        );
        let processed = receiver.processed();
        assert_eq!(processed.len(), 3, "{language}: {processed:?}");
        let event_ids: BTreeSet<String> = processed
            .iter()
            .map(|p| p["event_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(event_ids, sent, "{language}: the events sent");
        for p in &processed {
            assert_eq!(p["event_type"], "invoice.paid", "{language}: {p}");
            assert_eq!(p["tenant"], "acme", "{language}: {p}");
            assert_eq!(p["attempt"], "1", "{language}: webhook-attempt, {p}");
        }
        let ids: BTreeSet<String> = receiver.processed_ids().into_iter().collect();
        assert_eq!(ids.len(), 3, "{language}: one webhook-id per event");
        assert!(ids.iter().all(|id| id.starts_with("msg_")), "{ids:?}");

        // The pipeline recorded the receiver's own 2xx answers for these webhook-ids.
        let attempts = pipeline
            .api
            .wait_attempts(sub, Duration::from_secs(30), |a| {
                answered(a, "accepted") >= 3
            })
            .await;
        assert_eq!(
            answered(&attempts, "accepted"),
            3,
            "{language}: {attempts:?}"
        );
        let attempted: BTreeSet<String> = attempts
            .iter()
            .map(|a| a["message_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            attempted, ids,
            "{language}: attempts are for the recorded ids"
        );
        first_ids.push(ids);
    }

    // A redelivery of the same messages (a replay keeps their webhook-ids): answered
    // 2xx as a duplicate, and not processed a second time.
    for (sub, _, _) in &receivers {
        let job = pipeline
            .api
            .run_job(
                &format!("/v1/subscriptions/{sub}/replay"),
                json!({ "since": since }),
            )
            .await
            .unwrap();
        assert_eq!(job["progress"]["requeued"], 3, "{job}");
    }
    for ((sub, _, receiver), ids) in receivers.iter().zip(&first_ids) {
        let language = receiver.language;
        let attempts = pipeline
            .api
            .wait_attempts(sub, Duration::from_secs(60), |a| {
                answered(a, "duplicate") >= 3
            })
            .await;
        assert_eq!(
            answered(&attempts, "duplicate"),
            3,
            "{language}: the redeliveries answered as duplicates: {attempts:?}\n{}",
            receiver.log()
        );
        assert_eq!(
            answered(&attempts, "accepted"),
            3,
            "{language}: {attempts:?}"
        );
        let redelivered: BTreeSet<String> = attempts
            .iter()
            .map(|a| a["message_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(&redelivered, ids, "{language}: the same webhook-ids again");
        assert_eq!(
            receiver.processed_ids().len(),
            3,
            "{language}: a redelivered webhook-id is processed once: {:?}",
            receiver.processed()
        );
    }

    // Requests straight to each receiver: one genuinely signed, then a tampered body, a
    // signature by another secret, a stale timestamp and no signature at all.
    for (_, secret, receiver) in &receivers {
        let language = receiver.language;
        let key = WebhookSecret::parse(secret).unwrap();
        let now = chrono::Utc::now().timestamp();
        let body = json!({"id": "evt_direct", "type": "invoice.paid", "tenant": "acme",
                          "timestamp": chrono::Utc::now().to_rfc3339(),
                          "data": {"invoice_id": "in_9", "amount_paid": 100, "currency": "EUR"}})
        .to_string();
        let sign = |id: &str, at: i64| key.sign(id, at, body.as_bytes());

        let genuine = sign("msg_direct_genuine", now);
        let (status, answer) = receiver
            .post(Some(("msg_direct_genuine", now, &genuine)), &body)
            .await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("accepted")),
            "{language}: a genuine request: {answer}"
        );

        let tampered = body.replace("\"amount_paid\":100", "\"amount_paid\":1000000");
        assert_ne!(tampered, body);
        let foreign = WebhookSecret::generate().sign("msg_direct_foreign", now, body.as_bytes());
        let stale_at = now - 600;
        let stale = sign("msg_direct_stale", stale_at);
        for (what, headers, body, want) in [
            (
                "tampered body",
                Some(("msg_direct_tampered", now, sign("msg_direct_tampered", now))),
                tampered.as_str(),
                401,
            ),
            (
                "another secret",
                Some(("msg_direct_foreign", now, foreign)),
                body.as_str(),
                401,
            ),
            (
                "timestamp 10 minutes old",
                Some(("msg_direct_stale", stale_at, stale)),
                body.as_str(),
                401,
            ),
            ("no signature headers", None, body.as_str(), 400),
        ] {
            let headers = headers
                .as_ref()
                .map(|(id, at, sig)| (*id, *at, sig.as_str()));
            let (status, answer) = receiver.post(headers, body).await;
            assert_eq!(status, want, "{language}: {what}: {answer}");
            assert!(
                answer["error"].is_string(),
                "{language}: {what}: a JSON error: {answer}"
            );
        }

        // The genuine one again: a duplicate, answered 2xx.
        let (status, answer) = receiver
            .post(Some(("msg_direct_genuine", now, &genuine)), &body)
            .await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("duplicate")),
            "{language}: {answer}"
        );

        let processed = receiver.processed_ids();
        assert_eq!(processed.len(), 4, "{language}: {processed:?}");
        assert_eq!(
            processed
                .iter()
                .filter(|id| id.starts_with("msg_direct"))
                .count(),
            1,
            "{language}: only the genuine request was processed: {processed:?}"
        );
        assert!(processed.iter().any(|id| id == "msg_direct_genuine"));
    }
}
