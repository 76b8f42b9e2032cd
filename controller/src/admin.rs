//! The controller's admin server: `/metrics`, `/healthz`, `/api/v1/services`,
//! `/api/v1/history`, and the status page at `/` (also `/status`).
//!
//! The page is one self-contained HTML file (inline CSS and script, no
//! external assets) built into the binary; it draws itself from the two
//! `/api/v1` documents, so it shows nothing the API would not, and the
//! admin token guards it the same way (see `status_page.html`).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use rouse_nats::admin;
use tokio::net::TcpListener;

use crate::metrics::ControllerMetrics;
use crate::status::{self, StatusBoard};

/// The status page, served as is.
const STATUS_PAGE: &str = include_str!("status_page.html");

/// The page may run only its own inline script and style and talk only to
/// this server.
const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'none'; \
    frame-ancestors 'none'";

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
        "/api/v1/history" => admin::respond(
            StatusCode::OK,
            "application/json",
            status::render_history(&state.status),
        ),
        "/" | "/status" => status_page(),
        _ => admin::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn status_page() -> Response<Full<Bytes>> {
    let mut response = admin::respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(STATUS_PAGE_CSP),
    );
    response
}
