//! Readings taken at both ends of a measuring window: nats-server's message
//! counters and each rouse process's CPU time and resident memory.
//!
//! A window's figures are differences of two readings divided by the
//! window's wall time, so they say what the stack did *during* it, whatever
//! it did while starting up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rouse_stack::{http_get, procfs, Stack};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Time one `/varz` request may take.
const VARZ_TIMEOUT: Duration = Duration::from_secs(5);

/// nats-server's totals since it started (`/varz`).
#[derive(Debug, Clone, Copy)]
pub(super) struct BusCounters {
    /// Messages published by clients (rouse's reports, KV writes, API
    /// requests of JetStream).
    in_msgs: u64,
    in_bytes: u64,
    /// Messages delivered to clients.
    out_msgs: u64,
}

pub(super) async fn bus_counters(monitor: SocketAddr) -> anyhow::Result<BusCounters> {
    let (status, body) = http_get(monitor, "/varz", VARZ_TIMEOUT).await?;
    anyhow::ensure!(status == 200, "GET /varz answered {status}");
    let varz: Value = serde_json::from_str(&body).context("parsing /varz")?;
    let field = |name: &str| {
        varz.get(name)
            .and_then(Value::as_u64)
            .with_context(|| format!("/varz has no `{name}`"))
    };
    Ok(BusCounters {
        in_msgs: field("in_msgs")?,
        in_bytes: field("in_bytes")?,
        out_msgs: field("out_msgs")?,
    })
}

/// One process's CPU time and memory at one moment.
#[derive(Debug, Clone, Copy)]
struct ProcessReading {
    pid: u32,
    cpu_ticks: u64,
    rss_kib: u64,
}

fn read_process(pid: u32) -> anyhow::Result<ProcessReading> {
    let missing = || format!("cannot read /proc/{pid} (did the process exit?)");
    Ok(ProcessReading {
        pid,
        cpu_ticks: procfs::cpu_ticks(pid).with_context(missing)?,
        rss_kib: procfs::proc_status_kib(pid, "VmRSS").with_context(missing)?,
    })
}

/// Everything read at one end of a window.
pub(super) struct Reading {
    at: Instant,
    bus: BusCounters,
    controller: ProcessReading,
    proxies: Vec<ProcessReading>,
    nats: ProcessReading,
}

impl Reading {
    pub fn controller_rss_kib(&self) -> u64 {
        self.controller.rss_kib
    }

    /// The largest proxy's resident memory, KiB.
    pub fn max_proxy_rss_kib(&self) -> u64 {
        self.proxies.iter().map(|p| p.rss_kib).max().unwrap_or(0)
    }

    /// A reading with only these memory figures, for the report's tests.
    #[cfg(test)]
    pub fn fake(controller_kib: u64, proxy_kib: u64) -> Reading {
        let process = |rss_kib| ProcessReading {
            pid: 1,
            cpu_ticks: 0,
            rss_kib,
        };
        Reading {
            at: Instant::now(),
            bus: BusCounters {
                in_msgs: 0,
                in_bytes: 0,
                out_msgs: 0,
            },
            controller: process(controller_kib),
            proxies: vec![process(proxy_kib)],
            nats: process(0),
        }
    }
}

/// Reads the stack's counters now.
pub(super) async fn read(stack: &mut Stack) -> anyhow::Result<Reading> {
    let monitor = SocketAddr::from(([127, 0, 0, 1], stack.nats.monitor_port()));
    let bus = bus_counters(monitor).await?;
    let controller = read_process(stack.controller_proc().pid())?;
    let nats = read_process(stack.nats.proc_mut().pid())?;
    let proxies = (0..stack.proxies.len())
        .map(|i| read_process(stack.proxy_proc(i).pid()))
        .collect::<anyhow::Result<_>>()?;
    Ok(Reading {
        at: Instant::now(),
        bus,
        controller,
        proxies,
        nats,
    })
}

/// What happened between two readings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Window {
    pub seconds: f64,
    /// Client messages into nats-server per second.
    pub bus_in_msgs_per_s: f64,
    pub bus_in_bytes_per_s: f64,
    /// Messages nats-server delivered per second.
    pub bus_out_msgs_per_s: f64,
    /// Percent of one core.
    pub controller_cpu_percent: f64,
    /// Percent of one core, each proxy.
    pub proxy_cpu_percent: Vec<f64>,
    pub nats_cpu_percent: f64,
    /// At the end of the window.
    pub controller_rss_kib: u64,
    pub proxy_rss_kib: Vec<u64>,
    pub nats_rss_kib: u64,
}

impl Window {
    pub fn between(start: &Reading, end: &Reading) -> Window {
        let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-3);
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        let ticks = procfs::clock_ticks_per_second() as f64;
        let cpu = |a: &ProcessReading, b: &ProcessReading| {
            debug_assert_eq!(a.pid, b.pid);
            b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / ticks / seconds * 100.0
        };
        Window {
            seconds,
            bus_in_msgs_per_s: per_s(start.bus.in_msgs, end.bus.in_msgs),
            bus_in_bytes_per_s: per_s(start.bus.in_bytes, end.bus.in_bytes),
            bus_out_msgs_per_s: per_s(start.bus.out_msgs, end.bus.out_msgs),
            controller_cpu_percent: cpu(&start.controller, &end.controller),
            proxy_cpu_percent: start
                .proxies
                .iter()
                .zip(&end.proxies)
                .map(|(a, b)| cpu(a, b))
                .collect(),
            nats_cpu_percent: cpu(&start.nats, &end.nats),
            controller_rss_kib: end.controller.rss_kib,
            proxy_rss_kib: end.proxies.iter().map(|p| p.rss_kib).collect(),
            nats_rss_kib: end.nats.rss_kib,
        }
    }

    /// The busiest proxy's CPU, percent of one core.
    pub fn max_proxy_cpu_percent(&self) -> f64 {
        self.proxy_cpu_percent.iter().copied().fold(0.0, f64::max)
    }

    /// The largest proxy's resident memory, KiB.
    pub fn max_proxy_rss_kib(&self) -> u64 {
        self.proxy_rss_kib.iter().copied().max().unwrap_or(0)
    }
}

/// Reads, waits `window`, reads again.
pub(super) async fn measure(stack: &mut Stack, window: Duration) -> anyhow::Result<Window> {
    let start = read(stack).await?;
    tokio::time::sleep(window).await;
    let end = read(stack).await?;
    Ok(Window::between(&start, &end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, msgs: u64, ticks: u64) -> Reading {
        let process = |pid| ProcessReading {
            pid,
            cpu_ticks: ticks,
            rss_kib: 1000 + u64::from(pid),
        };
        Reading {
            at,
            bus: BusCounters {
                in_msgs: msgs,
                in_bytes: msgs * 100,
                out_msgs: msgs * 2,
            },
            controller: process(1),
            proxies: vec![process(2), process(3)],
            nats: process(4),
        }
    }

    #[test]
    fn a_window_is_the_difference_per_second() {
        let t0 = Instant::now();
        let ticks = procfs::clock_ticks_per_second();
        // 10 s, 30 messages, a tenth of a second of CPU per process.
        let w = Window::between(
            &reading(t0, 100, 0),
            &reading(t0 + Duration::from_secs(10), 130, ticks / 10),
        );
        assert!((w.seconds - 10.0).abs() < 1e-9);
        assert!((w.bus_in_msgs_per_s - 3.0).abs() < 1e-9);
        assert!((w.bus_in_bytes_per_s - 300.0).abs() < 1e-9);
        assert!((w.bus_out_msgs_per_s - 6.0).abs() < 1e-9);
        assert!((w.controller_cpu_percent - 1.0).abs() < 1e-9);
        assert_eq!(w.proxy_cpu_percent.len(), 2);
        assert!((w.max_proxy_cpu_percent() - 1.0).abs() < 1e-9);
        assert_eq!(w.max_proxy_rss_kib(), 1003);
        assert_eq!(w.nats_rss_kib, 1004);
    }
}
