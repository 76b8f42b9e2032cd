//! The controller's admin server: `/metrics`, `/healthz`, `/api/v1/services`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rouse_nats::admin;
use tokio::net::TcpListener;

use crate::metrics::ControllerMetrics;
use crate::status::{self, StatusBoard};

pub struct AdminState {
    pub metrics: Arc<ControllerMetrics>,
    pub status: Arc<StatusBoard>,
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
        "/metrics" => admin::metrics(&state.metrics.registry),
        "/healthz" => admin::text(StatusCode::OK, "ok\n"),
        "/api/v1/services" => admin::respond(
            StatusCode::OK,
            "application/json",
            status::render(&state.status),
        ),
        _ => admin::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
