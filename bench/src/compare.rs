//! `rouse-compare`: the measuring and reporting half of `bench/run`.
//!
//! `bench/run` (a shell script) starts and stops the processes: the rouse
//! stack, nginx, haproxy, the backend. This tool does the rest:
//!
//! - `measure`: one load run against one target: runs the load generator
//!   (bombardier, oha or wrk), reads the CPU time of the proxy's processes
//!   before and after (`/proc/<pid>/stat`) and their peak RSS after
//!   (`VmHWM`), parses the generator's output and appends one JSON line.
//! - `footprint`: reads the idle RSS of a proxy and a controller.
//! - `report`: medians over rounds, ratios, targets; writes the results JSON
//!   (one file per run plus `latest.json`), an SVG chart and the generated
//!   blocks of `bench/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::footprint::{self, Footprint};

/// The four paths compared, in report order.
pub const TARGETS: [&str; 4] = ["direct", "rouse", "nginx", "haproxy"];
/// Extra time the load generator gets beyond its duration before it is
/// killed.
const LOADGEN_GRACE: Duration = Duration::from_secs(60);

/// Targets of the issue, checked (never asserted) by the report.
pub const TARGET_RPS_FACTOR: f64 = 1.2;
pub const TARGET_BYTES_PER_HELD: f64 = 10.0 * 1024.0;
pub const TARGET_PROXY_IDLE_KIB: u64 = 15 * 1024;
pub const TARGET_CONTROLLER_IDLE_KIB: u64 = 20 * 1024;

/// Command line of `rouse-compare`.
#[derive(Debug, Parser)]
#[command(
    name = "rouse-compare",
    version,
    about = "Measuring and reporting half of bench/run"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// One load run against one target; appends a JSON line to --out.
    Measure(MeasureArgs),
    /// Idle RSS of a running proxy and controller, as JSON.
    Footprint(FootprintArgs),
    /// Medians, ratios, results JSON, chart and README blocks.
    Report(ReportArgs),
    /// Reads the controller's `/api/v1/services` JSON on stdin and prints
    /// `addr pid` of each ready replica of a service (pid `-` if unknown).
    Replicas(ReplicasArgs),
}

#[derive(Debug, Clone, Parser)]
pub struct ReplicasArgs {
    #[arg(long)]
    pub service: String,
    /// The controller's `state_dir`, to read the replicas' pid files.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// A load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    Bombardier,
    Oha,
    Wrk,
}

#[derive(Debug, Clone, Parser)]
pub struct MeasureArgs {
    /// Name of the path measured (direct, rouse, nginx, haproxy).
    #[arg(long)]
    pub target: String,
    /// Round number (1-based).
    #[arg(long)]
    pub round: u32,
    #[arg(long, value_enum)]
    pub tool: Tool,
    /// The load generator's executable (default: the tool's name).
    #[arg(long)]
    pub tool_bin: Option<PathBuf>,
    /// URL requested.
    #[arg(long)]
    pub url: String,
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// wrk threads (bombardier and oha pick their own).
    #[arg(long)]
    pub wrk_threads: Option<u32>,
    /// Root pid of the proxy (repeatable); its whole process tree is counted.
    #[arg(long = "pid")]
    pub pids: Vec<u32>,
    /// Pid of the backend, to record its CPU time too.
    #[arg(long)]
    pub backend_pid: Option<u32>,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    pub clk_tck: u64,
    /// JSON-lines file the result is appended to.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the load generator's raw output in this directory.
    #[arg(long)]
    pub raw_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Parser)]
pub struct FootprintArgs {
    #[arg(long)]
    pub proxy_pid: u32,
    #[arg(long)]
    pub controller_pid: u32,
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// Services in the configuration.
    #[arg(long)]
    pub services: u32,
    /// Seconds the stack ran before the reading (recorded only).
    #[arg(long, default_value_t = 0.0)]
    pub settle_s: f64,
    #[arg(long)]
    pub json: PathBuf,
}

#[derive(Debug, Clone, Parser)]
pub struct ReportArgs {
    /// JSON lines written by `measure`.
    #[arg(long)]
    pub rounds: Option<PathBuf>,
    /// JSON written by `rouse-burst`.
    #[arg(long)]
    pub burst: Option<PathBuf>,
    /// JSON written by `footprint`.
    #[arg(long)]
    pub footprint: Option<PathBuf>,
    /// Facts about the run, `key=value` (repeatable): tool versions,
    /// threads, load average...
    #[arg(long = "setup", value_parser = parse_key_value)]
    pub setup: Vec<(String, String)>,
    /// Directory of the results (one JSON per run, latest.json, latest.svg).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Markdown file whose generated blocks are replaced.
    #[arg(long)]
    pub readme: Option<PathBuf>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Measure(args) => measure(&args).map(|_| ()),
        Cmd::Footprint(args) => {
            let footprint = Footprint::read(
                args.services,
                args.settle_s,
                args.proxy_pid,
                args.controller_pid,
                args.nats_pid,
            )?;
            println!(
                "idle with {} services: proxy {:.1} MiB, controller {:.1} MiB (VmRSS)",
                footprint.services,
                mib(footprint.proxy_rss_kib),
                mib(footprint.controller_rss_kib)
            );
            write_json(&args.json, &footprint)
        }
        Cmd::Report(args) => report(&args),
        Cmd::Replicas(args) => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                .context("reading stdin")?;
            for (addr, pid) in ready_replicas(&input, &args.service, args.state_dir.as_deref())? {
                println!("{addr} {}", pid.map_or("-".into(), |p| p.to_string()));
            }
            Ok(())
        }
    }
}

/// `(addr, pid)` of the ready replicas of `service` in a status listing.
pub fn ready_replicas(
    listing: &str,
    service: &str,
    state_dir: Option<&Path>,
) -> anyhow::Result<Vec<(String, Option<u32>)>> {
    let json: Value = serde_json::from_str(listing).context("the status is not JSON")?;
    let services = json
        .get("services")
        .and_then(Value::as_array)
        .context("no `services` array in the status")?;
    let Some(entry) = services
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(service))
    else {
        bail!("no service `{service}` in the status");
    };
    let replicas = entry
        .get("replicas")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(replicas
        .iter()
        .filter(|r| r.get("state").and_then(Value::as_str) == Some("ready"))
        .filter_map(|r| {
            let addr = r.get("addr")?.as_str()?.to_owned();
            let pid = match (state_dir, r.get("id").and_then(Value::as_str)) {
                (Some(dir), Some(id)) => {
                    let file = dir.join("process").join(service).join(format!("{id}.pid"));
                    std::fs::read(file)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .and_then(|v| v.get("pid")?.as_u64())
                        .and_then(|p| u32::try_from(p).ok())
                }
                _ => None,
            };
            Some((addr, pid))
        })
        .collect())
}

/// Writes `value` as pretty JSON, creating the parent directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Where a benchmark ran (the same record as the cold-start benchmark's).
pub use crate::coldstart::Machine;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// --- measure -------------------------------------------------------------------

/// What a load generator reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Responses received (any status).
    pub responses: u64,
    /// Responses that were not 2xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Responses per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// One round against one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundResult {
    pub target: String,
    pub round: u32,
    pub tool: Tool,
    pub connections: u32,
    pub duration_s: f64,
    /// Wall time of the load generator run.
    pub wall_s: f64,
    /// 1-minute load average just before the run.
    pub loadavg_before: Option<f64>,
    /// Compiler processes (rustc, cc1, ld) running just before the run:
    /// other work competing for the CPU.
    #[serde(default)]
    pub compilers_running: usize,
    #[serde(flatten)]
    pub load: LoadResult,
    /// non-2xx + socket errors.
    pub errors: u64,
    /// CPU time (user + system) of the proxy's processes during the run.
    pub proxy_cpu_s: Option<f64>,
    /// Proxy CPU per response, microseconds.
    pub proxy_cpu_us_per_req: Option<f64>,
    /// The kernel's share of it (stime): socket work a proxy cannot avoid.
    #[serde(default)]
    pub proxy_sys_us_per_req: Option<f64>,
    /// Peak RSS (VmHWM) of the proxy's serving processes, summed, KiB.
    pub proxy_peak_rss_kib: Option<u64>,
    /// Processes counted for the proxy (root and workers).
    pub proxy_processes: usize,
    /// CPU time of the backend during the run.
    pub backend_cpu_s: Option<f64>,
    pub backend_cpu_us_per_req: Option<f64>,
}

/// Sum of CPU ticks of processes; `None` when one could not be read.
fn sum_ticks(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&pid| footprint::cpu_ticks(pid)).sum()
}

/// Sum of kernel CPU ticks of processes.
fn sum_system_ticks(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&pid| footprint::system_ticks(pid)).sum()
}

/// Number of running processes whose name is one of `names`.
pub fn count_processes(names: &[&str]) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|comm| names.contains(&comm.trim()))
        .count()
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The load generator's command line.
pub fn loadgen_command(args: &MeasureArgs) -> Command {
    let bin = args.tool_bin.clone().unwrap_or_else(|| {
        PathBuf::from(match args.tool {
            Tool::Bombardier => "bombardier",
            Tool::Oha => "oha",
            Tool::Wrk => "wrk",
        })
    });
    let mut cmd = Command::new(bin);
    let conns = args.connections.to_string();
    let secs = format!("{}s", args.duration.as_secs().max(1));
    match args.tool {
        Tool::Bombardier => {
            cmd.args(["-c", &conns, "-d", &secs, "-l", "-p", "r", "-o", "json"]);
        }
        Tool::Oha => {
            cmd.args([
                "--no-tui",
                "-c",
                &conns,
                "-z",
                &secs,
                "-w",
                "--output-format",
                "json",
            ]);
        }
        Tool::Wrk => {
            let threads = args
                .wrk_threads
                .unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(2, |n| n.get() as u32)
                })
                .min(args.connections)
                .max(1);
            cmd.args([
                "-t",
                &threads.to_string(),
                "-c",
                &conns,
                "-d",
                &secs,
                "--latency",
            ]);
        }
    }
    cmd.arg(&args.url);
    cmd
}

/// Runs one round and appends its result to `args.out`.
pub fn measure(args: &MeasureArgs) -> anyhow::Result<RoundResult> {
    let trees: Vec<Vec<u32>> = args
        .pids
        .iter()
        .map(|&pid| footprint::process_tree(pid))
        .collect();
    for (root, tree) in args.pids.iter().zip(&trees) {
        if tree.is_empty() {
            bail!("process {root} of target {} is not running", args.target);
        }
    }
    let all: Vec<u32> = trees.iter().flatten().copied().collect();
    let serving: Vec<u32> = trees
        .iter()
        .flat_map(|t| footprint::workers(t).iter().copied())
        .collect();

    let raw_dir = args.raw_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;
    let raw_path = raw_dir.join(format!("{}-{}.out", args.target, args.round));
    let raw_err = raw_dir.join(format!("{}-{}.err", args.target, args.round));
    let stdout =
        File::create(&raw_path).with_context(|| format!("creating {}", raw_path.display()))?;
    let stderr =
        File::create(&raw_err).with_context(|| format!("creating {}", raw_err.display()))?;

    let mut cmd = loadgen_command(args);
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let loadavg_before = loadavg();
    let compilers_running = count_processes(&["rustc", "cc1", "cc1plus", "ld", "cargo"]);
    let cpu_before = sum_ticks(&all);
    let sys_before = sum_system_ticks(&all);
    let backend_before = args.backend_pid.and_then(footprint::cpu_ticks);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let limit = args.duration + LOADGEN_GRACE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the load generator did not finish within {} (killed)",
                humantime::format_duration(limit)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_after = sum_ticks(&all);
    let sys_after = sum_system_ticks(&all);
    let backend_after = args.backend_pid.and_then(footprint::cpu_ticks);
    let peak_rss: Option<u64> = serving
        .iter()
        .map(|&pid| footprint::proc_status_kib(pid, "VmHWM"))
        .sum();

    let output = std::fs::read_to_string(&raw_path)
        .with_context(|| format!("reading {}", raw_path.display()))?;
    if !status.success() {
        let err = std::fs::read_to_string(&raw_err).unwrap_or_default();
        bail!(
            "{:?} failed ({status}): {}",
            cmd.get_program(),
            err.trim().lines().last().unwrap_or("no message")
        );
    }
    let load = parse_output(args.tool, &output)
        .with_context(|| format!("parsing the output in {}", raw_path.display()))?;

    let tck = args.clk_tck.max(1) as f64;
    let cpu = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if a >= b => Some((a - b) as f64 / tck),
        _ => None,
    };
    let per_req = |cpu: Option<f64>| {
        cpu.filter(|_| load.responses > 0)
            .map(|s| s * 1e6 / load.responses as f64)
    };
    let proxy_cpu_s = if all.is_empty() {
        None
    } else {
        cpu(cpu_before, cpu_after)
    };
    let proxy_sys_s = if all.is_empty() {
        None
    } else {
        cpu(sys_before, sys_after)
    };
    let backend_cpu_s = cpu(backend_before, backend_after);
    let result = RoundResult {
        target: args.target.clone(),
        round: args.round,
        tool: args.tool,
        connections: args.connections,
        duration_s: args.duration.as_secs_f64(),
        wall_s,
        loadavg_before,
        compilers_running,
        errors: load.non_2xx + load.socket_errors,
        proxy_cpu_us_per_req: per_req(proxy_cpu_s),
        proxy_sys_us_per_req: per_req(proxy_sys_s),
        proxy_cpu_s,
        proxy_peak_rss_kib: if serving.is_empty() { None } else { peak_rss },
        proxy_processes: all.len(),
        backend_cpu_us_per_req: per_req(backend_cpu_s),
        backend_cpu_s,
        load,
    };
    let mut line = serde_json::to_string(&result)?;
    line.push('\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(|| format!("appending to {}", args.out.display()))?;
    println!(
        "  {:<8} round {}: {:>9.0} req/s  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  errors {}  proxy CPU {}  backend CPU {}{}",
        result.target,
        result.round,
        result.load.rps,
        result.load.p50_ms,
        result.load.p90_ms,
        result.load.p99_ms,
        result.errors,
        result
            .proxy_cpu_us_per_req
            .map_or("-".into(), |v| format!("{v:.1} µs/req")),
        result
            .backend_cpu_us_per_req
            .map_or("-".into(), |v| format!("{v:.1} µs/req")),
        if result.compilers_running > 0 {
            "  (a compiler was running)"
        } else {
            ""
        },
    );
    Ok(result)
}

/// Parses the output of a load generator.
pub fn parse_output(tool: Tool, output: &str) -> anyhow::Result<LoadResult> {
    match tool {
        Tool::Bombardier => parse_bombardier(output),
        Tool::Oha => parse_oha(output),
        Tool::Wrk => parse_wrk(output),
    }
}

/// The first JSON object in a text (tools may print a line before it).
fn json_object(output: &str) -> anyhow::Result<Value> {
    let start = output.find('{').context("no JSON object in the output")?;
    serde_json::from_str(output[start..].trim()).context("invalid JSON")
}

fn num(value: &Value, pointer: &str) -> anyhow::Result<f64> {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("no number at `{pointer}`"))
}

/// `bombardier -l -p r -o json`: latencies in microseconds.
pub fn parse_bombardier(output: &str) -> anyhow::Result<LoadResult> {
    let json = json_object(output)?;
    let result = json.get("result").context("no `result`")?;
    let count = |key: &str| result.get(key).and_then(Value::as_u64).unwrap_or(0);
    let ok = count("req2xx");
    let non_2xx = count("req1xx") + count("req3xx") + count("req4xx") + count("req5xx");
    let others = count("others");
    let socket_errors = result
        .get("errors")
        .and_then(Value::as_array)
        .map_or(0, |errors| {
            errors
                .iter()
                .filter_map(|e| e.get("count").and_then(Value::as_u64))
                .sum()
        });
    let secs = num(result, "/timeTakenSeconds")?;
    let responses = ok + non_2xx;
    let pct = |p: &str| num(result, &format!("/latency/percentiles/{p}")).map(|us| us / 1000.0);
    Ok(LoadResult {
        responses,
        non_2xx,
        // `others` are responses bombardier could not classify: errors.
        socket_errors: socket_errors.max(others),
        rps: if secs > 0.0 {
            responses as f64 / secs
        } else {
            0.0
        },
        p50_ms: pct("50")?,
        p90_ms: pct("90")?,
        p99_ms: pct("99")?,
    })
}

/// `oha --output-format json`: latencies in seconds.
pub fn parse_oha(output: &str) -> anyhow::Result<LoadResult> {
    let json = json_object(output)?;
    let mut responses = 0;
    let mut non_2xx = 0;
    if let Some(codes) = json
        .get("statusCodeDistribution")
        .and_then(Value::as_object)
    {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            responses += n;
            if !code.starts_with('2') {
                non_2xx += n;
            }
        }
    }
    let socket_errors = json
        .get("errorDistribution")
        .and_then(Value::as_object)
        .map_or(0, |errors| {
            errors
                .iter()
                // Requests cut by the end of the run are not errors of the
                // target (only happens without `-w`).
                .filter(|(what, _)| !what.contains("aborted due to deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        });
    let secs = num(&json, "/summary/total")?;
    let pct = |p: &str| num(&json, &format!("/latencyPercentiles/{p}")).map(|s| s * 1000.0);
    Ok(LoadResult {
        responses,
        non_2xx,
        socket_errors,
        rps: if secs > 0.0 {
            responses as f64 / secs
        } else {
            0.0
        },
        p50_ms: pct("p50")?,
        p90_ms: pct("p90")?,
        p99_ms: pct("p99")?,
    })
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.00s`, `1.5m`) in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * factor)
}

/// `wrk --latency` text output.
pub fn parse_wrk(output: &str) -> anyhow::Result<LoadResult> {
    let mut percentiles = BTreeMap::new();
    let mut responses = None;
    let mut rps = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    let mut in_distribution = false;
    for line in output.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = line.split_once('%') {
                if let (Ok(pct), Some(ms)) = (pct.trim().parse::<f64>(), wrk_duration_ms(value)) {
                    percentiles.insert(pct as u32, ms);
                    continue;
                }
            }
            in_distribution = false;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if line.contains("requests in") {
            responses = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    let pct = |p: u32| {
        percentiles
            .get(&p)
            .copied()
            .ok_or_else(|| anyhow!("no {p}% line (was wrk run with --latency?)"))
    };
    Ok(LoadResult {
        responses: responses.context("no `N requests in` line")?,
        non_2xx,
        socket_errors,
        rps: rps.context("no `Requests/sec` line")?,
        p50_ms: pct(50)?,
        p90_ms: pct(90)?,
        p99_ms: pct(99)?,
    })
}

// --- report --------------------------------------------------------------------

/// Median of one metric over the rounds of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub rounds: usize,
    pub rps: f64,
    pub rps_min: f64,
    pub rps_max: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_min_ms: f64,
    pub p99_max_ms: f64,
    /// Sum over rounds.
    pub errors: u64,
    pub proxy_cpu_s: Option<f64>,
    pub proxy_cpu_us_per_req: Option<f64>,
    #[serde(default)]
    pub proxy_sys_us_per_req: Option<f64>,
    pub proxy_peak_rss_kib: Option<u64>,
    pub backend_cpu_us_per_req: Option<f64>,
}

/// The median; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn summarize(rounds: &[&RoundResult]) -> Option<Summary> {
    if rounds.is_empty() {
        return None;
    }
    let col = |f: &dyn Fn(&RoundResult) -> f64| rounds.iter().map(|r| f(r)).collect::<Vec<_>>();
    let opt = |f: &dyn Fn(&RoundResult) -> Option<f64>| {
        let v: Vec<f64> = rounds.iter().filter_map(|r| f(r)).collect();
        median(&v)
    };
    let rps = col(&|r| r.load.rps);
    let p99 = col(&|r| r.load.p99_ms);
    let fold = |v: &[f64], min: bool| {
        v.iter()
            .copied()
            .reduce(if min { f64::min } else { f64::max })
            .unwrap_or(f64::NAN)
    };
    Some(Summary {
        rounds: rounds.len(),
        rps: median(&rps)?,
        rps_min: fold(&rps, true),
        rps_max: fold(&rps, false),
        p50_ms: median(&col(&|r| r.load.p50_ms))?,
        p90_ms: median(&col(&|r| r.load.p90_ms))?,
        p99_ms: median(&p99)?,
        p99_min_ms: fold(&p99, true),
        p99_max_ms: fold(&p99, false),
        errors: rounds.iter().map(|r| r.errors).sum(),
        proxy_cpu_s: opt(&|r| r.proxy_cpu_s),
        proxy_cpu_us_per_req: opt(&|r| r.proxy_cpu_us_per_req),
        proxy_sys_us_per_req: opt(&|r| r.proxy_sys_us_per_req),
        proxy_peak_rss_kib: rounds.iter().filter_map(|r| r.proxy_peak_rss_kib).max(),
        backend_cpu_us_per_req: opt(&|r| r.backend_cpu_us_per_req),
    })
}

/// rouse ÷ `other`, as the median over rounds of the ratio within each
/// round. The two runs of a round are seconds apart, so a shared machine's
/// slow drifts (other tenants, thermal state) cancel in the ratio instead of
/// landing on whichever path ran in a slow round.
fn paired_ratio(rounds: &[RoundResult], other: &str) -> Option<Ratio> {
    let mut rps = Vec::new();
    let mut p99 = Vec::new();
    let mut cpu = Vec::new();
    for mine in rounds.iter().filter(|r| r.target == "rouse") {
        let Some(theirs) = rounds
            .iter()
            .find(|r| r.target == other && r.round == mine.round)
        else {
            continue;
        };
        if theirs.load.rps > 0.0 {
            rps.push(mine.load.rps / theirs.load.rps);
        }
        if theirs.load.p99_ms > 0.0 {
            p99.push(mine.load.p99_ms / theirs.load.p99_ms);
        }
        if let (Some(m), Some(t)) = (mine.proxy_cpu_us_per_req, theirs.proxy_cpu_us_per_req) {
            if t > 0.0 {
                cpu.push(m / t);
            }
        }
    }
    Some(Ratio {
        rps: median(&rps)?,
        p99: median(&p99)?,
        cpu_per_req: median(&cpu),
        rounds: rps.len(),
    })
}

/// rouse relative to another path (rouse ÷ other).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub rps: f64,
    pub p99: f64,
    pub cpu_per_req: Option<f64>,
    /// Rounds with both paths measured (the ratios are their medians).
    #[serde(default)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Throughput {
    pub machine: Machine,
    pub setup: BTreeMap<String, String>,
    pub summary: BTreeMap<String, Summary>,
    /// rouse ÷ nginx, rouse ÷ haproxy, rouse ÷ direct.
    pub rouse_vs: BTreeMap<String, Ratio>,
    /// rouse req/s ≥ 1.2 × the better of nginx and haproxy.
    pub target_rps_met: Option<bool>,
    /// rouse p99 ≤ the p99 of both nginx and haproxy.
    pub target_p99_met: Option<bool>,
    pub rounds: Vec<RoundResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BurstResult {
    pub machine: Machine,
    pub setup: BTreeMap<String, String>,
    #[serde(flatten)]
    pub report: Value,
    pub target_all_ok_met: bool,
    pub target_memory_met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FootprintResult {
    pub machine: Machine,
    #[serde(flatten)]
    pub footprint: Footprint,
    pub target_proxy_met: bool,
    pub target_controller_met: bool,
}

/// One run of `bench/run`: the parts it measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<FootprintResult>,
}

fn read_rounds(path: &Path) -> anyhow::Result<Vec<RoundResult>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

pub fn throughput(
    machine: Machine,
    setup: BTreeMap<String, String>,
    rounds: Vec<RoundResult>,
) -> Throughput {
    let mut summary = BTreeMap::new();
    for target in TARGETS {
        let of: Vec<&RoundResult> = rounds.iter().filter(|r| r.target == target).collect();
        if let Some(s) = summarize(&of) {
            summary.insert(target.to_owned(), s);
        }
    }
    let mut rouse_vs = BTreeMap::new();
    for other in ["nginx", "haproxy", "direct"] {
        if let Some(ratio) = paired_ratio(&rounds, other) {
            rouse_vs.insert(other.to_owned(), ratio);
        }
    }
    let (target_rps_met, target_p99_met) = match (rouse_vs.get("nginx"), rouse_vs.get("haproxy")) {
        (Some(n), Some(h)) => (
            Some(n.rps.min(h.rps) >= TARGET_RPS_FACTOR),
            Some(n.p99.max(h.p99) <= 1.0),
        ),
        _ => (None, None),
    };
    Throughput {
        machine,
        setup,
        summary,
        rouse_vs,
        target_rps_met,
        target_p99_met,
        rounds,
    }
}

fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let setup: BTreeMap<String, String> = args.setup.iter().cloned().collect();
    let mut run = Results::default();
    if let Some(path) = &args.rounds {
        let rounds = read_rounds(path)?;
        if rounds.is_empty() {
            bail!("{} has no rounds", path.display());
        }
        run.throughput = Some(throughput(machine.clone(), setup.clone(), rounds));
    }
    if let Some(path) = &args.burst {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let requests = report.get("requests").and_then(Value::as_u64).unwrap_or(0);
        let ok = report.get("ok").and_then(Value::as_u64).unwrap_or(0);
        let per_held = report.get("rss_per_held_bytes").and_then(Value::as_f64);
        let mut report = report;
        if let Some(obj) = report.as_object_mut() {
            obj.remove("machine");
        }
        run.burst = Some(BurstResult {
            machine: machine.clone(),
            setup: setup.clone(),
            report,
            target_all_ok_met: requests > 0 && ok == requests,
            target_memory_met: per_held.map(|b| b <= TARGET_BYTES_PER_HELD),
        });
    }
    if let Some(path) = &args.footprint {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let footprint: Footprint =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        run.footprint = Some(FootprintResult {
            machine: machine.clone(),
            target_proxy_met: footprint.proxy_rss_kib <= TARGET_PROXY_IDLE_KIB,
            target_controller_met: footprint.controller_rss_kib <= TARGET_CONTROLLER_IDLE_KIB,
            footprint,
        });
    }

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let stamp = machine.date.replace([':', '-'], "");
    let run_path = args.out_dir.join(format!("compare-{stamp}.json"));
    write_json(&run_path, &run)?;
    // latest.json: the newest result of each part.
    let latest_path = args.out_dir.join("latest.json");
    let mut latest: Results = std::fs::read_to_string(&latest_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if run.throughput.is_some() {
        latest.throughput = run.throughput.clone();
    }
    if run.burst.is_some() {
        latest.burst = run.burst.clone();
    }
    if run.footprint.is_some() {
        latest.footprint = run.footprint.clone();
    }
    write_json(&latest_path, &latest)?;
    println!(
        "results: {} and {}",
        run_path.display(),
        latest_path.display()
    );

    if let Some(t) = &run.throughput {
        let svg = args.out_dir.join("latest.svg");
        chart(t, &svg)?;
        println!("chart: {}", svg.display());
    }

    let mut blocks = Vec::new();
    if let Some(t) = &run.throughput {
        let md = throughput_markdown(t);
        println!("\n{md}");
        blocks.push(("throughput", md));
    }
    if let Some(b) = &run.burst {
        let md = burst_markdown(b);
        println!("\n{md}");
        blocks.push(("burst", md));
    }
    if let Some(f) = &run.footprint {
        let md = footprint_markdown(f);
        println!("\n{md}");
        blocks.push(("footprint", md));
    }
    if let Some(readme) = &args.readme {
        let mut text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        for (name, md) in &blocks {
            text = replace_block(&text, name, md)
                .with_context(|| format!("updating {}", readme.display()))?;
        }
        std::fs::write(readme, text).with_context(|| format!("writing {}", readme.display()))?;
        println!("\nupdated {}", readme.display());
    }
    Ok(())
}

/// SVG chart: median req/s and p99 per path, with min–max over rounds.
pub fn chart(t: &Throughput, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let present: Vec<(&str, &Summary)> = TARGETS
        .iter()
        .filter_map(|&name| t.summary.get(name).map(|s| (name, s)))
        .collect();
    if present.is_empty() {
        bail!("nothing to chart");
    }
    let n = present.len() as f64;
    let color = |name: &str| match name {
        "direct" => RGBColor(150, 150, 150),
        "rouse" => RGBColor(214, 96, 32),
        "nginx" => RGBColor(0, 150, 57),
        _ => RGBColor(30, 100, 180),
    };
    let setup = |k: &str| t.setup.get(k).map_or("?", String::as_str);
    let title = format!(
        "{}, {} connections, {} × {} rounds, {} threads per proxy — bars: median, whiskers: min–max",
        setup("tool_version"),
        setup("connections"),
        setup("duration"),
        setup("rounds"),
        setup("threads"),
    );
    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(&title, ("sans-serif", 16))
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));
    type Metric<'a> = (&'a str, &'a dyn Fn(&Summary) -> (f64, f64, f64), usize);
    let metrics: [Metric; 2] = [
        (
            "requests per second",
            &|s: &Summary| (s.rps, s.rps_min, s.rps_max),
            0,
        ),
        (
            "p99 latency (ms)",
            &|s: &Summary| (s.p99_ms, s.p99_min_ms, s.p99_max_ms),
            2,
        ),
    ];
    let names: Vec<&str> = present.iter().map(|(name, _)| label(name)).collect();
    for (panel, (caption, value, digits)) in panels.iter().zip(metrics) {
        let top = present
            .iter()
            .map(|(_, s)| value(s).2)
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(present.len() + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names
                        .get(i as usize)
                        .map_or(String::new(), |s| (*s).to_owned())
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.*}", digits.saturating_sub(1)))
            .draw()
            .map_err(|e| err(&e))?;
        let plot = chart.plotting_area();
        for (i, (target, summary)) in present.iter().enumerate() {
            let x = i as f64;
            let (median, min, max) = value(summary);
            plot.draw(&Rectangle::new(
                [(x - 0.35, median), (x + 0.35, 0.0)],
                color(target).filled(),
            ))
            .map_err(|e| err(&e))?;
            for (from, to) in [
                ((x, min), (x, max)),
                ((x - 0.08, min), (x + 0.08, min)),
                ((x - 0.08, max), (x + 0.08, max)),
            ] {
                plot.draw(&PathElement::new(vec![from, to], BLACK.stroke_width(2)))
                    .map_err(|e| err(&e))?;
            }
            plot.draw(&Text::new(
                format!("{median:.digits$}"),
                (x, max.max(median) + top * 0.015),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Replaces what lies between `<!-- compare:NAME:begin -->` and
/// `<!-- compare:NAME:end -->`.
pub fn replace_block(text: &str, name: &str, content: &str) -> anyhow::Result<String> {
    let begin = format!("<!-- compare:{name}:begin -->");
    let end = format!("<!-- compare:{name}:end -->");
    let b = text
        .find(&begin)
        .ok_or_else(|| anyhow!("no `{begin}` marker"))?;
    let e = text[b..]
        .find(&end)
        .map(|i| b + i)
        .ok_or_else(|| anyhow!("no `{end}` marker after `{begin}`"))?;
    Ok(format!(
        "{}{begin}\n{}\n{}",
        &text[..b],
        content.trim_end(),
        &text[e..]
    ))
}

fn machine_line(m: &Machine) -> String {
    format!(
        "{} × {}, Linux {}, {}",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.date.get(..10).unwrap_or(&m.date)
    )
}

/// `min–max` of the 1-minute load average before each measured run.
fn load_range(rounds: &[RoundResult]) -> String {
    let loads: Vec<f64> = rounds.iter().filter_map(|r| r.loadavg_before).collect();
    match (
        loads.iter().copied().reduce(f64::min),
        loads.iter().copied().reduce(f64::max),
    ) {
        (Some(min), Some(max)) => format!("{min:.2}–{max:.2}"),
        _ => "unknown".into(),
    }
}

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn label(target: &str) -> &str {
    match target {
        "direct" => "direct (no proxy)",
        "rouse" => "rouse-proxy",
        "nginx" => "nginx",
        "haproxy" => "HAProxy",
        other => other,
    }
}

pub fn throughput_markdown(t: &Throughput) -> String {
    let s = |k: &str| t.setup.get(k).map_or("?", String::as_str);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Load generator: {} ({} connections, {} per run), {} rounds \
         round-robin, medians. {} worker threads per proxy. nginx {}, HAProxy {}. \
         1-minute load average before the runs: {}; runs with a compiler running \
         next to them: {} of {}.\n",
        machine_line(&t.machine),
        s("tool_version"),
        s("connections"),
        s("duration"),
        s("rounds"),
        s("threads"),
        s("nginx_version"),
        s("haproxy_version"),
        load_range(&t.rounds),
        t.rounds.iter().filter(|r| r.compilers_running > 0).count(),
        t.rounds.len(),
    );
    md.push_str(
        "| path | req/s | p50 ms | p90 ms | p99 ms | errors | proxy CPU µs/req | of which kernel | backend CPU µs/req | proxy peak RSS MiB |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for target in TARGETS {
        let Some(x) = t.summary.get(target) else {
            continue;
        };
        let opt = |v: Option<f64>, d: usize| v.map_or("–".to_owned(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
            if target == "rouse" {
                format!("**{}**", label(target))
            } else {
                label(target).to_owned()
            },
            x.rps,
            x.p50_ms,
            x.p90_ms,
            x.p99_ms,
            x.errors,
            opt(x.proxy_cpu_us_per_req, 1),
            opt(x.proxy_sys_us_per_req, 1),
            opt(x.backend_cpu_us_per_req, 1),
            opt(x.proxy_peak_rss_kib.map(mib), 1),
        );
    }
    md.push('\n');
    for other in ["nginx", "haproxy", "direct"] {
        if let Some(r) = t.rouse_vs.get(other) {
            let _ = writeln!(
                md,
                "- rouse-proxy ÷ {}: req/s {:.2}×, p99 {:.2}×{} (median of {} per-round ratios)",
                label(other),
                r.rps,
                r.p99,
                r.cpu_per_req.map_or(String::new(), |c| format!(
                    ", proxy CPU per request {c:.2}×"
                )),
                r.rounds
            );
        }
    }
    let _ = writeln!(
        md,
        "- target req/s ≥ {TARGET_RPS_FACTOR}× the better of nginx and HAProxy: {}; \
         p99 ≤ both: {}",
        yes_no(t.target_rps_met),
        yes_no(t.target_p99_met)
    );
    md.push_str("\n![req/s and p99 per path](results/compare/latest.svg)\n");
    md
}

pub fn burst_markdown(b: &BurstResult) -> String {
    let r = &b.report;
    let u = |k: &str| r.get(k).and_then(Value::as_u64);
    let f = |k: &str| r.get(k).and_then(Value::as_f64);
    let ms = |k: &str| f(k).map_or("–".to_owned(), |v| format!("{v:.0} ms"));
    let s = |k: &str| b.setup.get(k).map_or("?", String::as_str);
    let outcomes = r
        .get("outcomes")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}: {}", v.as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. {} concurrent requests (one connection each) at a service with \
         zero replicas whose replica takes {} to start (`--startup-delay`); \
         {} proxy worker threads.\n",
        machine_line(&b.machine),
        u("requests").unwrap_or(0),
        s("startup_delay"),
        s("threads"),
    );
    md.push_str("| metric | value |\n|---|---:|\n");
    let _ = writeln!(
        md,
        "| answered 200 | {} of {} ({outcomes}) |",
        u("ok").unwrap_or(0),
        u("requests").unwrap_or(0)
    );
    let _ = writeln!(
        md,
        "| with `x-rouse-cold-start: true` | {} |",
        u("cold_start_header").unwrap_or(0)
    );
    let _ = writeln!(md, "| all requests sent | {} |", ms("all_sent_ms"));
    let _ = writeln!(md, "| first answer | {} |", ms("first_answer_ms"));
    let _ = writeln!(md, "| last answer | {} |", ms("last_answer_ms"));
    if let (Some(first), Some(last)) = (f("first_answer_ms"), f("last_answer_ms")) {
        let _ = writeln!(
            md,
            "| release: first → last answer | {:.0} ms |",
            last - first
        );
    }
    let _ = writeln!(
        md,
        "| listen backlog overflows (kernel, retried by the client) | {} |",
        u("listen_overflows").map_or("–".into(), |v| v.to_string())
    );
    let _ = writeln!(
        md,
        "| most held at once (`rouse_held`) | {} |",
        u("max_held").map_or("–".into(), |v| v.to_string())
    );
    let kib = |k: &str| u(k).map_or("–".to_owned(), |v| format!("{:.1} MiB", mib(v)));
    let _ = writeln!(md, "| proxy RSS before | {} |", kib("rss_before_kib"));
    let _ = writeln!(md, "| proxy RSS with all held | {} |", kib("rss_held_kib"));
    let _ = writeln!(md, "| proxy peak RSS (VmHWM) | {} |", kib("rss_peak_kib"));
    let _ = writeln!(
        md,
        "| **RSS growth per held request** | **{}** |",
        f("rss_per_held_bytes").map_or("–".into(), |v| format!("{:.1} KiB", v / 1024.0))
    );
    let _ = writeln!(
        md,
        "\nTargets: all answered 200: {}; ≤ {:.0} KiB per held request: {}.",
        yes_no(Some(b.target_all_ok_met)),
        TARGET_BYTES_PER_HELD / 1024.0,
        yes_no(b.target_memory_met)
    );
    md
}

pub fn footprint_markdown(f: &FootprintResult) -> String {
    let fp = &f.footprint;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. {} services configured (process backend, all at zero), \
         read {:.0} s after start.\n",
        machine_line(&f.machine),
        fp.services,
        fp.settle_s
    );
    md.push_str("| process | RSS (VmRSS) | peak (VmHWM) | target |\n|---|---:|---:|---|\n");
    let _ = writeln!(
        md,
        "| rouse-proxy | {:.1} MiB | {:.1} MiB | ≤ {} MiB: {} |",
        mib(fp.proxy_rss_kib),
        mib(fp.proxy_hwm_kib),
        TARGET_PROXY_IDLE_KIB / 1024,
        yes_no(Some(f.target_proxy_met))
    );
    let _ = writeln!(
        md,
        "| rouse-controller | {:.1} MiB | {:.1} MiB | ≤ {} MiB: {} |",
        mib(fp.controller_rss_kib),
        mib(fp.controller_hwm_kib),
        TARGET_CONTROLLER_IDLE_KIB / 1024,
        yes_no(Some(f.target_controller_met))
    );
    if let Some(nats) = fp.nats_rss_kib {
        let _ = writeln!(
            md,
            "| nats-server (for reference) | {:.1} MiB | – | – |",
            mib(nats)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn parses_wrk() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 64 connections\n\
  Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
    Latency     1.10ms  500.00us  20.00ms   90.00%\n\
  Latency Distribution\n     50%  812.00us\n     75%    1.20ms\n     90%    1.80ms\n     99%    3.50ms\n\
  123456 requests in 10.00s, 15.00MB read\n\
  Socket errors: connect 0, read 2, write 0, timeout 1\n\
  Non-2xx or 3xx responses: 5\n\
Requests/sec:  12345.60\nTransfer/sec:      1.50MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.responses, 123_456);
        assert_eq!(r.non_2xx, 5);
        assert_eq!(r.socket_errors, 3);
        assert!((r.rps - 12345.6).abs() < 1e-9);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p90_ms - 1.8).abs() < 1e-9);
        assert!((r.p99_ms - 3.5).abs() < 1e-9);
    }

    #[test]
    fn parses_bombardier() {
        let out = r#"{"spec":{"numberOfConnections":64},"result":{"bytesRead":1,"bytesWritten":1,
            "timeTakenSeconds":10.0,"req1xx":0,"req2xx":1000,"req3xx":0,"req4xx":0,"req5xx":10,
            "others":0,"errors":[{"description":"timeout","count":2}],
            "latency":{"mean":900.0,"stdev":10.0,"max":5000.0,
            "percentiles":{"50":800,"75":1000,"90":1500,"95":2000,"99":3000}}}}"#;
        let r = parse_bombardier(out).unwrap();
        assert_eq!(r.responses, 1010);
        assert_eq!(r.non_2xx, 10);
        assert_eq!(r.socket_errors, 2);
        assert!((r.rps - 101.0).abs() < 1e-9);
        assert!((r.p50_ms - 0.8).abs() < 1e-9);
        assert!((r.p99_ms - 3.0).abs() < 1e-9);
    }

    #[test]
    fn parses_oha() {
        let out = r#"{"summary":{"successRate":1.0,"total":10.0,"requestsPerSec":100.0},
            "latencyPercentiles":{"p50":0.001,"p90":0.002,"p99":0.004},
            "statusCodeDistribution":{"200":990,"503":10},
            "errorDistribution":{"aborted due to deadline":64,"connection refused":1}}"#;
        let r = parse_oha(out).unwrap();
        assert_eq!(r.responses, 1000);
        assert_eq!(r.non_2xx, 10);
        assert_eq!(r.socket_errors, 1);
        assert!((r.rps - 100.0).abs() < 1e-9);
        assert!((r.p99_ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn lists_ready_replicas() {
        let listing = r#"{"services":[{"name":"echo","replicas":[
            {"id":"echo-1","addr":"127.0.0.1:4000","state":"ready"},
            {"id":"echo-2","addr":"127.0.0.1:4001","state":"starting"}]}]}"#;
        let ready = ready_replicas(listing, "echo", None).unwrap();
        assert_eq!(ready, vec![("127.0.0.1:4000".to_owned(), None)]);
        assert!(ready_replicas(listing, "other", None).is_err());
    }

    fn round(target: &str, round: u32, rps: f64, p99_ms: f64, cpu: f64) -> RoundResult {
        RoundResult {
            target: target.to_owned(),
            round,
            tool: Tool::Oha,
            connections: 64,
            duration_s: 10.0,
            wall_s: 10.0,
            loadavg_before: None,
            compilers_running: 0,
            load: LoadResult {
                responses: (rps * 10.0) as u64,
                non_2xx: 0,
                socket_errors: 0,
                rps,
                p50_ms: p99_ms / 3.0,
                p90_ms: p99_ms / 2.0,
                p99_ms,
            },
            errors: 0,
            proxy_cpu_s: None,
            proxy_cpu_us_per_req: Some(cpu),
            proxy_sys_us_per_req: None,
            proxy_peak_rss_kib: None,
            proxy_processes: 1,
            backend_cpu_s: None,
            backend_cpu_us_per_req: None,
        }
    }

    #[test]
    fn ratios_pair_the_runs_of_each_round() {
        // Round 2 ran on a machine half as fast for everyone: per-round
        // ratios stay 1.25; ratios of medians would say 1.0 (40k vs 40k).
        let rounds = vec![
            round("rouse", 1, 50_000.0, 4.0, 20.0),
            round("nginx", 1, 40_000.0, 5.0, 25.0),
            round("rouse", 2, 25_000.0, 8.0, 40.0),
            round("nginx", 2, 20_000.0, 10.0, 50.0),
            round("rouse", 3, 40_000.0, 4.0, 20.0),
            round("nginx", 3, 32_000.0, 5.0, 25.0),
            round("haproxy", 1, 50_000.0, 4.0, 20.0),
        ];
        let t = throughput(Machine::default(), BTreeMap::new(), rounds);
        let nginx = &t.rouse_vs["nginx"];
        assert!((nginx.rps - 1.25).abs() < 1e-9, "{nginx:?}");
        assert!((nginx.p99 - 0.8).abs() < 1e-9);
        assert_eq!(nginx.cpu_per_req.map(|c| (c * 100.0).round()), Some(80.0));
        assert_eq!(nginx.rounds, 3);
        // Only round 1 has both rouse and haproxy: one pair, ratio 1.0.
        assert_eq!(t.rouse_vs["haproxy"].rounds, 1);
        assert!((t.rouse_vs["haproxy"].rps - 1.0).abs() < 1e-9);
        assert_eq!(t.target_rps_met, Some(false));
        assert_eq!(t.target_p99_met, Some(true));
        assert!(!t.rouse_vs.contains_key("direct"));
    }

    #[test]
    fn replaces_a_block() {
        let text = "a\n<!-- compare:x:begin -->\nold\n<!-- compare:x:end -->\nb\n";
        let out = replace_block(text, "x", "new\n").unwrap();
        assert_eq!(
            out,
            "a\n<!-- compare:x:begin -->\nnew\n<!-- compare:x:end -->\nb\n"
        );
        assert!(replace_block(text, "y", "new").is_err());
    }
}
