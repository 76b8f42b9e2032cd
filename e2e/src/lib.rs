//! End-to-end harness for rouse.
//!
//! The acceptance criteria of rouse are about whole processes talking over
//! real sockets: a client, one or more `rouse-proxy`, a `rouse-controller`, a
//! `nats-server` with JetStream, and `rouse-echo` replicas spawned by the
//! controller. Unit tests inside the crates cannot prove them, so these
//! tests start the real binaries (through `rouse-stack`, the start-up the
//! benchmarks share) and drive them over HTTP only, exactly as a user would.
//! Neither crate depends on a crate under test (nats, proxy, controller),
//! on purpose: the contract is `shared/DESIGN.md` (binaries, flags, config
//! keys, status codes, metrics, `/api/v1/services`), not the Rust types, and
//! the tests must keep compiling while the binaries are being rewritten.
//!
//! Rules every test follows, and that the helpers here make easy:
//! - isolation: every [`Cluster`] is a [`rouse_stack::Stack`] with its own
//!   `nats-server`, config files, state dir and replica marker;
//! - no sleep-and-hope: every wait is a bounded poll of a condition
//!   ([`wait_until`], [`poll_until`], [`Cluster::wait_until`]) that panics with
//!   a clear message, and with the tails of all logs, when its deadline passes;
//! - light on the machine: clusters inside one test binary run one at a time
//!   (a process-wide semaphore, see `cluster`), and only 127.0.0.1 is used.
//!
//! Modules:
//! - `browser`: a headless Chromium over WebDriver (chromedriver), for
//!   what only a browser shows (the waiting page);
//! - `catalog`: service definitions and pins written straight into NATS KV,
//!   as `rouse deploy` / `rouse scale --pin` write them (the JSON contract);
//! - `cluster`: a [`Stack`](rouse_stack::Stack) for one test, with
//!   panicking waits and requests that dump every log on failure;
//! - `fault`: load with every answer attributed to a replica, raw probes,
//!   descriptor counts, a tmpfs (the fault tests);
//! - `http`: requests through the proxy (reqwest), the controller's status;
//! - `grpc`: a gRPC client of `rouse-echo --grpc` (generated from its proto);
//! - `keda`: a client of the controller's KEDA external scaler API, as
//!   KEDA would call it (generated from the controller's proto, the contract);
//! - `load`: bursts and steady load through a proxy, and the replicas'
//!   own count of what reached them ("exactly once");
//! - `prometheus`: a real Prometheus scraping a cluster, queried over its
//!   HTTP API (the dashboard test);
//! - `protocols`: h2c and HTTP/1.1 Upgrade clients written against the wire;
//! - `bins`, `config`, `nats`, `proc`, `pids`: `rouse-stack`'s pieces under
//!   the paths the tests (the proxy's too) import them by.
//!
//! Environment knobs: those of `rouse-stack` (`NATS_SERVER_BIN`,
//! `ROUSE_E2E_NO_BUILD=1`, `RUST_LOG`), and
//! - `ROUSE_E2E_PARALLEL=<n>`: clusters allowed at once per test binary (1);
//! - `ROUSE_E2E_KEEP=1`: keep each cluster's temp dir (configs, logs, state);
//! - `CHROMIUM`, `CHROMEDRIVER`: the browser and its WebDriver server for
//!   `browser` (default `/usr/bin/chromium`, `/usr/bin/chromedriver`);
//! - `ROUSE_SCREENSHOTS=<dir>`: the waiting-page test saves a screenshot of
//!   each state there.

pub mod browser;
pub mod catalog;
pub mod cluster;
pub mod events;
pub mod fault;
pub mod grpc;
pub mod http;
pub mod keda;
pub mod load;
pub mod prometheus;
pub mod protocols;

/// Where the binaries under test are (`rouse-stack`'s).
pub mod bins {
    pub use rouse_stack::{bin, target_dir, workspace_root};
}

/// The config file both binaries read (`rouse-stack`'s writer).
pub mod config {
    pub use rouse_stack::{line_of, Config, Service};
}

/// A private nats-server (`rouse-stack`'s), or a cluster of them; the
/// proxy's tests use it too.
pub mod nats {
    pub use rouse_stack::{NatsCluster, NatsServer};
}

/// A private Docker engine (`rouse-stack`'s) for the container tests.
pub mod docker {
    pub use rouse_stack::{dockerd_bin, podman_bin, DockerEngine};
}

/// A child process with its log file (`rouse-stack`'s).
pub mod proc {
    pub use rouse_stack::{read_lossy, Proc};
}

/// Replica processes by their marker (`rouse-stack`'s).
pub mod pids {
    pub use rouse_stack::procfs::{kill_pids, replica_pids, unique_marker};
}

use std::future::Future;
use std::time::{Duration, Instant};

pub use cluster::{Cluster, ClusterBuilder};
pub use http::{
    get, metric_value, request, services, services_with, ReplicaStatus, Resp, ServiceStatus,
};
pub use protocols::{h2c_get, upgrade_echo, Upgraded};
pub use rouse_stack::procfs::{kill_pids, replica_pids, unique_marker};
pub use rouse_stack::{
    bin, free_addr, free_port, tail, Config, NatsServer, Proc, ProxyNode, Service, MARKER_ENV,
    POLL_INTERVAL,
};

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `true`; panics
/// with `desc` when `timeout` passes first. A single evaluation that hangs is
/// cut off at the deadline too.
pub async fn wait_until<F, Fut>(desc: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let res = rouse_stack::poll(timeout, || {
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
    match rouse_stack::poll(timeout, probe).await {
        Some(value) => value,
        None => panic!("timed out after {timeout:?} waiting until {desc}"),
    }
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
}
