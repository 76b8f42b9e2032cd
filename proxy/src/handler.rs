//! One request through the data path, as `server` (stage 1) hands it over:
//! strict checks → route → hold (or the waiting page) → balance → forward
//! (→ upgrade).
//!
//! Each stage lives in its own module; this one only strings them together,
//! in the order a request meets them, and hands every failure to
//! `ProxyError::respond`. It holds no stage logic, so that the shape of the
//! data path can be read in one function. What the access log and the
//! trace need is handed to the request's `Observation` (`observe`) on the
//! way, when either is on.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::{Request, Response};
use hyper::body::{Body, Incoming};

use crate::completion::Completion;
use crate::error::ProxyError;
use crate::forward::Forwarder;
use crate::hold;
use crate::metrics::ProxyMetrics;
use crate::observe::{self, Observation, ObservedBody, Observers};
use crate::report::{self, Signals};
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
    pub signals: Signals,
    pub metrics: Arc<ProxyMetrics>,
    pub limits: RequestLimits,
    /// The access log and tracing, when on (one per data thread).
    pub observers: Arc<Observers>,
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
        mut request: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Result<Response<ObservedBody>, Infallible> {
        // One async fn for route → hold → forward, not one per stage: every
        // async fn keeps its own copy of its arguments, and this future is
        // what hyper keeps per connection while a request is held.
        let started = Instant::now();
        // `None` unless an access log or tracing is on.
        let mut seen = Observation::begin(&self.observers, &request, peer.ip, started);
        if let Err(error) = strict::check(&request, &self.limits) {
            return Ok(seal(seen, error.respond(&self.metrics)));
        }
        // The waiting page's events: one comparison for every request.
        if request.uri().path() == waiting::WAIT_EVENTS_PATH {
            if let Some(service) = waiting::events_service(&self.routes.load(), &request) {
                return Ok(seal(seen, waiting::events(service, &self.signals)));
            }
        }
        let service = match self.routes.load().route(&request) {
            Ok(service) => service,
            Err(error) => return Ok(seal(seen, error.respond(&self.metrics))),
        };
        if let Some(seen) = &mut seen {
            seen.service(&service.name);
        }
        // A declared length over the limit is refused before it is held.
        if request.body().size_hint().lower() > service.max_body() {
            let limit = service.max_body();
            let error = ProxyError::BodyTooLarge {
                service: &service,
                limit,
            };
            return Ok(seal(seen, error.respond(&self.metrics)));
        }
        report::note_arrival(&service, &self.signals);
        if let Some(page) = &*service.page.load() {
            if service.is_cold() && waiting::wants_page(&request) {
                return Ok(seal(seen, waiting::page(&service, page, &self.signals)));
            }
        }
        let mut woke = false;
        let waited =
            hold::wait_for_endpoint(&service, peer.ip, &self.signals, started, &mut woke).await;
        let (lease, cold) = match waited {
            Ok(found) => found,
            Err(error) => {
                if let Some(seen) = &mut seen {
                    seen.held(started.elapsed(), error.hold_outcome(), woke);
                }
                return Ok(seal(seen, error.respond(&self.metrics)));
            }
        };
        if let Some(seen) = &mut seen {
            if cold {
                seen.held(started.elapsed(), "ready", woke);
            }
            seen.forward(&lease.endpoint.id, request.headers_mut());
        }
        let received = seen.as_ref().and_then(|seen| seen.received());
        let completion = Completion::new(Arc::clone(&service), lease, started);
        // Boxed: a held request's future then stays small; only requests on
        // their way out carry the forwarding state.
        let forwarded = Box::pin(
            self.forwarder
                .forward(&service, request, &peer, completion, received),
        )
        .await;
        let mut response = match forwarded {
            Ok(response) => {
                service.metrics.count_response(response.status().as_u16());
                if let Some(seen) = &mut seen {
                    let replica = response.body().upstream().map(|id| &**id);
                    seen.forwarded(response.status().as_u16(), replica);
                }
                response
            }
            Err(error) => {
                if let Some(seen) = &mut seen {
                    seen.forwarded(0, None);
                }
                error.respond(&self.metrics)
            }
        };
        if cold {
            response
                .headers_mut()
                .insert(COLD_START, HeaderValue::from_static("true"));
        }
        Ok(seal(seen, response))
    }
}

/// The response as it goes to the client, carrying its observation (if
/// any) to its last byte.
fn seal(seen: Option<Box<Observation>>, response: Response<ProxyBody>) -> Response<ObservedBody> {
    match seen {
        Some(seen) => seen.seal(response),
        None => observe::unobserved(response),
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
