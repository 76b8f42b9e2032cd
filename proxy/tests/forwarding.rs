//! The forwarding stage against real sockets, without NATS: endpoint sets are
//! applied directly, the way the KV watcher applies them.
//!
//! Proves the contract's error table for replicas: a refused connection is
//! retried on another ready replica with the request body intact (never sent
//! twice), 502 when no replica accepts, 504 when a replica is slow past the
//! response timeout, 404 for an unknown host, 503 + Retry-After when a cold
//! service's hold times out. And the upstream pool as the proxy uses it:
//! finished responses give their connection back for the next request, a
//! replica closing connections costs no request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

mod common;

use common::{set_endpoints, Harness};

/// A replica that echoes POST bodies, sleeps on `/slow`, and counts requests.
async fn replica() -> (SocketAddr, Arc<AtomicUsize>) {
    let (addr, hits, _) = counting_replica(true).await;
    (addr, hits)
}

/// [`replica`], also counting the connections it accepted; with
/// `keep_alive` false it closes each connection after one response.
async fn counting_replica(keep_alive: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let counter = Arc::clone(&counter);
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if request.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits, connections)
}

/// A port with nothing listening on it.
fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

const CONFIG: &str = "
proxy:
  response_timeout: 1s
services:
  - name: app
    hosts: [app.test]
    backend: {process: {command: [x]}}
    hold: {timeout: 2s}
";

async fn start_proxy() -> Harness {
    common::start_proxy(CONFIG).await
}

async fn send(
    proxy: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    body: &'static str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let response = client.request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

#[tokio::test]
async fn refused_connection_is_retried_on_another_replica_with_its_body() {
    let harness = start_proxy().await;
    let (good, hits) = replica().await;
    // Three refusing replicas and one good one: whichever is tried first,
    // every request must end on the good one, once.
    let dead = [refusing_addr(), refusing_addr(), refusing_addr()];
    set_endpoints(&harness.service, 1, &[dead[0], dead[1], good, dead[2]]);
    for i in 0..20 {
        let (status, _, body) = send(
            harness.addr,
            "app.test",
            "POST",
            "/echo",
            "payload-that-must-survive",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(body, "payload-that-must-survive", "request {i}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        20,
        "each request reached the replica exactly once"
    );
}

#[tokio::test]
async fn no_replica_accepting_is_502() {
    let harness = start_proxy().await;
    set_endpoints(&harness.service, 1, &[refusing_addr(), refusing_addr()]);
    let (status, _, _) = send(harness.addr, "app.test", "POST", "/", "x").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn slow_replica_is_504() {
    let harness = start_proxy().await;
    let (good, _) = replica().await;
    set_endpoints(&harness.service, 1, &[good]);
    let (status, _, _) = send(harness.addr, "app.test", "GET", "/slow", "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn unknown_host_is_404_and_cold_hold_times_out_with_retry_after() {
    let harness = start_proxy().await;
    let (status, _, body) = send(harness.addr, "other.test", "GET", "/", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("other.test"));

    let (status, headers, _) = send(harness.addr, "app.test", "GET", "/", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(
        harness.service.hold.held(),
        0,
        "the timed-out request left the queue"
    );
}

#[tokio::test]
async fn held_request_is_released_when_a_replica_turns_ready() {
    let harness = start_proxy().await;
    let (good, hits) = replica().await;
    let proxy = harness.addr;
    let pending =
        tokio::spawn(async move { send(proxy, "app.test", "POST", "/", "held-body").await });
    // Wait (bounded) until the request is actually held, then publish.
    let mut waited = 0;
    while harness.service.hold.held() == 0 {
        assert!(waited < 1000, "request never held");
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += 1;
    }
    set_endpoints(&harness.service, 1, &[good]);
    let (status, headers, body) = pending.await.expect("task");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-rouse-cold-start").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(body, "held-body");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sequential_requests_reuse_one_replica_connection() {
    let harness = start_proxy().await;
    let (good, hits, connections) = counting_replica(true).await;
    set_endpoints(&harness.service, 1, &[good]);
    for i in 0..20 {
        let (method, body) = if i % 2 == 0 {
            ("GET", "")
        } else {
            ("POST", "a body")
        };
        let (status, _, echoed) = send(harness.addr, "app.test", method, "/", body).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(echoed, body, "request {i}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 20);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "every finished response gave its connection back to the pool"
    );
    assert_eq!(harness.pool.idle_count(), 1);
}

#[tokio::test]
async fn replica_closing_every_connection_costs_no_request() {
    let harness = start_proxy().await;
    let (good, hits, connections) = counting_replica(false).await;
    set_endpoints(&harness.service, 1, &[good]);
    for i in 0..10 {
        let (status, _, body) = send(harness.addr, "app.test", "POST", "/", "x").await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(body, "x", "request {i}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    assert_eq!(connections.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn an_upload_answered_early_holds_up_no_other_request() {
    let harness = start_proxy().await;
    let replica = common::raw_replica(false).await;
    let addr: SocketAddr = replica.authority.as_str().parse().expect("addr");
    set_endpoints(&harness.service, 1, &[addr]);

    // An upload the replica answers after its head: the response ends while
    // the proxy is still sending the body on that replica connection.
    let (mut chunks, body) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let upload = Request::post(format!("http://{}/upload", harness.addr))
        .header("host", "app.test")
        .body(StreamBody::new(body))
        .expect("request");
    chunks
        .try_send(Ok(Frame::data(Bytes::from_static(b"xxxx"))))
        .expect("first chunk");
    let response = client.request(upload).await.expect("proxy answers");
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await.expect("body");

    // With the upload still open, another request goes through at once
    // (the proxy's response timeout is 1 s: waiting behind the upload
    // would make it a 504).
    for i in 0..3 {
        let (status, _, body) = send(harness.addr, "app.test", "GET", "/", "").await;
        assert_eq!(status, StatusCode::OK, "request {i} during the upload");
        assert_eq!(body, "ok");
    }
    assert_eq!(replica.accepted.load(Ordering::SeqCst), 2);

    // Once the upload is done its connection is good for reuse again.
    drop(chunks);
    let mut waited = 0;
    while harness.pool.idle_count() < 2 {
        assert!(waited < 500, "the upload's connection never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
}
