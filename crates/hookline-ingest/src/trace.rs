//! Ingest's spans: one per API request (continuing the caller's `traceparent`), and one
//! per event produced, whose context the event record carries to the router. Nothing
//! is made while traces are off (see [`hookline_core::trace`]).

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use hookline_core::produce::OutRecord;
use hookline_core::trace;
use hookline_domain::event::Event;
use rdkafka::error::KafkaError;
use tracing::Instrument as _;

/// Middleware: the request's span, a child of the caller's span when the request
/// carries a `traceparent`, else the root of a new trace.
pub async fn request_span(request: Request, next: Next) -> Response {
    if !trace::enabled() {
        return next.run(request).await;
    }
    let method = request.method().clone();
    // The route's template (`/v1/subscriptions/{id}`), not the path with its ids.
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        parent: None,
        "http request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    trace::continue_from_http(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// One span per event about to be produced (children of the request's span), each
/// event's record carrying its span's context; no spans and the records unchanged while
/// traces are off.
pub fn produce_spans(
    events: &[Event],
    records: Vec<OutRecord>,
) -> (Vec<OutRecord>, Vec<tracing::Span>) {
    if !trace::enabled() {
        return (records, Vec::new());
    }
    events
        .iter()
        .zip(records)
        .map(|(event, record)| {
            let span = tracing::info_span!(
                "produce event",
                otel.kind = "producer",
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
                messaging.destination.name = %record.topic,
                messaging.kafka.partition = tracing::field::Empty,
                messaging.kafka.offset = tracing::field::Empty,
                event_id = %event.id,
                event_type = %event.event_type,
                tenant = %event.tenant,
            );
            (trace::with_span_context(record, &span), span)
        })
        .unzip()
}

/// Notes on each event's span where Kafka wrote its record, or why it did not.
pub fn record_produced(spans: &[tracing::Span], results: &[Result<(i32, i64), KafkaError>]) {
    for (span, result) in spans.iter().zip(results) {
        match result {
            Ok((partition, offset)) => {
                span.record("messaging.kafka.partition", partition);
                span.record("messaging.kafka.offset", offset);
            }
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", err.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_left_alone_while_traces_are_off() {
        let record = OutRecord::new("hookline.events", "k", Some(b"{}".to_vec()));
        let (records, spans) = produce_spans(&[], vec![record]);
        assert!(spans.is_empty());
        assert_eq!(records.len(), 1);
        assert!(records[0].headers.is_none());
    }
}
