//! The admin server: `/metrics`, `/healthz`, `/readyz`.
//!
//! Kept apart from the data path's listener so that scrapes and probes never
//! compete with traffic, and so it can bind to loopback only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rouse_nats::admin;
use tokio::net::TcpListener;

use crate::catalog::Registry;
use crate::metrics::ProxyMetrics;

/// What the admin endpoints report on.
pub struct AdminState {
    pub metrics: Arc<ProxyMetrics>,
    pub registry: Arc<Registry>,
    /// Endpoint sets read at least once.
    pub synced: Arc<AtomicBool>,
    /// Cleared on SIGTERM so load balancers stop sending traffic.
    pub accepting: AtomicBool,
}

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, token: admin::ApiToken, state: Arc<AdminState>) {
    admin::serve(
        listener,
        token,
        Arc::new(move |request: &Request<Incoming>| route(&state, request)),
    )
    .await;
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            for service in state.registry.services().iter() {
                let m = &service.metrics;
                m.in_flight
                    .set(service.counters.in_flight.load(Ordering::Relaxed) as i64);
                m.held.set(service.hold.held() as i64);
            }
            admin::metrics(&state.metrics.registry)
        }
        "/healthz" => admin::text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if !state.accepting.load(Ordering::SeqCst) {
                admin::text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            } else if !state.synced.load(Ordering::SeqCst) {
                admin::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "endpoint sets not read yet\n",
                )
            } else {
                admin::text(StatusCode::OK, "ready\n")
            }
        }
        _ => admin::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
