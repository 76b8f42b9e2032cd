//! `rouse-coldstart`: measures cold starts through an already running stack.
//!
//! Each cycle waits (polling the controller's `/api/v1/services`) until the
//! service is at zero replicas, sends one `GET` through the proxy on a fresh
//! connection, and splits the time to the response headers into:
//!
//! ```text
//! t_send ──wake──▶ started_at ──replica_ready──▶ ready_at ──overhead──▶ t_first_byte
//! └──────────────────────────── ttfb ───────────────────────────────────┘
//! ```
//!
//! - `wake_ms` = `started_at_us − t_send`: proxy hold + wake over NATS +
//!   controller decision + the backend's spawn call;
//! - `replica_ready_ms` = `ready_at_us − started_at_us`: the replica's own
//!   boot until its first passing readiness probe;
//! - `overhead_ms` = `t_first_byte − ready_at_us`: KV publish, watch delivery
//!   to the proxy, release of the held request, forward and response.
//!
//! `started_at_us` / `ready_at_us` come from the controller's status API and
//! the client's stamps from the wall clock of the same machine, so the
//! differences are meaningful only when all run on one host.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use rouse_stack::{Service, StackBuilder};
use serde::Serialize;

use crate::live::StackArgs;
use crate::results::{
    measure_each, micros_between, now_us, render, summaries, Machine, Metric, Output, Summary,
};
use crate::status::{Controller, ReplicaStatus};

/// Header the proxy puts on responses to requests it held.
pub const COLD_START_HEADER: &str = "x-rouse-cold-start";
/// How long to look for the replica that answered in the status API after
/// the response (the status board is written just after the endpoint set is
/// published, so the proxy can in principle be faster than it).
const REPLICA_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bodies larger than this are cut (only the replica id is needed).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Command line of `rouse-coldstart`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rouse-coldstart",
    version,
    about = "Cold-start benchmark against a running rouse stack"
)]
pub struct Args {
    /// The proxy's data port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub proxy: SocketAddr,

    /// Host header of the requests.
    #[arg(long, default_value = "echo.localhost")]
    pub host: String,

    /// The controller's admin address (serves /api/v1/services).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub controller: SocketAddr,

    /// Name of the service behind --host.
    #[arg(long, default_value = "echo")]
    pub service: String,

    /// Number of cold starts to measure.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,

    /// Path requested through the proxy.
    #[arg(long, default_value = "/")]
    pub path: String,

    /// Longest wait, each cycle, for the service to return to zero replicas.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Longest wait for the response to the cold request (its body included).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Write the cycles, the summary and machine information here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// With --start-stack: run the service as containers of this image
    /// (one holding rouse-echo, e.g. the rouse image) on the engine at
    /// `DOCKER_HOST`, instead of local processes.
    #[arg(long)]
    pub docker_image: Option<String>,

    #[command(flatten)]
    pub stack: StackArgs,
}

/// The stack `--start-stack` starts: one service behind --host that scales
/// to zero 1 s after its last request, at most one replica, fast reports.
fn stack(args: &Args) -> anyhow::Result<StackBuilder> {
    let mut echo = Service::new(&args.service, &args.host);
    if let Some(image) = &args.docker_image {
        let image = serde_json::to_string(image)?;
        echo = echo.docker(&[
            ("image", &image),
            ("command", "[rouse-echo]"),
            ("args", "[--bind, 0.0.0.0, --port, \"8080\"]"),
            ("port", "8080"),
            ("address", "container"),
            ("pull", "never"),
            ("healthcheck", "false"),
        ]);
    }
    let echo = echo
        .max_replicas(1)
        .scale_to_zero_after("1s")
        .scaling("stable_window", "1s")
        .scaling("panic_window", "100ms");
    Ok(args
        .stack
        .builder(args.proxy, args.controller)?
        .report_interval("200ms")
        .service(echo))
}

/// The replica id in a `rouse-echo` greeting, `handled by <id>`.
pub(crate) fn replica_from_body(body: &str) -> Option<&str> {
    body.trim()
        .strip_prefix("handled by ")
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

// --- one cycle -----------------------------------------------------------------

/// One measured cold start. Timestamps are µs since the epoch; durations ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Cycle {
    pub cycle: u32,
    /// How long this cycle waited for the service to be at zero.
    pub zero_wait_ms: f64,
    pub status: Option<u16>,
    pub cold_start_header: bool,
    pub replica: Option<String>,
    pub t_send_us: Option<u64>,
    pub t_first_byte_us: Option<u64>,
    pub started_at_us: Option<u64>,
    pub ready_at_us: Option<u64>,
    pub ttfb_ms: Option<f64>,
    /// The full response, body included.
    pub total_ms: Option<f64>,
    pub wake_ms: Option<f64>,
    pub replica_ready_ms: Option<f64>,
    pub overhead_ms: Option<f64>,
    /// Why this cycle does not count; `None` for a good cold start.
    pub error: Option<String>,
}

impl Cycle {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Fills in the derived durations from the four timestamps.
    fn derive(&mut self) {
        let ms = |from: Option<u64>, to: Option<u64>| Some(micros_between(from?, to?));
        self.ttfb_ms = ms(self.t_send_us, self.t_first_byte_us);
        self.wake_ms = ms(self.t_send_us, self.started_at_us);
        self.replica_ready_ms = ms(self.started_at_us, self.ready_at_us);
        self.overhead_ms = ms(self.ready_at_us, self.t_first_byte_us);
    }
}

/// Summaries of the good cycles, one per metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    pub cycles: usize,
    pub ok: usize,
    pub errors: usize,
    pub missing_cold_start_header: usize,
    pub ttfb_ms: Option<Summary>,
    pub wake_ms: Option<Summary>,
    pub replica_ready_ms: Option<Summary>,
    pub overhead_ms: Option<Summary>,
    pub total_ms: Option<Summary>,
}

/// Metric names and accessors, in the order they are printed.
const METRICS: [Metric<Cycle>; 5] = [
    ("ttfb_ms", |c| c.ttfb_ms),
    ("wake_ms", |c| c.wake_ms),
    ("replica_ready_ms", |c| c.replica_ready_ms),
    ("overhead_ms", |c| c.overhead_ms),
    ("total_ms", |c| c.total_ms),
];

impl Report {
    pub fn of(cycles: &[Cycle]) -> Self {
        let good: Vec<&Cycle> = cycles.iter().filter(|c| c.ok()).collect();
        let [ttfb, wake, ready, overhead, total] = summaries(&METRICS, &good);
        Self {
            cycles: cycles.len(),
            ok: good.len(),
            errors: cycles.len() - good.len(),
            missing_cold_start_header: cycles
                .iter()
                .filter(|c| c.status.is_some() && !c.cold_start_header)
                .count(),
            ttfb_ms: ttfb.1,
            wake_ms: wake.1,
            replica_ready_ms: ready.1,
            overhead_ms: overhead.1,
            total_ms: total.1,
        }
    }

    fn metrics(&self) -> [(&'static str, Option<Summary>); 5] {
        [
            (METRICS[0].0, self.ttfb_ms),
            (METRICS[1].0, self.wake_ms),
            (METRICS[2].0, self.replica_ready_ms),
            (METRICS[3].0, self.overhead_ms),
            (METRICS[4].0, self.total_ms),
        ]
    }

    /// The summary table.
    pub fn render(&self) -> String {
        let mut out = render(&self.metrics(), 2, true);
        let _ = writeln!(
            out,
            "cycles: {}  ok: {}  errors: {}  missing {COLD_START_HEADER}: {}",
            self.cycles, self.ok, self.errors, self.missing_cold_start_header
        );
        out
    }
}

/// Header of the per-cycle table.
pub(crate) fn table_header() -> String {
    format!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<12} {}",
        "cycle", "zero_wait", "ttfb", "wake", "ready", "overhead", "total", "replica", "result"
    )
}

/// One row of the per-cycle table (durations in ms).
pub(crate) fn table_row(c: &Cycle) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    format!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<12} {}",
        c.cycle,
        format!("{:.0}", c.zero_wait_ms),
        ms(c.ttfb_ms),
        ms(c.wake_ms),
        ms(c.replica_ready_ms),
        ms(c.overhead_ms),
        ms(c.total_ms),
        c.replica.as_deref().unwrap_or("-"),
        c.error.as_deref().unwrap_or("ok"),
    )
}

// --- HTTP ----------------------------------------------------------------------

/// A response read on a fresh connection, with the client's wall-clock stamps.
#[derive(Debug)]
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Just before the request was written (after the connect).
    sent_us: u64,
    /// When the response headers were parsed.
    first_byte_us: u64,
    /// When the whole body was read.
    done_us: u64,
}

/// `GET path` with `Host: host` on a fresh HTTP/1.1 connection to `addr`.
async fn get(addr: SocketAddr, host: &str, path: &str, limit: Duration) -> anyhow::Result<Fetched> {
    match tokio::time::timeout(limit, get_unbounded(addr, host, path)).await {
        Ok(result) => result,
        Err(_) => bail!(
            "no complete response within {}",
            humantime::format_duration(limit)
        ),
    }
}

async fn get_unbounded(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<Fetched> {
    let (mut sender, connection) = crate::client::connect(addr).await?;
    let driver = tokio::spawn(connection);
    let request = crate::client::get(host, path, "rouse-coldstart")?;
    let sent_us = now_us();
    let result = sender.send_request(request).await;
    let first_byte_us = now_us();
    let response = result.with_context(|| format!("GET http://{host}{path} via {addr}"))?;
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|err| anyhow!("reading the response body from {addr}: {err}"))?
        .to_bytes();
    let done_us = now_us();
    drop(sender);
    driver.abort();
    Ok(Fetched {
        status: parts.status,
        headers: parts.headers,
        body,
        sent_us,
        first_byte_us,
        done_us,
    })
}

/// The replica `id` of `service` once it has a `ready_at_us`, polling for
/// up to [`REPLICA_LOOKUP_TIMEOUT`].
async fn ready_replica(
    controller: &Controller,
    service: &str,
    id: &str,
) -> anyhow::Result<ReplicaStatus> {
    let start = Instant::now();
    loop {
        let status = controller.service(service).await?;
        let found = status.replica(id);
        if let Some(replica) = found.filter(|r| r.ready_at_us.is_some()) {
            return Ok(replica.clone());
        }
        if start.elapsed() >= REPLICA_LOOKUP_TIMEOUT {
            bail!(match found {
                Some(r) => format!("replica {id} has no ready_at_us (state {})", r.state),
                None => format!("replica {id} is not in the controller's status"),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Measures one cold start. Only a failure to wait for zero is an `Err`;
/// everything else is recorded in the cycle's `error`.
pub(crate) async fn run_cycle(
    args: &Args,
    controller: &Controller,
    n: u32,
) -> anyhow::Result<Cycle> {
    let zero_wait = controller
        .wait_for(
            &args.service,
            "return to zero replicas",
            args.idle_timeout,
            |s| s.is_at_zero(),
        )
        .await
        .with_context(|| format!("cycle {n}"))?;
    let mut cycle = Cycle {
        cycle: n,
        zero_wait_ms: zero_wait.as_secs_f64() * 1000.0,
        ..Cycle::default()
    };
    if let Err(err) = measure(args, controller, &mut cycle).await {
        cycle.error = Some(format!("{err:#}"));
    }
    cycle.derive();
    Ok(cycle)
}

async fn measure(args: &Args, controller: &Controller, cycle: &mut Cycle) -> anyhow::Result<()> {
    let fetched = get(args.proxy, &args.host, &args.path, args.request_timeout)
        .await
        .context("cold request through the proxy")?;
    cycle.status = Some(fetched.status.as_u16());
    cycle.t_send_us = Some(fetched.sent_us);
    cycle.t_first_byte_us = Some(fetched.first_byte_us);
    cycle.total_ms = Some(micros_between(fetched.sent_us, fetched.done_us));
    cycle.cold_start_header = fetched
        .headers
        .get(COLD_START_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let body = String::from_utf8_lossy(&fetched.body);
    cycle.replica = replica_from_body(&body).map(str::to_owned);
    if fetched.status != StatusCode::OK {
        bail!("status {} (body: {:.200})", fetched.status, body.trim());
    }
    let Some(id) = cycle.replica.clone() else {
        bail!(
            "body is not `handled by <replica id>`: {:.200}",
            body.trim()
        );
    };
    let replica = ready_replica(controller, &args.service, &id)
        .await
        .context("looking up the replica that answered")?;
    cycle.started_at_us = Some(replica.started_at_us);
    cycle.ready_at_us = replica.ready_at_us;
    if !cycle.cold_start_header {
        bail!("no `{COLD_START_HEADER}: true` header (the request was not held)");
    }
    Ok(())
}

// --- the whole run -------------------------------------------------------------

/// What the benchmark was pointed at.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setup {
    pub proxy: String,
    pub host: String,
    pub controller: String,
    pub service: String,
    pub path: String,
    pub cycles: u32,
    pub idle_timeout: String,
}

/// Runs the benchmark: prints each cycle as it completes, then the summary,
/// and writes `--json`. Fails when a cycle cannot start (the service does not
/// return to zero) or when no cycle succeeded; the results so far are still
/// printed and written.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if !args.path.starts_with('/') {
        bail!("--path must start with '/', got {:?}", args.path);
    }
    let stack = stack(&args)?;
    args.stack
        .run("rouse-coldstart", stack, measure_all(&args))
        .await
}

async fn measure_all(args: &Args) -> anyhow::Result<()> {
    let controller = Controller::new(args.controller);
    controller
        .service(&args.service)
        .await
        .context("checking the service before the first cycle")?;
    println!(
        "rouse-coldstart: {} cycles of GET http://{}{} via {} (service {:?}, controller {})",
        args.cycles, args.host, args.path, args.proxy, args.service, args.controller
    );
    println!("{}", table_header());

    let (cycles, aborted) =
        measure_each(args.cycles, |n| run_cycle(args, &controller, n), table_row).await;

    let report = Report::of(&cycles);
    println!();
    print!("{}", report.render());
    Output {
        benchmark: "coldstart",
        setup: Setup {
            proxy: args.proxy.to_string(),
            host: args.host.clone(),
            controller: args.controller.to_string(),
            service: args.service.clone(),
            path: args.path.clone(),
            cycles: args.cycles,
            idle_timeout: humantime::format_duration(args.idle_timeout).to_string(),
        },
        machine: Machine::detect_and_print(),
        aborted: aborted.clone(),
        summary: &report,
        items: serde_json::json!({ "cycles": cycles }),
    }
    .write(args.json.as_deref())?;
    if let Some(reason) = aborted {
        bail!(
            "stopped after {} of {} cycles: {reason}",
            cycles.len(),
            args.cycles
        );
    }
    if report.ok == 0 {
        bail!("no cycle measured a good cold start");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_replica_in_the_greeting() {
        assert_eq!(replica_from_body("handled by echo-3"), Some("echo-3"));
        assert_eq!(replica_from_body("handled by 4242\n"), Some("4242"));
        assert_eq!(replica_from_body("handled by "), None);
        assert_eq!(replica_from_body("hello"), None);
    }

    #[test]
    fn cycles_derive_their_durations_and_errors_are_left_out() {
        let mut good = Cycle {
            cycle: 1,
            status: Some(200),
            cold_start_header: true,
            t_send_us: Some(1_000_000),
            started_at_us: Some(1_002_000),
            ready_at_us: Some(1_010_500),
            t_first_byte_us: Some(1_011_000),
            ..Cycle::default()
        };
        good.derive();
        assert_eq!(good.ttfb_ms, Some(11.0));
        assert_eq!(good.wake_ms, Some(2.0));
        assert_eq!(good.replica_ready_ms, Some(8.5));
        assert_eq!(good.overhead_ms, Some(0.5));

        let mut warm = Cycle {
            cycle: 2,
            status: Some(200),
            t_send_us: Some(0),
            t_first_byte_us: Some(500_000),
            error: Some("no header".into()),
            ..Cycle::default()
        };
        warm.derive();
        let report = Report::of(&[good, warm]);
        assert_eq!((report.cycles, report.ok, report.errors), (2, 1, 1));
        assert_eq!(report.missing_cold_start_header, 1);
        let ttfb = report.ttfb_ms.expect("ttfb");
        assert_eq!((ttfb.n, ttfb.median, ttfb.max), (1, 11.0, 11.0));
        assert!(report.render().contains("replica_ready_ms"));
    }

    #[test]
    fn parses_the_command_line() {
        let args = Args::try_parse_from([
            "rouse-coldstart",
            "--proxy",
            "127.0.0.1:28080",
            "--controller",
            "127.0.0.1:29091",
            "--idle-timeout",
            "90s",
        ])
        .expect("valid args");
        assert_eq!(args.cycles, 30);
        assert_eq!(args.path, "/");
        assert_eq!(args.host, "echo.localhost");
        assert_eq!(args.idle_timeout, Duration::from_secs(90));
        assert!(args.json.is_none());
        assert!(Args::try_parse_from(["rouse-coldstart", "--cycles", "0"]).is_err());
    }
}
