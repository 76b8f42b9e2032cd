//! A private `nats-server` with JetStream for one stack.
//!
//! Each stack gets its own server (on a free port unless told one) with its
//! own store dir, so KV buckets and streams never leak between tests. The
//! NATS-outage test
//! needs the *same* server back (same port, same store, so the KV endpoint
//! set survives), hence [`NatsServer::stop`] and [`NatsServer::start`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::proc::Proc;

/// How long nats-server gets to come up or shut down.
const NATS_DEADLINE: Duration = Duration::from_secs(30);
/// Time one `/healthz` request may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The `nats-server` binary: `$NATS_SERVER_BIN`, else the first on `PATH`,
/// else `/usr/sbin` or `/usr/bin`.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    crate::bins::system_program(
        "nats-server",
        "NATS_SERVER_BIN",
        "install nats-server (apt-get install -y nats-server)",
    )
}

/// A running (or stopped) nats-server bound to 127.0.0.1.
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    proc: Proc,
}

impl NatsServer {
    /// Starts a server on a free port whose store dir and log live under
    /// `dir`, and waits until it accepts clients and reports healthy. Panics
    /// when it does not; see [`NatsServer::try_start`].
    pub async fn start_in(dir: &Path) -> NatsServer {
        Self::try_start(dir, None)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`NatsServer::start_in`], on `port` if given, failing instead of
    /// panicking.
    pub async fn try_start(dir: &Path, port: Option<u16>) -> anyhow::Result<NatsServer> {
        let port = port.unwrap_or_else(crate::free_port);
        let monitor_port = crate::free_port();
        let store_dir = dir.join("nats-store");
        std::fs::create_dir_all(&store_dir)
            .with_context(|| format!("create {}", store_dir.display()))?;
        let args: Vec<OsString> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor_port.to_string(),
            "-js",
            "-sd",
            &store_dir.to_string_lossy(),
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let proc = Proc::try_spawn(
            "nats-server",
            &nats_server_bin()?,
            &args,
            &BTreeMap::new(),
            &dir.join("nats-server.log"),
        )?;
        let mut server = NatsServer {
            port,
            monitor_port,
            store_dir,
            proc,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, `/healthz`): benchmarks
    /// read the server's message counters from it.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The process, e.g. for its pid or a graceful stop.
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's log (all its runs).
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// SIGTERM and wait for the exit (SIGKILL if it takes longer than the
    /// deadline), then wait until the port no longer accepts.
    pub async fn stop(&mut self) {
        self.proc.sigterm();
        let deadline = tokio::time::Instant::now() + NATS_DEADLINE;
        while self.proc.is_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        if self.proc.is_running() {
            eprintln!("rouse-stack: nats-server ignored SIGTERM for {NATS_DEADLINE:?}; killing it");
            self.proc.kill_now();
        }
        let port = self.port;
        let closed = crate::poll(NATS_DEADLINE, || async move {
            let refused = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err();
            refused.then_some(())
        })
        .await;
        if closed.is_none() {
            panic!("timed out after {NATS_DEADLINE:?} waiting until nats-server port {port} is closed after stop");
        }
    }

    /// Starts the server again on the same port and store dir.
    pub async fn start(&mut self) {
        assert!(
            !self.proc.is_running(),
            "nats-server is still running; stop() it first"
        );
        self.proc.restart();
        self.wait_ready().await.unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Waits until the client port accepts and `/healthz` on the monitoring
    /// port (which covers JetStream) answers 200.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let port = self.port;
        let monitor = SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let ok = crate::poll(NATS_DEADLINE, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let (status, _) = crate::http_get(monitor, "/healthz", HEALTH_TIMEOUT)
                .await
                .ok()?;
            (200..300).contains(&status).then_some(())
        })
        .await;
        if ok.is_none() {
            let running = self.proc.is_running();
            anyhow::bail!(
                "nats-server on port {port} not ready within {NATS_DEADLINE:?} (running: {running}); log:\n{}",
                crate::tail(&self.logs(), 40)
            );
        }
        Ok(())
    }
}

/// For `nats_cluster`: the nodes of a cluster are started together and
/// only then waited for, since none is healthy before a JetStream meta
/// leader is elected, which takes a quorum of them.
impl NatsServer {
    /// Spawns nats-server with `args`, which must bind 127.0.0.1:`port`
    /// and serve monitoring on `monitor_port`; does not wait.
    pub(crate) fn spawn_node(
        name: &str,
        args: &[OsString],
        (port, monitor_port): (u16, u16),
        store_dir: PathBuf,
        log: &Path,
    ) -> anyhow::Result<NatsServer> {
        let proc = Proc::try_spawn(name, &nats_server_bin()?, args, &BTreeMap::new(), log)?;
        Ok(NatsServer {
            port,
            monitor_port,
            store_dir,
            proc,
        })
    }

    /// Waits as [`NatsServer::start`] does: client port open, `/healthz` 200.
    pub(crate) async fn wait_node_ready(&mut self) -> anyhow::Result<()> {
        self.wait_ready().await
    }
}
