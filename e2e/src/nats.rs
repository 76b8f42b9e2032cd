//! A private `nats-server` with JetStream for one test.
//!
//! Each test gets its own server on a free port with its own store dir, so
//! KV buckets and streams never leak between tests. The NATS-outage test
//! needs the *same* server back (same port, same store, so the KV endpoint
//! set survives), hence [`NatsServer::stop`] and [`NatsServer::start`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proc::Proc;

/// How long nats-server gets to come up or shut down.
const NATS_DEADLINE: Duration = Duration::from_secs(30);

/// The `nats-server` binary: `$NATS_SERVER_BIN`, else the first on `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "NATS_SERVER_BIN={} does not exist; install nats-server (apt-get install -y nats-server)",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    panic!("nats-server not found on PATH nor in NATS_SERVER_BIN: install nats-server (apt-get install -y nats-server)");
}

/// A running (or stopped) nats-server bound to 127.0.0.1.
pub struct NatsServer {
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    proc: Proc,
}

impl NatsServer {
    /// Starts a server whose store dir and log live under `dir`, and waits
    /// until it accepts clients and reports healthy.
    pub async fn start_in(dir: &Path) -> NatsServer {
        let port = crate::free_port();
        let monitor_port = crate::free_port();
        let store_dir = dir.join("nats-store");
        std::fs::create_dir_all(&store_dir).expect("create nats store dir");
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
        let proc = Proc::spawn(
            "nats-server",
            &nats_server_bin(),
            &args,
            &BTreeMap::new(),
            &dir.join("nats-server.log"),
        );
        let mut server = NatsServer {
            port,
            monitor_port,
            store_dir,
            proc,
        };
        server.wait_ready().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
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
            eprintln!("rouse-e2e: nats-server ignored SIGTERM for {NATS_DEADLINE:?}; killing it");
            self.proc.kill_now();
        }
        let port = self.port;
        crate::wait_until(
            &format!("nats-server port {port} is closed after stop"),
            NATS_DEADLINE,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
            },
        )
        .await;
    }

    /// Starts the server again on the same port and store dir.
    pub async fn start(&mut self) {
        assert!(
            !self.proc.is_running(),
            "nats-server is still running; stop() it first"
        );
        self.proc.restart();
        self.wait_ready().await;
    }

    /// Waits until the client port accepts and `/healthz` on the monitoring
    /// port (which covers JetStream) answers 200.
    async fn wait_ready(&mut self) {
        let port = self.port;
        let health = format!("http://127.0.0.1:{}/healthz", self.monitor_port);
        let client = crate::http::client();
        let ok = crate::poll_until_inner(NATS_DEADLINE, || {
            let client = client.clone();
            let health = health.clone();
            async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()?;
                let resp = client.get(&health).send().await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
        if ok.is_none() {
            let running = self.proc.is_running();
            panic!(
                "nats-server on port {port} not ready within {NATS_DEADLINE:?} (running: {running}); log:\n{}",
                crate::tail(&self.logs(), 40)
            );
        }
    }
}
