//! Assembles a running proxy from a config: services and routes (the
//! registry: file, catalog, SIGHUP), the NATS side (catalog and endpoint
//! watches, reports), the admin server and the data path, and the
//! SIGTERM sequence (not ready → stop accepting → finish in flight → exit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use rouse_nats::config::ProxyConfig;
use rouse_nats::{bus, process, Config, Subjects};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::access_log::AccessLog;
use crate::admin::{self, AdminState};
use crate::catalog::{self, Registry};
use crate::endpoints::EndpointWatcher;
use crate::forward::Forwarder;
use crate::handler::Proxy;
use crate::metrics::ProxyMetrics;
use crate::observe::Observers;
use crate::report::{Reporter, Signals};
use crate::server;
use crate::service::Defaults;
use crate::strict::RequestLimits;
use crate::tls::{self, TlsHandshake};

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::limits::raise_nofile();
    let proxy_config = &config.proxy;
    let metrics = Arc::new(ProxyMetrics::new());
    let registry = Arc::new(Registry::new(
        &config.services,
        Defaults {
            response_timeout: proxy_config.response_timeout,
            max_body: proxy_config.limits.max_body.map(|b| b.as_u64()),
        },
        Arc::clone(&metrics),
    ));

    let threads = proxy_config
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let listeners = bind_data(proxy_config.listen, threads)
        .with_context(|| format!("binding proxy.listen {}", proxy_config.listen))?;
    // Loaded before NATS is reached (main has already checked the files),
    // so unusable certificates fail the start at once.
    let mut tls_listeners = match &proxy_config.tls {
        Some(tls) => {
            let (handshake, reloader) = tls::start(tls, Arc::clone(&metrics))?;
            let listeners = bind_data(tls.listen, threads)
                .with_context(|| format!("binding proxy.tls.listen {}", tls.listen))?;
            tokio::spawn(reloader.run());
            listeners
                .into_iter()
                .map(|listener| (listener, handshake.clone()))
                .collect()
        }
        None => Vec::new(),
    }
    .into_iter();
    let admin_listener = TcpListener::bind(proxy_config.admin_listen)
        .await
        .with_context(|| format!("binding proxy.admin_listen {}", proxy_config.admin_listen))?;

    let proxy_id = proxy_config.id.clone().unwrap_or_else(default_proxy_id);
    let bus = bus::connect(&config.nats, &format!("rouse-proxy {proxy_id}")).await?;

    tokio::spawn(rouse_nats::catalog::follow(
        bus.clone(),
        Arc::clone(&registry) as Arc<dyn rouse_nats::catalog::Sink>,
    ));
    if let Some(file) = config.file.clone() {
        tokio::spawn(catalog::reload_on_hangup(Arc::clone(&registry), file));
    }
    let watcher = EndpointWatcher::new(bus.clone(), Arc::clone(&registry), Arc::clone(&metrics));
    let synced = Arc::clone(&watcher.synced);
    let endpoints_revision = Arc::clone(&watcher.revision);
    tokio::spawn(watcher.run());

    let (signals, signal_rx) = Signals::channel();
    let reporter = Reporter::new(
        bus.client.clone(),
        Subjects::new(config.nats.prefix.clone()),
        proxy_id.clone(),
        proxy_config.report_interval,
        endpoints_revision,
    );
    tokio::spawn(reporter.run(signal_rx));
    // Waiting pages may come with any definition, now or later.
    tokio::spawn(crate::wake_phase::follow_scaled(
        bus.clone(),
        Subjects::new(config.nats.prefix.clone()),
        Arc::clone(&registry),
    ));

    let admin_state = Arc::new(AdminState {
        metrics: Arc::clone(&metrics),
        registry: Arc::clone(&registry),
        synced,
        accepting: AtomicBool::new(true),
    });
    let token = rouse_nats::admin::ApiToken::load(proxy_config.admin_token_file.as_deref())
        .context("reading proxy.admin_token_file")?;
    tokio::spawn(admin::serve(
        admin_listener,
        token,
        Arc::clone(&admin_state),
    ));

    let (observers, observing) = start_observers(proxy_config, &metrics)?;

    let routes = registry.routes();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::with_capacity(threads);
    for (index, listener) in listeners.into_iter().enumerate() {
        let proxy = Proxy {
            routes: Arc::clone(&routes),
            forwarder: Forwarder::new(proxy_config),
            signals: signals.clone(),
            metrics: Arc::clone(&metrics),
            limits: RequestLimits::from(&proxy_config.limits),
            // A copy per thread: the per-request reference count stays on
            // the thread.
            observers: Arc::new(observers.clone()),
        };
        finished.push(spawn_data_thread(
            index,
            listener,
            tls_listeners.next(),
            proxy,
            proxy_config.clone(),
            stop_rx.clone(),
        )?);
    }
    drop(signals);
    drop(observers);
    tracing::info!(
        listen = %proxy_config.listen,
        tls_listen = ?proxy_config.tls.as_ref().map(|tls| tls.listen),
        admin = %proxy_config.admin_listen,
        id = %proxy_id,
        services = registry.services().len(),
        threads,
        "rouse-proxy started"
    );
    process::terminated().await;
    admin_state.accepting.store(false, Ordering::SeqCst);
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for done in finished {
        let _ = done.await;
    }
    observing.finish().await;
    Ok(())
}

/// The running halves of the access log and tracing, finished at shutdown
/// once the data threads are done.
struct Observing {
    writer: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    exporter: Option<crate::trace::Exporter>,
}

/// Longest the access log may take to write its last lines at shutdown.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(10);

impl Observing {
    /// Writes the access log lines still queued and exports the last spans.
    async fn finish(self) {
        if let Some((stop, writer)) = self.writer {
            let _ = stop.send(());
            if tokio::time::timeout(ACCESS_LOG_FLUSH, writer)
                .await
                .is_err()
            {
                tracing::warn!("the access log did not finish writing in time");
            }
        }
        if let Some(exporter) = self.exporter {
            exporter.shutdown().await;
        }
    }
}

/// Starts the access log writer and the trace exporter, when configured.
fn start_observers(
    config: &ProxyConfig,
    metrics: &ProxyMetrics,
) -> anyhow::Result<(Observers, Observing)> {
    let mut observers = Observers::default();
    let mut observing = Observing {
        writer: None,
        exporter: None,
    };
    if let Some(log) = &config.access_log {
        let (access_log, writer) = AccessLog::new(log, metrics.access_log_dropped.clone())
            .with_context(|| format!("opening proxy.access_log.path {}", log.path.display()))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(writer.run(async move {
            let _ = stopped.await;
        }));
        observers.access_log = Some(access_log);
        observing.writer = Some((stop, task));
    }
    if let Some(tracing_config) = &config.tracing {
        let (tracing, exporter) =
            crate::trace::start(tracing_config, metrics.trace_spans_dropped.clone())?;
        observers.tracing = Some(tracing);
        observing.exporter = Some(exporter);
    }
    Ok((observers, observing))
}

/// One data-path thread: its own single-threaded runtime, its own accept
/// loop on its own listening socket and its own connection pool to the
/// replicas. A request, its inbound connection and its upstream connection
/// then live on one thread, like an nginx worker: no task hops between
/// threads, no contended pool lock. Resolves when the thread has finished
/// its in-flight requests after `stop` turned true. With `proxy.tls`, the
/// thread also has its own TLS listening socket, served the same way.
fn spawn_data_thread(
    index: usize,
    listener: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, TlsHandshake)>,
    proxy: Proxy,
    config: ProxyConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("rouse-data-{index}"))
        .spawn(move || {
            let runtime = rouse_nats::runtime::build(rouse_nats::runtime::Threads::Current);
            match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    let tls = tls
                        .map(|(listener, handshake)| {
                            TcpListener::from_std(listener).map(|listener| (listener, handshake))
                        })
                        .transpose();
                    match (TcpListener::from_std(listener), tls) {
                        (Ok(listener), Ok(tls)) => {
                            tokio::spawn(Arc::clone(proxy.forwarder.pool()).sweep_periodically());
                            let proxy = Arc::new(proxy);
                            let plain = server::serve(
                                listener,
                                Arc::clone(&proxy),
                                &config,
                                stopped(stop.clone()),
                            );
                            match tls {
                                Some((listener, handshake)) => {
                                    let secure = server::serve_with(
                                        listener,
                                        handshake,
                                        proxy,
                                        &config,
                                        stopped(stop),
                                    );
                                    tokio::join!(plain, secure);
                                }
                                None => plain.await,
                            }
                        }
                        (Err(err), _) | (_, Err(err)) => {
                            tracing::error!(error = %err, "data thread cannot use the listener")
                        }
                    }
                }),
                Err(err) => tracing::error!(error = %err, "data thread cannot start its runtime"),
            }
            let _ = done_tx.send(());
        })
        .context("starting a data-path thread")?;
    Ok(done_rx)
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Connections a burst may open before the accept loop catches up; the
/// kernel caps it at `net.core.somaxconn`. Tokio's default (1024) overflowed
/// under a 10,000-client burst, making clients retry a second later.
const LISTEN_BACKLOG: u32 = 65_535;

/// One listening socket per data thread, all on `addr` with SO_REUSEPORT so
/// the kernel spreads connections evenly (a single shared socket let
/// whichever thread woke first accept a whole burst). The port is first
/// bound plainly, which fails if anything at all holds it, so a second proxy
/// cannot silently share it.
fn bind_data(
    addr: std::net::SocketAddr,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    drop(std::net::TcpListener::bind(addr)?);
    (0..threads)
        .map(|_| {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            // Handed to a data thread, which registers it with its runtime.
            socket.listen(LISTEN_BACKLOG)?.into_std()
        })
        .collect()
}

/// `<hostname>-<pid>`: unique per process on a host, readable in reports.
fn default_proxy_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "proxy".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> std::net::SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn one_listener_per_thread_on_one_port_and_the_port_stays_ours() {
        let addr = free_port();
        let listeners = bind_data(addr, 3).expect("bind");
        assert_eq!(listeners.len(), 3);
        for listener in &listeners {
            assert_eq!(listener.local_addr().expect("addr"), addr);
        }
        // Between them the listeners accept every connection (the kernel
        // picks one per connection).
        let clients: Vec<_> = (0..30)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let mut accepted = 0;
        for listener in &listeners {
            listener.set_nonblocking(true).expect("nonblocking");
            while listener.accept().is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, clients.len());
        // A second proxy on the same port is refused, not silently let in.
        assert!(bind_data(addr, 1).is_err());
        assert!(std::net::TcpListener::bind(addr).is_err());
    }
}
