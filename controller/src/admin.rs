//! The controller's admin server: `/metrics`, `/healthz`, `/api/v1/services`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rouse_nats::process;
use tokio::net::TcpListener;

use crate::metrics::ControllerMetrics;
use crate::status::{self, StatusBoard};

pub struct AdminState {
    pub metrics: Arc<ControllerMetrics>,
    pub status: Arc<StatusBoard>,
}

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    process::serve_admin(
        listener,
        Arc::new(move |request: &Request<Incoming>| route(&state, request)),
    )
    .await;
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/api/v1/services" => respond(
            StatusCode::OK,
            "application/json",
            status::render(&state.status),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
