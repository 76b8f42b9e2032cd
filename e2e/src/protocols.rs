//! Clients for the protocols reqwest does not cover: HTTP/2 over cleartext
//! with prior knowledge (h2c) and an HTTP/1.1 Upgrade on a raw socket.
//!
//! Both are written against the wire, not against a convenience client, so
//! that what the proxy receives is exactly what a real client sends: h2c
//! carries the host only in `:authority` (as curl's `--http2-prior-knowledge`
//! does, no `Host` header), and the upgrade is a literal request whose 101
//! head is read byte by byte before the same socket is used as a pipe.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::http::Resp;

/// Bound of every protocol exchange here.
const DEADLINE: Duration = Duration::from_secs(60);

/// The RFC 6455 example key, whose accept value is known.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`WS_KEY`] (RFC 6455, section 1.3).
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Sends `GET http://<authority><path>` for every path, concurrently as
/// streams of one HTTP/2 prior-knowledge connection to `addr`.
pub async fn h2c_get(
    addr: SocketAddr,
    authority: &str,
    paths: &[&str],
) -> anyhow::Result<Vec<Resp>> {
    tokio::time::timeout(DEADLINE, h2c_get_inner(addr, authority, paths))
        .await
        .with_context(|| format!("h2c to {addr} took longer than {DEADLINE:?}"))?
}

async fn h2c_get_inner(
    addr: SocketAddr,
    authority: &str,
    paths: &[&str],
) -> anyhow::Result<Vec<Resp>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("h2c handshake")?;
    let conn = tokio::spawn(conn);
    let requests = paths.iter().map(|path| {
        let mut sender = sender.clone();
        let uri = format!("http://{authority}{path}");
        async move {
            let req = hyper::Request::get(&uri)
                .body(Empty::<Bytes>::new())
                .with_context(|| format!("build request {uri}"))?;
            sender.ready().await.context("h2c connection not ready")?;
            let resp = sender
                .send_request(req)
                .await
                .with_context(|| format!("h2c GET {uri}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .with_context(|| format!("h2c body of {uri}"))?
                .to_bytes();
            anyhow::Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        }
    });
    let responses = futures::future::try_join_all(requests).await;
    drop(sender);
    conn.abort();
    responses
}

/// The result of [`upgrade_echo`].
#[derive(Debug)]
pub struct Upgraded {
    /// The response head (status line and headers) as text.
    pub head: String,
    /// Bytes read back on the upgraded connection.
    pub echoed: Vec<u8>,
}

impl Upgraded {
    /// The status code of the response head.
    pub fn status(&self) -> Option<u16> {
        self.head.split_whitespace().nth(1)?.parse().ok()
    }

    /// A header of the response head (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// Sends a WebSocket-style upgrade for `path` with `Host: <host>` on a raw
/// socket to `addr`, reads the response head, and if it is a 101 writes
/// `payload` on the upgraded connection and reads as many bytes back.
pub async fn upgrade_echo(
    addr: SocketAddr,
    host: &str,
    path: &str,
    payload: &[u8],
) -> anyhow::Result<Upgraded> {
    tokio::time::timeout(DEADLINE, upgrade_echo_inner(addr, host, path, payload))
        .await
        .with_context(|| format!("upgrade via {addr} took longer than {DEADLINE:?}"))?
}

async fn upgrade_echo_inner(
    addr: SocketAddr,
    host: &str,
    path: &str,
    payload: &[u8],
) -> anyhow::Result<Upgraded> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("write upgrade request")?;

    // Read the head: bounded in size; the server sends nothing after it
    // until we write, so no echoed byte can be mixed in.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
        let n = stream
            .read(&mut chunk)
            .await
            .context("read response head")?;
        if n == 0 {
            bail!(
                "connection closed before the end of the response head; got {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut echoed = buf[head_end..].to_vec();
    let mut upgraded = Upgraded {
        head,
        echoed: Vec::new(),
    };
    if upgraded.status() != Some(101) {
        upgraded.echoed = echoed;
        return Ok(upgraded);
    }

    stream
        .write_all(payload)
        .await
        .context("write on the upgraded connection")?;
    while echoed.len() < payload.len() {
        let n = stream
            .read(&mut chunk)
            .await
            .context("read on the upgraded connection")?;
        if n == 0 {
            break;
        }
        echoed.extend_from_slice(&chunk[..n]);
    }
    upgraded.echoed = echoed;
    Ok(upgraded)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
