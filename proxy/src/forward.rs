//! Stage 5 of the data path: send the request to the leased replica.
//!
//! Connections come from the data thread's own pool (`pool`), keyed by
//! replica address. A connection the replica refuses has taken no byte of
//! the request, so the request is tried on another ready replica; for that
//! its body is lent to each attempt and its head kept (`Replay`), but only
//! when there is another replica to try: a single-replica service streams
//! the body straight through. The header rules live in `headers`; a 101 is
//! handed on to stage 6 (`upgrade`).
//!
//! `backend.protocol` picks the version a request goes out in: HTTP/1.1
//! over `pool`, or HTTP/2 (h2c, prior knowledge) over `h2pool`; `auto`
//! keeps the client's. An upgrade always goes out as HTTP/1.1, the only
//! version it exists in. Response frames, trailers included, stream back
//! as they come (`response_body`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rouse_nats::config::{BackendProtocol, ProxyConfig};

use crate::balance;
use crate::completion::Completion;
use crate::error::ProxyError;
use crate::h2pool::H2Pool;
use crate::handler::Peer;
use crate::headers;
use crate::pool::{ConnectError, Pool, PoolSettings, Pooled};
use crate::request_body::{self, BodyError, ClientBody, Lent, OutBody};
use crate::response_body::ProxyBody;
use crate::service::Service;
use crate::upgrade;

/// Idle connections kept per replica and data thread.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// Why a forwarding attempt produced no response.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    /// No connection could be made; no byte of the request was sent.
    #[error("cannot connect to the replica: {0}")]
    Connect(ConnectError),
    #[error("the replica sent no response headers within {0:?}")]
    Timeout(Duration),
    #[error("the replica failed the request: {0}")]
    Failed(hyper::Error),
}

/// Sends requests to replicas over one data thread's connection pool.
#[derive(Clone)]
pub struct Forwarder {
    pool: Arc<Pool>,
    /// `proxy.limits.body_buffer`: chunked bytes read before forwarding.
    body_buffer: u64,
    h2: Arc<H2Pool>,
}

impl Forwarder {
    /// Forwards `request` to the replica `completion` holds a lease on, and
    /// on to others while they refuse the connection; the response comes
    /// back carrying `completion`.
    pub(crate) async fn forward<'a>(
        &self,
        service: &'a Service,
        mut request: Request<Incoming>,
        peer: &Peer,
        mut completion: Completion,
    ) -> Result<Response<ProxyBody>, ProxyError<'a>> {
        let client_upgrade = upgrade::requested(&mut request);
        let (mut parts, body) = request.into_parts();
        let body = self
            .client_body(service, &parts, body)
            .await
            .map_err(|err| ProxyError::of_body(service, &err))?;
        let version = outbound_version(service.protocol(), parts.version, client_upgrade.is_some());
        let te_trailers = headers::accepts_trailers(&parts.headers);
        // Only keep what a retry needs when another replica could take it.
        let retry_possible = client_upgrade.is_none() && service.endpoints.load().ready.len() > 1;
        let (mut replay, mut body) = if retry_possible {
            let (replay, body) = Replay::capture(&parts, body);
            (Some(replay), body)
        } else {
            (None, OutBody::Streamed(body))
        };
        let mut tried: Vec<Arc<str>> = Vec::new();
        loop {
            let endpoint = &completion.lease.endpoint;
            headers::prepare_head(
                &mut parts,
                &peer.client_ip,
                &peer.proto,
                client_upgrade.is_some(),
            );
            if te_trailers {
                headers::keep_te_trailers(&mut parts.headers, version);
            }
            if version == Version::HTTP_2 {
                headers::into_h2(&mut parts, &endpoint.authority);
            }
            let outbound = Request::from_parts(parts, body);
            let sent = self
                .send(outbound, &endpoint.authority, service.response_timeout())
                .await;
            let error = match sent {
                Ok((response, conn)) => {
                    return Ok(finish(response, conn, completion, client_upgrade))
                }
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
                        return Err(ProxyError::Refused { service });
                    };
                    tracing::debug!(service = %name, endpoint = %endpoint.id, error = %err, "connect failed; retrying on another replica");
                    completion.lease = lease;
                    (parts, body) = (next_parts, next_body);
                }
                ForwardError::Timeout(after) => {
                    tracing::warn!(service = %name, endpoint = %endpoint.id, ?after, "replica response timed out");
                    return Err(ProxyError::ResponseTimeout { service, after });
                }
                ForwardError::Failed(err) => {
                    if let Some(body_error) = BodyError::cause_of(&err) {
                        tracing::debug!(service = %name, error = %body_error, "request body refused");
                        return Err(ProxyError::of_body(service, body_error));
                    }
                    tracing::warn!(service = %name, endpoint = %endpoint.id, error = %err, "forwarding failed");
                    return Err(ProxyError::UpstreamFailed { service });
                }
            }
        }
    }

    pub fn new(config: &ProxyConfig) -> Self {
        let settings = PoolSettings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_endpoint: MAX_IDLE_PER_ENDPOINT,
        };
        Self {
            pool: Pool::new(settings.clone()),
            h2: H2Pool::new(settings),
            body_buffer: config.limits.body_buffer.as_u64(),
        }
    }

    /// The client's body, limited to the service's `max_body`; a chunked
    /// HTTP/1 body read ahead first, so that a malformed or oversized one is
    /// refused with nothing forwarded.
    async fn client_body(
        &self,
        service: &Service,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> Result<ClientBody, BodyError> {
        let read_ahead = request_body::wants_read_ahead(&body, parts.version, self.body_buffer);
        let body = ClientBody::new(body, service.max_body());
        if !read_ahead {
            return Ok(body);
        }
        Box::pin(request_body::read_ahead(body, self.body_buffer)).await
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The data thread's HTTP/2 connections.
    pub fn h2_pool(&self) -> &Arc<H2Pool> {
        &self.h2
    }

    /// Sends `request` to the replica at `authority` and waits at most
    /// `timeout` for the response headers. The connection comes back with
    /// the response, to be released when the response body has ended.
    ///
    /// Not an `async fn`: that would keep a second copy of the request in
    /// its state, and every byte of a request's future is copied when it is
    /// boxed.
    fn send<'a>(
        &'a self,
        request: Request<OutBody>,
        authority: &'a Authority,
        timeout: Duration,
    ) -> impl Future<Output = Result<(Response<Incoming>, Option<Pooled>), ForwardError>> + 'a {
        tokio::time::timeout(timeout, self.exchange(request, authority))
            .map(move |result| result.unwrap_or(Err(ForwardError::Timeout(timeout))))
    }

    /// Sends over HTTP/2 when the head says so (`into_h2`), else HTTP/1.1.
    async fn exchange(
        &self,
        mut request: Request<OutBody>,
        authority: &Authority,
    ) -> Result<(Response<Incoming>, Option<Pooled>), ForwardError> {
        if request.version() == Version::HTTP_2 {
            return self
                .exchange_h2(request, authority)
                .await
                .map(|r| (r, None));
        }
        let mut conn = self
            .pool
            .get(authority)
            .await
            .map_err(ForwardError::Connect)?;
        loop {
            let mut err = match conn.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Some(conn))),
                Err(err) => err,
            };
            // A reused connection the replica closed just as the request
            // went out hands the request back unsent: once more on a new
            // connection (which is not reused, so this happens once at most).
            request = match (conn.reused, err.take_message()) {
                (true, Some(unsent)) => unsent,
                _ => return Err(ForwardError::Failed(err.into_error())),
            };
            conn = self
                .pool
                .connect_new(authority)
                .await
                .map_err(ForwardError::Connect)?;
        }
    }
}

impl Forwarder {
    /// [`exchange`](Self::exchange) over the replica's shared HTTP/2
    /// connection. Nothing to give back afterwards: the connection stays
    /// shared in the pool.
    async fn exchange_h2(
        &self,
        mut request: Request<OutBody>,
        authority: &Authority,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut conn = self
            .h2
            .get(authority)
            .await
            .map_err(ForwardError::Connect)?;
        loop {
            let mut err = match conn.sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(err) => err,
            };
            // As for HTTP/1.1: a connection the replica closed (e.g. a
            // GOAWAY) hands the request back unsent; once more on a new one.
            request = match (conn.reused, err.take_message()) {
                (true, Some(unsent)) => unsent,
                _ => return Err(ForwardError::Failed(err.into_error())),
            };
            conn = self
                .h2
                .replace(authority, &conn)
                .await
                .map_err(ForwardError::Connect)?;
        }
    }
}

/// The version a request goes to the replica in: `backend.protocol`, with
/// `auto` meaning the client's; an upgrade exists only in HTTP/1.1.
fn outbound_version(protocol: BackendProtocol, inbound: Version, upgrade: bool) -> Version {
    match protocol {
        _ if upgrade => Version::HTTP_11,
        BackendProtocol::H2c => Version::HTTP_2,
        BackendProtocol::Auto if inbound == Version::HTTP_2 => Version::HTTP_2,
        BackendProtocol::Http1 | BackendProtocol::Auto => Version::HTTP_11,
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
    fn capture(parts: &http::request::Parts, body: ClientBody) -> (Self, OutBody) {
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

/// Turns the replica's response into the client's: streamed, carrying its
/// connection and `completion` to its last byte; a protocol switch goes on
/// to stage 6.
fn finish(
    response: Response<Incoming>,
    conn: Option<Pooled>,
    completion: Completion,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        return upgrade::switch(response, client_upgrade, completion);
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            body,
            conn,
            completion: Some(completion),
        },
    )
}
