//! `proxy.tracing` against real parts: the proxy exports OTLP/gRPC to a
//! collector this test runs (a tonic server implementing the collector's
//! `TraceService` on 127.0.0.1), and rouse-echo replicas reflect the
//! `traceparent` they receive (`x-echo-traceparent`).
//!
//! Proves the span tree of a cold request (`rouse.request` → `rouse.hold`
//! → `rouse.wake`, and `rouse.request` → `rouse.forward`), that the
//! replica's parent is the forward span, that a client's `traceparent` is
//! continued, that a warm request has no hold span, and that SIGTERM
//! exports what is still buffered.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use rouse_e2e::{Cluster, Service};

const HOST: &str = "traced.localhost";

/// Every span received, in arrival order.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self
            .spans
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?;
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Listens on a free 127.0.0.1 port; returns its address.
    async fn start(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        addr
    }

    /// The same collector over OTLP/HTTP (protobuf bodies on
    /// `POST /v1/traces`); returns its address.
    async fn start_http(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let collector = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let collector = collector.clone();
                let service = hyper::service::service_fn(move |request| {
                    let collector = collector.clone();
                    async move { collector.receive_http(request).await }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    async fn receive_http(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
        use http_body_util::BodyExt as _;
        use prost::Message as _;
        let path_ok = request.uri().path() == "/v1/traces";
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        let decoded = body
            .ok()
            .and_then(|bytes| ExportTraceServiceRequest::decode(bytes).ok());
        let (status, reply) = match decoded {
            Some(export) if path_ok => {
                if let Ok(mut spans) = self.spans.lock() {
                    for resource in export.resource_spans {
                        for scope in resource.scope_spans {
                            spans.extend(scope.spans);
                        }
                    }
                }
                let reply = ExportTraceServiceResponse {
                    partial_success: None,
                };
                (200, reply.encode_to_vec())
            }
            _ => (400, Vec::new()),
        };
        let mut response = hyper::Response::new(http_body_util::Full::new(reply.into()));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(response)
    }

    fn snapshot(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
}

/// The one span named `name` in trace `trace`.
fn one<'s>(spans: &'s [Span], trace: &str, name: &str) -> &'s Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "spans `{name}` in trace {trace}: {found:#?}"
    );
    found[0]
}

/// `(trace id, parent span id)` of a `traceparent` value.
fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent `{value}`");
    assert_eq!(parts[0], "00", "traceparent version in `{value}`");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_and_continued_traces_reach_the_collector_and_the_replica() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let mut cluster = Cluster::builder()
        .service(Service::new("traced", HOST))
        .proxy_key(
            "tracing",
            &format!("{{otlp_endpoint: \"http://{endpoint}\", protocol: grpc, service_name: rouse-test}}"),
        )
        .start()
        .await;

    // A cold request, no traceparent: the proxy starts the trace.
    let cold = cluster.get_ok(HOST, "/").await;
    assert!(cold.cold_start(), "not held: {cold}");
    let sent = cold
        .header("x-echo-traceparent")
        .expect("the replica got a traceparent");
    let (cold_trace, cold_parent) = parse_traceparent(sent);

    // A warm request continuing the client's trace.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let url = format!("http://{}/", cluster.proxy_addr(0));
    let warm = cluster
        .client
        .get(&url)
        .header(reqwest::header::HOST, HOST)
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .send()
        .await
        .expect("warm request");
    assert_eq!(warm.status(), 200);
    let reflected = warm
        .headers()
        .get("x-echo-traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("the replica got a traceparent")
        .to_owned();
    let (warm_trace, warm_parent) = parse_traceparent(&reflected);
    assert_eq!(warm_trace, client_trace, "the client's trace is continued");
    assert_ne!(
        warm_parent, client_span,
        "the replica's parent is the proxy's span"
    );

    // SIGTERM exports what is still buffered.
    cluster.proxy_proc(0).sigterm();
    let status = cluster
        .proxy_proc(0)
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(status.code(), Some(0), "proxy exit after SIGTERM: {status}");
    let spans = cluster
        .poll_until(
            "both traces at the collector",
            Duration::from_secs(30),
            || async {
                let spans = collector.snapshot();
                let forwards = spans.iter().filter(|s| s.name == "rouse.forward").count();
                (forwards >= 2).then_some(spans)
            },
        )
        .await;

    // The cold trace: request → hold → wake, request → forward → replica.
    let request = one(&spans, &cold_trace, "rouse.request");
    assert!(
        request.parent_span_id.is_empty(),
        "a new trace has no parent"
    );
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        attribute(request, "http.response.status_code"),
        Some(AnyValue::IntValue(200))
    );
    assert_eq!(
        attribute(request, "http.request.method"),
        Some(AnyValue::StringValue("GET".into()))
    );
    assert_eq!(
        attribute(request, "server.address"),
        Some(AnyValue::StringValue(HOST.into()))
    );
    let hold = one(&spans, &cold_trace, "rouse.hold");
    assert_eq!(hold.parent_span_id, request.span_id, "hold under request");
    assert_eq!(
        attribute(hold, "service"),
        Some(AnyValue::StringValue("traced".into()))
    );
    assert_eq!(
        attribute(hold, "outcome"),
        Some(AnyValue::StringValue("ready".into()))
    );
    assert!(
        matches!(attribute(hold, "waited_ms"), Some(AnyValue::DoubleValue(ms)) if ms > 0.0),
        "waited_ms of {hold:#?}"
    );
    assert!(hold.end_time_unix_nano > hold.start_time_unix_nano);
    let wake = one(&spans, &cold_trace, "rouse.wake");
    assert_eq!(wake.parent_span_id, hold.span_id, "wake under hold");
    let forward = one(&spans, &cold_trace, "rouse.forward");
    assert_eq!(
        forward.parent_span_id, request.span_id,
        "forward under request"
    );
    assert_eq!(forward.kind, SpanKind::Client as i32);
    assert_eq!(
        hex(&forward.span_id),
        cold_parent,
        "the replica's parent is the forward span"
    );
    let replica = cold.header("x-echo-replica").expect("x-echo-replica");
    assert_eq!(
        attribute(forward, "replica"),
        Some(AnyValue::StringValue(replica.into()))
    );
    assert_eq!(attribute(forward, "status"), Some(AnyValue::IntValue(200)));

    // The continued trace: the request span's parent is the client's span,
    // and a warm request has no hold.
    let request = one(&spans, client_trace, "rouse.request");
    assert_eq!(hex(&request.parent_span_id), client_span);
    let forward = one(&spans, client_trace, "rouse.forward");
    assert_eq!(hex(&forward.span_id), warm_parent);
    assert!(
        !spans
            .iter()
            .any(|s| hex(&s.trace_id) == client_trace && s.name == "rouse.hold"),
        "a warm request has no hold span"
    );
}

/// `protocol: http`: a cold request's spans arrive over OTLP/HTTP, with the
/// hold span under the request span and the replica's parent the forward
/// span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_exports_the_cold_start() {
    let collector = Collector::default();
    let endpoint = collector.start_http().await;
    let mut cluster = Cluster::builder()
        .service(Service::new("traced", HOST))
        .proxy_key(
            "tracing",
            &format!("{{otlp_endpoint: \"http://{endpoint}\", protocol: http}}"),
        )
        .start()
        .await;
    let cold = cluster.get_ok(HOST, "/").await;
    assert!(cold.cold_start(), "not held: {cold}");
    let sent = cold
        .header("x-echo-traceparent")
        .expect("the replica got a traceparent");
    let (trace, parent) = parse_traceparent(sent);
    cluster.proxy_proc(0).sigterm();
    let status = cluster
        .proxy_proc(0)
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(status.code(), Some(0), "proxy exit after SIGTERM: {status}");
    let spans = cluster
        .poll_until(
            "the trace at the collector",
            Duration::from_secs(30),
            || async {
                let spans = collector.snapshot();
                spans
                    .iter()
                    .any(|s| s.name == "rouse.request")
                    .then_some(spans)
            },
        )
        .await;
    let request = one(&spans, &trace, "rouse.request");
    let hold = one(&spans, &trace, "rouse.hold");
    assert_eq!(hold.parent_span_id, request.span_id);
    let forward = one(&spans, &trace, "rouse.forward");
    assert_eq!(hex(&forward.span_id), parent);
}
