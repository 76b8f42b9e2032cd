//! Starting a whole rouse deployment on 127.0.0.1: a `nats-server` with
//! JetStream, one `rouse-controller`, N `rouse-proxy`, their config files,
//! and waiting until every one of them is ready; stopping it all again.
//!
//! The end-to-end tests (`rouse-e2e`) and the benchmarks (`rouse-bench`)
//! both need exactly this, so it exists once, here. Like the tests, it
//! depends on no other workspace crate on purpose: it drives the binaries
//! through the contract of `shared/DESIGN.md` (binaries, flags, config keys,
//! HTTP endpoints), not through their Rust types.
//!
//! What every [`Stack`] gets, and the helpers make easy:
//! - isolation: its own `nats-server` (own store dir), own config files, own
//!   controller state dir, and a unique marker env var ([`MARKER_ENV`]) in
//!   every replica so that its processes can be found in `/proc` and killed
//!   even when the controller that spawned them is gone;
//! - ports: free ones on 127.0.0.1 by default ([`free_port`]), or fixed ones
//!   (benchmarks), refused when something already listens there;
//! - bounded waits: every wait polls a condition until a deadline
//!   ([`poll`]), and a start-up that fails says why, with the tails of all
//!   logs;
//! - no leftovers: dropping a [`Stack`] kills its processes and the replicas
//!   carrying its marker; [`Stack::shutdown`] stops them gracefully first.
//!
//! Modules, in the order a stack comes up:
//! - `bins`: where the binaries are ([`Bins`]), built once for the tests;
//! - `config`: the YAML file both binaries read ([`Config`], [`Service`]);
//! - `proc`: one child process with its log file ([`Proc`]);
//! - `nats`: the private `nats-server` ([`NatsServer`]);
//! - `nats_cluster`: a routed cluster of them with clustered JetStream
//!   ([`NatsCluster`]), killed a node at a time;
//! - `docker`: a private Docker engine for container tests ([`DockerEngine`]);
//! - `http`: the one small HTTP client readiness, status and metrics need
//!   ([`http_get`], [`wait_http_ok`], [`metric_value`]);
//! - `stack`: the whole deployment ([`StackBuilder`], [`Stack`]);
//! - `procfs`: what `/proc` says about its processes (replicas by marker,
//!   CPU time, memory, process trees).
//!
//! Environment knobs:
//! - `NATS_SERVER_BIN`: the nats-server to run (default: `nats-server` on
//!   `PATH`, then `/usr/sbin`, `/usr/bin`);
//! - `ROUSE_E2E_NO_BUILD=1`: [`Bins::Workspace`] does not run `cargo build`
//!   first (it still does if a binary is missing);
//! - `RUST_LOG`: passed to the binaries (default `info`).

mod bins;
mod config;
mod docker;
mod http;
mod nats;
mod nats_cluster;
mod proc;
pub mod procfs;
mod stack;

use std::collections::HashSet;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use bins::{bin, target_dir, workspace_root, Bins};
pub use config::{line_of, Config, Service};
pub use docker::{dockerd_bin, podman_bin, DockerEngine};
pub use http::{http_get, metric_value, wait_http_ok};
pub use nats::NatsServer;
pub use nats_cluster::{NatsCluster, CLUSTER_NAME};
pub use proc::{read_lossy, Proc};
pub use stack::{leader_gauge, ProxyNode, Stack, StackBuilder, STARTUP_DEADLINE};

/// How often the polling helpers re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Name of the env var carrying a stack's marker into every replica.
pub const MARKER_ENV: &str = "ROUSE_E2E_MARKER";

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before.
///
/// The port is released before it is returned (the binaries must bind it
/// themselves), so another process could take it in between; the ephemeral
/// range is large and the window short. Remembering the ports handed out
/// keeps stacks started from parallel threads from colliding.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..1000 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("could not find a free port on 127.0.0.1 in 1000 tries");
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Fails when something already accepts connections on `addr`: numbers
/// measured next to someone else's server would be theirs.
pub fn ensure_free(addr: SocketAddr) -> anyhow::Result<()> {
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(_) => anyhow::bail!("{addr} is already in use"),
        Err(_) => Ok(()),
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value; `None` when `timeout` passed first. Bounded both in time (a
/// probe that hangs is cut off at the deadline) and in count (deadline /
/// interval + 2 evaluations at most, since every round sleeps one interval).
pub async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let max_rounds = timeout.as_millis() / POLL_INTERVAL.as_millis().max(1) + 2;
    for _ in 0..max_rounds {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        if let Ok(Some(value)) = tokio::time::timeout(deadline - now, probe()).await {
            return Some(value);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }

    #[test]
    fn a_listening_port_is_not_free() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        assert!(ensure_free(listener.local_addr().unwrap()).is_err());
        drop(listener);
        assert!(ensure_free(free_addr()).is_ok());
    }
}
