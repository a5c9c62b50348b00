//! The `hookline` CLI as a process against a running pipeline: its output, its exit
//! codes, and the API's error messages when a call fails.

use std::io::BufRead as _;
use std::process::{Output, Stdio};
use std::time::Duration;

use hookline_e2e::{binary, eventually, Pipeline, ADMIN_TOKEN};
use serde_json::Value;

/// Runs `hookline args…` against `p`'s ingest with the admin token (from
/// `HOOKLINE_API_KEY`, as an operator's shell would have it).
fn hookline(p: &Pipeline, args: &[&str]) -> Output {
    hookline_as(p, ADMIN_TOKEN, args)
}

fn hookline_as(p: &Pipeline, key: &str, args: &[&str]) -> Output {
    let output = p
        .deployment
        .command(binary("hookline"))
        .env("HOOKLINE_URL", p.ingest.url())
        .env("HOOKLINE_API_KEY", key)
        .args(args)
        .output()
        .expect("run hookline (built by `cargo build --workspace --bins`)");
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(
        !out.contains(key) && !err.contains(key),
        "the API key is never printed: {out}\n{err}"
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {}: {}\n{}",
        output.status,
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_subscriptions_tails_attempts_and_waits_for_a_replay() {
    let p = Pipeline::start(hookline_e2e::Deployment::new())
        .await
        .unwrap();
    let url = p.receiver.url("erp");
    let created = ok(&hookline(
        &p,
        &[
            "subscriptions",
            "create",
            "--tenant",
            "acme",
            &url,
            "--event-type",
            "invoice.*",
        ],
    ));
    let mut lines = created.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("created sub_"), "{created}");
    let sub = first.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        first.contains(&url) && first.contains("[invoice.*]"),
        "{created}"
    );
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with("secret whsec_"),
        "the signing secret, shown once: {created}"
    );

    let listed = ok(&hookline(&p, &["subscriptions", "list"]));
    assert!(listed.starts_with(&format!("{sub} acme {url}")), "{listed}");
    let shown: Value = serde_json::from_str(&ok(&hookline(
        &p,
        &["--json", "subscriptions", "get", &sub],
    )))
    .unwrap();
    assert_eq!(shown["id"], sub.as_str());
    assert!(shown.get("secret").is_none(), "{shown}");

    let tested = ok(&hookline(&p, &["test", &sub, "--wait", "30s"]));
    assert!(
        tested.starts_with("attempted msg_") && tested.contains("webhook.test delivered"),
        "{tested}"
    );

    p.send("acme", "invoice.paid", 3).await.unwrap();
    let mut tail = String::new();
    let held = eventually(Duration::from_secs(30), || {
        tail = ok(&hookline(&p, &["attempts", "tail", &sub]));
        tail.lines().filter(|l| l.contains(" success ")).count() >= 4
    })
    .await;
    assert!(held, "the test event and three events attempted: {tail}");
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 4, "{tail}");
    assert!(lines[0].contains("webhook.test"), "oldest first: {tail}");

    // Following: only attempts made after it started are new to it.
    let mut follow = p
        .deployment
        .command(binary("hookline"))
        .env("HOOKLINE_URL", p.ingest.url())
        .env("HOOKLINE_API_KEY", ADMIN_TOKEN)
        .args([
            "--json",
            "attempts",
            "tail",
            &sub,
            "--follow",
            "--interval",
            "200ms",
            "--limit",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follow.stdout.take().unwrap();
    let reading = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .collect::<Vec<String>>()
    });
    p.send("acme", "invoice.voided", 2).await.unwrap();
    let followed = tokio::time::timeout(Duration::from_secs(30), reading).await;
    follow.kill().unwrap();
    follow.wait().unwrap();
    let followed = followed.expect("two new attempts followed").unwrap();
    for line in &followed {
        let attempt: Value = serde_json::from_str(line).unwrap();
        assert_eq!(attempt["event_type"], "invoice.voided", "{line}");
        assert_eq!(attempt["outcome"], "success", "{line}");
    }

    let replayed = ok(&hookline(
        &p,
        &[
            "replay",
            &sub,
            "--since",
            "1h",
            "--wait",
            "--timeout",
            "60s",
        ],
    ));
    let last = replayed.lines().last().unwrap_or_default();
    assert!(last.starts_with("job_"), "{replayed}");
    assert!(
        last.contains(" replay succeeded ") && last.contains(" requeued=5 "),
        "the five events of the hour, and not the test event: {replayed}"
    );
    let job = last.split_whitespace().next().unwrap();
    let jobs: Value =
        serde_json::from_str(&ok(&hookline(&p, &["--json", "jobs", "list"]))).unwrap();
    assert_eq!(jobs["data"][0]["id"], job, "{jobs}");
    let waited = ok(&hookline(&p, &["jobs", "wait", job]));
    assert!(waited.contains(" succeeded "), "{waited}");

    // Failures: non-zero, with the API's own message.
    let refused = hookline_as(&p, "hk_not-a-key", &["subscriptions", "list"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("401 unauthorized:"), "{message}");
    let missing = hookline(&p, &["jobs", "get", "job_01JZZZZZZZZZZZZZZZZZZZZZZZ"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("404 not_found: job not found"),
        "{}",
        stderr(&missing)
    );
    let finished = hookline(&p, &["jobs", "cancel", job]);
    assert!(!finished.status.success());
    assert!(
        stderr(&finished).contains("409 conflict:"),
        "{}",
        stderr(&finished)
    );

    let deleted = ok(&hookline(&p, &["subscriptions", "delete", &sub]));
    assert_eq!(deleted.trim(), format!("deleted {sub}"));
    assert_eq!(ok(&hookline(&p, &["subscriptions", "list"])), "");
}
