//! The OTLP collector the `rouse-trace` path exports to: a tonic server
//! implementing the collector's `TraceService` on 127.0.0.1, in the
//! benchmark's own process, that counts the spans it receives and keeps
//! none. So the proxy pays for its spans all the way: made, batched,
//! encoded and sent over gRPC; and the count says whether any were dropped
//! on the way (a span the SDK's queue had no room for costs less than one
//! exported).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Spans received so far.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running collector; stopped when dropped.
pub struct Collector {
    addr: SocketAddr,
    spans: Counter,
    task: JoinHandle<()>,
}

impl Collector {
    /// Listens on a free 127.0.0.1 port.
    pub async fn start() -> anyhow::Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP collector")?;
        let addr = listener.local_addr()?;
        let spans = Counter::default();
        let service = TraceServiceServer::new(spans.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
            if let Err(err) = served {
                eprintln!("rouse-compare: the OTLP collector stopped: {err}");
            }
        });
        Ok(Collector { addr, spans, task })
    }

    /// `proxy.tracing.otlp_endpoint` for it.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> u64 {
        self.spans.0.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
