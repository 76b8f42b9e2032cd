//! The comparison's results: medians over rounds and paired ratios
//! (throughput), the targets of each part, `latest.json`, and the Markdown
//! blocks of `bench/README.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chart::chart;
use super::loadgen::RoundResult;
use super::TARGETS;
use rouse_bench::results::{median, write_json, Machine};

/// Targets of the issue, checked (never asserted) by the report.
pub(crate) const TARGET_RPS_FACTOR: f64 = 1.2;
/// rouse-proxy's CPU per request ÷ nginx's, at most.
pub(crate) const TARGET_CPU_VS_NGINX: f64 = 1.0;
pub(crate) const TARGET_BYTES_PER_HELD: f64 = 10.0 * 1024.0;
pub(crate) const TARGET_PROXY_IDLE_KIB: u64 = 15 * 1024;
pub(crate) const TARGET_CONTROLLER_IDLE_KIB: u64 = 20 * 1024;

/// Idle footprint of a rouse stack with many services configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Footprint {
    /// Services in the configuration (all at zero replicas).
    pub services: u32,
    /// Seconds between start-up and the reading.
    pub settle_s: f64,
    pub proxy_rss_kib: u64,
    pub proxy_hwm_kib: u64,
    pub controller_rss_kib: u64,
    pub controller_hwm_kib: u64,
    /// nats-server, for reference (not rouse's).
    pub nats_rss_kib: Option<u64>,
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Median of one metric over the rounds of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Summary {
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
fn paired_ratio(rounds: &[RoundResult], path: &str, other: &str) -> Option<Ratio> {
    let mut rps = Vec::new();
    let mut p99 = Vec::new();
    let mut cpu = Vec::new();
    for mine in rounds.iter().filter(|r| r.target == path) {
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
pub(crate) struct Ratio {
    pub rps: f64,
    pub p99: f64,
    pub cpu_per_req: Option<f64>,
    /// Rounds with both paths measured (the ratios are their medians).
    #[serde(default)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Throughput {
    pub machine: Machine,
    pub setup: BTreeMap<String, String>,
    pub summary: BTreeMap<String, Summary>,
    /// rouse ÷ nginx, rouse ÷ haproxy, rouse ÷ direct.
    pub rouse_vs: BTreeMap<String, Ratio>,
    /// The bare hyper 1 proxy ÷ nginx and ÷ haproxy: how far below nginx
    /// any proxy on hyper's codecs can get here.
    #[serde(default)]
    pub floor_vs: BTreeMap<String, Ratio>,
    /// rouse-proxy with its access log on ÷ the same without (`rouse`):
    /// what the access log costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_vs_off: Option<Ratio>,
    /// rouse-proxy with tracing on (every request sampled) ÷ without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_vs_off: Option<Ratio>,
    /// rouse req/s ≥ 1.2 × the better of nginx and haproxy.
    pub target_rps_met: Option<bool>,
    /// rouse p99 ≤ the p99 of both nginx and haproxy.
    pub target_p99_met: Option<bool>,
    /// rouse's proxy CPU per request ≤ nginx's (median of per-round ratios).
    #[serde(default)]
    pub target_cpu_met: Option<bool>,
    pub rounds: Vec<RoundResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BurstResult {
    pub machine: Machine,
    pub setup: BTreeMap<String, String>,
    #[serde(flatten)]
    pub report: Value,
    pub target_all_ok_met: bool,
    pub target_memory_met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FootprintResult {
    pub machine: Machine,
    #[serde(flatten)]
    pub footprint: Footprint,
    pub target_proxy_met: bool,
    pub target_controller_met: bool,
}

/// One run of `bench/run`: the parts it measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub footprint: Option<FootprintResult>,
}

pub(crate) fn throughput(
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
    for other in ["nginx", "haproxy", "direct", "floor"] {
        if let Some(ratio) = paired_ratio(&rounds, "rouse", other) {
            rouse_vs.insert(other.to_owned(), ratio);
        }
    }
    let mut floor_vs = BTreeMap::new();
    for other in ["nginx", "haproxy"] {
        if let Some(ratio) = paired_ratio(&rounds, "floor", other) {
            floor_vs.insert(other.to_owned(), ratio);
        }
    }
    let access_log_vs_off = paired_ratio(&rounds, "rouse-log", "rouse");
    let tracing_vs_off = paired_ratio(&rounds, "rouse-trace", "rouse");
    let (target_rps_met, target_p99_met) = match (rouse_vs.get("nginx"), rouse_vs.get("haproxy")) {
        (Some(n), Some(h)) => (
            Some(n.rps.min(h.rps) >= TARGET_RPS_FACTOR),
            Some(n.p99.max(h.p99) <= 1.0),
        ),
        _ => (None, None),
    };
    let target_cpu_met = rouse_vs
        .get("nginx")
        .and_then(|n| n.cpu_per_req)
        .map(|ratio| ratio <= TARGET_CPU_VS_NGINX);
    Throughput {
        machine,
        setup,
        summary,
        rouse_vs,
        floor_vs,
        access_log_vs_off,
        tracing_vs_off,
        target_rps_met,
        target_p99_met,
        target_cpu_met,
        rounds,
    }
}

impl BurstResult {
    /// The targets, checked on what `rouse-burst` reported.
    pub fn new(machine: Machine, setup: BTreeMap<String, String>, mut report: Value) -> Self {
        let requests = report.get("requests").and_then(Value::as_u64).unwrap_or(0);
        let ok = report.get("ok").and_then(Value::as_u64).unwrap_or(0);
        let per_held = report.get("rss_per_held_bytes").and_then(Value::as_f64);
        if let Some(obj) = report.as_object_mut() {
            obj.remove("machine");
        }
        Self {
            machine,
            setup,
            report,
            target_all_ok_met: requests > 0 && ok == requests,
            target_memory_met: per_held.map(|b| b <= TARGET_BYTES_PER_HELD),
        }
    }
}

impl FootprintResult {
    /// The targets, checked on a reading.
    pub fn new(machine: Machine, footprint: Footprint) -> Self {
        Self {
            machine,
            target_proxy_met: footprint.proxy_rss_kib <= TARGET_PROXY_IDLE_KIB,
            target_controller_met: footprint.controller_rss_kib <= TARGET_CONTROLLER_IDLE_KIB,
            footprint,
        }
    }
}

/// Writes what this run measured: `latest.json` in `out_dir` (the newest
/// result of each part; older ones are in git history), the chart
/// `latest.svg`, and the generated blocks of `readme`, if given.
pub(crate) fn publish(run: &Results, out_dir: &Path, readme: Option<&Path>) -> anyhow::Result<()> {
    let latest_path = out_dir.join("latest.json");
    let mut latest: Results = std::fs::read_to_string(&latest_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if run.throughput.is_some() {
        latest.throughput.clone_from(&run.throughput);
    }
    if run.burst.is_some() {
        latest.burst.clone_from(&run.burst);
    }
    if run.footprint.is_some() {
        latest.footprint.clone_from(&run.footprint);
    }
    write_json(&latest_path, &latest)?;
    println!("results: {}", latest_path.display());

    let mut blocks = Vec::new();
    if let Some(t) = &run.throughput {
        let svg = out_dir.join("latest.svg");
        chart(t, &svg)?;
        println!("chart: {}", svg.display());
        blocks.push(("throughput", throughput_markdown(t)));
    }
    if let Some(b) = &run.burst {
        blocks.push(("burst", burst_markdown(b)));
    }
    if let Some(f) = &run.footprint {
        blocks.push(("footprint", footprint_markdown(f)));
    }
    for (_, md) in &blocks {
        println!("\n{md}");
    }
    if let Some(readme) = readme {
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

/// Replaces what lies between `<!-- compare:NAME:begin -->` and
/// `<!-- compare:NAME:end -->`.
pub(crate) fn replace_block(text: &str, name: &str, content: &str) -> anyhow::Result<String> {
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

pub(crate) fn label(target: &str) -> &str {
    match target {
        "direct" => "direct (no proxy)",
        "rouse" => "rouse-proxy",
        "nginx" => "nginx",
        "haproxy" => "HAProxy",
        "floor" => "bare hyper 1 proxy (rouse-floor)",
        "rouse-log" => "rouse-proxy, access log on",
        "rouse-trace" => "rouse-proxy, tracing on",
        other => other,
    }
}

pub(crate) fn throughput_markdown(t: &Throughput) -> String {
    let s = |k: &str| t.setup.get(k).map_or("?", String::as_str);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. Load generator: {} ({} connections, {} per run), {} rounds \
         round-robin, medians. {} worker threads per proxy. nginx {}, HAProxy {}. \
         1-minute load average before the runs: {}; runs with a compiler running \
         next to them: {} of {}.\n",
        t.machine.line(),
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
    for other in ["nginx", "haproxy", "direct", "floor"] {
        if let Some(r) = t.rouse_vs.get(other) {
            ratio_line(&mut md, ("rouse", other), r, true, "");
        }
    }
    for (other, r) in &t.floor_vs {
        ratio_line(&mut md, ("floor", other), r, false, "");
    }
    if let Some(r) = &t.access_log_vs_off {
        let written = t
            .setup
            .get("access_log_bytes")
            .and_then(|b| b.parse::<f64>().ok())
            .map_or("?".to_owned(), |b| format!("{:.0}", b / 1048576.0));
        let note = format!(
            "; JSON lines to a file, {written} MiB written, {} lines dropped",
            s("access_log_dropped")
        );
        ratio_line(&mut md, ("rouse-log", "rouse"), r, true, &note);
    }
    if let Some(r) = &t.tracing_vs_off {
        let note = format!(
            "; every request sampled, OTLP/gRPC to a local collector, {} spans received \
             per request answered, {} dropped",
            s("spans_per_request"),
            s("trace_spans_dropped")
        );
        ratio_line(&mut md, ("rouse-trace", "rouse"), r, true, &note);
    }
    let _ = writeln!(
        md,
        "- target req/s ≥ {TARGET_RPS_FACTOR}× the better of nginx and HAProxy: {}; \
         p99 ≤ both: {}; proxy CPU per request ≤ nginx's: {}",
        yes_no(t.target_rps_met),
        yes_no(t.target_p99_met),
        yes_no(t.target_cpu_met)
    );
    md.push_str("\n![req/s and p99 per path](results/compare/latest.svg)\n");
    md
}

/// One "- A ÷ B: req/s …" line of the throughput report; `note` goes
/// inside the closing parenthesis.
fn ratio_line(md: &mut String, (of, to): (&str, &str), r: &Ratio, p99: bool, note: &str) {
    let p99 = if p99 {
        format!(", p99 {:.2}×", r.p99)
    } else {
        String::new()
    };
    let cpu = r.cpu_per_req.map_or(String::new(), |c| {
        format!(", proxy CPU per request {c:.2}×")
    });
    let _ = writeln!(
        md,
        "- {} ÷ {}: req/s {:.2}×{p99}{cpu} (median of {} per-round ratios{note})",
        label(of),
        label(to),
        r.rps,
        r.rounds
    );
}

pub(crate) fn burst_markdown(b: &BurstResult) -> String {
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
        b.machine.line(),
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

pub(crate) fn footprint_markdown(f: &FootprintResult) -> String {
    let fp = &f.footprint;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}. {} services configured (process backend, all at zero), \
         read {:.0} s after start.\n",
        f.machine.line(),
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
    use crate::loadgen::{LoadResult, Tool};

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
        // rouse used 0.8× nginx's CPU per request.
        assert_eq!(t.target_cpu_met, Some(true));
        assert!(!t.rouse_vs.contains_key("direct"));
    }

    #[test]
    fn the_access_log_is_priced_against_the_same_proxy_without_it() {
        let rounds = vec![
            round("rouse", 1, 40_000.0, 4.0, 24.0),
            round("rouse-log", 1, 36_000.0, 4.4, 27.0),
            round("rouse", 2, 20_000.0, 8.0, 48.0),
            round("rouse-log", 2, 18_000.0, 8.8, 54.0),
            round("nginx", 1, 45_000.0, 4.0, 20.0),
        ];
        let setup = BTreeMap::from([
            ("access_log_bytes".to_owned(), (300u64 << 20).to_string()),
            ("access_log_dropped".to_owned(), "0".to_owned()),
        ]);
        let t = throughput(Machine::default(), setup, rounds);
        let log = t.access_log_vs_off.as_ref().expect("both paths ran");
        assert_eq!(log.rounds, 2);
        assert!((log.rps - 0.9).abs() < 1e-9, "{log:?}");
        assert_eq!(log.cpu_per_req.map(|c| (c * 1000.0).round()), Some(1125.0));
        assert!(
            !t.rouse_vs.contains_key("rouse-log"),
            "not a rival of its own"
        );
        let md = throughput_markdown(&t);
        assert!(
            md.contains("rouse-proxy, access log on ÷ rouse-proxy: req/s 0.90×"),
            "{md}"
        );
        assert!(md.contains("300 MiB written, 0 lines dropped"), "{md}");
        let without = throughput(Machine::default(), BTreeMap::new(), Vec::new());
        assert!(without.access_log_vs_off.is_none());
        assert!(without.tracing_vs_off.is_none());
        assert!(t.tracing_vs_off.is_none(), "no rouse-trace rounds");
    }

    #[test]
    fn the_floor_is_compared_with_nginx_and_haproxy_in_the_same_rounds() {
        let rounds = vec![
            round("rouse", 1, 40_000.0, 4.0, 24.0),
            round("floor", 1, 50_000.0, 4.0, 18.0),
            round("nginx", 1, 45_000.0, 4.0, 20.0),
            round("rouse", 2, 20_000.0, 8.0, 48.0),
            round("floor", 2, 25_000.0, 8.0, 36.0),
            round("nginx", 2, 22_500.0, 8.0, 40.0),
        ];
        let t = throughput(Machine::default(), BTreeMap::new(), rounds);
        let floor = &t.floor_vs["nginx"];
        assert_eq!(floor.rounds, 2);
        assert_eq!(floor.cpu_per_req.map(|c| (c * 100.0).round()), Some(90.0));
        assert!(!t.floor_vs.contains_key("haproxy"), "no haproxy rounds");
        let rouse = &t.rouse_vs["floor"];
        assert_eq!(rouse.cpu_per_req.map(|c| (c * 100.0).round()), Some(133.0));
        let md = throughput_markdown(&t);
        assert!(
            md.contains("bare hyper 1 proxy (rouse-floor) ÷ nginx"),
            "{md}"
        );
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
