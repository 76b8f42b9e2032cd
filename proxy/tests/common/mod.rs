//! A proxy on real sockets without NATS (endpoint sets applied directly, as
//! the KV watcher applies them), and a replica written against raw sockets,
//! for tests that need behaviour a well-behaved HTTP server would not show. Shared by several test files,
//! not all of which read every field.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;
use rouse_nats::config::Config;
use rouse_nats::messages::{Endpoint, EndpointSet, EndpointState, VERSION};
use rouse_proxy::{serve, Forwarder, Pool, Proxy, ProxyMetrics, RequestLimits, Routes, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal HTTP/1.1 replica: answers every request head with a 2-byte
/// body as soon as the head has arrived, whether or not a request body
/// follows (which it reads and ignores; a body must not contain an empty
/// line). With `close_after_response` it closes the connection right after
/// the response, without announcing it (as a replica's idle timeout does).
/// Counts accepted and ended connections.
pub struct RawReplica {
    pub authority: Authority,
    pub accepted: Arc<AtomicUsize>,
    pub ended: Arc<AtomicUsize>,
    /// Every request head received, as text.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

pub async fn raw_replica(close_after_response: bool) -> RawReplica {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let authority: Authority = listener
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("authority");
    let accepted = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (accepts, ends) = (Arc::clone(&accepted), Arc::clone(&ended));
    let received = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepts.fetch_add(1, Ordering::SeqCst);
            let ends = Arc::clone(&ends);
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        if let Ok(mut heads) = received.lock() {
                            heads.push(String::from_utf8_lossy(&head).into_owned());
                        }
                        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(response).await.is_err() {
                            break;
                        }
                    }
                    if close_after_response {
                        break;
                    }
                }
                drop(stream);
                ends.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    RawReplica {
        authority,
        accepted,
        ended,
        heads,
    }
}

pub struct Harness {
    pub addr: SocketAddr,
    pub service: Arc<Service>,
    /// The upstream connection pool of the proxy's (only) data thread.
    pub pool: Arc<Pool>,
    /// Every service of the config, in order; `service` is the first.
    pub services: Vec<Arc<Service>>,
    pub forwarder: Forwarder,
}

/// A proxy with one data thread serving every service of `config` (each
/// on its hosts, path `/`), on a free port, with no NATS behind it.
pub async fn start_proxy(config: &str) -> Harness {
    let config = Config::parse(std::path::Path::new("test.yaml"), config).expect("config");
    let metrics = Arc::new(ProxyMetrics::new());
    let default_max_body = config.proxy.limits.max_body.map(|b| b.as_u64());
    let mut routes = Routes::default();
    let mut services = Vec::new();
    for spec in &config.services {
        let service = Arc::new(
            Service::new(
                spec,
                config.proxy.response_timeout,
                metrics.for_service(&spec.name),
            )
            .with_default_max_body(default_max_body),
        );
        for host in &spec.hosts {
            routes.insert(host, "/", Arc::clone(&service));
        }
        services.push(service);
    }
    let (signals, mut signal_rx) = rouse_proxy::Signals::channel();
    tokio::spawn(async move { while signal_rx.recv().await.is_some() {} });
    let forwarder = Forwarder::new(&config.proxy);
    let pool = Arc::clone(forwarder.pool());
    let proxy = Arc::new(Proxy {
        routes: Arc::new(ArcSwap::from_pointee(routes)),
        forwarder: forwarder.clone(),
        signals,
        metrics,
        limits: RequestLimits::from(&config.proxy.limits),
        observers: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxy_config = config.proxy.clone();
    tokio::spawn(async move {
        serve(listener, proxy, &proxy_config, std::future::pending()).await;
    });
    Harness {
        addr,
        service: Arc::clone(&services[0]),
        services,
        pool,
        forwarder,
    }
}

/// Applies ready endpoints `r0..` at `addrs`, as the KV watcher would.
pub fn set_endpoints(service: &Service, generation: u64, addrs: &[SocketAddr]) {
    let set = EndpointSet {
        v: VERSION,
        generation,
        endpoints: addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Endpoint {
                id: format!("r{i}"),
                addr: addr.to_string(),
                state: EndpointState::Ready,
                pool_rank: None,
            })
            .collect(),
    };
    assert!(service.apply(&set).is_empty());
}
