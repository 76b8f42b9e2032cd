//! `backend.protocol` against real sockets, without NATS (endpoint sets are
//! applied directly, as the KV watcher applies them).
//!
//! Proves what gRPC and other HTTP/2 traffic need of the forwarding stage:
//! the version each protocol setting sends (`h2c` always HTTP/2, `auto` the
//! client's, `http1` HTTP/1.1), `te: trailers` reaching the replica,
//! trailers passing both ways on HTTP/2 and on HTTP/1.1 (chunked), one
//! shared connection per replica, and the error table as for HTTP/1.1: a
//! refused connection retried on another replica, a reset stream 502, a
//! slow replica 504.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_proxy::Service;
use tokio::net::TcpListener;

mod common;

use common::{set_endpoints, Harness};

const CONFIG: &str = "
proxy:
  response_timeout: 1s
services:
  - name: h2
    hosts: [h2.test]
    backend: {process: {command: [x]}, protocol: h2c}
  - name: auto
    hosts: [auto.test]
    backend: {process: {command: [x]}, protocol: auto}
  - name: h1
    hosts: [h1.test]
    backend: {process: {command: [x]}}
";

/// What the replica saw of one request.
const SEEN_VERSION: &str = "x-seen-version";
const SEEN_TE: &str = "x-seen-te";
const SEEN_TRAILER: &str = "x-seen-trailer";

/// A replica serving HTTP/1.1 and h2c on one port: `/slow` sleeps 5 s,
/// `/reset` fails the request (an HTTP/2 stream reset, on HTTP/1.1 a closed
/// connection); anything else echoes the body back, then trailers
/// `x-status: 0` and (if the request had one) `x-echo-trailer` with the
/// request's `x-checksum` trailer. Counts connections.
async fn replica() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(answer);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

type Echoed =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

async fn answer(request: Request<Incoming>) -> Result<Response<Echoed>, std::io::Error> {
    match request.uri().path() {
        "/slow" => tokio::time::sleep(Duration::from_secs(5)).await,
        "/reset" => return Err(std::io::Error::other("asked to fail")),
        _ => {}
    }
    let version = format!("{:?}", request.version());
    let te = request.headers().get("te").cloned();
    let (parts, body) = request.into_parts();
    let collected = body.collect().await.map_err(std::io::Error::other)?;
    let request_trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-status", HeaderValue::from_static("0"));
    if let Some(checksum) = request_trailers.as_ref().and_then(|t| t.get("x-checksum")) {
        trailers.insert("x-echo-trailer", checksum.clone());
    }
    let frames = vec![Ok(Frame::data(data)), Ok(Frame::trailers(trailers))];
    let mut response = Response::new(StreamBody::new(futures::stream::iter(frames)));
    let headers = response.headers_mut();
    headers.insert(
        SEEN_VERSION,
        HeaderValue::from_str(&version).expect("ascii"),
    );
    if let Some(te) = te {
        headers.insert(SEEN_TE, te);
    }
    if let Some(trailer) = parts.headers.get("trailer") {
        headers.insert(SEEN_TRAILER, trailer.clone());
    }
    // HTTP/1.1 sends only trailers announced here (HTTP/2 ignores it).
    headers.insert(
        "trailer",
        HeaderValue::from_static("x-status, x-echo-trailer"),
    );
    Ok(response)
}

/// A port with nothing listening on it.
fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The service called `name` of CONFIG.
fn service<'h>(harness: &'h Harness, name: &str) -> &'h Service {
    let index = ["h2", "auto", "h1"].iter().position(|n| *n == name);
    &harness.services[index.expect("a service of CONFIG")]
}

/// Points every service at `addrs`.
fn set_all_endpoints(harness: &Harness, addrs: &[SocketAddr]) {
    for service in &harness.services {
        set_endpoints(service, 1, addrs);
    }
}

async fn start_proxy() -> Harness {
    common::start_proxy(CONFIG).await
}

/// What came back through the proxy.
struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

/// Sends `body` (then a trailer `x-checksum: <checksum>`, if given) to
/// `host` through the proxy, in HTTP/2 (prior knowledge) or HTTP/1.1, with
/// `te: trailers` as gRPC clients send it.
/// Connects to the proxy whatever the URI names, so requests carry the
/// service's host as their authority.
#[derive(Clone)]
struct ToProxy(SocketAddr);

impl tower_service::Service<http::Uri> for ToProxy {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move { Ok(TokioIo::new(tokio::net::TcpStream::connect(addr).await?)) })
    }
}

async fn send(
    proxy: SocketAddr,
    http2: bool,
    host: &str,
    path: &str,
    body: &'static str,
    checksum: Option<&'static str>,
) -> Answer {
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(Bytes::from_static(body.as_bytes())))];
    if let Some(checksum) = checksum {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static(checksum));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build(ToProxy(proxy));
    // The host in the URI, as a real client sends it (`Host`, or HTTP/2's
    // `:authority`); the connector takes every connection to the proxy.
    let mut request = Request::post(format!("http://{host}{path}"))
        .header("te", "trailers")
        .body(StreamBody::new(futures::stream::iter(frames)))
        .expect("request");
    if checksum.is_some() && !http2 {
        // HTTP/1.1 sends only trailers announced in `Trailer`.
        request
            .headers_mut()
            .insert("trailer", HeaderValue::from_static("x-checksum"));
    }
    let response = client.request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("body");
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

#[tokio::test]
async fn h2c_carries_trailers_both_ways_and_te_trailers() {
    let harness = start_proxy().await;
    let (replica, connections) = replica().await;
    set_all_endpoints(&harness, &[replica]);
    for http2 in [true, false] {
        let answer = send(harness.addr, http2, "h2.test", "/", "grpc-ish", Some("abc")).await;
        assert_eq!(answer.status, StatusCode::OK, "client http2={http2}");
        assert_eq!(
            answer.header(SEEN_VERSION),
            Some("HTTP/2.0"),
            "client http2={http2}"
        );
        assert_eq!(
            answer.header(SEEN_TE),
            Some("trailers"),
            "client http2={http2}"
        );
        assert_eq!(answer.body, "grpc-ish");
        if http2 {
            assert_eq!(answer.version, Version::HTTP_2);
            assert_eq!(answer.trailer("x-status"), Some("0"), "response trailers");
            assert_eq!(
                answer.trailer("x-echo-trailer"),
                Some("abc"),
                "request trailers"
            );
        } else {
            // HTTP/1.1 → HTTP/2: response trailers come back to a client
            // that accepts them, since the replica announced them.
            assert_eq!(answer.trailer("x-status"), Some("0"), "response trailers");
            assert_eq!(
                answer.trailer("x-echo-trailer"),
                Some("abc"),
                "request trailers"
            );
        }
    }
    for _ in 0..10 {
        let answer = send(harness.addr, true, "h2.test", "/", "x", None).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "every request shared the one HTTP/2 connection to the replica"
    );
    assert_eq!(harness.forwarder.h2_pool().connection_count(), 1);
}

#[tokio::test]
async fn concurrent_h2c_requests_share_one_connection() {
    let harness = start_proxy().await;
    let (replica, connections) = replica().await;
    set_all_endpoints(&harness, &[replica]);
    // A burst before any connection exists: one handshake, shared.
    let proxy = harness.addr;
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { send(proxy, false, "h2.test", "/", "y", None).await }))
        .collect();
    for call in calls {
        let answer = call.await.expect("task");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "y");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http1_backend_passes_announced_trailers_both_ways() {
    let harness = start_proxy().await;
    let (replica, _) = replica().await;
    set_all_endpoints(&harness, &[replica]);
    let answer = send(harness.addr, false, "h1.test", "/", "chunked", Some("def")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(SEEN_VERSION), Some("HTTP/1.1"));
    assert_eq!(answer.header(SEEN_TE), Some("trailers"));
    assert_eq!(answer.header(SEEN_TRAILER), Some("x-checksum"));
    assert_eq!(answer.body, "chunked");
    assert_eq!(answer.trailer("x-status"), Some("0"), "response trailers");
    assert_eq!(
        answer.trailer("x-echo-trailer"),
        Some("def"),
        "request trailers"
    );
}

#[tokio::test]
async fn auto_keeps_the_clients_version() {
    let harness = start_proxy().await;
    let (replica, _) = replica().await;
    set_all_endpoints(&harness, &[replica]);
    let h2 = send(harness.addr, true, "auto.test", "/", "a", None).await;
    assert_eq!(h2.header(SEEN_VERSION), Some("HTTP/2.0"));
    assert_eq!(h2.trailer("x-status"), Some("0"));
    let h1 = send(harness.addr, false, "auto.test", "/", "b", None).await;
    assert_eq!(h1.header(SEEN_VERSION), Some("HTTP/1.1"));
    let plain = send(harness.addr, true, "h1.test", "/", "c", None).await;
    assert_eq!(
        plain.header(SEEN_VERSION),
        Some("HTTP/1.1"),
        "http1 is the default"
    );
}

#[tokio::test]
async fn h2c_refused_is_retried_reset_is_502_slow_is_504() {
    let harness = start_proxy().await;
    let (replica, _) = replica().await;
    let dead = [refusing_addr(), refusing_addr(), refusing_addr()];
    set_all_endpoints(&harness, &[dead[0], dead[1], replica, dead[2]]);
    for i in 0..10 {
        let answer = send(harness.addr, true, "h2.test", "/", "survives", None).await;
        assert_eq!(answer.status, StatusCode::OK, "request {i}");
        assert_eq!(answer.body, "survives", "request {i}");
    }
    let reset = send(harness.addr, true, "h2.test", "/reset", "", None).await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY);
    let slow = send(harness.addr, true, "h2.test", "/slow", "", None).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    // The connection survives both: the next request goes through.
    let after = send(harness.addr, true, "h2.test", "/", "again", None).await;
    assert_eq!(after.status, StatusCode::OK);

    set_all_endpoints(&harness, &dead);
    let refused = send(harness.addr, true, "h2.test", "/", "", None).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert!(service(&harness, "h2").hold.held() == 0);
}
