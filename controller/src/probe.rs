//! Readiness probes: is a replica able to take traffic?
//!
//! A starting replica is probed often (every 10 ms at first, backing off to
//! 200 ms) because the first success is the moment held requests are
//! released: every probe interval is added to the cold start. An HTTP probe
//! is a fresh connection and one `GET`, answered 2xx; a TCP probe is a
//! successful connect.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rouse_nats::config::Probe;
use tokio::net::TcpStream;

/// Asks whether a replica can take traffic. The real one is the service's
/// configured [`Probe`]; the reconcile loop's tests use a scripted one.
#[async_trait::async_trait]
pub trait Prober: Send + Sync {
    async fn ready(&self, addr: &str) -> bool;
}

#[async_trait::async_trait]
impl Prober for Probe {
    async fn ready(&self, addr: &str) -> bool {
        probe(self, addr).await
    }
}

/// Time one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One probe of `addr`.
pub async fn probe(kind: &Probe, addr: &str) -> bool {
    tokio::time::timeout(PROBE_TIMEOUT, attempt(kind, addr))
        .await
        .unwrap_or_default()
}

async fn attempt(kind: &Probe, addr: &str) -> bool {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return false;
    };
    match kind {
        Probe::Tcp => true,
        Probe::HttpGet(path) => http_get(stream, addr, path).await,
    }
}

async fn http_get(stream: TcpStream, addr: &str, path: &str) -> bool {
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(connection);
    let Ok(request) = Request::get(path)
        .header(http::header::HOST, addr)
        .header(http::header::USER_AGENT, "rouse-controller/probe")
        .body(Empty::new())
    else {
        return false;
    };
    match sender.send_request(request).await {
        Ok(response) => response.status().is_success(),
        Err(_) => false,
    }
}

/// Probe interval for a replica that has been starting for `elapsed`.
///
/// A refused connect on loopback costs microseconds, and a fast replica binds
/// within a few milliseconds of spawn: probing every millisecond at first
/// keeps the probe from adding a whole interval to every cold start.
pub fn starting_interval(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(100) {
        Duration::from_millis(1)
    } else if elapsed < Duration::from_secs(1) {
        Duration::from_millis(5)
    } else if elapsed < Duration::from_secs(5) {
        Duration::from_millis(25)
    } else {
        Duration::from_millis(200)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn one_shot_server(status_line: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let reply = format!("{status_line}\r\ncontent-length: 0\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_needs_a_2xx() {
        let ok = one_shot_server("HTTP/1.1 200 OK").await;
        assert!(probe(&Probe::HttpGet("/healthz".into()), &ok).await);
        let failing = one_shot_server("HTTP/1.1 503 Service Unavailable").await;
        assert!(!probe(&Probe::HttpGet("/healthz".into()), &failing).await);
    }

    #[tokio::test]
    async fn tcp_probe_needs_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        assert!(probe(&Probe::Tcp, &addr).await);
        drop(listener);
        assert!(!probe(&Probe::Tcp, &addr).await);
    }

    #[test]
    fn starting_replicas_are_probed_fast_then_slower() {
        assert_eq!(starting_interval(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(
            starting_interval(Duration::from_secs(10)),
            Duration::from_millis(200)
        );
    }
}
