//! One request through the data path, as `server` (stage 1) hands it over:
//! strict checks → route → hold (or the waiting page) → balance → forward
//! (→ upgrade).
//!
//! Each stage lives in its own module; this one only strings them together,
//! in the order a request meets them, and hands every failure to
//! `ProxyError::respond`. It holds no stage logic, so that the shape of the
//! data path can be read in one function.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use tokio::sync::mpsc;

use crate::completion::Completion;
use crate::error::ProxyError;
use crate::forward::Forwarder;
use crate::hold;
use crate::metrics::ProxyMetrics;
use crate::report::{self, Signal};
use crate::response_body::ProxyBody;
use crate::route::Routes;
use crate::service::Service;
use crate::strict::{self, RequestLimits};
use crate::waiting;

static COLD_START: &str = "x-rouse-cold-start";

/// Shared by every connection.
pub struct Proxy {
    /// Shared by every data thread; swapped whole when routes change.
    pub routes: Arc<ArcSwap<Routes<Service>>>,
    pub forwarder: Forwarder,
    pub signals: mpsc::Sender<Signal>,
    pub metrics: Arc<ProxyMetrics>,
    pub limits: RequestLimits,
}

/// Per connection: who the client is, rendered once for X-Forwarded-For,
/// and how it came (`http` or `https`) for X-Forwarded-Proto.
pub struct Peer {
    pub ip: IpAddr,
    pub client_ip: HeaderValue,
    pub proto: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, scheme: &'static str) -> Self {
        let client_ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            ip: addr.ip(),
            client_ip,
            proto: HeaderValue::from_static(scheme),
        }
    }
}

impl Proxy {
    /// Serves one request; never fails (errors become responses).
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        // One async fn for route → hold → forward, not one per stage: every
        // async fn keeps its own copy of its arguments, and this future is
        // what hyper keeps per connection while a request is held.
        let started = Instant::now();
        if let Err(error) = strict::check(&request, &self.limits) {
            return Ok(error.respond(&self.metrics));
        }
        // The waiting page's events: one comparison for every request.
        if request.uri().path() == waiting::WAIT_EVENTS_PATH {
            if let Some(service) = waiting::events_service(&self.routes.load(), &request) {
                return Ok(waiting::events(service, &self.signals));
            }
        }
        let service = match self.routes.load().route(&request) {
            Ok(service) => service,
            Err(error) => return Ok(error.respond(&self.metrics)),
        };
        // A declared length over the limit is refused before it is held.
        if request.body().size_hint().lower() > service.max_body() {
            let limit = service.max_body();
            let error = ProxyError::BodyTooLarge {
                service: &service,
                limit,
            };
            return Ok(error.respond(&self.metrics));
        }
        report::note_arrival(&service, &self.signals);
        if let Some(page) = &*service.page.load() {
            if service.is_cold() && waiting::wants_page(&request) {
                return Ok(waiting::page(&service, page, &self.signals));
            }
        }
        let waited = hold::wait_for_endpoint(&service, peer.ip, &self.signals, started).await;
        let (lease, cold) = match waited {
            Ok(found) => found,
            Err(error) => return Ok(error.respond(&self.metrics)),
        };
        let completion = Completion::new(Arc::clone(&service), lease, started);
        // Boxed: a held request's future then stays small; only requests on
        // their way out carry the forwarding state.
        let forwarded =
            Box::pin(self.forwarder.forward(&service, request, &peer, completion)).await;
        let mut response = match forwarded {
            Ok(response) => {
                service.metrics.count_response(response.status().as_u16());
                response
            }
            Err(error) => error.respond(&self.metrics),
        };
        if cold {
            response
                .headers_mut()
                .insert(COLD_START, HeaderValue::from_static("true"));
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, Fut, F: Fn(A, B, C) -> Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// hyper keeps a connection's request future in a per-connection box,
    /// so this size is paid by every held request (10,000 in the burst
    /// benchmark). The forwarding state (about 3 KiB) must stay boxed apart.
    #[test]
    fn held_request_future_stays_small() {
        let size = future_size(Proxy::handle);
        assert!(size <= 2048, "Proxy::handle future is {size} bytes");
    }
}
