//! End-to-end harness for rouse.
//!
//! The acceptance criteria of rouse are about whole processes talking over
//! real sockets: a client, one or more `rouse-proxy`, a `rouse-controller`, a
//! `nats-server` with JetStream, and `rouse-echo` replicas spawned by the
//! controller. Unit tests inside the crates cannot prove them, so this crate
//! starts the real binaries and drives them over HTTP only, exactly as a user
//! would. It depends on no other workspace crate on purpose: the contract is
//! `shared/DESIGN.md` (binaries, flags, config keys, status codes, metrics,
//! `/api/v1/services`), not the Rust types, and the tests must keep compiling
//! while the binaries are being rewritten.
//!
//! Rules every test follows, and that the helpers here make easy:
//! - isolation: every [`Cluster`] has its own `nats-server` (free port, own
//!   store dir), own config files, own controller state dir, and a unique
//!   marker env var in every replica so its processes can be found in `/proc`
//!   and killed even when the controller that spawned them is gone;
//! - no sleep-and-hope: every wait is a bounded poll of a condition
//!   ([`wait_until`], [`poll_until`], [`Cluster::wait_until`]) that panics with
//!   a clear message, and with the tails of all logs, when its deadline passes;
//! - light on the machine: clusters inside one test binary run one at a time
//!   (a process-wide semaphore, see [`cluster`]), and only 127.0.0.1 is used.
//!
//! Environment knobs:
//! - `NATS_SERVER_BIN`: the nats-server to run (default: `nats-server` on PATH);
//! - `ROUSE_E2E_NO_BUILD=1`: do not run `cargo build --bins --workspace` first
//!   (it still runs if a binary is missing), see [`bins`];
//! - `ROUSE_E2E_PARALLEL=<n>`: clusters allowed at once per test binary (1);
//! - `ROUSE_E2E_KEEP=1`: keep each cluster's temp dir (configs, logs, state);
//! - `RUST_LOG`: passed to the binaries (default `info`).

pub mod bins;
pub mod cluster;
pub mod config;
pub mod http;
pub mod nats;
pub mod pids;
pub mod proc;
pub mod protocols;

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use bins::bin;
pub use cluster::{Cluster, ClusterBuilder, ProxyNode};
pub use config::{Config, Service};
pub use http::{
    get, metric_value, request, services, services_with, ReplicaStatus, Resp, ServiceStatus,
};
pub use nats::NatsServer;
pub use pids::{kill_pids, replica_pids};
pub use proc::Proc;
pub use protocols::{h2c_get, upgrade_echo, Upgraded};

/// How often the polling helpers re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Name of the env var carrying a cluster's marker into every replica.
pub const MARKER_ENV: &str = "ROUSE_E2E_MARKER";

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before.
///
/// The port is released before it is returned (the binaries under test must
/// bind it themselves), so another process could take it in between; the
/// ephemeral range is large and the window short. Remembering the ports
/// handed out keeps tests running in parallel threads from colliding.
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
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A string unique to this test run, used as the replica marker and in
/// service names where a collision with another test would matter.
pub fn unique_marker() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "e2e-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `true`; panics
/// with `desc` when `timeout` passes first. A single evaluation that hangs is
/// cut off at the deadline too.
pub async fn wait_until<F, Fut>(desc: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let res = poll_until_inner(timeout, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await;
    if res.is_none() {
        panic!("timed out after {timeout:?} waiting until {desc}");
    }
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns
/// that value; panics with `desc` when `timeout` passes first.
pub async fn poll_until<T, F, Fut>(desc: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_until_inner(timeout, probe).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting until {desc}"),
    }
}

/// The loop behind the polling helpers: `None` when the deadline passed.
/// Bounded both in time (the deadline) and in count (deadline / interval + 1
/// evaluations at most, since every round sleeps one interval).
pub(crate) async fn poll_until_inner<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
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

/// Asserts that `condition` holds at every poll during `window`: the opposite
/// of [`wait_until`], for "nothing changes" claims such as "no replica is
/// started or stopped". Panics with `desc` at the first poll that fails.
pub async fn assert_stays<F, Fut>(desc: &str, window: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    let max_rounds = window.as_millis() / POLL_INTERVAL.as_millis().max(1) + 2;
    for _ in 0..max_rounds {
        if start.elapsed() >= window {
            return;
        }
        if !condition().await {
            panic!(
                "expected {desc} to hold for {window:?}, but it stopped holding after {:?}",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether `text` names line `line`, as `:<line>` or `line <line>` followed
/// by something that is not a digit (so line 1 does not match `:12`).
pub fn mentions_line(text: &str, line: usize) -> bool {
    let needles = [format!(":{line}"), format!("line {line}")];
    needles.iter().any(|needle| {
        text.match_indices(needle.as_str()).any(|(at, _)| {
            !text[at + needle.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_line_is_digit_aware() {
        assert!(mentions_line("f.yaml:12: key `x`", 12));
        assert!(mentions_line("error at line 7, column 3", 7));
        assert!(!mentions_line("f.yaml:12: key", 1));
        assert!(!mentions_line("line 70", 7));
    }

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
}
