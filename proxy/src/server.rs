//! Stage 1 of the data path: accept connections and serve HTTP/1.1 and h2c.
//!
//! hyper answers malformed requests itself (400, 431 for oversized headers);
//! a slow client gets `header_read_timeout` to send its headers, and one that
//! sends nothing at all is closed after it too. On shutdown
//! the listener closes first, then open connections get `shutdown_timeout` to
//! finish what they are doing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rouse_nats::config::ProxyConfig;
use tokio::net::TcpListener;

use crate::handler::{Peer, Proxy};

/// Serves `listener` until `shutdown` resolves, then drains connections.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: &ProxyConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Arc::new(Peer::new(addr));
                    let proxy = Arc::clone(&proxy);
                    let service = service_fn(move |request| {
                        Arc::clone(&proxy).handle(request, Arc::clone(&peer))
                    });
                    let builder = Arc::clone(&builder);
                    let watcher = graceful.watcher();
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
                        let connection = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
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
