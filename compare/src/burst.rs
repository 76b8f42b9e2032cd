//! `rouse-burst`: many concurrent requests at a service that has no replica.
//!
//! Opens `--requests` TCP connections to the proxy (at most
//! `--connect-concurrency` handshakes in progress at a time, so the listen
//! backlog does not overflow), sends one `GET` with `Host: --host` on each,
//! and waits for every response, all within `--timeout`. While the requests
//! are out it samples, every `--sample-every`:
//!
//! - the proxy's `rouse_held{service="--service"}` gauge (from its admin
//!   `/metrics`), and
//! - the proxy's resident set (`VmRSS` of `--proxy-pid`),
//!
//! so that the report can say how much memory one held request costs:
//! `(RSS at the sample with the most requests held − RSS before) / held`.
//!
//! The service is expected to start slowly (e.g. `rouse-echo
//! --startup-delay 3s`) so that all requests are held at once for a while.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use http::{header, HeaderValue};
use http_body_util::BodyExt as _;
use rouse_stack::procfs::proc_status_kib;
use serde::Serialize;
use tokio::sync::Semaphore;

use rouse_bench::results::Machine;
use rouse_bench::COLD_START_HEADER;

/// Time one scrape of the proxy's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response body read per request.
const MAX_BODY: usize = 1024 * 1024;

/// Command line of `rouse-burst`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rouse-burst",
    version,
    about = "Send many concurrent requests at a service with zero replicas"
)]
pub struct Args {
    /// The proxy's data address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub proxy: SocketAddr,

    /// Host header of the requests.
    #[arg(long, default_value = "burst.localhost")]
    pub host: String,

    /// Path requested.
    #[arg(long, default_value = "/")]
    pub path: String,

    /// Number of concurrent requests (one connection each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,

    /// TCP handshakes in progress at most at one time.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Bound on the whole burst; requests not answered by then count as
    /// `timeout`.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Pid of the proxy, to sample its resident set.
    #[arg(long)]
    pub proxy_pid: Option<u32>,

    /// The proxy's admin address, to read `rouse_held` from `/metrics`.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,

    /// Service name behind --host (label of `rouse_held`).
    #[arg(long, default_value = "burst")]
    pub service: String,

    /// Sampling period of `rouse_held` and the proxy's RSS.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Outcome of one burst.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(crate) machine: Machine,
    pub(crate) requests: u32,
    pub(crate) host: String,
    pub(crate) path: String,
    /// Responses with status 200.
    pub(crate) ok: u32,
    /// Every outcome: a status code (`"200"`, `"503"`) or an error kind
    /// (`"connect"`, `"io"`, `"timeout"`).
    pub(crate) outcomes: BTreeMap<String, u32>,
    /// Responses carrying `x-rouse-cold-start: true`.
    pub(crate) cold_start_header: u32,
    /// From the start until every request was sent (connections open).
    pub(crate) all_sent_ms: Option<f64>,
    /// From the start until the first response was complete.
    pub(crate) first_answer_ms: Option<f64>,
    /// From the start until the last response was complete.
    pub(crate) last_answer_ms: Option<f64>,
    /// Largest `rouse_held` seen.
    pub(crate) max_held: Option<u64>,
    /// Proxy `VmRSS` before the first request, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// Largest proxy `VmRSS` sampled while at least 99 % of `max_held` were
    /// held, KiB.
    pub(crate) rss_held_kib: Option<u64>,
    /// Proxy `VmHWM` (peak RSS) after the burst, KiB.
    pub(crate) rss_peak_kib: Option<u64>,
    /// `(rss_held − rss_before) / max_held`, bytes.
    pub(crate) rss_per_held_bytes: Option<f64>,
    /// Samples taken (held, RSS).
    pub(crate) samples: usize,
    /// Growth of the kernel's `TcpExt ListenOverflows` counter during the
    /// burst (whole machine): connections that found the listen backlog
    /// full and were retried by the client's kernel a second or more later.
    pub(crate) listen_overflows: Option<u64>,
}

/// One request's outcome.
#[derive(Debug)]
struct Outcome {
    /// Status code, or an error kind.
    kind: String,
    cold: bool,
    sent_at: Option<Duration>,
    done_at: Duration,
}

/// One sample of the proxy's state.
#[derive(Debug, Clone, Copy)]
struct Sample {
    held: Option<u64>,
    rss_kib: Option<u64>,
}

/// Runs the burst and prints a summary; the report is also returned.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    if !args.path.starts_with('/') {
        bail!("--path must start with `/`");
    }
    let proc_status = |key: &str| args.proxy_pid.and_then(|pid| proc_status_kib(pid, key));
    let rss_before_kib = proc_status("VmRSS");
    if args.proxy_pid.is_some() && rss_before_kib.is_none() {
        bail!(
            "cannot read /proc/{}/status (is the proxy running?)",
            args.proxy_pid.unwrap_or_default()
        );
    }
    if let Some(metrics) = args.metrics {
        scrape_held(metrics, &args.service)
            .await
            .with_context(|| format!("reading rouse_held from http://{metrics}/metrics"))?;
    }

    let overflows_before = listen_overflows();
    let start = Instant::now();
    let deadline = start + args.timeout;

    // Sampler: runs until told to stop.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let metrics = args.metrics;
        let service = args.service.clone();
        let pid = args.proxy_pid;
        let every = args.sample_every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tick.tick() => {}
                }
                let held = match metrics {
                    Some(addr) => scrape_held(addr, &service).await.ok(),
                    None => None,
                };
                let rss_kib = pid.and_then(|pid| proc_status_kib(pid, "VmRSS"));
                samples.push(Sample { held, rss_kib });
            }
            samples
        })
    };

    let connect_gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let host: Arc<str> = Arc::from(args.host.as_str());
    let path: Arc<str> = Arc::from(args.path.as_str());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.requests {
        let gate = Arc::clone(&connect_gate);
        let host = Arc::clone(&host);
        let path = Arc::clone(&path);
        let proxy = args.proxy;
        tasks.spawn(async move {
            match tokio::time::timeout_at(
                deadline.into(),
                one_request(proxy, &host, &path, &gate, start),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => Outcome {
                    kind: "timeout".into(),
                    cold: false,
                    sent_at: None,
                    done_at: start.elapsed(),
                },
            }
        });
    }
    let mut outcomes = Vec::with_capacity(args.requests as usize);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.unwrap_or_else(|err| Outcome {
            kind: format!("panic: {err}"),
            cold: false,
            sent_at: None,
            done_at: start.elapsed(),
        }));
    }
    let _ = stop_tx.send(());
    let samples = sampler.await.unwrap_or_default();
    let rss_peak_kib = proc_status("VmHWM");
    let listen_overflows = match (overflows_before, self::listen_overflows()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };

    let mut by_kind = BTreeMap::new();
    for outcome in &outcomes {
        *by_kind.entry(outcome.kind.clone()).or_insert(0u32) += 1;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let all_sent_ms = if outcomes.iter().all(|o| o.sent_at.is_some()) {
        outcomes.iter().filter_map(|o| o.sent_at).max().map(ms)
    } else {
        None
    };
    let answered = || outcomes.iter().filter(|o| o.kind.parse::<u16>().is_ok());
    let first_answer_ms = answered().map(|o| o.done_at).min().map(ms);
    let last_answer_ms = answered().map(|o| o.done_at).max().map(ms);
    let max_held = samples.iter().filter_map(|s| s.held).max();
    let rss_held_kib = match max_held {
        Some(max) if max > 0 => samples
            .iter()
            .filter(|s| s.held.is_some_and(|h| h * 100 >= max * 99))
            .filter_map(|s| s.rss_kib)
            .max(),
        _ => None,
    };
    let rss_per_held_bytes = match (rss_before_kib, rss_held_kib, max_held) {
        (Some(before), Some(held_rss), Some(held)) if held > 0 => {
            Some((held_rss as f64 - before as f64) * 1024.0 / held as f64)
        }
        _ => None,
    };
    let report = Report {
        machine: Machine::detect(),
        requests: args.requests,
        host: args.host.clone(),
        path: args.path.clone(),
        ok: by_kind.get("200").copied().unwrap_or(0),
        outcomes: by_kind,
        cold_start_header: u32::try_from(outcomes.iter().filter(|o| o.cold).count())
            .unwrap_or(u32::MAX),
        all_sent_ms,
        first_answer_ms,
        last_answer_ms,
        max_held,
        rss_before_kib,
        rss_held_kib,
        rss_peak_kib,
        rss_per_held_bytes,
        samples: samples.len(),
        listen_overflows,
    };
    print_summary(&report);
    if let Some(path) = &args.json {
        rouse_bench::results::write_json(path, &report)?;
    }
    Ok(report)
}

/// Connect, send one GET, read the whole response.
async fn one_request(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    gate: &Semaphore,
    start: Instant,
) -> Outcome {
    let failed = |kind: &str, sent_at| Outcome {
        kind: kind.into(),
        cold: false,
        sent_at,
        done_at: start.elapsed(),
    };
    let connected = {
        let Ok(_permit) = gate.acquire().await else {
            return failed("connect", None);
        };
        rouse_bench::client::connect(proxy).await
    };
    let Ok((mut sender, connection)) = connected else {
        return failed("connect", None);
    };
    let Ok(mut request) = rouse_bench::client::get(host, path, "rouse-burst") else {
        return failed("request", None);
    };
    request
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    let exchange = async {
        let response = sender.send_request(request);
        // The request is written as soon as the connection task runs; count
        // it as sent now.
        let sent_at = start.elapsed();
        let response = match response.await {
            Ok(response) => response,
            Err(_) => return failed("io", Some(sent_at)),
        };
        let status = response.status();
        let cold = response
            .headers()
            .get(COLD_START_HEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY);
        if body.collect().await.is_err() {
            return failed("io", Some(sent_at));
        }
        Outcome {
            kind: status.as_u16().to_string(),
            cold,
            sent_at: Some(sent_at),
            done_at: start.elapsed(),
        }
    };
    let (outcome, _) = tokio::join!(exchange, connection);
    outcome
}

/// The machine's `TcpExt ListenOverflows` counter.
pub(crate) fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    netstat_field(&text, "TcpExt", "ListenOverflows")
}

/// One counter of a `/proc/net/netstat` text (a line of names followed by a
/// line of values, per prefix).
pub(crate) fn netstat_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let tag = format!("{prefix}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&tag));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let index = names.split_whitespace().position(|n| n == name);
        if let Some(index) = index {
            return values.split_whitespace().nth(index)?.parse().ok();
        }
    }
    None
}

/// Reads `rouse_held{service="<service>"}` from the proxy's `/metrics`
/// (0 when the series does not exist yet).
pub(crate) async fn scrape_held(addr: SocketAddr, service: &str) -> anyhow::Result<u64> {
    let (status, page) = rouse_stack::http_get(addr, "/metrics", SCRAPE_TIMEOUT).await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(held_from_metrics(&page, service).unwrap_or(0))
}

/// The value of `rouse_held{service="<service>"}` in a Prometheus text page.
pub(crate) fn held_from_metrics(page: &str, service: &str) -> Option<u64> {
    let value = rouse_stack::metric_value(page, "rouse_held", service)?;
    (value >= 0.0).then_some(value as u64)
}

fn print_summary(report: &Report) {
    let fmt_ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0} ms"));
    println!(
        "burst: {} requests, {} answered 200, outcomes {:?}, {} with {COLD_START_HEADER}",
        report.requests, report.ok, report.outcomes, report.cold_start_header
    );
    println!(
        "       all sent {}, first answer {}, last answer {}; listen backlog overflows {}",
        fmt_ms(report.all_sent_ms),
        fmt_ms(report.first_answer_ms),
        fmt_ms(report.last_answer_ms),
        report
            .listen_overflows
            .map_or("-".to_owned(), |n| n.to_string())
    );
    if let (Some(before), Some(held), Some(max_held)) =
        (report.rss_before_kib, report.rss_held_kib, report.max_held)
    {
        println!(
            "       proxy RSS {before} KiB before, {held} KiB with {max_held} held: {:.0} bytes per held request (peak {} KiB)",
            report.rss_per_held_bytes.unwrap_or(f64::NAN),
            report.rss_peak_kib.unwrap_or(0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_held_gauge_of_one_service() {
        let page = "# HELP rouse_held Requests waiting\n# TYPE rouse_held gauge\n\
                    rouse_held{service=\"burst-2\"} 7\n\
                    rouse_held{service=\"burst\"} 9998\n";
        assert_eq!(held_from_metrics(page, "burst"), Some(9998));
        assert_eq!(held_from_metrics(page, "burst-2"), Some(7));
        assert_eq!(held_from_metrics(page, "other"), None);
    }

    #[test]
    fn reads_a_netstat_counter() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 3 1910 1911\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(netstat_field(text, "TcpExt", "ListenOverflows"), Some(1910));
        assert_eq!(netstat_field(text, "IpExt", "InNoRoutes"), Some(0));
        assert_eq!(netstat_field(text, "TcpExt", "Nope"), None);
    }
}
