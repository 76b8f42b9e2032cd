//! The admin HTTP server both binaries run beside their real work: the
//! accept loop, the plain responses, and `/metrics` in the OpenMetrics text
//! format. Each binary supplies only its routes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The one label of rouse's metrics: service names, never host, path or client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

impl ServiceLabel {
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_string(),
        }
    }
}

/// Serves admin requests with `route` until the task is dropped.
pub async fn serve<R>(listener: TcpListener, route: Arc<R>)
where
    R: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let route = Arc::clone(&route);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = route(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A response with a body and its content type.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A short plain-text answer (`ok`, `not found`).
pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

/// Every metric of `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

/// `/metrics`: every metric of `registry`.
pub fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let out = encode(registry);
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        out,
    )
}
