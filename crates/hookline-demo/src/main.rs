//! `hookline-demo`: the README demo's two halves. `receive` is an ERP-style receiver
//! that verifies every webhook's Standard Webhooks signature; `seed` creates
//! subscriptions for two tenants and sends sample finance events.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use clap::{Parser, Subcommand};
use hookline_domain::signing::WebhookSecret;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "hookline-demo", about)]
struct Cli {
    /// Base URL of hookline-ingest.
    #[arg(
        long,
        env = "HOOKLINE_INGEST_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    ingest: String,
    /// Bearer token for the ingest API, if one is set.
    #[arg(
        long,
        env = "HOOKLINE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a receiver that verifies and prints each delivery.
    Receive {
        /// Listen address; subscriptions point at `http://<addr>/hooks/<subscription id>`.
        #[arg(long, default_value = "127.0.0.1:9000")]
        addr: SocketAddr,
    },
    /// Create demo subscriptions and send sample finance events.
    Seed {
        /// Base URL of the receiver.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        receiver: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api = Api {
        http: reqwest::Client::new(),
        base: cli.ingest.trim_end_matches('/').to_owned(),
        token: cli.admin_token,
    };
    match cli.command {
        Command::Receive { addr } => receive(api, addr).await,
        Command::Seed { receiver } => seed(&api, &receiver).await,
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{path}: HTTP {status}: {value}");
        Ok(value)
    }
}

struct Receiver {
    api: Api,
    secrets: Mutex<HashMap<String, WebhookSecret>>,
    seen: Mutex<HashSet<String>>,
}

async fn receive(api: Api, addr: SocketAddr) -> anyhow::Result<()> {
    let state = Arc::new(Receiver {
        api,
        secrets: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashSet::new()),
    });
    let app = Router::new()
        .route("/hooks/{subscription}", post(on_webhook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("receiver listening on http://{addr}/hooks/<subscription id>");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn on_webhook(
    State(state): State<Arc<Receiver>>,
    Path(subscription): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let secret = match secret_of(&state, &subscription).await {
        Ok(secret) => secret,
        Err(err) => {
            println!("  ✗ {subscription}: cannot fetch secret: {err}");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    };
    let now = chrono_now();
    let verified = timestamp
        .parse::<i64>()
        .map_err(|_| "bad webhook-timestamp".to_owned())
        .and_then(|ts| {
            secret
                .verify(&id, ts, &body, &signature, now, 300)
                .map_err(|e| e.to_string())
        });
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match verified {
        Ok(()) => {
            let first = state
                .seen
                .lock()
                .map(|mut s| s.insert(id.clone()))
                .unwrap_or(true);
            println!(
                "  ✓ signature verified  {:<8} {:<20} {}  webhook-id {}{}",
                event["tenant"].as_str().unwrap_or("?"),
                event["type"].as_str().unwrap_or("?"),
                event["id"].as_str().unwrap_or("?"),
                id,
                if first {
                    ""
                } else {
                    "  (duplicate: already processed)"
                }
            );
            StatusCode::NO_CONTENT
        }
        Err(err) => {
            println!("  ✗ signature REJECTED for {id}: {err}");
            StatusCode::UNAUTHORIZED
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn secret_of(state: &Receiver, subscription: &str) -> anyhow::Result<WebhookSecret> {
    if let Some(secret) = state
        .secrets
        .lock()
        .ok()
        .and_then(|s| s.get(subscription).cloned())
    {
        return Ok(secret);
    }
    let value = state
        .api
        .call(
            reqwest::Method::GET,
            &format!("/v1/subscriptions/{subscription}/secret"),
            None,
        )
        .await?;
    let secret = WebhookSecret::parse(value["secret"].as_str().unwrap_or_default())?;
    if let Ok(mut secrets) = state.secrets.lock() {
        secrets.insert(subscription.to_owned(), secret.clone());
    }
    Ok(secret)
}

async fn seed(api: &Api, receiver: &str) -> anyhow::Result<()> {
    let subscriptions = [
        (
            "acme",
            "Acme ERP: invoices and payments",
            json!(["invoice.*", "payment.succeeded"]),
        ),
        ("acme", "Acme expense ledger", json!(["expense.*"])),
        ("globex", "Globex accounting: everything", json!(["*"])),
    ];
    for (tenant, description, patterns) in subscriptions {
        // The URL needs the id, which the API assigns: create, then point it home.
        let created = api
            .call(
                reqwest::Method::POST,
                "/v1/subscriptions",
                Some(
                    json!({"tenant": tenant, "url": format!("{receiver}/hooks/pending"),
                            "event_types": patterns, "description": description}),
                ),
            )
            .await?;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        api.call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"url": format!("{receiver}/hooks/{id}")})),
        )
        .await?;
        println!("subscription {id}  {tenant:<7} {patterns}  ({description})");
    }
    let events = json!([
        {"type": "payment.succeeded", "tenant": "acme", "data": {"payment_id": "pay_1001", "amount": 125000, "currency": "EUR", "customer_id": "cus_77"}},
        {"type": "invoice.paid", "tenant": "acme", "data": {"invoice_id": "in_2001", "amount_paid": 125000, "currency": "EUR"}},
        {"type": "expense.created", "tenant": "acme", "data": {"expense_id": "exp_3001", "amount": 4599, "currency": "EUR", "category": "travel"}},
        {"type": "payment.failed", "tenant": "acme", "data": {"payment_id": "pay_1002", "failure_code": "card_declined"}},
        {"type": "payment.succeeded", "tenant": "globex", "data": {"payment_id": "pay_9001", "amount": 9900, "currency": "USD"}},
        {"type": "invoice.paid", "tenant": "globex", "data": {"invoice_id": "in_9002", "amount_paid": 9900, "currency": "USD"}},
        {"type": "expense.created", "tenant": "globex", "data": {"expense_id": "exp_9003", "amount": 2500, "currency": "USD", "category": "software"}}
    ]);
    let accepted = api
        .call(reqwest::Method::POST, "/v1/events", Some(events))
        .await?;
    println!("sent 7 events, accepted ids: {}", accepted["ids"]);
    println!(
        "expected: acme gets payment.succeeded, invoice.paid (ERP) and expense.created (ledger);"
    );
    println!("          payment.failed matches no acme subscription; globex gets all three of its events.");
    Ok(())
}
