//! `proxy.tracing`: OpenTelemetry traces of requests, exported over OTLP.
//!
//! Off unless configured, and then the data path creates no span at all
//! (`observe` holds no trace). When on, a request gets:
//! - `rouse.request` (server): arrival to the response's last byte, the
//!   child of the client's `traceparent` when it sent one;
//! - `rouse.hold`: the wait for a ready replica, only when there was one:
//!   this is the cold start, with its service, `waited_ms` and outcome;
//! - `rouse.wake`: under the hold, the moment this request asked the
//!   controller to wake the service (the first held request only);
//! - `rouse.forward` (client): from sending to the replica's response
//!   headers; its context goes to the replica as `traceparent` (and
//!   `tracestate`), so the replica's own spans join the trace.
//!
//! The hold and wake spans are made after the fact, with their real start
//! times: a request that was never held pays nothing for them. Ended spans
//! go onto a lock-free queue (`processor`), which a task on the
//! control-plane runtime exports in batches; at shutdown it is flushed
//! ([`Exporter::shutdown`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http::Request;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use prometheus_client::metrics::counter::Counter;
use rouse_nats::config::{OtlpProtocol, TracingConfig};

mod processor;

use processor::QueuedProcessor;

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last export at shutdown may hold up the exit.
const SHUTDOWN_EXPORT: Duration = Duration::from_secs(5);

/// The data path's end of tracing: a tracer and the W3C propagator.
#[derive(Clone)]
pub struct Tracing {
    tracer: SdkTracer,
    propagator: Arc<TraceContextPropagator>,
}

/// The exporting side, kept by `run` to flush at shutdown.
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Starts the exporter; must run inside the control-plane runtime, where
/// the batch processor's task lives.
pub fn start(config: &TracingConfig, dropped: Counter) -> anyhow::Result<(Tracing, Exporter)> {
    let exporter = match config.protocol {
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.otlp_endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_traces_url(&config.otlp_endpoint))
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
    }
    .with_context(|| format!("building the OTLP exporter for {}", config.otlp_endpoint))?;
    let processor = QueuedProcessor::start(exporter, dropped);
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let resource = Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource)
        .build();
    let tracing = Tracing {
        tracer: provider.tracer("rouse-proxy"),
        propagator: Arc::new(TraceContextPropagator::new()),
    };
    Ok((tracing, Exporter { provider }))
}

/// OTLP/HTTP takes the whole URL: `/v1/traces` unless a path is given.
fn http_traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    match trimmed.parse::<http::Uri>() {
        Ok(uri) if uri.path() == "/" || uri.path().is_empty() => format!("{trimmed}/v1/traces"),
        _ => endpoint.to_string(),
    }
}

impl Exporter {
    /// Exports every span still buffered, then stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_EXPORT))
                .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "exporting the last spans failed"),
            Err(err) => tracing::warn!(error = %err, "exporting the last spans failed"),
        }
    }
}

impl Tracing {
    /// Starts `rouse.request` for `request`, continuing its `traceparent`.
    pub fn begin<B>(&self, request: &Request<B>) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(request.headers()));
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method().as_str().to_owned()),
            KeyValue::new("url.path", request.uri().path().to_owned()),
        ];
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host());
        if let Some(host) = host {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        let span = self
            .tracer
            .span_builder("rouse.request")
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            service: None,
            cx: parent.with_span(span),
            arrived: SystemTime::now(),
            forward: None,
        }
    }
}

/// One request's trace while it is under way.
pub struct RequestTrace {
    service: Option<Arc<str>>,
    /// Holds the `rouse.request` span.
    cx: Context,
    arrived: SystemTime,
    /// `rouse.forward`, from sending to the response headers.
    forward: Option<Context>,
}

impl RequestTrace {
    pub fn service(&mut self, service: &Arc<str>) {
        self.cx
            .span()
            .set_attribute(KeyValue::new("rouse.service", service.to_string()));
        self.service = Some(Arc::clone(service));
    }

    /// The request was held `waited` from arrival; `woke`: it was the one
    /// that asked for the wake.
    pub fn held(&mut self, tracing: &Tracing, waited: Duration, outcome: &'static str, woke: bool) {
        let tracer = &tracing.tracer;
        let service = self.service.as_deref().map(str::to_owned);
        let mut attributes = vec![
            KeyValue::new("waited_ms", waited.as_secs_f64() * 1000.0),
            KeyValue::new("outcome", outcome),
        ];
        if let Some(service) = &service {
            attributes.push(KeyValue::new("service", service.clone()));
        }
        let mut hold = tracer
            .span_builder("rouse.hold")
            .with_start_time(self.arrived)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.cx);
        if woke {
            let hold_cx = Context::new().with_remote_span_context(hold.span_context().clone());
            let mut wake = tracer
                .span_builder("rouse.wake")
                .with_start_time(self.arrived)
                .with_attributes(service.map(|s| KeyValue::new("service", s)))
                .start_with_context(tracer, &hold_cx);
            wake.end_with_timestamp(self.arrived);
        }
        hold.end_with_timestamp(self.arrived + waited);
    }

    /// Starts `rouse.forward` to `replica` and writes its context into
    /// `headers` as `traceparent` (and `tracestate`), replacing the
    /// client's: the replica's parent is this span.
    pub fn forward(&mut self, tracing: &Tracing, replica: &str, headers: &mut http::HeaderMap) {
        let tracer = &tracing.tracer;
        let span = tracer
            .span_builder("rouse.forward")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("replica", replica.to_owned())])
            .start_with_context(tracer, &self.cx);
        let cx = self.cx.with_span(span);
        headers.remove("traceparent");
        headers.remove("tracestate");
        tracing
            .propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        self.forward = Some(cx);
    }

    /// The replica answered `status` (0: it did not answer) from `replica`.
    pub fn forwarded(&mut self, status: u16, replica: Option<&str>) {
        if let Some(cx) = self.forward.take() {
            let span = cx.span();
            if status > 0 {
                span.set_attribute(KeyValue::new("status", i64::from(status)));
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            if let Some(replica) = replica {
                span.set_attribute(KeyValue::new("replica", replica.to_owned()));
            }
            span.end();
        }
    }

    /// The response has ended with `status`.
    pub fn finish(mut self, status: u16) {
        self.forwarded(0, None);
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_status(opentelemetry::trace::Status::error(""));
        }
        span.end();
    }
}
