//! Assembles a running proxy from a config: services, routes, the NATS side
//! (endpoint watch, reports), the admin server and the data path, and the
//! SIGTERM sequence (not ready → stop accepting → finish in flight → exit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rouse_nats::{bus, process, Config, Subjects};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::{self, AdminState};
use crate::endpoints::EndpointWatcher;
use crate::forward::Forwarder;
use crate::handler::Proxy;
use crate::metrics::ProxyMetrics;
use crate::report::Reporter;
use crate::route::Routes;
use crate::server;
use crate::service::Service;

/// Room for edge signals; when full, the periodic report covers the edge.
const SIGNAL_CAPACITY: usize = 1024;

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let proxy_config = &config.proxy;
    let metrics = Arc::new(ProxyMetrics::new());
    let services: Vec<Arc<Service>> = config
        .services
        .iter()
        .map(|s| {
            Arc::new(Service::new(
                s,
                proxy_config.response_timeout,
                metrics.for_service(&s.name),
            ))
        })
        .collect();
    let mut routes = Routes::default();
    for (service, spec) in services.iter().zip(&config.services) {
        for host in &spec.hosts {
            for path in &spec.paths {
                routes.insert(host, path, Arc::clone(service));
            }
        }
    }

    let listener = bind_data(proxy_config.listen)
        .with_context(|| format!("binding proxy.listen {}", proxy_config.listen))?;
    let admin_listener = TcpListener::bind(proxy_config.admin_listen)
        .await
        .with_context(|| format!("binding proxy.admin_listen {}", proxy_config.admin_listen))?;

    let proxy_id = proxy_config.id.clone().unwrap_or_else(default_proxy_id);
    let bus = bus::connect(&config.nats, &format!("rouse-proxy {proxy_id}")).await?;

    let watcher = EndpointWatcher::new(bus.clone(), &services, Arc::clone(&metrics));
    let synced = Arc::clone(&watcher.synced);
    tokio::spawn(watcher.run());

    let (signals, signal_rx) = mpsc::channel(SIGNAL_CAPACITY);
    let reporter = Reporter::new(
        bus.client.clone(),
        Subjects::new(config.nats.prefix.clone()),
        proxy_id.clone(),
        proxy_config.report_interval,
        services.clone(),
    );
    tokio::spawn(reporter.run(signal_rx));

    let admin_state = Arc::new(AdminState {
        metrics: Arc::clone(&metrics),
        services: services.clone(),
        synced,
        accepting: AtomicBool::new(true),
    });
    tokio::spawn(admin::serve(admin_listener, Arc::clone(&admin_state)));

    let proxy = Arc::new(Proxy {
        routes: ArcSwap::from_pointee(routes),
        forwarder: Forwarder::new(proxy_config),
        signals,
        metrics,
    });
    tracing::info!(
        listen = %proxy_config.listen,
        admin = %proxy_config.admin_listen,
        id = %proxy_id,
        services = services.len(),
        "rouse-proxy started"
    );
    let shutdown = async {
        process::terminated().await;
        admin_state.accepting.store(false, Ordering::SeqCst);
        tracing::info!("shutting down");
    };
    server::serve(listener, proxy, proxy_config, shutdown).await;
    Ok(())
}

/// Connections a burst may open before the accept loop catches up; the
/// kernel caps it at `net.core.somaxconn`. Tokio's default (1024) overflowed
/// under a 10,000-client burst, making clients retry a second later.
const LISTEN_BACKLOG: u32 = 65_535;

fn bind_data(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// `<hostname>-<pid>`: unique per process on a host, readable in reports.
fn default_proxy_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "proxy".into());
    format!("{host}-{}", std::process::id())
}
