//! Stage 1 of the data path: accept connections and serve HTTP/1.1 and h2c.
//!
//! hyper answers malformed requests itself (400; 431 for heads over
//! `proxy.limits.max_header_bytes` or `max_headers`);
//! a slow client gets `header_read_timeout` to send its headers, and one that
//! sends nothing at all is closed after it too. On shutdown
//! the listener closes first, then open connections get `shutdown_timeout` to
//! finish what they are doing. The plaintext and the TLS listener share this
//! loop; a [`Handshake`] turns an accepted TCP stream into the one HTTP is
//! read from (nothing for plaintext, TLS for `proxy.tls`, see `tls`).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rouse_nats::config::ProxyConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::handler::{Peer, Proxy};

/// What happens on an accepted connection before HTTP: run on the
/// connection's own task, so a slow handshake never holds up the accept loop.
pub trait Handshake: Clone + Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// `X-Forwarded-Proto` of requests that arrive this way.
    const SCHEME: &'static str;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plaintext HTTP: the TCP stream as it is.
#[derive(Clone, Copy)]
pub struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;
    const SCHEME: &'static str = "http";
    async fn handshake(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// Serves `listener` (plaintext) until `shutdown` resolves, then drains
/// connections.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: &ProxyConfig,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, Plain, proxy, config, shutdown).await;
}

/// [`serve`], with `handshake` run on every accepted connection first.
pub async fn serve_with<H: Handshake>(
    listener: TcpListener,
    handshake: H,
    proxy: Arc<Proxy>,
    config: &ProxyConfig,
    shutdown: impl Future<Output = ()>,
) {
    let limits = &config.limits;
    // The read buffer holds the whole head while it is parsed, so its size
    // is the head's limit: hyper answers 431 beyond it, and beyond
    // `max_headers` fields.
    let header_bytes = usize::try_from(limits.max_header_bytes.as_u64()).unwrap_or(usize::MAX);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Arc::new(Peer::new(addr, H::SCHEME));
                    let proxy = Arc::clone(&proxy);
                    let service = service_fn(move |request| {
                        Arc::clone(&proxy).handle(request, Arc::clone(&peer))
                    });
                    // Taken now, so that shutdown also waits for handshakes
                    // under way (each bounded by its own timeout).
                    let watcher = graceful.watcher();
                    let builder = Arc::clone(&builder);
                    let handshake = handshake.clone();
                    let first_byte = config.header_read_timeout;
                    tokio::spawn(async move {
                        // hyper's header timeout starts once the protocol is
                        // known, i.e. after the first bytes: a client that
                        // never sends any would hold its descriptor forever.
                        let mut first = [0u8; 1];
                        if tokio::time::timeout(first_byte, stream.peek(&mut first)).await.is_err() {
                            tracing::debug!(peer = %addr, "closing a connection that sent nothing within header_read_timeout");
                            return;
                        }
                        let stream = match handshake.handshake(stream).await {
                            Ok(stream) => stream,
                            Err(err) => {
                                tracing::debug!(error = %err, "handshake failed");
                                return;
                            }
                        };
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service);
                        if let Err(err) = watcher.watch(connection).await {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open, "listener closed; finishing in-flight requests");
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown timeout; dropping remaining connections");
    }
}
