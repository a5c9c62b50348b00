//! `hookline`: the common operator tasks over Hookline's HTTP API — subscriptions,
//! test events, attempts, replay, dead-letter redrive and the jobs they start.
//!
//! Human lines by default, the API's JSON with `--json`. Any failure exits non-zero
//! with the API's error message on stderr. The API key is sent, never printed.

mod client;
mod show;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use client::Client;

/// Command line of `hookline`.
#[derive(Debug, Parser)]
#[command(
    name = "hookline",
    version,
    about = "Hookline's operator CLI, over its HTTP API"
)]
struct Cli {
    /// Base URL of a hookline-ingest instance.
    #[arg(
        long,
        env = "HOOKLINE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,

    /// The admin token or a tenant API key (`hk_…`), sent as a bearer token.
    #[arg(long, env = "HOOKLINE_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,

    /// Print the API's JSON instead of human lines.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, show and delete subscriptions.
    #[command(subcommand)]
    Subscriptions(Subscriptions),
    /// Send a `webhook.test` event to a subscription and show its first attempt.
    Test {
        /// `sub_…`.
        subscription: String,
        /// How long the API waits for the attempt (humantime, at most 60s).
        #[arg(long)]
        wait: Option<String>,
    },
    /// Delivery attempts.
    #[command(subcommand)]
    Attempts(Attempts),
    /// Deliver a subscription's events since a time again (same `webhook-id`s), as a job.
    Replay {
        /// `sub_…`.
        subscription: String,
        /// RFC 3339 time, or a duration back from now (`1h`, `30m`).
        #[arg(long)]
        since: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Put dead-lettered deliveries back into the pipeline, as a job.
    Redrive {
        /// Only this subscription's dead letters (required with a tenant API key).
        #[arg(long)]
        subscription: Option<String>,
        /// Only dead letters written since (RFC 3339 or a duration back from now).
        #[arg(long)]
        since: Option<String>,
        /// Only dead letters written until (RFC 3339 or a duration back from now).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Background jobs (replays, redrives).
    #[command(subcommand)]
    Jobs(Jobs),
}

#[derive(Debug, Subcommand)]
enum Subscriptions {
    /// Create a subscription; prints its id and its signing secret (shown only once).
    Create {
        /// Where deliveries go (https). Positional: `--url` is the API's.
        #[arg(value_name = "URL")]
        endpoint: String,
        /// Event type patterns (`invoice.paid`, `payment.*`, `*`); repeat for more.
        #[arg(long = "event-type", required = true)]
        event_types: Vec<String>,
        /// The tenant (a tenant API key may leave it out: its own).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List subscriptions.
    List {
        /// Only this tenant's (the admin token only; a tenant key sees its own).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one subscription.
    Get {
        /// `sub_…`.
        id: String,
    },
    /// Delete a subscription.
    Delete {
        /// `sub_…`.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum Attempts {
    /// Print a subscription's recent attempts, oldest first; with `--follow`, keep
    /// polling and print new ones as they are made.
    Tail {
        /// `sub_…`.
        subscription: String,
        /// Keep polling for new attempts until interrupted.
        #[arg(long)]
        follow: bool,
        /// How often to poll with `--follow` (humantime).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        interval: Duration,
        /// How many recent attempts to print first (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum Jobs {
    /// Show one job.
    Get {
        /// `job_…`.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only this subscription's jobs.
        #[arg(long)]
        subscription: Option<String>,
    },
    /// Ask a job to stop.
    Cancel {
        /// `job_…`.
        id: String,
    },
    /// Wait until a job finishes; exits 0 only if it succeeded.
    Wait {
        /// `job_…`.
        id: String,
        /// Give up after this long (humantime).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        timeout: Duration,
    },
}

/// Whether a command that starts a job waits for it.
#[derive(Debug, Args)]
struct WaitArgs {
    /// Wait until the job finishes (exit 0 only if it succeeded).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (humantime).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// How often `wait` polls a job.
const POLL: Duration = Duration::from_millis(500);

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::new(&cli.url, cli.api_key.as_deref())?;
    let out = Output { json: cli.json };
    match cli.command {
        Command::Subscriptions(Subscriptions::Create {
            endpoint,
            event_types,
            tenant,
        }) => {
            let mut body = json!({"url": endpoint, "event_types": event_types});
            if let Some(tenant) = tenant {
                body["tenant"] = json!(tenant);
            }
            let created = client
                .post(client.url(&["v1", "subscriptions"], &[]), Some(body))
                .await?;
            out.print(&created, show::subscription_created);
        }
        Command::Subscriptions(Subscriptions::List { tenant }) => {
            let url = client.url(&["v1", "subscriptions"], &[("tenant", tenant.as_deref())]);
            let listed = client.get(url).await?;
            out.print_list(&listed, show::subscription);
        }
        Command::Subscriptions(Subscriptions::Get { id }) => {
            let found = client
                .get(client.url(&["v1", "subscriptions", &id], &[]))
                .await?;
            out.print(&found, show::subscription);
        }
        Command::Subscriptions(Subscriptions::Delete { id }) => {
            client
                .delete(client.url(&["v1", "subscriptions", &id], &[]))
                .await?;
            out.print(&json!({"deleted": id}), |v| {
                format!("deleted {}", show::text(&v["deleted"]))
            });
        }
        Command::Test { subscription, wait } => {
            let body = wait.map(|wait| json!({"wait": wait}));
            let answer = client
                .post(
                    client.url(&["v1", "subscriptions", &subscription, "test"], &[]),
                    body,
                )
                .await?;
            out.print(&answer, show::test_outcome);
        }
        Command::Attempts(Attempts::Tail {
            subscription,
            follow,
            interval,
            limit,
        }) => {
            tail(&client, out, &subscription, follow, interval, limit).await?;
        }
        Command::Replay {
            subscription,
            since,
            wait,
        } => {
            let since = show::parse_time(&since, chrono::Utc::now()).map_err(anyhow::Error::msg)?;
            let job = client
                .post(
                    client.url(&["v1", "subscriptions", &subscription, "replay"], &[]),
                    Some(json!({"since": since})),
                )
                .await?;
            return started(&client, out, job, &wait).await;
        }
        Command::Redrive {
            subscription,
            since,
            until,
            wait,
        } => {
            let now = chrono::Utc::now();
            let mut body = json!({});
            if let Some(id) = subscription {
                body["subscription_id"] = json!(id);
            }
            for (name, value) in [("since", since), ("until", until)] {
                if let Some(value) = value {
                    body[name] = json!(show::parse_time(&value, now).map_err(anyhow::Error::msg)?);
                }
            }
            let job = client
                .post(client.url(&["v1", "dlq", "redrive"], &[]), Some(body))
                .await?;
            return started(&client, out, job, &wait).await;
        }
        Command::Jobs(Jobs::Get { id }) => {
            let job = client.get(client.url(&["v1", "jobs", &id], &[])).await?;
            out.print(&job, show::job);
        }
        Command::Jobs(Jobs::List { subscription }) => {
            let url = client.url(
                &["v1", "jobs"],
                &[("subscription_id", subscription.as_deref())],
            );
            let listed = client.get(url).await?;
            out.print_list(&listed, show::job);
        }
        Command::Jobs(Jobs::Cancel { id }) => {
            let job = client
                .post(client.url(&["v1", "jobs", &id, "cancel"], &[]), None)
                .await?;
            out.print(&job, show::job);
        }
        Command::Jobs(Jobs::Wait { id, timeout }) => {
            let job = wait_for(&client, &id, timeout).await?;
            out.print(&job, show::job);
            return Ok(show::exit_for(&job));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A job just started: printed, and with `--wait` waited for.
async fn started(
    client: &Client,
    out: Output,
    job: Value,
    wait: &WaitArgs,
) -> anyhow::Result<ExitCode> {
    if !wait.wait {
        out.print(&job, show::job);
        return Ok(ExitCode::SUCCESS);
    }
    if !out.json {
        println!("{}", show::job(&job));
    }
    let id = show::text(&job["id"]);
    let done = wait_for(client, &id, wait.timeout).await?;
    out.print(&done, show::job);
    Ok(show::exit_for(&done))
}

/// Polls job `id` until it is finished.
async fn wait_for(client: &Client, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let give_up = tokio::time::Instant::now() + timeout;
    loop {
        let job = client.get(client.url(&["v1", "jobs", id], &[])).await?;
        if show::is_finished(&job) {
            return Ok(job);
        }
        if tokio::time::Instant::now() >= give_up {
            anyhow::bail!(
                "job {id} not finished within {}: {}",
                humantime::format_duration(timeout),
                show::job(&job)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The most attempts the API lists for a subscription.
const MOST_ATTEMPTS: usize = 100;

/// Prints recent attempts oldest first, then (following) new ones as they appear.
async fn tail(
    client: &Client,
    out: Output,
    subscription: &str,
    follow: bool,
    interval: Duration,
    limit: usize,
) -> anyhow::Result<()> {
    let url = |limit: usize| {
        client.url(
            &["v1", "subscriptions", subscription, "attempts"],
            &[("limit", Some(&limit.to_string()))],
        )
    };
    let mut seen = show::Seen::default();
    // Every attempt the API keeps counts as seen; only the newest `limit` are printed.
    let first = seen.new_ones(&client.get(url(MOST_ATTEMPTS)).await?);
    for attempt in &first[first.len().saturating_sub(limit)..] {
        out.line(attempt, show::attempt);
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(interval).await;
        // The most the API keeps: new ones are among the newest.
        let recent = client.get(url(MOST_ATTEMPTS)).await?;
        for attempt in seen.new_ones(&recent) {
            out.line(&attempt, show::attempt);
        }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn print(&self, value: &Value, human: impl Fn(&Value) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", human(value));
        }
    }

    /// One item of a stream: one JSON document a line with `--json`.
    fn line(&self, value: &Value, human: impl Fn(&Value) -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", human(value));
        }
    }

    fn print_list(&self, listed: &Value, human: impl Fn(&Value) -> String) {
        if self.json {
            self.print(listed, |_| String::new());
            return;
        }
        for item in listed["data"].as_array().into_iter().flatten() {
            println!("{}", human(item));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_api_url_and_a_subscriptions_url_are_told_apart() {
        let cli = Cli::try_parse_from([
            "hookline",
            "subscriptions",
            "create",
            "https://erp.example/h",
            "--event-type",
            "invoice.*",
            "--url",
            "http://ingest:8080",
        ])
        .unwrap();
        assert_eq!(cli.url, "http://ingest:8080");
        match cli.command {
            Command::Subscriptions(Subscriptions::Create { endpoint, .. }) => {
                assert_eq!(endpoint, "https://erp.example/h")
            }
            other => panic!("{other:?}"),
        }
    }
}
