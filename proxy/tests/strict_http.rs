//! The proxy as an edge facing the internet, tried with raw sockets the way
//! an attacker or a broken client would: every case answers as a trusted
//! edge does (431, 400, 414, 413, 429), and nothing of a refused request
//! reaches the replica (a raw replica records every head it receives).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;

use common::{raw_replica, set_endpoints, start_proxy, Harness, RawReplica};

const CONFIG: &str = "
proxy:
  response_timeout: 5s
  limits:
    max_request_line: 2KiB
services:
  - name: app
    hosts: [app.test]
    backend: {process: {command: [x]}}
    max_body: 100KiB
    hold: {timeout: 20s, max_requests: 10, max_requests_per_client: 2}
";

/// A proxy for `app.test` with one raw replica behind it.
async fn warm() -> (Harness, RawReplica) {
    let harness = start_proxy(CONFIG).await;
    let replica = raw_replica(false).await;
    let addr: SocketAddr = replica.authority.as_str().parse().expect("addr");
    set_endpoints(&harness.service, 1, &[addr]);
    (harness, replica)
}

/// Sends `request` as bytes from `from` and returns the status code of the
/// answer and its head (the proxy's answers carry short bodies).
async fn exchange_from(proxy: SocketAddr, from: IpAddr, request: &[u8]) -> (u16, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    let mut stream = socket.connect(proxy).await.expect("connect");
    // A refused request may be answered before all of it is written; the
    // proxy then stops reading, so a failed write is not a failure here.
    let _ = stream.write_all(request).await;
    read_head(&mut stream).await
}

async fn exchange(proxy: SocketAddr, request: &[u8]) -> (u16, String) {
    exchange_from(proxy, IpAddr::V4(Ipv4Addr::LOCALHOST), request).await
}

async fn read_head(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("an answer within 20 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn nothing_forwarded(replica: &RawReplica) {
    let heads = replica.heads.lock().expect("heads");
    assert!(heads.is_empty(), "forwarded: {heads:?}");
}

#[tokio::test]
async fn a_200_kb_header_is_431_and_not_forwarded() {
    let (harness, replica) = warm().await;
    let big = "a".repeat(200 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {big}\r\n\r\n");
    let (status, _) = exchange(harness.addr, request.as_bytes()).await;
    assert_eq!(status, 431);
    // Many small headers add up the same way, and so does their count.
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40)))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: app.test\r\n{many}\r\n");
    assert_eq!(exchange(harness.addr, request.as_bytes()).await.0, 431);
    let count: String = (0..101).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: app.test\r\n{count}\r\n");
    assert_eq!(exchange(harness.addr, request.as_bytes()).await.0, 431);
    nothing_forwarded(&replica);
    // Just under the limits passes.
    let fits: String = (0..99)
        .map(|i| format!("X-H{i}: {}\r\n", "c".repeat(500)))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: app.test\r\n{fits}\r\n");
    assert_eq!(exchange(harness.addr, request.as_bytes()).await.0, 200);
}

#[tokio::test]
async fn two_host_headers_or_none_is_400_and_not_forwarded() {
    let (harness, replica) = warm().await;
    for request in [
        "GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@app.test\r\n\r\n",
    ] {
        let (status, head) = exchange(harness.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{request:?} → {head}");
    }
    nothing_forwarded(&replica);
    // HTTP/1.0 predates Host: no Host is routed (here to no service).
    let (status, _) = exchange(harness.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_absolute_form_authority_routes_and_replaces_host() {
    let (harness, replica) = warm().await;
    let request = b"GET http://other.example/ HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let (status, _) = exchange(harness.addr, request).await;
    assert_eq!(status, 404, "routed by the authority, not by Host");
    nothing_forwarded(&replica);

    let request = b"GET http://app.test/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n";
    let (status, _) = exchange(harness.addr, request).await;
    assert_eq!(status, 200);
    let heads = replica.heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(
        head.starts_with("get /x?y=1 http/1.1\r\n"),
        "origin form: {head}"
    );
    assert!(head.contains("\r\nhost: app.test\r\n"), "{head}");
    assert!(!head.contains("other.example"), "{head}");
}

#[tokio::test]
async fn a_malformed_chunk_size_is_400_with_nothing_forwarded() {
    let (harness, replica) = warm().await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "-1\r\n",
    ] {
        let request = format!(
            "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let (status, head) = exchange(harness.addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{body:?} → {head}");
    }
    nothing_forwarded(&replica);
    assert_eq!(replica.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_long_target_is_414() {
    let (harness, replica) = warm().await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: app.test\r\n\r\n",
        "a".repeat(3000)
    );
    assert_eq!(exchange(harness.addr, long.as_bytes()).await.0, 414);
    nothing_forwarded(&replica);
}

#[tokio::test]
async fn a_body_over_max_body_is_413_declared_or_chunked() {
    let (harness, replica) = warm().await;
    let declared = "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 200000\r\n\r\n";
    assert_eq!(exchange(harness.addr, declared.as_bytes()).await.0, 413);
    // Chunked, within the read-ahead buffer: refused before forwarding.
    let chunk = "x".repeat(30 * 1024);
    let body: String = (0..4)
        .map(|_| format!("{:x}\r\n{chunk}\r\n", chunk.len()))
        .collect();
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}0\r\n\r\n"
    );
    assert_eq!(exchange(harness.addr, chunked.as_bytes()).await.0, 413);
    nothing_forwarded(&replica);
}

#[tokio::test]
async fn one_client_cannot_fill_a_cold_services_queue() {
    let harness = start_proxy(CONFIG).await;
    // No endpoints: every request is held. Two from one address are held,
    // the third is refused at once; another address still gets in.
    let request = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(harness.addr).await.expect("connect");
        stream.write_all(request).await.expect("write");
        held.push(stream);
    }
    let queue = &harness.service.hold;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while queue.held() < 2 {
        assert!(std::time::Instant::now() < deadline, "two held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, head) = exchange_from(harness.addr, localhost, request).await;
    assert_eq!(status, 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(other, 0))
        .expect("bind 127.0.0.2");
    let mut stream = socket.connect(harness.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    while queue.held() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the other client held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(queue.clients(), 2);
    // A replica turns ready: every held request is served.
    let replica = raw_replica(false).await;
    let addr: SocketAddr = replica.authority.as_str().parse().expect("addr");
    set_endpoints(&harness.service, 1, &[addr]);
    held.push(stream);
    for stream in &mut held {
        assert_eq!(read_head(stream).await.0, 200);
    }
    assert_eq!(queue.clients(), 0);
}

#[tokio::test]
async fn a_body_framed_twice_is_read_as_chunked_and_forwarded_with_one_framing() {
    let (harness, replica) = warm().await;
    // The smuggler's request: a replica reading Content-Length would take
    // `0\r\n\r\n` as the start of a second request.
    let smuggled = "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(exchange(harness.addr, smuggled.as_bytes()).await.0, 200);
    let heads = replica.heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(!head.contains("content-length: 5"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}
