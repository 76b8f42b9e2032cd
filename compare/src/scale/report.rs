//! The scale benchmark's results: the targets checked (never
//! asserted), `latest.json` (the newest result of each part) and the
//! `scale` block of `bench/README.md`.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::held::HeldReport;
use super::sample::{Reading, Window};
use super::Cli;
use crate::report::replace_block;
use rouse_bench::results::{write_json, Machine};

/// "Near zero" CPU for an idle process, percent of one core.
pub(crate) const TARGET_IDLE_CPU_PERCENT: f64 = 1.0;
/// Bus messages per second at idle, as a multiple of the proxies'
/// heartbeats (one per proxy per report interval).
pub(crate) const TARGET_IDLE_BUS_FACTOR: f64 = 1.5;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ScaleResults {
    pub machine: Machine,
    /// rustc processes running when the run began.
    #[serde(default)]
    pub other_builds: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<HeldReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IdleResult {
    pub services: u32,
    pub proxies: u32,
    pub report_interval: String,
    /// Heartbeats per second the proxies send (proxies ÷ interval).
    pub heartbeats_per_s: f64,
    /// From the start of nats-server to every proxy ready.
    pub ready_s: f64,
    pub window: Window,
    pub baseline_services: u32,
    /// (RSS with `services` − RSS with `baseline_services`) ÷ the
    /// difference in services.
    pub proxy_bytes_per_service: f64,
    pub controller_bytes_per_service: f64,
    pub target_bus_met: bool,
    pub target_cpu_met: bool,
}

impl IdleResult {
    pub fn new(cli: &Cli, ready_s: f64, base: &Reading, window: Window) -> IdleResult {
        let interval = humantime::parse_duration(&cli.report_interval)
            .map_or(1.0, |d| d.as_secs_f64().max(1e-3));
        let heartbeats_per_s = f64::from(cli.proxies) / interval;
        let extra = f64::from(cli.services.saturating_sub(cli.baseline_services).max(1));
        let per_service = |now: u64, then: u64| now.saturating_sub(then) as f64 * 1024.0 / extra;
        IdleResult {
            services: cli.services,
            proxies: cli.proxies,
            report_interval: cli.report_interval.clone(),
            heartbeats_per_s,
            ready_s,
            baseline_services: cli.baseline_services,
            proxy_bytes_per_service: per_service(
                window.max_proxy_rss_kib(),
                base.max_proxy_rss_kib(),
            ),
            controller_bytes_per_service: per_service(
                window.controller_rss_kib,
                base.controller_rss_kib(),
            ),
            target_bus_met: window.bus_in_msgs_per_s <= heartbeats_per_s * TARGET_IDLE_BUS_FACTOR,
            target_cpu_met: window.controller_cpu_percent <= TARGET_IDLE_CPU_PERCENT
                && window.max_proxy_cpu_percent() <= TARGET_IDLE_CPU_PERCENT,
            window,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ActiveResult {
    /// Services with traffic.
    pub services: u32,
    pub rate_per_service: u32,
    /// From the first request until every active service had answered.
    pub warm_s: f64,
    /// Answered 200 per second during the window.
    pub requests_per_s: f64,
    pub failed_in_window: u64,
    /// Failed over the whole part, cold starts included.
    pub failed_total: u64,
    pub window: Window,
}

/// Writes `latest.json` (this run's parts replace the stored ones) and the
/// README block.
pub(crate) fn publish(cli: &Cli, run: ScaleResults) -> anyhow::Result<()> {
    let path = cli.out.join("latest.json");
    let mut latest: ScaleResults = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    latest.machine = run.machine;
    latest.other_builds = run.other_builds;
    if run.idle.is_some() {
        // The active part is read against the idle one of its own stack:
        // a new idle result without one leaves none.
        latest.idle = run.idle;
        latest.active = run.active;
    }
    if run.held.is_some() {
        latest.held = run.held;
    }
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    write_json(&path, &latest)?;
    println!("results: {}", path.display());
    write_readme(cli, &latest)
}

/// Rewrites the README block from the stored `latest.json`.
pub(crate) fn republish(cli: &Cli) -> anyhow::Result<()> {
    let path = cli.out.join("latest.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let latest: ScaleResults =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    write_readme(cli, &latest)
}

fn write_readme(cli: &Cli, results: &ScaleResults) -> anyhow::Result<()> {
    let md = markdown(results);
    println!("\n{md}");
    if cli.no_readme {
        return Ok(());
    }
    let readme = &cli.readme;
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let text = replace_block(&text, "scale", &md)
        .with_context(|| format!("updating {}", readme.display()))?;
    std::fs::write(readme, text).with_context(|| format!("writing {}", readme.display()))?;
    println!("updated {}", readme.display());
    Ok(())
}

fn met(yes: bool) -> &'static str {
    if yes {
        "**met**"
    } else {
        "**not met**"
    }
}

fn cpu_list(w: &Window) -> String {
    let each: Vec<String> = w
        .proxy_cpu_percent
        .iter()
        .map(|c| format!("{c:.2}"))
        .collect();
    each.join(" / ")
}

pub(crate) fn markdown(r: &ScaleResults) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {}; rustc processes running at the start: {}.\n",
        r.machine.line(),
        r.other_builds
    );
    if let Some(idle) = &r.idle {
        let w = &idle.window;
        let _ = writeln!(
            md,
            "**Idle**: {} services (process backend, all at zero), {} proxies, \
             `report_interval: {}`, measured over {:.0} s after every proxy was ready.\n",
            idle.services, idle.proxies, idle.report_interval, w.seconds
        );
        md.push_str("| figure | idle |");
        if r.active.is_some() {
            md.push_str(" active |");
        }
        md.push_str("\n|---|---:|");
        if r.active.is_some() {
            md.push_str("---:|");
        }
        md.push('\n');
        let active = r.active.as_ref().map(|a| &a.window);
        let mut row = |name: &str, f: &dyn Fn(&Window) -> String| {
            let _ = write!(md, "| {name} | {} |", f(w));
            if let Some(a) = active {
                let _ = write!(md, " {} |", f(a));
            }
            md.push('\n');
        };
        row("bus messages in / s", &|w| {
            format!("{:.1}", w.bus_in_msgs_per_s)
        });
        row("bus bytes in / s", &|w| {
            format!("{:.0}", w.bus_in_bytes_per_s)
        });
        row("bus messages out / s", &|w| {
            format!("{:.1}", w.bus_out_msgs_per_s)
        });
        row("controller CPU, % of a core", &|w| {
            format!("{:.2}", w.controller_cpu_percent)
        });
        row("each proxy's CPU, % of a core", &|w| cpu_list(w));
        row("nats-server CPU, % of a core", &|w| {
            format!("{:.2}", w.nats_cpu_percent)
        });
        row("controller RSS, MiB", &|w| {
            format!("{:.1}", w.controller_rss_kib as f64 / 1024.0)
        });
        row("largest proxy RSS, MiB", &|w| {
            format!("{:.1}", w.max_proxy_rss_kib() as f64 / 1024.0)
        });
        md.push('\n');
        let _ = writeln!(md, "- start → every proxy ready: {:.1} s", idle.ready_s);
        let _ = writeln!(
            md,
            "- memory per configured service (against {} services): proxy {:.1} KiB, controller {:.1} KiB",
            idle.baseline_services,
            idle.proxy_bytes_per_service / 1024.0,
            idle.controller_bytes_per_service / 1024.0
        );
        let _ = writeln!(
            md,
            "- idle bus messages ≤ {TARGET_IDLE_BUS_FACTOR} × the heartbeats ({:.1}/s): {}; \
             idle controller and every proxy ≤ {TARGET_IDLE_CPU_PERCENT} % of a core: {}",
            idle.heartbeats_per_s,
            met(idle.target_bus_met),
            met(idle.target_cpu_met)
        );
    }
    if let Some(a) = &r.active {
        let _ = writeln!(
            md,
            "- **active**: {} services at {} req/s each ({:.0} req/s answered in the window, \
             {} failed in it, {} over the whole part with the cold starts); every active \
             service answered {:.1} s after the first request",
            a.services,
            a.rate_per_service,
            a.requests_per_s,
            a.failed_in_window,
            a.failed_total,
            a.warm_s
        );
        if let Some(idle) = &r.idle {
            let extra = |active: f64, idle: f64| (active - idle) / f64::from(a.services.max(1));
            let _ =
                writeln!(
                md,
                "- per active service above idle: controller {:.3} % of a core, bus {:.0} bytes/s",
                extra(a.window.controller_cpu_percent, idle.window.controller_cpu_percent),
                extra(a.window.bus_in_bytes_per_s, idle.window.bus_in_bytes_per_s)
            );
        }
    }
    if let Some(h) = &r.held {
        let kib = |v: Option<u64>| {
            v.map_or("–".to_owned(), |v| {
                format!("{:.1} MiB", v as f64 / 1024.0)
            })
        };
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0} ms"));
        let outcomes: Vec<String> = h
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            md,
            "\n**Held**: {} requests over {} h2c connections to one proxy, at a service \
             whose replica starts slowly.\n",
            h.requests, h.connections
        );
        md.push_str("| figure | value |\n|---|---:|\n");
        let _ = writeln!(
            md,
            "| answered 200 | {} of {} ({}) |",
            h.ok,
            h.requests,
            outcomes.join(", ")
        );
        let _ = writeln!(md, "| all streams sent | {:.0} ms |", h.all_sent_ms);
        let _ = writeln!(md, "| first answer | {} |", ms(h.first_answer_ms));
        let _ = writeln!(md, "| last answer | {} |", ms(h.last_answer_ms));
        let _ = writeln!(md, "| most held at once (`rouse_held`) | {} |", h.max_held);
        let _ = writeln!(md, "| proxy RSS before | {} |", kib(Some(h.rss_before_kib)));
        let _ = writeln!(md, "| proxy RSS with all held | {} |", kib(h.rss_held_kib));
        let _ = writeln!(md, "| proxy peak RSS (VmHWM) | {} |", kib(h.rss_peak_kib));
        let _ = writeln!(
            md,
            "| **RSS per held request** | **{}** |",
            h.rss_per_held_bytes
                .map_or("–".to_owned(), |b| format!("{:.2} KiB", b / 1024.0))
        );
        let _ = writeln!(
            md,
            "\nEvery request answered 200: {}.",
            met(h.ok == h.requests)
        );
    }
    md
}

pub(crate) fn print_window(part: &str, w: &Window) {
    println!(
        "{part}: bus {:.1} msgs/s in ({:.0} B/s), controller {:.2} %, proxies {} %, nats {:.2} %, controller RSS {} KiB, largest proxy RSS {} KiB",
        w.bus_in_msgs_per_s,
        w.bus_in_bytes_per_s,
        w.controller_cpu_percent,
        cpu_list(w),
        w.nats_cpu_percent,
        w.controller_rss_kib,
        w.max_proxy_rss_kib()
    );
}

pub(crate) fn print_held(h: &HeldReport) {
    println!(
        "held: {} of {} answered 200 ({:?}); most held {}; RSS per held {:?} bytes",
        h.ok, h.requests, h.outcomes, h.max_held, h.rss_per_held_bytes
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(bus: f64, controller: f64, proxy: f64) -> Window {
        Window {
            seconds: 30.0,
            bus_in_msgs_per_s: bus,
            bus_in_bytes_per_s: bus * 200.0,
            bus_out_msgs_per_s: bus,
            controller_cpu_percent: controller,
            proxy_cpu_percent: vec![proxy, proxy / 2.0],
            nats_cpu_percent: 0.1,
            controller_rss_kib: 40 * 1024,
            proxy_rss_kib: vec![30 * 1024, 29 * 1024],
            nats_rss_kib: 20 * 1024,
        }
    }

    #[test]
    fn idle_targets_follow_the_heartbeats_and_the_cpu() {
        use clap::Parser as _;
        let cli = Cli::parse_from(["rouse-scale", "--proxies", "2", "--services", "1010"]);
        // 2 proxies at 1 s: 2 heartbeats/s, 3/s allowed.
        let quiet = IdleResult::new(
            &cli,
            5.0,
            &fake_reading(10 * 1024, 20 * 1024),
            window(2.9, 0.5, 0.9),
        );
        assert!(quiet.target_bus_met && quiet.target_cpu_met, "{quiet:?}");
        // 30 MiB − 20 MiB over 1000 more services: 10.24 KiB each.
        assert!((quiet.proxy_bytes_per_service - 10.0 * 1024.0 * 1024.0 / 1000.0).abs() < 1e-6);
        let chatty = IdleResult::new(
            &cli,
            5.0,
            &fake_reading(10 * 1024, 20 * 1024),
            window(3.5, 0.5, 0.9),
        );
        assert!(!chatty.target_bus_met);
        let busy = IdleResult::new(
            &cli,
            5.0,
            &fake_reading(10 * 1024, 20 * 1024),
            window(2.0, 0.2, 1.5),
        );
        assert!(!busy.target_cpu_met);
        let md = markdown(&ScaleResults {
            idle: Some(busy),
            ..ScaleResults::default()
        });
        assert!(md.contains("1010 services"), "{md}");
        assert!(md.contains("1.50 / 0.75"), "{md}");
    }

    fn fake_reading(controller_kib: u64, proxy_kib: u64) -> Reading {
        Reading::fake(controller_kib, proxy_kib)
    }
}
