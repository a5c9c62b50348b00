//! OpenTelemetry traces: the three binaries export to a real OTLP/HTTP collector (an
//! axum server here, decoding `ExportTraceServiceRequest` with the protocol's generated
//! types), and one event sent with a `traceparent` is one trace: the caller's span ->
//! ingest's request -> the event's produce span -> the router's span -> the delivery
//! attempt -> the receiver, which gets a `traceparent` only when the operator turns
//! propagation on. Retries, the dead letter and its redrive stay in that trace; a
//! record produced to Kafka without a `traceparent` starts one of its own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use hookline_e2e::{admin_client, eventually, Deployment, Pipeline};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::{json, Value};

/// A span as the collector got it, with the `service.name` of its process.
#[derive(Clone, Debug)]
struct Collected {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<KeyValue>,
}

impl Collected {
    /// A string or integer attribute as text ("" when absent).
    fn attribute(&self, key: &str) -> String {
        attribute(&self.attributes, key)
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
        .map(|value| match value {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

/// A real OTLP/HTTP (protobuf) collector on loopback, keeping every span it gets.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Collected>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", post(export))
            .with_state(Arc::clone(&spans));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Collected> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Collected> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }
}

async fn export(
    State(spans): State<Arc<Mutex<Vec<Collected>>>>,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut collected = spans.lock().unwrap_or_else(|p| p.into_inner());
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .map(|resource| attribute(&resource.attributes, "service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                collected.push(Collected {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes,
                });
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh W3C trace id and parent span id, as a producer calling the API would send.
fn caller_context() -> (String, String) {
    let trace_id = format!("{:032x}", ulid::Ulid::new().0);
    let span_id = format!("{:016x}", ulid::Ulid::new().0 as u64 | 1);
    (trace_id, span_id)
}

/// The pipeline exporting to `collector`, quickly (batches every 100 ms), with `extra`
/// settings.
async fn traced_pipeline(collector: &Collector, extra: &[(&str, &str)]) -> Pipeline {
    let mut deployment = Deployment::new();
    deployment.set("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint());
    deployment.set("OTEL_BSP_SCHEDULE_DELAY", "100");
    for (key, value) in extra {
        deployment.set(key, *value);
    }
    Pipeline::start(deployment).await.expect("pipeline")
}

/// Posts one event with `traceparent`; returns its id.
async fn send_traced(pipeline: &Pipeline, traceparent: &str, tenant: &str) -> String {
    let response = admin_client()
        .post(format!("{}/v1/events", pipeline.ingest.url()))
        .header("traceparent", traceparent)
        .json(&json!({"type": "payment.settled", "tenant": tenant, "data": {"seq": 0}}))
        .send()
        .await
        .expect("post the event");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("ids");
    body["ids"][0].as_str().expect("an id").to_owned()
}

/// The one span named `name` of `service` in `spans`, failing with all of them shown.
fn one<'a>(spans: &'a [Collected], service: &str, name: &str) -> &'a Collected {
    let found: Vec<&Collected> = spans
        .iter()
        .filter(|span| span.service == service && span.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span of {service}, in {:#?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name, &s.span_id, &s.parent_span_id))
            .collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test]
async fn one_event_is_one_trace_from_the_caller_to_the_receiver() {
    let collector = Collector::start().await;
    let pipeline = traced_pipeline(
        &collector,
        &[("HOOKLINE_DELIVERY_PROPAGATE_TRACE_CONTEXT", "true")],
    )
    .await;
    let (subscription, _) = pipeline
        .subscribe("acme", &["payment.*"], "traced", json!({}))
        .await
        .expect("subscribe");
    let (trace_id, caller_span) = caller_context();
    let event_id = send_traced(
        &pipeline,
        &format!("00-{trace_id}-{caller_span}-01"),
        "acme",
    )
    .await;

    assert!(
        pipeline
            .receiver
            .wait_until(Duration::from_secs(30), |got| !got.is_empty())
            .await,
        "the event was delivered"
    );
    let delivered = pipeline.receiver.on("traced");
    let traceparent = delivered[0].header("traceparent").to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {traceparent:?}");
    assert_eq!(parts[1], trace_id, "the receiver is in the caller's trace");

    // Spans are exported in batches, after they end: wait for the attempt's.
    let services = ["hookline-ingest", "hookline-router", "hookline-delivery"];
    let complete = eventually(Duration::from_secs(30), || {
        let spans = collector.of_trace(&trace_id);
        services
            .iter()
            .all(|service| spans.iter().any(|span| span.service == *service))
            && spans.iter().any(|span| span.name == "delivery attempt")
    })
    .await;
    let spans = collector.of_trace(&trace_id);
    assert!(
        complete,
        "spans of all three services in trace {trace_id}: {spans:#?}"
    );

    // The parent chain, caller -> ingest -> router -> delivery -> receiver.
    let request = one(&spans, "hookline-ingest", "POST /v1/events");
    assert_eq!(
        request.parent_span_id, caller_span,
        "continues the caller's span"
    );
    assert_eq!(request.attribute("http.response.status_code"), "202");
    let produce = one(&spans, "hookline-ingest", "produce event");
    assert_eq!(produce.parent_span_id, request.span_id);
    assert_eq!(produce.attribute("event_id"), event_id);
    assert_eq!(produce.attribute("tenant"), "acme");
    // A batch the router undid (its subscriptions view moved meanwhile) is routed
    // again, each try a span: every one is the produce span's child, and the attempt's
    // parent is the one whose batch committed.
    let routes: Vec<&Collected> = spans
        .iter()
        .filter(|span| span.service == "hookline-router" && span.name == "route event")
        .collect();
    assert!(!routes.is_empty(), "a routing span");
    for route in &routes {
        assert_eq!(
            route.parent_span_id, produce.span_id,
            "the event record carried the produce span's context"
        );
    }
    let committed: Vec<&&Collected> = routes
        .iter()
        .filter(|route| route.attribute("batch") == "committed")
        .collect();
    assert_eq!(committed.len(), 1, "one committed routing: {routes:#?}");
    let route = committed[0];
    assert_eq!(route.attribute("event_id"), event_id);
    assert_eq!(route.attribute("matches"), "1");
    let attempt = one(&spans, "hookline-delivery", "delivery attempt");
    assert_eq!(
        attempt.parent_span_id, route.span_id,
        "the task record carried the routing span's context"
    );
    assert_eq!(attempt.attribute("subscription_id"), subscription);
    assert_eq!(
        attempt.attribute("webhook_id"),
        delivered[0].header("webhook-id")
    );
    assert_eq!(attempt.attribute("event_id"), event_id);
    assert_eq!(attempt.attribute("attempt"), "1");
    assert_eq!(
        attempt.attribute("http.response.status_code"),
        delivered[0].status.to_string(),
        "the receiver's answer"
    );
    assert_eq!(attempt.attribute("outcome"), "success");
    assert_eq!(
        parts[2], attempt.span_id,
        "the receiver's parent is the attempt's span"
    );
    // No span of the trace carries the subscription's signing secret or the admin token.
    for span in &spans {
        for kv in &span.attributes {
            let value = attribute(std::slice::from_ref(kv), &kv.key);
            assert!(!value.contains(hookline_e2e::ADMIN_TOKEN), "{kv:?}");
            assert!(!value.starts_with("whsec_"), "{kv:?}");
        }
    }
}

#[tokio::test]
async fn by_default_no_traceparent_reaches_the_receiver_and_unheaded_records_start_a_trace() {
    let collector = Collector::start().await;
    // Traces on, propagation left at its default.
    let pipeline = traced_pipeline(&collector, &[]).await;
    pipeline
        .subscribe("acme", &["payment.*"], "plain", json!({}))
        .await
        .expect("subscribe");
    let (trace_id, caller_span) = caller_context();
    send_traced(
        &pipeline,
        &format!("00-{trace_id}-{caller_span}-01"),
        "acme",
    )
    .await;
    assert!(
        pipeline
            .receiver
            .wait_until(Duration::from_secs(30), |got| !got.is_empty())
            .await,
        "the event was delivered"
    );
    let delivered = pipeline.receiver.on("plain");
    assert_eq!(delivered[0].header("traceparent"), "");
    assert_eq!(delivered[0].header("tracestate"), "");
    // The attempt was traced all the same: the absence is the setting's doing.
    assert!(
        eventually(Duration::from_secs(30), || collector
            .of_trace(&trace_id)
            .iter()
            .any(|span| span.name == "delivery attempt"))
        .await,
        "the attempt's span was exported"
    );

    // An event record produced straight to Kafka, without a traceparent: routing it
    // starts a trace of its own.
    let event = json!({"id": "evt_untraced_1", "type": "payment.settled", "tenant": "acme", "data": {"seq": 1}});
    hookline_e2e::produce(
        &hookline_e2e::producer().expect("producer"),
        &pipeline.deployment.topic("events"),
        Some("acme"),
        event.to_string().as_bytes(),
    )
    .await
    .expect("produce an event record");
    assert!(
        eventually(Duration::from_secs(30), || collector.spans().iter().any(
            |span| { span.name == "route event" && span.attribute("event_id") == "evt_untraced_1" }
        ))
        .await,
        "the router traced the record"
    );
    let route: Vec<Collected> = collector
        .spans()
        .into_iter()
        .filter(|span| span.name == "route event" && span.attribute("event_id") == "evt_untraced_1")
        .collect();
    assert_eq!(route[0].parent_span_id, "", "a root span");
    let known: BTreeSet<String> = collector
        .spans()
        .into_iter()
        .filter(|span| span.service == "hookline-ingest")
        .map(|span| span.trace_id)
        .collect();
    assert!(
        !known.contains(&route[0].trace_id),
        "a trace of its own, none of ingest's"
    );
}

#[tokio::test]
async fn retries_the_dead_letter_and_its_redrive_stay_in_the_events_trace() {
    let collector = Collector::start().await;
    let pipeline = traced_pipeline(
        &collector,
        &[
            ("HOOKLINE_RETRY_SCHEDULE", "1s"),
            ("HOOKLINE_BREAKER_THRESHOLD", "1000"),
            ("HOOKLINE_DELIVERY_PROPAGATE_TRACE_CONTEXT", "true"),
        ],
    )
    .await;
    let (subscription, _) = pipeline
        .subscribe("acme", &["payment.*"], "down", json!({}))
        .await
        .expect("subscribe");
    pipeline
        .receiver
        .behave("down", hookline_e2e::Behaviour::Always(500));
    let (trace_id, caller_span) = caller_context();
    send_traced(
        &pipeline,
        &format!("00-{trace_id}-{caller_span}-01"),
        "acme",
    )
    .await;

    // Two attempts (the first, one retry from the 1 s tier), then the dead letter.
    let dlq = pipeline.deployment.topic("deliveries.dlq");
    let mut dead = Vec::new();
    eventually(Duration::from_secs(30), || {
        dead = hookline_e2e::read_all(&dlq).expect("read the DLQ");
        !dead.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1, "dead-lettered");
    assert!(
        dead[0].headers["traceparent"].contains(&trace_id),
        "the dead letter carries the trace: {:?}",
        dead[0].headers
    );

    pipeline
        .receiver
        .behave("down", hookline_e2e::Behaviour::Ok);
    let job = pipeline
        .api
        .run_job("/v1/dlq/redrive", json!({"subscription_id": subscription}))
        .await
        .expect("redrive");
    assert_eq!(job["progress"]["requeued"], 1, "{job}");
    assert!(
        pipeline
            .receiver
            .wait_until(Duration::from_secs(30), |got| got
                .iter()
                .any(|r| r.status < 300))
            .await,
        "the redriven task was delivered"
    );
    let requests = pipeline.receiver.on("down");
    assert_eq!(
        requests.len(),
        3,
        "two failures, then the redrive's success"
    );
    for request in &requests {
        assert!(
            request.header("traceparent").contains(&trace_id),
            "every attempt is in the caller's trace: {:?}",
            request.header("traceparent")
        );
    }

    assert!(
        eventually(Duration::from_secs(30), || collector
            .of_trace(&trace_id)
            .iter()
            .filter(|span| span.name == "delivery attempt")
            .count()
            >= 3)
        .await,
        "three attempt spans in the trace: {:#?}",
        collector.of_trace(&trace_id)
    );
    let spans = collector.of_trace(&trace_id);
    let route = spans
        .iter()
        .find(|span| span.name == "route event" && span.attribute("batch") == "committed")
        .expect("the committed routing span");
    let mut attempts: Vec<(String, String, String)> = spans
        .iter()
        .filter(|span| span.name == "delivery attempt")
        .map(|span| {
            assert_eq!(
                span.parent_span_id, route.span_id,
                "every attempt hangs under the routing: {span:#?}"
            );
            (
                span.attribute("attempt"),
                span.attribute("outcome"),
                span.attribute("http.response.status_code"),
            )
        })
        .collect();
    attempts.sort();
    let expected = |attempt: &str, outcome: &str, status: &str| {
        (attempt.to_owned(), outcome.to_owned(), status.to_owned())
    };
    assert_eq!(
        attempts,
        vec![
            expected("1", "http_5xx", "500"),
            expected("1", "success", "204"),
            expected("2", "http_5xx", "500"),
        ],
        "two failed attempts, then the redrive's first"
    );
}
