//! Logs, metrics and the operations endpoints (`/metrics`, `/healthz`, `/readyz`)
//! every binary serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogArgs, LogFormat};
use crate::heartbeat::{Heartbeat, Wedged};
use crate::progress::Progress;

/// Installs the global tracing subscriber: `RUST_LOG` filter (default
/// `info,rdkafka=warn`), text or JSON lines on stderr; and, when an OTLP endpoint is
/// set, the OpenTelemetry layer that exports Hookline's spans (see [`crate::trace`]).
/// `service` is the default `service.name`. Keep the returned [`Traces`] until the
/// process ends: dropping it flushes the spans still buffered.
pub fn init_logging(args: &LogArgs, service: &str) -> anyhow::Result<Traces> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"))
    };
    let (json, text) = if args.log_format == LogFormat::Json {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true);
        (Some(layer.with_filter(filter())), None)
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false);
        (None, Some(layer.with_filter(filter())))
    };
    let provider = trace_provider(&args.traces, service)?;
    // Hookline's own spans only (not those of the libraries beneath), and whatever they
    // warn about as span events; its own filter, so that `RUST_LOG` quiets the logs
    // without cutting the traces.
    let otel = provider.as_ref().map(|(provider, _)| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("hookline"))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("hookline")
                    && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
            }))
    });
    tracing_subscriber::registry()
        .with(otel)
        .with(json)
        .with(text)
        .init();
    let provider = provider.map(|(provider, url)| {
        crate::trace::enable();
        tracing::info!(%url, ratio = args.traces.trace_sample_ratio, "exporting traces (OTLP/HTTP)");
        provider
    });
    Ok(Traces { provider })
}

/// The tracer provider exporting to the configured collector, and its URL; `None` when
/// no endpoint is set (traces off).
fn trace_provider(
    args: &crate::config::TraceArgs,
    service: &str,
) -> anyhow::Result<Option<(opentelemetry_sdk::trace::SdkTracerProvider, url::Url)>> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::Sampler;

    let Some(url) = args.traces_url() else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|err| {
            anyhow::anyhow!("refusing to start: OTEL_EXPORTER_OTLP_ENDPOINT {url}: {err}")
        })?;
    let name = args
        .service_name
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .unwrap_or(service)
        .to_owned();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    // The batch processor exports from a thread of its own, over a bounded queue (2048
    // spans; the overflow is dropped, never waited for): a slow or absent collector
    // never slows the data path.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            args.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    Ok(Some((provider, url)))
}

/// The trace exporter of a process, if traces are on: dropping it (or
/// [`shutdown`](Self::shutdown)) exports the spans still buffered.
#[must_use = "dropping it stops trace export"]
pub struct Traces {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Traces {
    /// Exports the spans still buffered and stops the exporter (bounded by the
    /// SDK's shutdown timeout, 5 s). Blocks: call it as the process ends.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                tracing::warn!(%err, "traces not all exported at shutdown");
            }
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A process's metrics registry, with the standard process collector when available.
pub fn registry(binary: &str) -> Registry {
    let labels = [("service".to_owned(), binary.to_owned())]
        .into_iter()
        .collect();
    let registry = Registry::new_custom(None, Some(labels)).unwrap_or_default();
    if let Err(err) = crate::kafka_stats::register(&registry) {
        tracing::warn!(%err, "Kafka client metrics unavailable");
    }
    match prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "hookline_build_info",
            "Always 1; the version of the running binary in its label.",
        ),
        &["version"],
    ) {
        Ok(info) => {
            info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            if let Err(err) = registry.register(Box::new(info)) {
                tracing::warn!(%err, "build info metric unavailable");
            }
        }
        Err(err) => tracing::warn!(%err, "build info metric unavailable"),
    }
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(err) = registry.register(Box::new(collector)) {
            tracing::warn!(%err, "process metrics unavailable");
        }
    }
    registry
}

/// Bucket bounds (seconds) of the per-stage latency histograms: fine below 20 ms,
/// where a healthy pipeline's stages sit, coarse up to the retry delays above.
pub const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Registers `<binary>_stage_duration_seconds{stage}`: how long each stage of the
/// pipeline a binary runs takes, so that a slow end to end can be pinned to one stage
/// (every binary names its stages `<from>_to_<to>`).
pub fn stage_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
) -> anyhow::Result<HistogramVec> {
    let stages = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(STAGE_BUCKETS.to_vec()),
        &["stage"],
    )?;
    registry.register(Box::new(stages.clone()))?;
    Ok(stages)
}

/// Caps a label's values for metrics an operator opts in to (per tenant): the first
/// `cap` distinct values seen get a series of their own, any later one shares
/// [`OTHER`](Self::OTHER), so a scrape never grows with the number of tenants.
pub struct BoundedLabel {
    cap: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl BoundedLabel {
    /// The value every label past the cap gets.
    pub const OTHER: &'static str = "_other";

    /// At most `cap` values of their own; 0 turns the label off.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The label for `value`: itself while the cap allows, [`OTHER`](Self::OTHER) past
    /// it, `None` when the label is off.
    pub fn label(&self, value: &str) -> Option<std::borrow::Cow<'static, str>> {
        if self.cap == 0 {
            return None;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return Some(std::borrow::Cow::Owned(value.to_owned()));
        }
        if seen.len() < self.cap {
            seen.insert(value.to_owned());
            return Some(std::borrow::Cow::Owned(value.to_owned()));
        }
        Some(std::borrow::Cow::Borrowed(Self::OTHER))
    }
}

/// Readiness flag: false until the binary's consumers and views are up. Clones share
/// the flag; [`and`](Self::and) makes one that also needs other conditions.
#[derive(Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    /// Further conditions, each set by its own part of the process.
    also: Vec<Readiness>,
    /// Work that must not stall (see [`Progress`]).
    progress: Vec<Progress>,
    /// Loops that must keep turning (see [`Heartbeat`]): not ready, and not alive,
    /// while one is wedged.
    heartbeats: Vec<Heartbeat>,
}

impl Readiness {
    /// Marks the process ready (or not), as far as this flag goes.
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::Release);
    }

    /// Whether the process is ready: this flag and every condition added with
    /// [`and`](Self::and).
    pub fn get(&self) -> bool {
        self.flag.load(Ordering::Acquire)
            && self.also.iter().all(Readiness::get)
            && !self.progress.iter().any(Progress::stalled)
            && self.wedged().is_none()
    }

    /// The first loop found wedged, if any: `/healthz` then answers 503.
    pub fn wedged(&self) -> Option<Wedged> {
        self.heartbeats
            .iter()
            .find_map(Heartbeat::wedged)
            .or_else(|| self.also.iter().find_map(Readiness::wedged))
    }

    /// A readiness sharing this one's flag that is ready only when `other` is too.
    pub fn and(&self, other: &Readiness) -> Readiness {
        let mut also = self.also.clone();
        also.push(other.clone());
        Readiness {
            flag: Arc::clone(&self.flag),
            also,
            progress: self.progress.clone(),
            heartbeats: self.heartbeats.clone(),
        }
    }

    /// A readiness sharing this one's flag that is not ready while `progress` is
    /// stalled.
    pub fn and_progressing(&self, progress: &Progress) -> Readiness {
        let mut with = self.clone();
        with.progress.push(progress.clone());
        with
    }

    /// A readiness sharing this one's flag that is neither ready nor alive while the
    /// loop of `heartbeat` is wedged.
    pub fn and_beating(&self, heartbeat: &Heartbeat) -> Readiness {
        let mut with = self.clone();
        with.heartbeats.push(heartbeat.clone());
        with
    }
}

#[derive(Clone)]
struct OpsState {
    registry: Registry,
    readiness: Readiness,
    /// `hookline_ready`: what `/readyz` answers, as a metric.
    ready: prometheus::IntGauge,
}

/// `/metrics`, `/healthz` and `/readyz`, to merge into a binary's router.
/// `/metrics` also exports `hookline_ready` (1 when `/readyz` answers 200), so that an
/// alert sees readiness without probing.
pub fn ops_routes(registry: Registry, readiness: Readiness) -> Router {
    let ready_gauge = prometheus::IntGauge::new(
        "hookline_ready",
        "1 when this process's /readyz answers 200, else 0.",
    )
    .expect("a valid metric");
    if let Err(err) = registry.register(Box::new(ready_gauge.clone())) {
        tracing::warn!(%err, "readiness metric unavailable");
    }
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .with_state(OpsState {
            registry,
            readiness,
            ready: ready_gauge,
        })
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    state.ready.set(i64::from(state.readiness.get()));
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            err.to_string().into_bytes(),
        ),
    }
}

/// Alive unless a watched loop is wedged: a restart is then the way out.
async fn health(State(state): State<OpsState>) -> impl IntoResponse {
    match state.readiness.wedged() {
        None => (StatusCode::OK, "ok".to_owned()),
        Some(wedged) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "wedged in step \"{}\" for {:?}",
                wedged.step, wedged.silent_for
            ),
        ),
    }
}

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    if state.readiness.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves `router` on `addr` until `shutdown` completes.
pub async fn serve(
    addr: std::net::SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "http listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A stop flag that turns true on SIGINT or SIGTERM.
pub fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Serves `router` on `addr` until `stop` turns true.
pub async fn serve_until(
    addr: std::net::SocketAddr,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    serve(addr, router, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_labels_share_one_value_past_the_cap() {
        let off = BoundedLabel::new(0);
        assert_eq!(off.label("acme"), None);
        let two = BoundedLabel::new(2);
        assert_eq!(two.label("acme").as_deref(), Some("acme"));
        assert_eq!(two.label("globex").as_deref(), Some("globex"));
        assert_eq!(two.label("initech").as_deref(), Some(BoundedLabel::OTHER));
        assert_eq!(
            two.label("acme").as_deref(),
            Some("acme"),
            "seen ones keep theirs"
        );
    }

    #[test]
    fn readiness_needs_every_condition() {
        let view = Readiness::default();
        let assigned = Readiness::default();
        let serving = view.and(&assigned);
        assert!(!serving.get());
        view.set(true);
        assert!(!serving.get(), "the assignment is still missing");
        assigned.set(true);
        assert!(serving.get());
        serving.set(false);
        assert!(!view.get(), "the flag is shared with the original");
    }

    #[test]
    fn a_wedged_loop_is_neither_ready_nor_alive_through_every_condition() {
        let heartbeat = Heartbeat::new(std::time::Duration::from_secs(60));
        let view = Readiness::default();
        view.set(true);
        let routing = Readiness::default().and_beating(&heartbeat);
        routing.set(true);
        let serving = view.and(&routing);
        assert!(serving.get());
        assert_eq!(serving.wedged(), None);
        let long_ago = std::time::Instant::now()
            .checked_sub(std::time::Duration::from_secs(61))
            .expect("the machine has been up for a minute");
        heartbeat.beat_at("committing a transaction", long_ago);
        assert!(!serving.get(), "wedged: not ready");
        assert_eq!(
            serving.wedged().map(|wedged| wedged.step),
            Some("committing a transaction"),
            "and not alive, naming the step"
        );
        heartbeat.beat("waiting for events");
        assert!(serving.get());
    }
}
