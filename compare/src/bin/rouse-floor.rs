//! `rouse-floor`: the least a proxy built on hyper 1 and tokio can do, as a
//! reference path for `bench/run throughput`.
//!
//! It forwards every request to one upstream and streams the response back,
//! and does nothing else: no routing, no header rules, no counters, no hold.
//! It is laid out as rouse-proxy's data path is (one single-threaded tokio
//! runtime per thread, each with its own `SO_REUSEPORT` listener, mimalloc,
//! the same release profile), with hyper's HTTP/1 server and client
//! connections, and each inbound connection keeps one upstream connection
//! of its own, so not even a pool lookup is left. Its CPU per request is
//! therefore the floor under rouse-proxy's: what hyper's two HTTP/1 codecs
//! and tokio cost, measured in the same run as nginx and HAProxy.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use clap::Parser;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command line of `rouse-floor`.
#[derive(Debug, Parser)]
#[command(
    name = "rouse-floor",
    version,
    about = "A bare hyper 1 proxy: the floor of the proxy comparison"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream every request goes to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Threads, each with its own runtime and listener.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

type Upstream = Arc<Mutex<Option<SendRequest<Incoming>>>>;
type Reply = Response<Either<Incoming, Empty<Bytes>>>;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut threads = Vec::new();
    for _ in 0..cli.threads.max(1) {
        let listener = bind(cli.listen).with_context(|| format!("binding {}", cli.listen))?;
        let upstream = cli.upstream;
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(listener, upstream))
        }));
    }
    for thread in threads {
        match thread.join() {
            Ok(result) => result?,
            Err(_) => anyhow::bail!("a data thread panicked"),
        }
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

async fn serve(listener: std::net::TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let conn: Upstream = Arc::new(Mutex::new(None));
            let service = service_fn(move |request| forward(Arc::clone(&conn), upstream, request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends `request` over the inbound connection's own upstream connection
/// (made on first use, again after it fails).
async fn forward(
    conn: Upstream,
    upstream: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Reply, hyper::Error> {
    *request.version_mut() = Version::HTTP_11;
    let taken = conn.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut sender = match taken {
        Some(sender) => sender,
        None => match connect(upstream).await {
            Ok(sender) => sender,
            Err(_) => return Ok(bad_gateway()),
        },
    };
    // HTTP/1 serves one request at a time per connection: by now the
    // previous response has ended and the connection is ready again.
    if sender.ready().await.is_err() {
        return Ok(bad_gateway());
    }
    let response = sender.send_request(request).await;
    *conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    match response {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(_) => Ok(bad_gateway()),
    }
}

async fn connect(upstream: SocketAddr) -> anyhow::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn bad_gateway() -> Reply {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
