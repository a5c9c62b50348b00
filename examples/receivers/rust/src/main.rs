//! A Hookline webhook receiver, as an ERP integration would write one in Rust.
//!
//! It verifies every request with the Standard Webhooks verifier of `hookline-domain`
//! ([`WebhookSecret::verify`], tested against the specification's published vector) and
//! the subscription's secret, refuses a bad signature or a timestamp more than five
//! minutes off with `401`, and de-duplicates on `webhook-id`: a message it has already
//! processed is answered `200` again and not processed twice. Processing here is
//! appending one JSON line per accepted message to a file, which is also the
//! de-duplication store across restarts; a real integration records the `webhook-id`
//! in its own database, in the same transaction as the booking it makes.
//!
//! Settings (environment):
//! - `WEBHOOK_SECRET`: the subscription's `whsec_…` secret (required)
//! - `HOST` / `PORT`: where to listen (default `127.0.0.1:9000`)
//! - `RECEIVED_FILE`: the file of processed messages (default `received.jsonl`)
//!
//! Run: `cargo run -p hookline-example-receiver`; point the subscription at
//! `http://HOST:PORT/webhooks`. See docs/receivers.md.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use hookline_domain::signing::{SignatureError, WebhookSecret};
use serde_json::{json, Value};

const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How far the `webhook-timestamp` may be from this machine's clock, as the official
/// libraries have it: it bounds how long a captured request can be played back.
const TOLERANCE_SECS: i64 = 5 * 60;

/// The processed messages: a JSON line each in a file, and the set of their ids.
struct Store {
    path: PathBuf,
    seen: Mutex<HashSet<String>>,
}

impl Store {
    fn open(path: PathBuf) -> anyhow::Result<Self> {
        let mut seen = HashSet::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            // A line cut short by a crash is skipped: that message is redelivered.
            seen.extend(
                text.lines()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .filter_map(|record| record["webhook_id"].as_str().map(str::to_owned)),
            );
        }
        Ok(Self {
            path,
            seen: Mutex::new(seen),
        })
    }

    /// Processes the message unless it was already; returns whether it was new.
    fn process_once(&self, webhook_id: &str, record: &Value) -> std::io::Result<bool> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.contains(webhook_id) {
            return Ok(false);
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(file, "{record}")?;
        seen.insert(webhook_id.to_owned());
        Ok(true)
    }
}

struct Receiver {
    secret: WebhookSecret,
    store: Store,
}

type Answer = (StatusCode, Json<Value>);

fn refuse(status: StatusCode, error: impl Into<String>) -> Answer {
    (status, Json(json!({ "error": error.into() })))
}

/// Verifies, de-duplicates and records one webhook.
async fn webhook(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Answer {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signature)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return refuse(StatusCode::BAD_REQUEST, "missing Standard Webhooks headers");
    };
    let Ok(timestamp) = timestamp.parse::<i64>() else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "verification failed: bad timestamp",
        );
    };
    // Verify the raw bytes as received: re-serialised JSON would not match.
    let now = chrono::Utc::now().timestamp();
    match receiver
        .secret
        .verify(id, timestamp, &body, signature, now, TOLERANCE_SECS)
    {
        Ok(()) => {}
        Err(SignatureError::StaleTimestamp) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "verification failed: timestamp out of tolerance",
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "verification failed: no matching signature",
            )
        }
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    if !event.is_object() {
        return refuse(StatusCode::BAD_REQUEST, "the body is not a JSON object");
    }
    let record = json!({
        "webhook_id": id,
        "attempt": header("webhook-attempt").unwrap_or("1"),
        "event_id": event["id"],
        "event_type": event["type"],
        "tenant": event["tenant"],
    });
    match receiver.store.process_once(id, &record) {
        Ok(fresh) => (
            StatusCode::OK,
            Json(json!({
                "status": if fresh { "accepted" } else { "duplicate" },
                "webhook_id": id,
            })),
        ),
        // Not processed: a 5xx makes Hookline retry the same webhook-id later.
        Err(err) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not record: {err}"),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secret = std::env::var("WEBHOOK_SECRET")
        .context("set WEBHOOK_SECRET to the subscription's whsec_... secret")?;
    let secret = WebhookSecret::parse(&secret).context("WEBHOOK_SECRET")?;
    let store = Store::open(
        std::env::var("RECEIVED_FILE")
            .unwrap_or_else(|_| "received.jsonl".to_owned())
            .into(),
    )?;
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port: u16 = std::env::var("PORT")
        .unwrap_or_else(|_| "9000".to_owned())
        .parse()
        .context("PORT")?;
    let app = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/webhooks", post(webhook))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(Receiver { secret, store }));
    let listener = tokio::net::TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("listening on {host}:{port}"))?;
    eprintln!("receiver: listening on http://{host}:{port}");
    axum::serve(listener, app).await?;
    Ok(())
}
