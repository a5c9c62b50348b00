//! Distributed traces: the W3C trace context (`traceparent`, `tracestate`) carried in
//! Kafka record headers and HTTP headers, so that one event is one trace from ingest to
//! the receiver's answer. The exporter itself is set up by
//! [`telemetry::init_logging`](crate::telemetry::init_logging).
//!
//! Traces are off unless the operator points Hookline at a collector. While they are
//! off, [`span`] makes no span and the header helpers write nothing: the data path pays
//! one relaxed atomic load per event.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
pub use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::produce::OutRecord;

/// The W3C header naming the trace and the parent span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor-specific trace state along.
pub const TRACESTATE: &str = "tracestate";

/// The headers of the W3C trace context, as carried through Kafka.
pub const TRACE_HEADERS: [&str; 2] = [TRACEPARENT, TRACESTATE];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (set once at start by the telemetry set-up).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns traces on; only the telemetry set-up calls it, once the exporter is installed.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// `make()` when traces are on, else a disabled span that costs nothing.
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// Kafka record headers as an OpenTelemetry carrier to read from.
struct KafkaExtractor<'a, H: Headers>(&'a H);

impl<H: Headers> Extractor for KafkaExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        // The last value wins, as for any repeated header read as one.
        self.0
            .iter()
            .filter(|header| header.key.eq_ignore_ascii_case(key))
            .filter_map(|header| header.value)
            .filter_map(|value| std::str::from_utf8(value).ok())
            .last()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|header| header.key).collect()
    }
}

/// HTTP request headers as an OpenTelemetry carrier to read from.
struct HttpExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Collects what the propagator writes, as (name, value) pairs.
#[derive(Default)]
struct Pairs(Vec<(&'static str, String)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes only its two headers; the names are kept static so
        // that callers can build header maps without copying them.
        if let Some(name) = TRACE_HEADERS.iter().find(|name| **name == key) {
            self.0.push((name, value));
        }
    }
}

/// The trace context in Kafka record headers; an empty context (no parent: the span
/// it is given to starts a new trace) when there are none, or no valid `traceparent`.
pub fn extract_kafka<H: Headers>(headers: Option<&H>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&KafkaExtractor(headers)),
        None => Context::new(),
    }
}

/// The trace context in HTTP request headers (empty without a valid `traceparent`).
pub fn extract_http(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HttpExtractor(headers))
}

/// The W3C headers naming `context`'s span as the parent; none when it has no valid
/// span (traces off, or the span not sampled into a trace).
pub fn context_headers(context: &Context) -> Vec<(&'static str, String)> {
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut pairs = Pairs::default();
    TraceContextPropagator::new().inject_context(context, &mut pairs);
    pairs.0
}

/// The W3C headers naming `span` as the parent of what follows; none while traces are
/// off.
pub fn span_headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
    if !enabled() || span.is_disabled() {
        return Vec::new();
    }
    context_headers(&span.context())
}

/// Makes the trace context of `message` (its `traceparent` header) the parent of
/// `span`; a record without one leaves `span` the root of a new trace. A span must be
/// given its parent before it is entered.
pub fn continue_from<M: Message>(span: &tracing::Span, message: &M) {
    if span.is_disabled() {
        return;
    }
    // Err only when the span is disabled or already started: nothing to continue then.
    let _ = span.set_parent(extract_kafka(message.headers()));
}

/// Makes `parent` the parent of `span` (see [`continue_from`]).
pub fn continue_with(span: &tracing::Span, parent: &Context) {
    if span.is_disabled() {
        return;
    }
    let _ = span.set_parent(parent.clone());
}

/// Makes the trace context of an HTTP request the parent of `span` (see
/// [`continue_from`]).
pub fn continue_from_http(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let _ = span.set_parent(extract_http(headers));
}

/// `headers` with `pairs` added.
fn add_pairs(headers: OwnedHeaders, pairs: &[(&'static str, String)]) -> OwnedHeaders {
    pairs.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_str()),
        })
    })
}

/// `record` carrying `span`'s trace context in its headers (unchanged while traces are
/// off).
pub fn with_span_context(record: OutRecord, span: &tracing::Span) -> OutRecord {
    let pairs = span_headers(span);
    if pairs.is_empty() {
        return record;
    }
    let headers = record.headers.clone().unwrap_or_default();
    record.with_headers(add_pairs(headers, &pairs))
}

/// The trace headers of `message` (none when it has none), to write on a record made
/// from it later with [`with_carried`].
pub fn carried<M: Message>(message: &M) -> Vec<(&'static str, String)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    TRACE_HEADERS
        .iter()
        .filter_map(|name| {
            KafkaExtractor(headers)
                .get(name)
                .map(|value| (*name, value.to_owned()))
        })
        .collect()
}

/// `record` with the trace headers `carried` from another record.
pub fn with_carried(record: OutRecord, carried: &[(&'static str, String)]) -> OutRecord {
    if carried.is_empty() {
        return record;
    }
    let headers = record.headers.clone().unwrap_or_default();
    record.with_headers(add_pairs(headers, carried))
}

/// `headers` with the trace headers of `message` copied over, so that a copy of a
/// record (a retry, a dead letter) stays in the trace of the original.
pub fn copy_trace_headers<M: Message>(message: &M, headers: OwnedHeaders) -> OwnedHeaders {
    let Some(source) = message.headers() else {
        return headers;
    };
    source
        .iter()
        .filter(|header| {
            TRACE_HEADERS
                .iter()
                .any(|name| header.key.eq_ignore_ascii_case(name))
        })
        .fold(headers, |headers, header| headers.insert(header))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    /// The example of the W3C Trace Context specification (section 3.2.2.1).
    const W3C_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn record(headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"key".to_vec()),
            "hookline.events".to_owned(),
            Timestamp::NotAvailable,
            0,
            7,
            headers,
        )
    }

    fn with(key: &str, value: &str) -> OwnedHeaders {
        OwnedHeaders::new().insert(Header {
            key,
            value: Some(value),
        })
    }

    #[test]
    fn the_w3c_example_names_its_trace_and_parent_span() {
        let message = record(Some(with(TRACEPARENT, W3C_EXAMPLE)));
        let context = extract_kafka(message.headers());
        let span = context.span();
        let parent = span.span_context();
        assert!(parent.is_valid());
        assert!(parent.is_remote());
        assert!(parent.is_sampled());
        assert_eq!(
            parent.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert_eq!(
            parent.span_id(),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert_eq!(
            format!("{:032x}", parent.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_record_without_trace_headers_has_no_parent() {
        for headers in [None, Some(with("hookline-dlq-reason", "why"))] {
            let message = record(headers);
            let context = extract_kafka(message.headers());
            assert!(!context.span().span_context().is_valid());
            assert!(!context.has_active_span());
        }
        let garbled = record(Some(with(TRACEPARENT, "00-not-a-trace-01")));
        assert!(!extract_kafka(garbled.headers())
            .span()
            .span_context()
            .is_valid());
    }

    #[test]
    fn kafka_headers_carry_a_context_there_and_back() {
        let sent = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex"),
            SpanId::from_hex("b7ad6b7169203331").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "opaque")]).expect("valid state"),
        );
        let pairs = context_headers(&Context::new().with_remote_span_context(sent.clone()));
        assert_eq!(
            pairs,
            vec![
                (
                    TRACEPARENT,
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()
                ),
                (TRACESTATE, "vendor=opaque".to_owned())
            ]
        );
        let headers = add_pairs(with("hookline-source-offset", "3"), &pairs);
        let message = record(Some(headers));
        let received = extract_kafka(message.headers());
        let received = received.span();
        let received = received.span_context();
        assert_eq!(received.trace_id(), sent.trace_id());
        assert_eq!(received.span_id(), sent.span_id());
        assert_eq!(received.trace_flags(), sent.trace_flags());
        assert_eq!(received.trace_state().header(), "vendor=opaque");

        // A copy (a retry, a dead letter) keeps the context and nothing else of them.
        let copied = copy_trace_headers(&message, OwnedHeaders::new());
        let names: Vec<&str> = copied.iter().map(|h| h.key).collect();
        assert_eq!(names, vec![TRACEPARENT, TRACESTATE]);
        let again = extract_kafka(Some(&copied));
        assert_eq!(again.span().span_context().span_id(), sent.span_id());

        // So does a record written later from what was carried (a redrive).
        let kept = carried(&message);
        assert_eq!(kept, pairs);
        let redriven = with_carried(OutRecord::new("t", "k", None), &kept);
        let redriven = extract_kafka(redriven.headers.as_ref());
        assert_eq!(redriven.span().span_context().span_id(), sent.span_id());
        assert!(carried(&record(None)).is_empty());
    }

    #[test]
    fn an_invalid_context_writes_no_headers() {
        assert!(context_headers(&Context::new()).is_empty());
        // Traces are off in unit tests: a span gives no headers and records stay as they are.
        let span = tracing::info_span!("off");
        assert!(span_headers(&span).is_empty());
        let out = with_span_context(OutRecord::new("t", "k", None), &span);
        assert!(out.headers.is_none());
    }

    #[test]
    fn http_headers_continue_a_trace() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            axum::http::HeaderValue::from_static(W3C_EXAMPLE),
        );
        let context = extract_http(&headers);
        assert_eq!(
            context.span().span_context().span_id(),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex")
        );
        assert!(!extract_http(&axum::http::HeaderMap::new())
            .span()
            .span_context()
            .is_valid());
    }
}
