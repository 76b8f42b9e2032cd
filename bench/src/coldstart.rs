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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// Header the proxy puts on responses to requests it held.
pub const COLD_START_HEADER: &str = "x-rouse-cold-start";
/// Path of the controller's status API.
pub const STATUS_PATH: &str = "/api/v1/services";
/// Interval between two polls of the status API.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Time one status API request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
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
}

// --- the controller's status API ---------------------------------------------

/// `GET /api/v1/services`: `{"services": [...]}`. Fields this tool does not
/// use are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Listing {
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub desired: u32,
    pub ready: u32,
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Requests held by the live proxies, summed (controller's view).
    #[serde(default)]
    pub held: u64,
    /// Requests in flight at the live proxies, summed (controller's view).
    #[serde(default)]
    pub in_flight: u64,
    /// The latest change of the replica count.
    #[serde(default)]
    pub last_scale: Option<ScaleEvent>,
}

/// A change of a service's replica count, as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ScaleEvent {
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// When the controller recorded it, ms since the epoch.
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ReplicaStatus {
    pub id: String,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub state: String,
    /// When the controller asked the backend for it, µs since the epoch.
    pub started_at_us: u64,
    /// Its first passing readiness probe, µs since the epoch.
    #[serde(default)]
    pub ready_at_us: Option<u64>,
}

impl Listing {
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The service names, comma-separated (`none` when there is none).
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

impl ServiceStatus {
    /// No ready replica and none starting, draining or stopping.
    pub fn is_at_zero(&self) -> bool {
        self.ready == 0 && self.replicas.is_empty()
    }

    pub fn replica(&self, id: &str) -> Option<&ReplicaStatus> {
        self.replicas.iter().find(|r| r.id == id)
    }
}

/// Parses the body of `/api/v1/services`.
pub fn parse_status(body: &[u8]) -> anyhow::Result<Listing> {
    serde_json::from_slice(body).context("parsing the controller's /api/v1/services JSON")
}

/// The replica id in a `rouse-echo` greeting, `handled by <id>`.
pub fn replica_from_body(body: &str) -> Option<&str> {
    body.trim()
        .strip_prefix("handled by ")
        .map(str::trim)
        .filter(|id| !id.is_empty())
}

// --- statistics ----------------------------------------------------------------

/// Nearest-rank percentile of ascending `sorted` values: the value at rank
/// `ceil(p/100 · n)` (at least 1). `None` when there are no values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// Distribution of one metric, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Summary of `values` (in any order); `None` when empty. NaNs are ignored.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(Summary {
        n,
        median: percentile(&sorted, 50.0)?,
        p90: percentile(&sorted, 90.0)?,
        p99: percentile(&sorted, 99.0)?,
        min: *sorted.first()?,
        max: *sorted.last()?,
        mean: sorted.iter().sum::<f64>() / n as f64,
    })
}

// --- one cycle -----------------------------------------------------------------

/// One measured cold start. Timestamps are µs since the epoch; durations ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Cycle {
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

/// `to − from` in milliseconds, negative when `to` is earlier.
pub fn micros_between(from: u64, to: u64) -> f64 {
    (i128::from(to) - i128::from(from)) as f64 / 1000.0
}

/// Summaries of the good cycles, one per metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
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
type Metric = (&'static str, fn(&Cycle) -> Option<f64>);
const METRICS: [Metric; 5] = [
    ("ttfb_ms", |c| c.ttfb_ms),
    ("wake_ms", |c| c.wake_ms),
    ("replica_ready_ms", |c| c.replica_ready_ms),
    ("overhead_ms", |c| c.overhead_ms),
    ("total_ms", |c| c.total_ms),
];

impl Report {
    pub fn of(cycles: &[Cycle]) -> Self {
        let good: Vec<&Cycle> = cycles.iter().filter(|c| c.ok()).collect();
        let metric = |get: fn(&Cycle) -> Option<f64>| {
            summarize(&good.iter().filter_map(|c| get(c)).collect::<Vec<_>>())
        };
        Self {
            cycles: cycles.len(),
            ok: good.len(),
            errors: cycles.len() - good.len(),
            missing_cold_start_header: cycles
                .iter()
                .filter(|c| c.status.is_some() && !c.cold_start_header)
                .count(),
            ttfb_ms: metric(METRICS[0].1),
            wake_ms: metric(METRICS[1].1),
            replica_ready_ms: metric(METRICS[2].1),
            overhead_ms: metric(METRICS[3].1),
            total_ms: metric(METRICS[4].1),
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
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "metric (ms)", "n", "median", "p90", "p99", "min", "max", "mean"
        );
        for (name, summary) in self.metrics() {
            match summary {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "{name:<18} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                        s.n, s.median, s.p90, s.p99, s.min, s.max, s.mean
                    );
                }
                None => {
                    let _ = writeln!(out, "{name:<18} {:>5} (no data)", 0);
                }
            }
        }
        let _ = writeln!(
            out,
            "cycles: {}  ok: {}  errors: {}  missing {COLD_START_HEADER}: {}",
            self.cycles, self.ok, self.errors, self.missing_cold_start_header
        );
        out
    }
}

/// Header of the per-cycle table.
pub fn table_header() -> String {
    format!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<12} {}",
        "cycle", "zero_wait", "ttfb", "wake", "ready", "overhead", "total", "replica", "result"
    )
}

/// One row of the per-cycle table (durations in ms).
pub fn table_row(c: &Cycle) -> String {
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

/// Microseconds since the Unix epoch on the wall clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
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
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "rouse-coldstart")
        .body(Empty::new())
        .with_context(|| format!("building GET {path} for host {host}"))?;
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

/// Client of the controller's status API.
#[derive(Debug, Clone)]
pub struct Controller {
    addr: SocketAddr,
}

impl Controller {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// One `GET /api/v1/services`, parsed.
    pub async fn status(&self) -> anyhow::Result<Listing> {
        let host = self.addr.to_string();
        let fetched = get(self.addr, &host, STATUS_PATH, STATUS_TIMEOUT)
            .await
            .with_context(|| format!("asking the controller at {} for its status", self.addr))?;
        if fetched.status != StatusCode::OK {
            bail!(
                "controller at {} answered {} to GET {STATUS_PATH}: {}",
                self.addr,
                fetched.status,
                String::from_utf8_lossy(&fetched.body).trim()
            );
        }
        parse_status(&fetched.body)
    }

    /// The status of `service`; an error names the services there are.
    pub async fn service(&self, service: &str) -> anyhow::Result<ServiceStatus> {
        let listing = self.status().await?;
        match listing.service(service) {
            Some(status) => Ok(status.clone()),
            None => bail!(
                "the controller at {} has no service {service:?} (it has: {})",
                self.addr,
                listing.names()
            ),
        }
    }

    /// Polls every [`POLL_INTERVAL`] until `service` is at zero replicas;
    /// returns how long that took. Transient errors are retried within
    /// `limit`; the last one is reported if time runs out.
    pub async fn wait_for_zero(&self, service: &str, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let last = match self.service(service).await {
                Ok(status) if status.is_at_zero() => return Ok(start.elapsed()),
                Ok(status) => {
                    format!(
                        "ready={} desired={} replicas=[{}]",
                        status.ready,
                        status.desired,
                        status
                            .replicas
                            .iter()
                            .map(|r| format!("{}:{}", r.id, r.state))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
                Err(err) => format!("{err:#}"),
            };
            if start.elapsed() >= limit {
                bail!(
                    "service {service:?} did not return to zero replicas within {} (last seen: {last})",
                    humantime::format_duration(limit)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The replica `id` of `service` once it has a `ready_at_us`, polling for
    /// up to [`REPLICA_LOOKUP_TIMEOUT`].
    async fn ready_replica(&self, service: &str, id: &str) -> anyhow::Result<ReplicaStatus> {
        let start = Instant::now();
        loop {
            let status = self.service(service).await?;
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
}

/// Measures one cold start. Only a failure to wait for zero is an `Err`;
/// everything else is recorded in the cycle's `error`.
pub async fn run_cycle(args: &Args, controller: &Controller, n: u32) -> anyhow::Result<Cycle> {
    let zero_wait = controller
        .wait_for_zero(&args.service, args.idle_timeout)
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
    let replica = controller
        .ready_replica(&args.service, &id)
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

/// Where a benchmark ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// RFC 3339, UTC.
    pub date: String,
}

impl Machine {
    pub fn detect() -> Self {
        let nproc = std::thread::available_parallelism().map_or(0, usize::from);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let date = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        Self {
            nproc,
            cpu_model,
            kernel,
            date,
        }
    }
}

impl Machine {
    /// [`Machine::detect`], printed on one line under a result table.
    pub fn detect_and_print() -> Self {
        let machine = Self::detect();
        println!(
            "machine: {} cpus, {}, kernel {}, {}",
            machine.nproc, machine.cpu_model, machine.kernel, machine.date
        );
        machine
    }
}

/// Runs `measure` for 1..=`count`, printing each result's table row as it
/// comes. Stops at the first error, returned as the reason the run was cut
/// short, with the results so far.
pub async fn measure_each<T, Fut>(
    count: u32,
    mut measure: impl FnMut(u32) -> Fut,
    row: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>)
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut results = Vec::new();
    for n in 1..=count {
        match measure(n).await {
            Ok(result) => {
                println!("{}", row(&result));
                results.push(result);
            }
            Err(err) => return (results, Some(format!("{err:#}"))),
        }
    }
    (results, None)
}

/// The `model name` of the first CPU in `/proc/cpuinfo`.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        let key = key.trim();
        (key == "model name" || key == "Model" || key == "cpu model")
            .then(|| value.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

/// What the benchmark was pointed at.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub proxy: String,
    pub host: String,
    pub controller: String,
    pub service: String,
    pub path: String,
    pub cycles: u32,
    pub idle_timeout: String,
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Output<'a> {
    pub benchmark: &'static str,
    pub setup: Setup,
    pub machine: Machine,
    /// Set when the run stopped early.
    pub aborted: Option<String>,
    pub summary: &'a Report,
    pub cycles: &'a [Cycle],
}

/// Writes `output` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, output: &impl Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(output).context("serializing the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Runs the benchmark: prints each cycle as it completes, then the summary,
/// and writes `--json`. Fails when a cycle cannot start (the service does not
/// return to zero) or when no cycle succeeded; the results so far are still
/// printed and written.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    if !args.path.starts_with('/') {
        bail!("--path must start with '/', got {:?}", args.path);
    }
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
        measure_each(args.cycles, |n| run_cycle(&args, &controller, n), table_row).await;

    let report = Report::of(&cycles);
    println!();
    print!("{}", report.render());
    let machine = Machine::detect_and_print();
    if let Some(path) = &args.json {
        let output = Output {
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
            machine,
            aborted: aborted.clone(),
            summary: &report,
            cycles: &cycles,
        };
        write_json(path, &output)?;
        println!("results written to {}", path.display());
    }
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
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "services": [
        {
          "name": "api",
          "backend": "docker",
          "desired": 2,
          "ready": 2,
          "replicas": [],
          "held": 0, "in_flight": 3, "proxies": 1,
          "last_scale": null, "last_error": null
        },
        {
          "name": "echo",
          "backend": "process",
          "desired": 1,
          "ready": 1,
          "replicas": [
            {"id": "echo-7", "addr": "127.0.0.1:40001", "state": "ready",
             "started_at_us": 1700000000000000, "ready_at_us": 1700000000012500},
            {"id": "echo-8", "addr": "127.0.0.1:40002", "state": "starting",
             "started_at_us": 1700000000020000, "ready_at_us": null}
          ],
          "held": 1, "in_flight": 0, "proxies": 1,
          "last_scale": {"from": 0, "to": 1, "reason": "wake", "at_ms": 1700000000000},
          "last_error": null
        }
      ]
    }"#;

    #[test]
    fn parses_the_status_api() {
        let listing = parse_status(SAMPLE.as_bytes()).expect("sample parses");
        assert_eq!(listing.services.len(), 2);
        let echo = listing.service("echo").expect("echo present");
        assert_eq!((echo.desired, echo.ready), (1, 1));
        assert!(!echo.is_at_zero());
        let ready = echo.replica("echo-7").expect("echo-7");
        assert_eq!(ready.addr, "127.0.0.1:40001");
        assert_eq!(ready.state, "ready");
        assert_eq!(ready.started_at_us, 1_700_000_000_000_000);
        assert_eq!(ready.ready_at_us, Some(1_700_000_000_012_500));
        assert_eq!(echo.replica("echo-8").and_then(|r| r.ready_at_us), None);
        assert!(echo.replica("nope").is_none());
        assert!(listing.service("missing").is_none());
        assert_eq!(listing.names(), "api, echo");
    }

    #[test]
    fn zero_means_nothing_ready_and_no_replica_at_all() {
        let mut listing = parse_status(SAMPLE.as_bytes()).expect("sample parses");
        let echo = &mut listing.services[1];
        echo.ready = 0;
        assert!(!echo.is_at_zero(), "a starting replica is not zero");
        echo.replicas.clear();
        assert!(echo.is_at_zero());
        let json = r#"{"services":[{"name":"x","desired":0,"ready":0}]}"#;
        let listing = parse_status(json.as_bytes()).expect("replicas may be absent");
        assert!(listing.services[0].is_at_zero());
    }

    #[test]
    fn rejects_malformed_status() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"services":[{"name":"x"}]}"#,
            r#"{"services":[{"name":"x","desired":0,"ready":0,"replicas":[{"id":"r"}]}]}"#,
            r#"{"services":[{"name":"x","desired":-1,"ready":0}]}"#,
        ] {
            let err = parse_status(bad.as_bytes()).expect_err(bad);
            assert!(format!("{err:#}").contains("/api/v1/services"), "{err:#}");
        }
    }

    #[test]
    fn finds_the_replica_in_the_greeting() {
        assert_eq!(replica_from_body("handled by echo-3"), Some("echo-3"));
        assert_eq!(replica_from_body("handled by 4242\n"), Some("4242"));
        assert_eq!(replica_from_body("handled by "), None);
        assert_eq!(replica_from_body("hello"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(5.0));
        assert_eq!(percentile(&sorted, 90.0), Some(9.0));
        assert_eq!(percentile(&sorted, 91.0), Some(10.0));
        assert_eq!(percentile(&sorted, 99.0), Some(10.0));
        assert_eq!(percentile(&sorted, 100.0), Some(10.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // n = 20: median is rank 10, p90 rank 18, p99 rank 20.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 50.0), Some(10.0));
        assert_eq!(percentile(&twenty, 90.0), Some(18.0));
        assert_eq!(percentile(&twenty, 99.0), Some(20.0));
    }

    #[test]
    fn summary_sorts_and_ignores_nan() {
        let s = summarize(&[30.0, 10.0, f64::NAN, 20.0, 40.0]).expect("values");
        assert_eq!(s.n, 4);
        assert_eq!(s.median, 20.0);
        assert_eq!(s.p90, 40.0);
        assert_eq!(s.p99, 40.0);
        assert_eq!(s.min, 10.0);
        assert_eq!(s.max, 40.0);
        assert_eq!(s.mean, 25.0);
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
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
    fn reads_the_cpu_model() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
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
