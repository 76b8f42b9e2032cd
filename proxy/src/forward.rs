//! Stage 5 of the data path: send the request to the chosen replica.
//!
//! Connections come from the data thread's own pool (`pool`), keyed by
//! replica address. This module also owns the header rules of a proxy:
//! hop-by-hop headers are dropped both ways, `Host` is preserved, and the
//! `X-Forwarded-*` headers are added.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use rouse_nats::config::ProxyConfig;

use crate::body::OutBody;
use crate::pool::{ConnectError, Pool, PoolSettings, Pooled};

/// Idle connections kept per replica and data thread.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// Why a forwarding attempt produced no response.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
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
}

impl Forwarder {
    pub fn new(config: &ProxyConfig) -> Self {
        let pool = Pool::new(PoolSettings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_endpoint: MAX_IDLE_PER_ENDPOINT,
        });
        Self { pool }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Sends `request` to the replica at `authority` and waits at most
    /// `timeout` for the response headers. The connection comes back with
    /// the response, to be released when the response body has ended.
    ///
    /// Not an `async fn`: that would keep a second copy of the request in
    /// its state, and every byte of a request's future is copied when it is
    /// boxed.
    pub fn send<'a>(
        &'a self,
        request: Request<OutBody>,
        authority: &'a Authority,
        timeout: Duration,
    ) -> impl Future<Output = Result<(Response<Incoming>, Pooled), ForwardError>> + 'a {
        tokio::time::timeout(timeout, self.exchange(request, authority))
            .map(move |result| result.unwrap_or(Err(ForwardError::Timeout(timeout))))
    }

    async fn exchange(
        &self,
        mut request: Request<OutBody>,
        authority: &Authority,
    ) -> Result<(Response<Incoming>, Pooled), ForwardError> {
        let mut conn = self
            .pool
            .get(authority)
            .await
            .map_err(ForwardError::Connect)?;
        loop {
            let mut err = match conn.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, conn)),
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

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether an HTTP/1.1 request asks to switch protocols (e.g. WebSocket).
pub fn is_upgrade(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers; an upgrade keeps `Upgrade` and
/// `Connection: upgrade`, which the next hop needs to switch protocols.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names avoids a lookup per
    // hop-by-hop header on the hot path.
    let any = headers
        .keys()
        .any(|name| *name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Rewrites an inbound request's head for a replica.
///
/// `client_ip` is the peer address, pre-rendered once per connection.
/// `X-Forwarded-For` gets it appended; `X-Forwarded-Host` and
/// `X-Forwarded-Proto` are set when absent and kept when an ingress in front
/// already set them.
pub fn prepare_head(parts: &mut http::request::Parts, client_ip: &HeaderValue, upgrade: bool) {
    let host = match parts.headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(host) = host {
        if !parts.headers.contains_key(&X_FORWARDED_HOST) {
            parts.headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        parts.headers.insert(header::HOST, host);
    }
    append_forwarded_for(&mut parts.headers, client_ip);
    if !parts.headers.contains_key(&X_FORWARDED_PROTO) {
        parts
            .headers
            .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    // The replica gets the origin form (`/path?query`); an HTTP/2 request
    // arrives in absolute form, its authority already moved to `Host`.
    if parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR) {
        None => client_ip.clone(),
        Some(existing) => {
            let mut joined = Vec::with_capacity(existing.len() + 2 + client_ip.len());
            joined.extend_from_slice(existing.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => v,
                Err(_) => client_ip.clone(),
            }
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)], uri: &str) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn rewrites_head_for_the_replica() {
        let mut parts = request(
            &[
                ("host", "echo.localhost"),
                ("connection", "keep-alive, x-custom"),
                ("x-custom", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-app", "kept"),
            ],
            "/a/b?c=d",
        );
        let ip = HeaderValue::from_static("127.0.0.1");
        prepare_head(&mut parts, &ip, false);
        assert_eq!(parts.uri, "/a/b?c=d");
        assert_eq!(parts.headers["host"], "echo.localhost");
        assert_eq!(parts.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(parts.headers["x-forwarded-host"], "echo.localhost");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
        assert_eq!(parts.headers["x-app"], "kept");
        for gone in ["connection", "x-custom", "keep-alive", "te"] {
            assert!(!parts.headers.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn h2_authority_becomes_host_and_upgrade_survives() {
        let mut parts = request(
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            "http://echo.localhost/ws",
        );
        assert!(is_upgrade(&parts.headers, Version::HTTP_11));
        let ip = HeaderValue::from_static("::1");
        prepare_head(&mut parts, &ip, true);
        assert_eq!(parts.uri, "/ws");
        assert_eq!(parts.headers["host"], "echo.localhost");
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["x-forwarded-for"], "::1");
    }

    #[test]
    fn plain_request_is_not_an_upgrade() {
        let parts = request(&[("upgrade", "websocket")], "/");
        assert!(!is_upgrade(&parts.headers, Version::HTTP_11));
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key("upgrade"));
    }
}
