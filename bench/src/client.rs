//! The benchmarks' own HTTP/1.1 client: one fresh connection per client,
//! on hyper's connection API, so that what is measured is one request and
//! its response, with no pool or retry in between.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A sender and the connection task that must be driven for it to work.
pub type Conn = (
    SendRequest<Empty<Bytes>>,
    Connection<TokioIo<TcpStream>, Empty<Bytes>>,
);

/// A fresh HTTP/1.1 connection to `addr`, with `TCP_NODELAY`.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))
}

/// `GET path` with `Host: host`, sent by `agent`.
pub fn get(host: &str, path: &str, agent: &'static str) -> anyhow::Result<Request<Empty<Bytes>>> {
    Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, agent)
        .body(Empty::new())
        .with_context(|| format!("building GET {path} for host {host}"))
}
