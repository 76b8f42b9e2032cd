//! One load run against one path of the comparison: finding the load
//! generator (bombardier, oha or wrk), running it, reading the CPU time of
//! the proxy's processes before and after (`/proc/<pid>/stat`) and their
//! peak RSS after (`VmHWM`), and parsing what the generator reported.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::ValueEnum;
use rouse_stack::procfs;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Extra time the load generator gets beyond its duration before it is
/// killed.
const LOADGEN_GRACE: Duration = Duration::from_secs(60);

/// A load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Tool {
    Bombardier,
    Oha,
    Wrk,
}

impl Tool {
    /// The tool's executable name: `bombardier`, `oha`, `wrk`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Bombardier => "bombardier",
            Tool::Oha => "oha",
            Tool::Wrk => "wrk",
        }
    }
}

/// A load generator found on this machine.
#[derive(Debug, Clone)]
pub(crate) struct Loadgen {
    pub tool: Tool,
    pub bin: PathBuf,
    pub version: String,
}

impl Loadgen {
    /// `choice` (`bombardier`, `oha`, `wrk`), or for `auto` the first of
    /// them that is installed.
    pub fn find(choice: &str) -> anyhow::Result<Loadgen> {
        let tools: Vec<Tool> = match choice {
            "auto" => Tool::value_variants().to_vec(),
            name => vec![Tool::from_str(name, false)
                .map_err(|_| anyhow!("LOADGEN must be bombardier, oha or wrk"))?],
        };
        for tool in tools {
            let Some(bin) = find_tool(tool.name()) else {
                continue;
            };
            let version = match tool {
                Tool::Wrk => first_line(&bin, "-v")
                    .splitn(3, ' ')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => first_line(&bin, "--version"),
            };
            return Ok(Loadgen { tool, bin, version });
        }
        match choice {
            "auto" => bail!("no load generator: install bombardier, oha (cargo install oha --locked) or wrk (apt-get install wrk)"),
            name => bail!("LOADGEN={name} is not installed"),
        }
    }
}

/// `name` on `PATH`, or in the other places tools get installed to.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cargo_home =
        std::env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .chain([cargo_home.join("bin"), home.join("go/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The first line `bin arg` prints (on stdout, else on stderr).
pub(crate) fn first_line(bin: &Path, arg: &str) -> String {
    let Ok(out) = Command::new(bin).arg(arg).output() else {
        return String::new();
    };
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct MeasureArgs {
    /// Name of the path measured (direct, rouse, nginx, haproxy).
    pub target: String,
    /// Round number (1-based; 0 for the warm-up).
    pub round: u32,
    pub loadgen: Loadgen,
    /// URL requested.
    pub url: String,
    pub connections: u32,
    pub duration: Duration,
    /// Root pids of the proxy; their whole process trees are counted.
    pub pids: Vec<u32>,
    /// Pid of the backend, to record its CPU time too.
    pub backend_pid: Option<u32>,
    /// Where the load generator's raw output is kept.
    pub raw_dir: PathBuf,
}

/// What a load generator reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LoadResult {
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
pub(crate) struct RoundResult {
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
    pids.iter().map(|&pid| procfs::cpu_ticks(pid)).sum()
}

/// Sum of kernel CPU ticks of processes.
fn sum_system_ticks(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&pid| procfs::system_ticks(pid)).sum()
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
fn loadgen_command(args: &MeasureArgs) -> Command {
    let mut cmd = Command::new(&args.loadgen.bin);
    let conns = args.connections.to_string();
    let secs = format!("{}s", args.duration.as_secs().max(1));
    match args.loadgen.tool {
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
            let threads = std::thread::available_parallelism()
                .map_or(2, |n| n.get() as u32)
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

/// Runs one round: the load generator against one target, with the CPU
/// time and peak RSS of the target's processes around it.
pub(crate) fn measure(args: &MeasureArgs) -> anyhow::Result<RoundResult> {
    let trees: Vec<Vec<u32>> = args
        .pids
        .iter()
        .map(|&pid| procfs::process_tree(pid))
        .collect();
    for (root, tree) in args.pids.iter().zip(&trees) {
        if tree.is_empty() {
            bail!("process {root} of target {} is not running", args.target);
        }
    }
    let all: Vec<u32> = trees.iter().flatten().copied().collect();
    let serving: Vec<u32> = trees
        .iter()
        .flat_map(|t| procfs::workers(t).iter().copied())
        .collect();

    let raw_dir = &args.raw_dir;
    std::fs::create_dir_all(raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;
    let raw_path = raw_dir.join(format!("{}-{}.out", args.target, args.round));
    let raw_err = raw_dir.join(format!("{}-{}.err", args.target, args.round));
    let stdout =
        File::create(&raw_path).with_context(|| format!("creating {}", raw_path.display()))?;
    let stderr =
        File::create(&raw_err).with_context(|| format!("creating {}", raw_err.display()))?;

    let mut cmd = loadgen_command(args);
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let loadavg_before = loadavg();
    let compilers_running = procfs::count_processes(&["rustc", "cc1", "cc1plus", "ld", "cargo"]);
    let cpu_before = sum_ticks(&all);
    let sys_before = sum_system_ticks(&all);
    let backend_before = args.backend_pid.and_then(procfs::cpu_ticks);
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
    let backend_after = args.backend_pid.and_then(procfs::cpu_ticks);
    let peak_rss: Option<u64> = serving
        .iter()
        .map(|&pid| procfs::proc_status_kib(pid, "VmHWM"))
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
    let load = parse_output(args.loadgen.tool, &output)
        .with_context(|| format!("parsing the output in {}", raw_path.display()))?;

    let tck = procfs::clock_ticks_per_second() as f64;
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
        tool: args.loadgen.tool,
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
pub(crate) fn parse_output(tool: Tool, output: &str) -> anyhow::Result<LoadResult> {
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
pub(crate) fn parse_bombardier(output: &str) -> anyhow::Result<LoadResult> {
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
pub(crate) fn parse_oha(output: &str) -> anyhow::Result<LoadResult> {
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
pub(crate) fn parse_wrk(output: &str) -> anyhow::Result<LoadResult> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
