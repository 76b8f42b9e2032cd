//! One request through the data path: route → hold → balance → forward.
//!
//! Each stage lives in its own module; this one strings them together and
//! turns every failure into the status code the contract fixes (404, 502,
//! 503 with Retry-After, 504).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::balance::{self, Lease};
use crate::body::{Lent, OutBody, ProxyBody};
use crate::forward::{self, ForwardError, Forwarder};
use crate::hold::Admission;
use crate::metrics::ProxyMetrics;
use crate::pool::Pooled;
use crate::report::Signal;
use crate::route::Routes;
use crate::service::Service;

static COLD_START: &str = "x-rouse-cold-start";
/// Concurrency below which a surge is not worth an extra report.
const SURGE_MIN: u64 = 4;
/// Seconds a client should wait after a hold timeout: the replica is still
/// coming up, so an immediate retry would likely be held again.
const RETRY_AFTER_TIMEOUT: HeaderValue = HeaderValue::from_static("5");
/// After a full queue the pressure may pass quickly.
const RETRY_AFTER_FULL: HeaderValue = HeaderValue::from_static("1");

/// Shared by every connection.
pub struct Proxy {
    /// Shared by every data thread; swapped whole when routes change.
    pub routes: Arc<ArcSwap<Routes<Service>>>,
    pub forwarder: Forwarder,
    pub signals: mpsc::Sender<Signal>,
    pub metrics: Arc<ProxyMetrics>,
}

/// Per connection: who the client is, rendered once for X-Forwarded-For.
pub struct Peer {
    pub client_ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let client_ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { client_ip }
    }
}

/// Counts a forwarded request out when its response ends (or is dropped).
#[derive(Debug)]
pub struct Completion {
    service: Arc<Service>,
    /// Always `Some` until dropped; an `Option` so the slot is given back
    /// before a waiting request is released to take it.
    lease: Option<Lease>,
    started: Instant,
}

impl Completion {
    fn endpoint(&self) -> Option<&Arc<crate::service::Endpoint>> {
        self.lease.as_ref().map(|l| &l.endpoint)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        drop(self.lease.take());
        let service = &self.service;
        let counters = &service.counters;
        counters.completed.fetch_add(1, Ordering::Relaxed);
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        service.slot_freed();
        service
            .metrics
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

fn local(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn unavailable(text: String, retry_after: HeaderValue) -> Response<ProxyBody> {
    let mut response = local(StatusCode::SERVICE_UNAVAILABLE, text);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, retry_after);
    response
}

impl Proxy {
    /// Serves one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        // One async fn for route → hold → forward, not one per stage: every
        // async fn keeps its own copy of its arguments, and this future is
        // what hyper keeps per connection while a request is held.
        let started = Instant::now();
        let Some(service) = self.route(&request) else {
            self.metrics.unmatched(404);
            return Ok(not_found(&request));
        };
        self.note_arrival(&service);
        let (lease, cold) = match self.wait_for_endpoint(&service, started).await {
            Ok(found) => found,
            Err(response) => return Ok(counted(&service, response)),
        };
        service.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let completion = Completion {
            service: Arc::clone(&service),
            lease: Some(lease),
            started,
        };
        // Boxed: a held request's future then stays small; only requests on
        // their way out carry the forwarding state.
        let mut response = Box::pin(self.forward(&service, request, &peer, completion)).await;
        if cold {
            response
                .headers_mut()
                .insert(COLD_START, HeaderValue::from_static("true"));
        }
        Ok(counted(&service, response))
    }

    fn route(&self, request: &Request<Incoming>) -> Option<Arc<Service>> {
        let host = request_host(request)?;
        self.routes.load().find(host, request.uri().path()).cloned()
    }

    /// Counts the arrival; asks for an immediate report when the service
    /// was idle, or when its concurrency has surged to twice what the last
    /// report said (so a load step is acted on within milliseconds, not at
    /// the next report).
    fn note_arrival(&self, service: &Arc<Service>) {
        service.counters.arrivals.fetch_add(1, Ordering::Relaxed);
        if !service.busy.load(Ordering::Relaxed) && !service.busy.swap(true, Ordering::Relaxed) {
            let _ = self.signals.try_send(Signal::Busy(Arc::clone(service)));
            return;
        }
        let now = service.counters.in_flight.load(Ordering::Relaxed) + service.hold.held() as u64;
        let reported = service.reported_in_flight.load(Ordering::Relaxed);
        if now >= SURGE_MIN
            && now >= 2 * reported
            && !service.surge_signalled.load(Ordering::Relaxed)
            && !service.surge_signalled.swap(true, Ordering::Relaxed)
        {
            let _ = self.signals.try_send(Signal::Busy(Arc::clone(service)));
        }
    }

    /// A lease on a ready endpoint, holding the request while there is none.
    /// Returns whether the request had to wait (a cold start).
    async fn wait_for_endpoint(
        &self,
        service: &Arc<Service>,
        started: Instant,
    ) -> Result<(Lease, bool), Response<ProxyBody>> {
        if let Some(lease) = balance::lease(service, &[]) {
            return Ok((lease, false));
        }
        let deadline = started + service.hold_timeout;
        let mut held = false;
        loop {
            let admission = if held {
                service.hold.readmit(|| service.has_ready())
            } else {
                service.hold.admit(|| service.has_ready())
            };
            match admission {
                Admission::Full => {
                    service.metrics.hold_rejected.inc();
                    let text = format!(
                        "service {} is starting and its queue is full\n",
                        service.name
                    );
                    return Err(unavailable(text, RETRY_AFTER_FULL));
                }
                Admission::ReadyNow => {
                    // Replicas are listed ready, yet none could be leased
                    // (a set being swapped): let the swap finish.
                    if Instant::now() >= deadline {
                        service.metrics.hold_timeouts.inc();
                        let text = format!("service {} has no usable replica\n", service.name);
                        return Err(unavailable(text, RETRY_AFTER_TIMEOUT));
                    }
                    tokio::task::yield_now().await;
                }
                Admission::Held(mut ticket) => {
                    held = true;
                    if ticket.first {
                        let _ = self.signals.try_send(Signal::Wake(Arc::clone(service)));
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if ticket.wait(left).await.is_err() {
                        service.metrics.hold_timeouts.inc();
                        let text = format!(
                            "service {} did not become ready within {:?}\n",
                            service.name, service.hold_timeout
                        );
                        return Err(unavailable(text, RETRY_AFTER_TIMEOUT));
                    }
                }
            }
            if let Some(lease) = balance::lease(service, &[]) {
                if held {
                    service
                        .metrics
                        .cold_start_wait
                        .observe(started.elapsed().as_secs_f64());
                }
                return Ok((lease, held));
            }
        }
    }

    async fn forward(
        &self,
        service: &Arc<Service>,
        mut request: Request<Incoming>,
        peer: &Peer,
        mut completion: Completion,
    ) -> Response<ProxyBody> {
        let upgrade = forward::is_upgrade(request.headers(), request.version());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        // Only keep what a retry needs when another replica could take it.
        let retry_possible = !upgrade && service.endpoints.load().ready.len() > 1;
        let (mut replay, mut body) = if retry_possible {
            let (replay, body) = Replay::capture(&parts, body);
            (Some(replay), body)
        } else {
            (None, OutBody::Streamed(body))
        };
        let mut tried: Vec<Arc<str>> = Vec::new();
        loop {
            let Some(endpoint) = completion.endpoint().cloned() else {
                return local(StatusCode::BAD_GATEWAY, "no replica\n".to_string());
            };
            forward::prepare_head(&mut parts, &peer.client_ip, upgrade);
            let outbound = Request::from_parts(parts, body);
            let sent = self
                .forwarder
                .send(outbound, &endpoint.authority, service.response_timeout)
                .await;
            let error = match sent {
                Ok((response, conn)) => return finish(response, conn, completion, client_upgrade),
                Err(error) => error,
            };
            let name = &service.name;
            match error {
                ForwardError::Connect(err) => {
                    tried.push(Arc::clone(&endpoint.id));
                    let again = balance::lease(service, &tried)
                        .and_then(|lease| Some((lease, replay.as_mut()?.again()?)));
                    let Some((lease, (next_parts, next_body))) = again else {
                        tracing::warn!(service = %name, endpoint = %endpoint.id, error = %err, "replica refused the connection");
                        let text = format!("no replica of {name} accepted the connection\n");
                        return local(StatusCode::BAD_GATEWAY, text);
                    };
                    tracing::debug!(service = %name, endpoint = %endpoint.id, error = %err, "connect failed; retrying on another replica");
                    completion.lease = Some(lease);
                    (parts, body) = (next_parts, next_body);
                }
                ForwardError::Timeout(after) => {
                    tracing::warn!(service = %name, endpoint = %endpoint.id, ?after, "replica response timed out");
                    let text = format!("{name} did not answer within {after:?}\n");
                    return local(StatusCode::GATEWAY_TIMEOUT, text);
                }
                ForwardError::Failed(err) => {
                    tracing::warn!(service = %name, endpoint = %endpoint.id, error = %err, "forwarding failed");
                    return local(
                        StatusCode::BAD_GATEWAY,
                        format!("{name} failed the request\n"),
                    );
                }
            }
        }
    }
}

/// What a retry on another replica needs: the request head as received and
/// the body, lent to each attempt so a refused connection hands it back.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    lent: Lent,
}

impl Replay {
    fn capture(parts: &http::request::Parts, body: Incoming) -> (Self, OutBody) {
        let lent = Lent::new(body);
        let replay = Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            lent: lent.clone(),
        };
        (replay, OutBody::Lent(lent))
    }

    /// The request once more, if the failed attempt never read its body.
    fn again(&mut self) -> Option<(http::request::Parts, OutBody)> {
        let body = self.lent.reclaim()?;
        self.lent = Lent::new(body);
        let mut head = Request::new(());
        *head.method_mut() = self.method.clone();
        *head.uri_mut() = self.uri.clone();
        *head.headers_mut() = self.headers.clone();
        Some((head.into_parts().0, OutBody::Lent(self.lent.clone())))
    }
}

fn counted(service: &Service, response: Response<ProxyBody>) -> Response<ProxyBody> {
    service.metrics.count_response(response.status().as_u16());
    response
}

fn not_found(request: &Request<Incoming>) -> Response<ProxyBody> {
    let host = request_host(request).unwrap_or("");
    local(
        StatusCode::NOT_FOUND,
        format!(
            "no service for host {host:?} and path {:?}\n",
            request.uri().path()
        ),
    )
}

/// The Host header, or for HTTP/2 the `:authority`.
fn request_host(request: &Request<Incoming>) -> Option<&str> {
    match request.headers().get(header::HOST) {
        Some(host) => host.to_str().ok(),
        None => request.uri().authority().map(|a| a.as_str()),
    }
}

/// Turns the replica's response into the client's; for a protocol switch,
/// splices the two upgraded connections together.
fn finish(
    mut response: Response<Incoming>,
    conn: Pooled,
    completion: Completion,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers, true);
        tokio::spawn(splice(client_upgrade, upstream_upgrade, completion));
        return Response::from_parts(parts, ProxyBody::empty());
    }
    let (mut parts, body) = response.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            body,
            conn: Some(conn),
            completion: Some(completion),
        },
    )
}

/// Copies bytes both ways until either side closes; the request stays in
/// flight (and its replica undrained) for as long as the tunnel lives.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    completion: Completion,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %err, "upgraded connection ended with an error");
    }
    drop(completion);
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
