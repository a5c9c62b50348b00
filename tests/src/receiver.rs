//! A real HTTP receiver on loopback: records every webhook request and answers as told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

use crate::wait::eventually;

/// One webhook request as a receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path segment after `/hooks/`.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw body.
    pub body: Bytes,
    /// The body parsed.
    pub json: Value,
    /// The status the receiver answered.
    pub status: u16,
    /// When the request arrived.
    pub arrived: std::time::Instant,
}

impl Received {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a receiver answers requests on one path.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 204 at once.
    Ok,
    /// This status for the first `n` requests, then 204.
    FailFirst(u16, usize),
    /// Always this status.
    Always(u16),
    /// Hold the request this long, then 204.
    Hang(Duration),
    /// This status with `Retry-After: <seconds>` for the first `n` requests, then 204.
    RetryAfter(u16, u64, usize),
    /// `302 Found` to this URL, always.
    Redirect(&'static str),
    /// This status for every `n`-th request on the path (the `n`-th, `2n`-th, …), 204
    /// otherwise: `FailEvery(500, 2)` fails half the requests.
    FailEvery(u16, usize),
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<HashMap<String, Behaviour>>,
    counts: Mutex<HashMap<String, usize>>,
    /// Requests being handled per path: (now, most ever).
    concurrency: Mutex<HashMap<String, (usize, usize)>>,
    /// The running server: how to stop it, and its task ([`Receiver::stop_serving`]).
    server: Mutex<Option<Server>>,
}

/// A running HTTP server of a receiver.
struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ReceiverState {
    fn enter(&self, path: &str) {
        if let Ok(mut map) = self.concurrency.lock() {
            let entry = map.entry(path.to_owned()).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(entry.0);
        }
    }

    fn leave(&self, path: &str) {
        if let Ok(mut map) = self.concurrency.lock() {
            if let Some(entry) = map.get_mut(path) {
                entry.0 = entry.0.saturating_sub(1);
            }
        }
    }
}

/// A real HTTP receiver on loopback that records every request to `/hooks/{path}`.
#[derive(Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<ReceiverState>,
    /// The address it listens on (kept across [`stop_serving`](Self::stop_serving)).
    addr: SocketAddr,
}

impl Receiver {
    /// Starts a receiver; every path answers 204 unless told otherwise.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts a receiver on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let state = Arc::new(ReceiverState::default());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        serve(listener, &state);
        Ok(Self {
            base: format!("http://{addr}"),
            state,
            addr,
        })
    }

    /// Takes the receiver off the network: its listening socket closes at once (new
    /// connections are refused), idle keep-alive connections are closed, and requests
    /// being answered finish (waited for up to `patience`, then cut). What it recorded
    /// is kept; [`serve_again`](Self::serve_again) brings it back on the same address.
    pub async fn stop_serving(&self, patience: Duration) {
        let server = self.state.server.lock().ok().and_then(|mut s| s.take());
        if let Some(server) = server {
            let _ = server.stop.send(());
            let abort = server.task.abort_handle();
            if tokio::time::timeout(patience, server.task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Listens again on the address it had, after [`stop_serving`](Self::stop_serving)
    /// (a no-op while it serves). Retries the bind for a few seconds.
    pub async fn serve_again(&self) -> anyhow::Result<()> {
        if self.is_serving() {
            return Ok(());
        }
        let mut last_error = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    serve(listener, &self.state);
                    return Ok(());
                }
                Err(err) => last_error = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow::anyhow!("rebinding {}: {:?}", self.addr, last_error))
    }

    /// Whether its HTTP server is up (not stopped with [`stop_serving`](Self::stop_serving)).
    pub fn is_serving(&self) -> bool {
        self.state
            .server
            .lock()
            .map(|s| s.is_some())
            .unwrap_or(false)
    }

    /// When each request on `path` arrived, in order.
    pub fn arrivals(&self, path: &str) -> Vec<std::time::Instant> {
        self.on(path).iter().map(|r| r.arrived).collect()
    }

    /// The URL of one path.
    pub fn url(&self, path: &str) -> String {
        format!("{}/hooks/{path}", self.base)
    }

    /// Sets how `path` answers.
    pub fn behave(&self, path: &str, behaviour: Behaviour) {
        if let Ok(mut map) = self.state.behaviour.lock() {
            map.insert(path.to_owned(), behaviour);
        }
    }

    /// Requests that reached `path` so far, counted on arrival (before any answer).
    pub fn entered(&self, path: &str) -> usize {
        self.state
            .counts
            .lock()
            .ok()
            .and_then(|c| c.get(path).copied())
            .unwrap_or(0)
    }

    /// The most requests `path` ever had in flight at once.
    pub fn max_concurrency(&self, path: &str) -> usize {
        self.state
            .concurrency
            .lock()
            .ok()
            .and_then(|m| m.get(path).map(|e| e.1))
            .unwrap_or(0)
    }

    /// Requests received so far on `path`.
    pub fn on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Everything received so far (successful or not), in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Waits until `done(received)` holds or `patience` passes; returns whether it held.
    pub async fn wait_until(&self, patience: Duration, done: impl Fn(&[Received]) -> bool) -> bool {
        eventually(patience, || done(&self.received())).await
    }
}

/// Serves the receiver's routes on `listener` until told to stop.
fn serve(listener: tokio::net::TcpListener, state: &Arc<ReceiverState>) {
    let app = axum::Router::new()
        .route("/hooks/{path}", post(on_request))
        .with_state(Arc::clone(state));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Only an explicit stop ends the server: the sender lives in the state,
                // which the server itself holds.
                let _ = stopped.await;
            })
            .await;
    });
    if let Ok(mut server) = state.server.lock() {
        *server = Some(Server { stop, task });
    }
}

async fn on_request(
    State(state): State<Arc<ReceiverState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let arrived = std::time::Instant::now();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let behaviour = state
        .behaviour
        .lock()
        .ok()
        .and_then(|m| m.get(&path).copied())
        .unwrap_or(Behaviour::Ok);
    let seen = state
        .counts
        .lock()
        .map(|mut c| {
            let n = c.entry(path.clone()).or_default();
            *n += 1;
            *n
        })
        .unwrap_or(1);
    state.enter(&path);
    if let Behaviour::Hang(duration) = behaviour {
        tokio::time::sleep(duration).await;
    }
    state.leave(&path);
    let status = match behaviour {
        Behaviour::Ok | Behaviour::Hang(_) => 204,
        Behaviour::FailFirst(status, n) | Behaviour::RetryAfter(status, _, n) if seen <= n => {
            status
        }
        Behaviour::FailFirst(..) | Behaviour::RetryAfter(..) => 204,
        Behaviour::FailEvery(status, n) if n > 0 && seen % n == 0 => status,
        Behaviour::FailEvery(..) => 204,
        Behaviour::Always(status) => status,
        Behaviour::Redirect(_) => 302,
    };
    if let Ok(mut received) = state.received.lock() {
        received.push(Received {
            path,
            headers,
            body,
            json,
            status,
            arrived,
        });
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    match behaviour {
        Behaviour::RetryAfter(_, seconds, n) if seen <= n => {
            if let Ok(value) = seconds.to_string().parse() {
                headers.insert("retry-after", value);
            }
        }
        Behaviour::Redirect(location) => {
            if let Ok(value) = location.parse() {
                headers.insert("location", value);
            }
        }
        _ => {}
    }
    (status, headers)
}
