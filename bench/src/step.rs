//! `rouse-step`: how fast rouse decides to scale up after a load step.
//!
//! Each run waits (polling the controller's `/api/v1/services`) until the
//! service is quiet at one replica (`ready == desired == 1`, nothing starting
//! or draining, nothing in flight or held), waits a random `--jitter` (so the
//! step lands at a random phase of the proxy's reports and the controller's
//! tick; settling right after a report would otherwise lock it to one phase),
//! stamps `t0` and starts `--clients` concurrent clients, each sending
//! `GET --path` through the proxy in a loop on its own keep-alive connection.
//! In-flight requests jump from 0 to about `--clients` at `t0`. The status API
//! is then polled every 10 ms:
//!
//! ```text
//! t0 ──decision──▶ last_scale.at_ms ──▶ ready ≥ last_scale.to ──▶ ready ≥ peak desired
//!    (1 → n, n > 1)                       (scaled_up)               (full)
//! ```
//!
//! - `decision_ms` = `at_ms − t0`: the step decision is the first
//!   `last_scale` with `to > from`, `to > 1` and `at_ms ≥ t0` (ms
//!   resolution, stamped after the backend accepted the new replicas);
//! - `first_start_ms`: the earliest `started_at_us` of a replica started after
//!   `t0` (µs resolution, stamped just before the backend is asked), the same
//!   decision seen from the replicas;
//! - `scaled_up_ms`: `ready` reaches the step decision's `to`;
//! - `full_ms`: `ready` reaches the highest `desired` seen while the load ran
//!   (the autoscaler may raise the count again as its windows fill).
//!
//! The ready times come from the replicas' `ready_at_us`, so they do not
//! depend on the polling interval. Then the clients are told to stop, their
//! answers are counted (anything but 200 is reported) and the next run waits
//! for the service to come back down to one replica.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use rouse_stack::{Service, StackBuilder};
use serde::Serialize;

use crate::live::StackArgs;
use crate::results::{
    measure_each, micros_between, now_us, render, summaries, Machine, Metric, Output, Summary,
};
use crate::status::{Controller, ScaleEvent, ServiceStatus};

/// Interval between two polls while a step is being measured.
pub(crate) const STEP_POLL: Duration = Duration::from_millis(10);
/// Pause before a client reconnects after a failed request.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Command line of `rouse-step`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rouse-step",
    version,
    about = "Load-step → scale-decision benchmark against a running rouse stack"
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

    /// Number of load steps to measure.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// Concurrent clients started at t0 (10× target_concurrency 10 by default).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub clients: u32,

    /// Path each client requests in a loop.
    #[arg(long, default_value = "/sleep/1000")]
    pub path: String,

    /// How long the load runs at least (it also runs until the scale-up is
    /// complete, within --scale-timeout).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub load_for: Duration,

    /// Longest wait, after t0, for the step decision and for the replicas it
    /// asked for to be ready.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub scale_timeout: Duration,

    /// Once settled, wait a random time below this before the step, so the
    /// step does not land at the same phase of the proxy's periodic report
    /// and the controller's tick every run (0 turns it off).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub jitter: Duration,

    /// Longest wait, each run, for the service to settle at one replica.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,

    /// Longest time one request may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Most requests one client sends in one run.
    #[arg(long, default_value_t = 10_000)]
    pub max_requests_per_client: u64,

    /// Write the runs, the summary and machine information here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub stack: StackArgs,
}

/// The stack `--start-stack` starts: one service behind --host that never
/// goes to zero (one replica at least, up to 20, 10 in flight each), short
/// autoscaler windows, reports every 1 s (the default).
fn stack(args: &Args) -> anyhow::Result<StackBuilder> {
    let echo = Service::new(&args.service, &args.host)
        .min_replicas(1)
        .max_replicas(20)
        .scaling("stable_window", "5s")
        .scaling("panic_window", "2s")
        .scaling("scale_down_step", "1s")
        .drain_timeout("10s")
        .hold_max_requests(10_000);
    Ok(args
        .stack
        .builder(args.proxy, args.controller)?
        .report_interval("1s")
        .service(echo))
}

// --- what the status API says ------------------------------------------------------

/// Quiet at exactly one replica: one ready, one desired, nothing starting or
/// draining, and nothing in flight or held in the controller's view.
pub(crate) fn is_settled(status: &ServiceStatus) -> bool {
    status.ready == 1
        && status.desired == 1
        && !status
            .replicas
            .iter()
            .any(|r| r.state == "starting" || r.state == "draining")
        && status.in_flight == 0
        && status.held == 0
}

/// The scale-up the step at `t0_us` caused, if the status shows it: the
/// latest scale event going up, above one replica, at or after `t0_us`.
pub(crate) fn step_decision(status: &ServiceStatus, t0_us: u64) -> Option<&ScaleEvent> {
    status
        .last_scale
        .as_ref()
        .filter(|e| e.to > e.from && e.to > 1 && e.at_ms.saturating_mul(1000) >= t0_us)
}

/// The earliest `started_at_us` of a replica started at or after `t0_us`.
pub(crate) fn first_new_start(status: &ServiceStatus, t0_us: u64) -> Option<u64> {
    status
        .replicas
        .iter()
        .map(|r| r.started_at_us)
        .filter(|&at| at >= t0_us)
        .min()
}

/// When `ready` first reached `target`, if it has: replicas that were ready
/// and started before `t0_us` count from `t0_us`; of those started since,
/// the one that completed the count gives the time (its `ready_at_us`).
/// Falls back to `now_us` when the timestamps do not explain the count.
pub(crate) fn ready_reached(
    status: &ServiceStatus,
    target: u32,
    t0_us: u64,
    now_us: u64,
) -> Option<u64> {
    if status.ready < target {
        return None;
    }
    let ready = status.replicas.iter().filter(|r| r.state == "ready");
    let old_ready = ready.clone().filter(|r| r.started_at_us < t0_us).count();
    let mut new_ready: Vec<u64> = ready
        .filter(|r| r.started_at_us >= t0_us)
        .filter_map(|r| r.ready_at_us)
        .collect();
    new_ready.sort_unstable();
    let needed = (target as usize).saturating_sub(old_ready);
    if needed == 0 {
        return Some(t0_us);
    }
    Some(new_ready.get(needed - 1).copied().unwrap_or(now_us))
}

/// What one run saw, folded from successive status polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Progress {
    pub t0_us: u64,
    pub decision: Option<ScaleEvent>,
    /// When the poll first saw the decision.
    pub decision_seen_us: Option<u64>,
    pub first_start_us: Option<u64>,
    /// Highest `desired` seen since t0.
    pub peak_desired: u32,
    /// `ready` reached the step decision's `to`.
    pub scaled_up_us: Option<u64>,
    /// `ready` reached `peak_desired` (reset when it rises again).
    pub full_us: Option<u64>,
    /// Highest in-flight + held the controller reported since t0.
    pub peak_concurrency: u64,
}

impl Progress {
    pub fn new(t0_us: u64) -> Self {
        Self {
            t0_us,
            ..Self::default()
        }
    }

    /// Folds in one status seen at `now_us`.
    pub fn observe(&mut self, status: &ServiceStatus, now_us: u64) {
        let t0 = self.t0_us;
        if self.decision.is_none() {
            if let Some(event) = step_decision(status, t0) {
                self.decision = Some(event.clone());
                self.decision_seen_us = Some(now_us);
            }
        }
        if let Some(at) = first_new_start(status, t0) {
            self.first_start_us = Some(self.first_start_us.map_or(at, |seen| seen.min(at)));
        }
        self.peak_concurrency = self
            .peak_concurrency
            .max(status.in_flight.saturating_add(status.held));
        if status.desired > self.peak_desired {
            self.peak_desired = status.desired;
            self.full_us = None;
        }
        if let Some(to) = self.decision.as_ref().map(|d| d.to) {
            if self.scaled_up_us.is_none() {
                self.scaled_up_us = ready_reached(status, to, t0, now_us);
            }
        }
        if self.decision.is_some() && self.full_us.is_none() {
            self.full_us = ready_reached(status, self.peak_desired, t0, now_us);
        }
    }

    /// The decision was seen and the replicas it asked for are ready.
    pub fn scaled_up(&self) -> bool {
        self.scaled_up_us.is_some()
    }

    /// Everything the last status asked for is ready.
    pub fn full(&self) -> bool {
        self.full_us.is_some()
    }
}

// --- the load --------------------------------------------------------------------

/// What the clients got back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Tally {
    /// Requests that got an answer or failed.
    pub requests: u64,
    pub ok: u64,
    /// Answers other than 200, by status code.
    pub non_200: BTreeMap<u16, u64>,
    /// Requests that got no answer (connect, reset, timeout).
    pub transport_errors: u64,
    /// The first transport error, for the report.
    pub first_error: Option<String>,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (code, n) in &other.non_200 {
            *self.non_200.entry(*code).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Requests that did not end in a 200.
    pub fn failed(&self) -> u64 {
        self.non_200.values().sum::<u64>() + self.transport_errors
    }

    fn note_error(&mut self, err: impl std::fmt::Display) {
        self.requests += 1;
        self.transport_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }
}

/// Where the clients send and for how long.
#[derive(Debug, Clone)]
struct Target {
    proxy: SocketAddr,
    host: String,
    path: String,
    request_timeout: Duration,
    max_requests: u64,
    deadline: Instant,
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let (sender, connection) = crate::client::connect(target.proxy).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on `sender`, body read to the end; the status code.
async fn exchange(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> anyhow::Result<u16> {
    sender.ready().await.context("connection closed")?;
    let request = crate::client::get(&target.host, &target.path, "rouse-step")?;
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status().as_u16();
    response
        .into_body()
        .collect()
        .await
        .context("reading the response body")?;
    Ok(status)
}

/// Sends `GET path` in a loop on one keep-alive connection (reconnecting
/// after a failure) until `stop`, the deadline or the request budget.
async fn client(target: Arc<Target>, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed)
        && Instant::now() < target.deadline
        && tally.requests < target.max_requests
    {
        let attempt = async {
            let mut s = match sender.take() {
                Some(s) => s,
                None => connect(&target).await?,
            };
            let status = exchange(&mut s, &target).await?;
            anyhow::Ok((s, status))
        };
        match tokio::time::timeout(target.request_timeout, attempt).await {
            Ok(Ok((s, status))) => {
                sender = Some(s);
                tally.requests += 1;
                if status == 200 {
                    tally.ok += 1;
                } else {
                    *tally.non_200.entry(status).or_default() += 1;
                }
            }
            Ok(Err(err)) => {
                tally.note_error(format!("{err:#}"));
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            Err(_) => {
                tally.note_error(format!(
                    "no answer within {}",
                    humantime::format_duration(target.request_timeout)
                ));
            }
        }
    }
    tally
}

// --- one run -----------------------------------------------------------------------

/// One measured load step. Timestamps are µs since the epoch; durations ms
/// after t0.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Run {
    pub run: u32,
    /// How long this run waited for the service to settle at one replica
    /// (the jitter included).
    pub settle_wait_ms: f64,
    /// The random wait between settling and the step.
    pub jitter_ms: f64,
    pub t0_us: u64,
    pub decision: Option<ScaleEvent>,
    /// `at_ms − t0` (at_ms has millisecond resolution).
    pub decision_ms: Option<f64>,
    /// When the 10 ms poll first saw the decision.
    pub decision_seen_ms: Option<f64>,
    /// The first replica started after t0 (µs resolution).
    pub first_start_ms: Option<f64>,
    /// `ready` reached the decision's `to`.
    pub scaled_up_ms: Option<f64>,
    /// Highest `desired` while the load ran, and when `ready` reached it.
    pub peak_desired: u32,
    pub full_ms: Option<f64>,
    /// Highest in flight + held the controller was told about.
    pub peak_concurrency: u64,
    /// How long the clients ran.
    pub load_ms: f64,
    pub tally: Tally,
    /// Why this run does not count; `None` when the decision was seen.
    pub error: Option<String>,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Fills in the derived figures from a run's progress.
    pub fn record(&mut self, progress: &Progress) {
        let t0 = progress.t0_us;
        self.t0_us = t0;
        let ms = |at: Option<u64>| at.map(|at| micros_between(t0, at));
        self.decision.clone_from(&progress.decision);
        self.decision_ms = ms(progress
            .decision
            .as_ref()
            .map(|e| e.at_ms.saturating_mul(1000)));
        self.decision_seen_ms = ms(progress.decision_seen_us);
        self.first_start_ms = ms(progress.first_start_us);
        self.scaled_up_ms = ms(progress.scaled_up_us);
        self.peak_desired = progress.peak_desired;
        self.full_ms = ms(progress.full_us);
        self.peak_concurrency = progress.peak_concurrency;
    }
}

/// A uniformly random duration in `[0, limit)` (zero when `limit` is zero).
pub(crate) fn random_below(limit: Duration) -> Duration {
    let micros = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
    if micros == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(fastrand::u64(..micros))
}

/// Measures one load step. Only a failure to settle is an `Err`; everything
/// else is recorded in the run's `error`.
pub(crate) async fn run_step(args: &Args, controller: &Controller, n: u32) -> anyhow::Result<Run> {
    let settled = || async {
        let what = "settle at one quiet replica";
        controller
            .wait_for(&args.service, what, args.settle_timeout, is_settled)
            .await
            .with_context(|| format!("run {n}"))
    };
    let mut settle = settled().await?;
    let jitter = random_below(args.jitter);
    if !jitter.is_zero() {
        tokio::time::sleep(jitter).await;
        settle += jitter + settled().await?;
    }
    let mut run = Run {
        run: n,
        settle_wait_ms: settle.as_secs_f64() * 1000.0,
        jitter_ms: jitter.as_secs_f64() * 1000.0,
        ..Run::default()
    };

    let started = Instant::now();
    let target = Arc::new(Target {
        proxy: args.proxy,
        host: args.host.clone(),
        path: args.path.clone(),
        request_timeout: args.request_timeout,
        max_requests: args.max_requests_per_client,
        deadline: started + args.load_for.max(args.scale_timeout) + args.request_timeout,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let t0_us = now_us();
    let clients: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client(Arc::clone(&target), Arc::clone(&stop))))
        .collect();

    let mut progress = Progress::new(t0_us);
    let mut last_error: Option<String>;
    loop {
        match controller.service(&args.service).await {
            Ok(status) => {
                progress.observe(&status, now_us());
                last_error = None;
            }
            Err(err) => last_error = Some(format!("{err:#}")),
        }
        let elapsed = started.elapsed();
        if elapsed >= args.load_for && progress.scaled_up() && progress.full() {
            break;
        }
        if elapsed >= args.scale_timeout {
            break;
        }
        tokio::time::sleep(STEP_POLL).await;
    }
    stop.store(true, Ordering::Relaxed);
    run.load_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut tally = Tally::default();
    for handle in clients {
        match tokio::time::timeout(args.request_timeout + Duration::from_secs(5), handle).await {
            Ok(Ok(t)) => tally.add(&t),
            Ok(Err(err)) => tally.note_error(format!("client task failed: {err}")),
            Err(_) => tally.note_error("client did not stop"),
        }
    }
    run.tally = tally;
    run.record(&progress);

    let timeout = humantime::format_duration(args.scale_timeout);
    run.error = if progress.decision.is_none() {
        Some(match last_error {
            Some(err) => format!("no scale-up decision within {timeout}; last poll: {err}"),
            None => format!("no scale-up decision within {timeout}"),
        })
    } else if !progress.scaled_up() {
        Some(format!(
            "the replicas of the decision were not ready within {timeout}"
        ))
    } else {
        None
    };
    Ok(run)
}

// --- the whole benchmark ---------------------------------------------------------

/// Summaries of the good runs, one per metric, and the clients' answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Report {
    pub runs: usize,
    pub ok: usize,
    pub errors: usize,
    pub decision_ms: Option<Summary>,
    pub first_start_ms: Option<Summary>,
    pub decision_seen_ms: Option<Summary>,
    pub scaled_up_ms: Option<Summary>,
    pub full_ms: Option<Summary>,
    /// All runs' client answers together.
    pub requests: Tally,
}

const METRICS: [Metric<Run>; 5] = [
    ("decision_ms", |r| r.decision_ms),
    ("first_start_ms", |r| r.first_start_ms),
    ("decision_seen_ms", |r| r.decision_seen_ms),
    ("scaled_up_ms", |r| r.scaled_up_ms),
    ("full_ms", |r| r.full_ms),
];

impl Report {
    pub fn of(runs: &[Run]) -> Self {
        let good: Vec<&Run> = runs.iter().filter(|r| r.ok()).collect();
        let [decision, first_start, seen, scaled_up, full] = summaries(&METRICS, &good);
        let mut requests = Tally::default();
        for run in runs {
            requests.add(&run.tally);
        }
        Self {
            runs: runs.len(),
            ok: good.len(),
            errors: runs.len() - good.len(),
            decision_ms: decision.1,
            first_start_ms: first_start.1,
            decision_seen_ms: seen.1,
            scaled_up_ms: scaled_up.1,
            full_ms: full.1,
            requests,
        }
    }

    fn metrics(&self) -> [(&'static str, Option<Summary>); 5] {
        [
            (METRICS[0].0, self.decision_ms),
            (METRICS[1].0, self.first_start_ms),
            (METRICS[2].0, self.decision_seen_ms),
            (METRICS[3].0, self.scaled_up_ms),
            (METRICS[4].0, self.full_ms),
        ]
    }

    /// The summary table.
    pub fn render(&self) -> String {
        let mut out = render(&self.metrics(), 1, false);
        let r = &self.requests;
        let _ = writeln!(
            out,
            "runs: {}  ok: {}  errors: {}  requests: {}  200: {}  non-200: {:?}  transport errors: {}",
            self.runs, self.ok, self.errors, r.requests, r.ok, r.non_200, r.transport_errors
        );
        if let Some(err) = &r.first_error {
            let _ = writeln!(out, "first transport error: {err}");
        }
        out
    }
}

/// Header of the per-run table.
pub(crate) fn table_header() -> String {
    format!(
        "{:>3} {:>7} {:>9} {:>9} {:>8} {:>9} {:>9} {:>6} {:>7} {:>6}  {}",
        "run",
        "settle",
        "decision",
        "1st_start",
        "seen",
        "scaled_up",
        "full",
        "step",
        "reqs",
        "failed",
        "result"
    )
}

/// One row of the per-run table (durations in ms).
pub(crate) fn table_row(r: &Run) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let step = r
        .decision
        .as_ref()
        .map_or_else(|| "-".to_string(), |d| format!("{}→{}", d.from, d.to));
    format!(
        "{:>3} {:>7} {:>9} {:>9} {:>8} {:>9} {:>9} {:>6} {:>7} {:>6}  {}",
        r.run,
        format!("{:.0}", r.settle_wait_ms),
        ms(r.decision_ms),
        ms(r.first_start_ms),
        ms(r.decision_seen_ms),
        ms(r.scaled_up_ms),
        ms(r.full_ms),
        step,
        r.tally.requests,
        r.tally.failed(),
        r.error.as_deref().unwrap_or("ok"),
    )
}

/// What the benchmark was pointed at.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setup {
    pub proxy: String,
    pub host: String,
    pub controller: String,
    pub service: String,
    pub path: String,
    pub runs: u32,
    pub clients: u32,
    pub load_for: String,
    pub jitter: String,
    pub scale_timeout: String,
    pub settle_timeout: String,
}

/// Runs the benchmark: prints each run as it completes, then the summary,
/// and writes `--json`. Fails when a run cannot start (the service does not
/// settle), when no run saw a decision, or when any client got an answer
/// other than 200; the results so far are still printed and written.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if !args.path.starts_with('/') {
        bail!("--path must start with '/', got {:?}", args.path);
    }
    let stack = stack(&args)?;
    args.stack
        .run("rouse-step", stack, measure_all(&args))
        .await
}

async fn measure_all(args: &Args) -> anyhow::Result<()> {
    let controller = Controller::new(args.controller);
    controller
        .service(&args.service)
        .await
        .context("checking the service before the first run")?;
    println!(
        "rouse-step: {} runs of a 0 → {} client step, GET http://{}{} via {} (service {:?}, controller {})",
        args.runs, args.clients, args.host, args.path, args.proxy, args.service, args.controller
    );
    println!("{}", table_header());

    let (runs, aborted) =
        measure_each(args.runs, |n| run_step(args, &controller, n), table_row).await;

    let report = Report::of(&runs);
    println!();
    print!("{}", report.render());
    let duration = |d| humantime::format_duration(d).to_string();
    Output {
        benchmark: "step",
        setup: Setup {
            proxy: args.proxy.to_string(),
            host: args.host.clone(),
            controller: args.controller.to_string(),
            service: args.service.clone(),
            path: args.path.clone(),
            runs: args.runs,
            clients: args.clients,
            load_for: duration(args.load_for),
            jitter: duration(args.jitter),
            scale_timeout: duration(args.scale_timeout),
            settle_timeout: duration(args.settle_timeout),
        },
        machine: Machine::detect_and_print(),
        aborted: aborted.clone(),
        summary: &report,
        items: serde_json::json!({ "runs": runs }),
    }
    .write(args.json.as_deref())?;
    if let Some(reason) = aborted {
        bail!(
            "stopped after {} of {} runs: {reason}",
            runs.len(),
            args.runs
        );
    }
    if report.ok == 0 {
        bail!("no run saw a scale-up decision");
    }
    if report.requests.failed() > 0 {
        bail!(
            "{} of {} requests did not get a 200",
            report.requests.failed(),
            report.requests.requests
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::parse_status;

    const T0_US: u64 = 1_700_000_000_000_000;

    /// The service one step after t0: the baseline replica, two new ones
    /// (one ready), and the decision 1 → 3 at t0 + 187 ms.
    const SAMPLE: &str = r#"{
      "services": [
        {
          "name": "echo",
          "backend": "process",
          "desired": 3,
          "ready": 2,
          "replicas": [
            {"id": "echo-1", "addr": "127.0.0.1:40001", "state": "ready",
             "started_at_us": 1699999990000000, "ready_at_us": null},
            {"id": "echo-2", "addr": "127.0.0.1:40002", "state": "ready",
             "started_at_us": 1700000000186400, "ready_at_us": 1700000000193000},
            {"id": "echo-3", "addr": "127.0.0.1:40003", "state": "starting",
             "started_at_us": 1700000000186400, "ready_at_us": null}
          ],
          "held": 0, "in_flight": 97, "proxies": 1,
          "last_scale": {"from": 1, "to": 3, "reason": "panic", "at_ms": 1700000000187},
          "last_error": null
        }
      ]
    }"#;

    fn sample() -> ServiceStatus {
        parse_status(SAMPLE.as_bytes())
            .expect("sample parses")
            .service("echo")
            .expect("echo")
            .clone()
    }

    fn settled() -> ServiceStatus {
        let mut s = sample();
        s.desired = 1;
        s.ready = 1;
        s.in_flight = 0;
        s.replicas.truncate(1);
        // The previous run's last scale-down.
        s.last_scale = Some(ScaleEvent {
            from: 2,
            to: 1,
            reason: "stable".into(),
            at_ms: 1_699_999_995_000,
        });
        s
    }

    #[test]
    fn parses_the_fields_a_step_needs() {
        let s = sample();
        assert_eq!((s.in_flight, s.held), (97, 0));
        let event = s.last_scale.as_ref().expect("last_scale");
        assert_eq!(
            (event.from, event.to, event.at_ms),
            (1, 3, 1_700_000_000_187)
        );
        assert_eq!(event.reason, "panic");
        let json = r#"{"services":[{"name":"x","desired":1,"ready":1}]}"#;
        let bare = parse_status(json.as_bytes()).expect("optional fields");
        assert_eq!(bare.services[0].last_scale, None);
        assert_eq!(bare.services[0].in_flight, 0);
    }

    #[test]
    fn settled_means_one_quiet_ready_replica() {
        assert!(is_settled(&settled()));
        assert!(!is_settled(&sample()));
        let mut busy = settled();
        busy.in_flight = 1;
        assert!(!is_settled(&busy), "in flight");
        let mut held = settled();
        held.held = 2;
        assert!(!is_settled(&held), "held");
        let mut draining = settled();
        draining.replicas.push(sample().replicas[1].clone());
        draining.replicas[1].state = "draining".into();
        assert!(!is_settled(&draining), "a replica still draining");
        draining.replicas[1].state = "stopping".into();
        assert!(is_settled(&draining), "stopping no longer serves");
        let mut two = settled();
        two.desired = 2;
        assert!(!is_settled(&two), "desired 2");
    }

    #[test]
    fn picks_only_the_decision_the_step_caused() {
        let s = sample();
        let event = step_decision(&s, T0_US).expect("1 → 3 after t0");
        assert_eq!(event.to, 3);
        // Same millisecond as t0, truncated: still the step's.
        assert!(step_decision(&s, T0_US + 187_000).is_some());
        // Recorded before t0: the previous run's.
        assert!(step_decision(&s, T0_US + 187_001).is_none());

        let mut other = s.clone();
        let scale = |from, to| ScaleEvent {
            from,
            to,
            reason: "x".into(),
            at_ms: 1_700_000_000_187,
        };
        other.last_scale = Some(scale(3, 2));
        assert!(step_decision(&other, T0_US).is_none(), "a scale-down");
        other.last_scale = Some(scale(0, 1));
        assert!(step_decision(&other, T0_US).is_none(), "a wake to one");
        other.last_scale = Some(scale(2, 2));
        assert!(step_decision(&other, T0_US).is_none(), "no change");
        other.last_scale = None;
        assert!(step_decision(&other, T0_US).is_none());
    }

    #[test]
    fn finds_the_first_replica_started_after_t0() {
        let s = sample();
        assert_eq!(first_new_start(&s, T0_US), Some(T0_US + 186_400));
        assert_eq!(first_new_start(&s, T0_US + 200_000), None);
    }

    #[test]
    fn ready_count_times_come_from_the_replicas() {
        let s = sample();
        let now = T0_US + 250_000;
        // The baseline replica was ready before t0.
        assert_eq!(ready_reached(&s, 1, T0_US, now), Some(T0_US));
        // echo-2 made it two.
        assert_eq!(ready_reached(&s, 2, T0_US, now), Some(T0_US + 193_000));
        assert_eq!(ready_reached(&s, 3, T0_US, now), None);
        // A count the timestamps do not explain: the poll's time.
        let mut odd = s.clone();
        odd.ready = 3;
        assert_eq!(ready_reached(&odd, 3, T0_US, now), Some(now));
        odd.ready = 2;
        odd.replicas[1].ready_at_us = None;
        assert_eq!(ready_reached(&odd, 2, T0_US, now), Some(now));
    }

    #[test]
    fn progress_follows_a_step() {
        let mut progress = Progress::new(T0_US);
        let mut s = settled();
        progress.observe(&s, T0_US + 10_000);
        assert_eq!(progress.decision, None);
        assert!(!progress.scaled_up() && !progress.full());

        s = sample();
        progress.observe(&s, T0_US + 200_000);
        assert_eq!(progress.decision.as_ref().map(|d| d.to), Some(3));
        assert_eq!(progress.decision_seen_us, Some(T0_US + 200_000));
        assert_eq!(progress.first_start_us, Some(T0_US + 186_400));
        assert_eq!(progress.peak_desired, 3);
        assert_eq!(progress.peak_concurrency, 97);
        assert!(!progress.scaled_up());

        // echo-3 ready at +195 ms; meanwhile the count went up to 4.
        s.ready = 3;
        s.replicas[2].state = "ready".into();
        s.replicas[2].ready_at_us = Some(T0_US + 195_000);
        s.desired = 4;
        s.last_scale = Some(ScaleEvent {
            from: 3,
            to: 4,
            reason: "panic".into(),
            at_ms: 1_700_000_000_205,
        });
        progress.observe(&s, T0_US + 210_000);
        assert_eq!(progress.decision.as_ref().map(|d| d.to), Some(3), "kept");
        assert_eq!(progress.scaled_up_us, Some(T0_US + 195_000));
        assert!(!progress.full(), "4 desired, 3 ready");

        let mut run = Run::default();
        run.record(&progress);
        assert_eq!(run.decision_ms, Some(187.0));
        assert_eq!(run.first_start_ms, Some(186.4));
        assert_eq!(run.decision_seen_ms, Some(200.0));
        assert_eq!(run.scaled_up_ms, Some(195.0));
        assert_eq!(run.full_ms, None);
        assert_eq!(run.peak_desired, 4);
    }

    #[test]
    fn tallies_add_up_and_report_failures() {
        let mut a = Tally {
            requests: 10,
            ok: 9,
            ..Tally::default()
        };
        a.non_200.insert(503, 1);
        let mut b = Tally::default();
        b.note_error("reset");
        b.note_error("later");
        a.add(&b);
        assert_eq!((a.requests, a.ok, a.transport_errors), (12, 9, 2));
        assert_eq!(a.failed(), 3);
        assert_eq!(a.first_error.as_deref(), Some("reset"));

        let good = Run {
            run: 1,
            decision_ms: Some(120.0),
            scaled_up_ms: Some(140.0),
            tally: Tally {
                requests: 100,
                ok: 100,
                ..Tally::default()
            },
            ..Run::default()
        };
        let bad = Run {
            run: 2,
            tally: a,
            error: Some("no scale-up decision".into()),
            ..Run::default()
        };
        let report = Report::of(&[good, bad]);
        assert_eq!((report.runs, report.ok, report.errors), (2, 1, 1));
        assert_eq!(report.decision_ms.map(|s| s.median), Some(120.0));
        assert_eq!(report.requests.requests, 112);
        assert_eq!(report.requests.failed(), 3);
        let text = report.render();
        assert!(
            text.contains("decision_ms") && text.contains("503"),
            "{text}"
        );
    }

    #[test]
    fn jitter_stays_below_its_limit() {
        assert_eq!(random_below(Duration::ZERO), Duration::ZERO);
        let limit = Duration::from_millis(3);
        for _ in 0..1000 {
            assert!(random_below(limit) < limit);
        }
    }

    #[test]
    fn parses_the_command_line() {
        let args = Args::try_parse_from(["rouse-step", "--runs", "3", "--json", "out.json"])
            .expect("valid args");
        assert_eq!((args.runs, args.clients), (3, 100));
        assert_eq!(args.path, "/sleep/1000");
        assert_eq!(args.load_for, Duration::from_secs(5));
        assert_eq!(args.json, Some(PathBuf::from("out.json")));
        assert_eq!(args.jitter, Duration::from_secs(1));
        assert!(Args::try_parse_from(["rouse-step", "--runs", "0"]).is_err());
        assert!(Args::try_parse_from(["rouse-step", "--clients", "0"]).is_err());
    }
}
