//! CSV files, SVG charts and the Markdown summaries: `summary.*` for the
//! concurrency runs (rouse against both baselines), `signals.*` for every
//! signal (rouse against the HPA-like baseline on the same signal).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::run::{PolicyRun, TraceRun};
use super::signals::Signal;

/// Traces on which rouse must use at least 20 % fewer replica-seconds.
pub const BURSTY: [&str; 2] = ["on-off", "spike"];

/// How rouse did against the baselines on one trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The baseline with fewer replica-seconds.
    pub better: &'static str,
    /// rouse's replica-seconds / the better baseline's.
    pub ratio: f64,
    pub cost_ok: bool,
    pub p99_ok: bool,
}

impl Verdict {
    #[cfg(test)]
    pub fn pass(&self) -> bool {
        self.cost_ok && self.p99_ok
    }
}

/// The team's goal: no more replica-seconds than the better baseline (20 %
/// fewer on bursty traces) at an equal or lower p99 queueing delay than it.
pub fn verdict(run: &TraceRun) -> Option<Verdict> {
    let rouse = run.policy("rouse")?;
    let better = run
        .policies
        .iter()
        .filter(|p| p.name != "rouse")
        .min_by(|a, b| a.replica_seconds.total_cmp(&b.replica_seconds))?;
    let ratio = if better.replica_seconds > 0.0 {
        rouse.replica_seconds / better.replica_seconds
    } else if rouse.replica_seconds > 0.0 {
        f64::INFINITY
    } else {
        1.0
    };
    let limit = if BURSTY.contains(&run.trace) {
        0.8
    } else {
        1.0
    };
    Some(Verdict {
        better: better.name,
        ratio,
        cost_ok: ratio <= limit,
        // Delays are whole simulation steps, so equal means equal.
        p99_ok: rouse.p99 <= better.p99 + 1e-9,
    })
}

/// File stem of a trace's outputs: `<trace>` (`<trace>-<signal>` for a
/// signal other than concurrency), with `-startup-<d>` for startups after
/// the first.
pub fn stem(run: &TraceRun, primary: bool) -> String {
    let base = match run.signal {
        Signal::Concurrency => run.trace.to_string(),
        signal => format!("{}-{signal}", run.trace),
    };
    if primary {
        base
    } else {
        format!("{base}-startup-{}", humantime::format_duration(run.startup))
    }
}

/// Time series: `t_s, arrivals_per_s`, then for each policy its replicas
/// (starting, ready or draining), ready replicas and longest queue, per second.
pub fn series_csv(run: &TraceRun) -> String {
    let mut out = String::from("t_s,arrivals_per_s");
    for p in &run.policies {
        let _ = write!(out, ",{0}_replicas,{0}_ready,{0}_queued_max", p.name);
    }
    out.push('\n');
    for (t, arrivals) in run.arrivals_per_second.iter().enumerate() {
        let _ = write!(out, "{},{}", t + 1, arrivals);
        for p in &run.policies {
            let s = &p.series;
            let _ = write!(
                out,
                ",{},{},{}",
                s.replicas.get(t).copied().unwrap_or(0),
                s.ready.get(t).copied().unwrap_or(0),
                s.queued_max.get(t).copied().unwrap_or(0)
            );
        }
        out.push('\n');
    }
    out
}

/// One row per trace, startup and policy.
pub fn summary_csv(runs: &[TraceRun]) -> String {
    let mut out = String::from(
        "trace,startup_s,policy,replica_seconds,starting_replica_seconds,p50_delay_ms,p99_delay_ms,\
         over_hold_timeout,scale_events,replica_starts,starts_cancelled,arrivals,served,\
         ratio_to_better_baseline\n",
    );
    for run in runs {
        let verdict = verdict(run);
        for p in &run.policies {
            let ratio = match (&verdict, p.name) {
                (Some(v), "rouse") => format!("{:.3}", v.ratio),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{},{},{},{:.1},{:.1},{:.0},{:.0},{},{},{},{},{},{},{}",
                run.trace,
                run.startup.as_secs_f64(),
                p.name,
                p.replica_seconds,
                p.starting_seconds,
                p.p50 * 1000.0,
                p.p99 * 1000.0,
                p.over_hold_timeout,
                p.scale_events,
                p.starts,
                p.cancelled,
                p.arrivals,
                p.started,
                ratio
            );
        }
    }
    out
}

fn cells(run: &TraceRun, f: impl Fn(&PolicyRun) -> String) -> String {
    run.policies.iter().map(f).collect::<Vec<_>>().join(" / ")
}

/// The Markdown tables, one per startup time, with the verdicts.
pub fn summary_markdown(runs: &[TraceRun]) -> String {
    let mut out = String::new();
    let mut startups: Vec<_> = runs.iter().map(|r| r.startup).collect();
    startups.dedup();
    for startup in startups {
        let _ = writeln!(
            out,
            "Replica startup {} (each cell: rouse / KPA-like / HPA-like):\n",
            humantime::format_duration(startup)
        );
        out.push_str(
            "| trace | replica-seconds | rouse ÷ better baseline | p50 delay (ms) | p99 delay (ms) \
             | over hold timeout | scale events | replicas started (cancelled before ready) | goal |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for run in runs.iter().filter(|r| r.startup == startup) {
            let verdict = verdict(run);
            let (ratio, goal) = match &verdict {
                Some(v) => (
                    format!("{:.2} ({})", v.ratio, v.better),
                    match (v.cost_ok, v.p99_ok) {
                        (true, true) => "met".to_string(),
                        (false, true) => "**missed: cost**".to_string(),
                        (true, false) => "**missed: p99**".to_string(),
                        (false, false) => "**missed: cost, p99**".to_string(),
                    },
                ),
                None => (String::new(), String::new()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.trace,
                cells(run, |p| format!("{:.0}", p.replica_seconds)),
                ratio,
                cells(run, |p| format!("{:.0}", p.p50 * 1000.0)),
                cells(run, |p| format!("{:.0}", p.p99 * 1000.0)),
                cells(run, |p| p.over_hold_timeout.to_string()),
                cells(run, |p| p.scale_events.to_string()),
                cells(run, |p| format!("{} ({})", p.starts, p.cancelled)),
                goal
            );
        }
        out.push('\n');
    }
    out
}

/// rouse and the HPA-like baseline of a run.
fn pair(run: &TraceRun) -> Option<(&PolicyRun, &PolicyRun)> {
    let rouse = run.policies.iter().find(|p| p.name.starts_with("rouse"))?;
    let hpa = run
        .policies
        .iter()
        .find(|p| p.name == "hpa" || p.name.starts_with("hpa-"))?;
    Some((rouse, hpa))
}

/// `a / b`, with 0 / 0 = 1.
fn cost_ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// Where rouse does at least as well as the baseline: fewer
/// replica-seconds, and a p99 no higher.
fn wins(rouse: &PolicyRun, hpa: &PolicyRun) -> &'static str {
    let cheaper = rouse.replica_seconds < hpa.replica_seconds;
    let p99 = rouse.p99 <= hpa.p99 + 1e-9;
    match (cheaper, p99) {
        (true, true) => "both",
        (true, false) => "cost",
        (false, true) => "p99",
        (false, false) => "neither",
    }
}

/// Runs in report order: signal (concurrency first), then as given.
fn by_signal(runs: &[TraceRun]) -> Vec<&TraceRun> {
    let order = |s: Signal| match s {
        Signal::Concurrency => 0,
        Signal::Rps => 1,
        Signal::Cpu => 2,
        Signal::Queue => 3,
    };
    let mut sorted: Vec<&TraceRun> = runs.iter().collect();
    sorted.sort_by_key(|r| order(r.signal));
    sorted
}

/// One row per trace, startup and signal: rouse vs the HPA-like baseline.
pub fn signals_csv(runs: &[TraceRun]) -> String {
    let mut out = String::from(
        "trace,startup_s,signal,rouse_policy,hpa_policy,rouse_replica_seconds,hpa_replica_seconds,\
         ratio,rouse_p50_delay_ms,hpa_p50_delay_ms,rouse_p99_delay_ms,hpa_p99_delay_ms,\
         rouse_over_hold_timeout,hpa_over_hold_timeout,rouse_scale_events,hpa_scale_events,\
         rouse_unfinished,hpa_unfinished\n",
    );
    for run in by_signal(runs) {
        let Some((r, h)) = pair(run) else { continue };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.1},{:.1},{:.3},{:.0},{:.0},{:.0},{:.0},{},{},{},{},{},{},{},{},{},{}",
            run.trace,
            run.startup.as_secs_f64(),
            run.signal,
            r.name,
            h.name,
            r.replica_seconds,
            h.replica_seconds,
            cost_ratio(r.replica_seconds, h.replica_seconds),
            r.p50 * 1000.0,
            h.p50 * 1000.0,
            r.p99 * 1000.0,
            h.p99 * 1000.0,
            r.over_hold_timeout,
            h.over_hold_timeout,
            r.scale_events,
            h.scale_events,
            r.starts,
            h.starts,
            r.cancelled,
            h.cancelled,
            r.unfinished,
            h.unfinished
        );
    }
    out
}

/// The signal tables, one per startup time.
pub fn signals_markdown(runs: &[TraceRun]) -> String {
    let mut out = String::new();
    let mut startups: Vec<_> = runs.iter().map(|r| r.startup).collect();
    startups.sort();
    startups.dedup();
    for startup in startups {
        let _ = writeln!(
            out,
            "Replica startup {} (each cell: rouse / HPA-like on the same signal):\n",
            humantime::format_duration(startup)
        );
        out.push_str(
            "| signal | trace | replica-seconds | rouse ÷ HPA-like | p50 delay (ms) | p99 delay (ms) \
             | over hold timeout | scale events | replicas started (cancelled before ready) \
             | rouse at least as good on |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for run in by_signal(runs).into_iter().filter(|r| r.startup == startup) {
            let Some((r, h)) = pair(run) else { continue };
            let both = |f: &dyn Fn(&PolicyRun) -> String| format!("{} / {}", f(r), f(h));
            let over = match run.signal {
                Signal::Queue => "– (messages wait)".to_string(),
                _ => both(&|p| p.over_hold_timeout.to_string()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
                run.signal,
                run.trace,
                both(&|p| format!("{:.0}", p.replica_seconds)),
                cost_ratio(r.replica_seconds, h.replica_seconds),
                both(&|p| format!("{:.0}", p.p50 * 1000.0)),
                both(&|p| format!("{:.0}", p.p99 * 1000.0)),
                over,
                both(&|p| p.scale_events.to_string()),
                both(&|p| format!("{} ({})", p.starts, p.cancelled)),
                wins(r, h)
            );
        }
        out.push('\n');
    }
    out
}

fn colour(name: &str) -> RGBColor {
    match name {
        "kpa" => RGBColor(0xd6, 0x27, 0x28),
        rouse if rouse.starts_with("rouse") => RGBColor(0x1f, 0x77, 0xb4),
        _ => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

fn label(name: &str) -> &str {
    match name {
        "kpa" => "KPA-like",
        "hpa" => "HPA+KEDA-like",
        "hpa-rps" => "HPA+KEDA-like (request rate)",
        "hpa-cpu" => "HPA-like (CPU)",
        "hpa-queue" => "HPA+KEDA-like (queue)",
        other => other,
    }
}

/// Replicas of every policy and the load over time, as SVG.
pub fn chart(run: &TraceRun, path: &Path) -> Result<()> {
    let seconds = run.arrivals_per_second.len().max(1) as f64;
    let max_replicas = run
        .policies
        .iter()
        .flat_map(|p| p.series.replicas.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_load = run
        .arrivals_per_second
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let what = match run.signal {
        Signal::Concurrency => run.trace.to_string(),
        signal => format!("{}, {signal} signal", run.trace),
    };
    let caption = format!(
        "{what}: replicas and load (replica startup {})",
        humantime::format_duration(run.startup)
    );
    let (unit, legend) = match run.signal {
        Signal::Queue => ("arrivals (messages/s)", "load (messages/s, right axis)"),
        _ => ("arrivals (req/s)", "load (req/s, right axis)"),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..seconds, 0.0..max_replicas * 1.15)
        .map_err(|e| fail(&e))?
        .set_secondary_coord(0.0..seconds, 0.0..max_load * 1.15);
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("replicas (starting + ready + draining)")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc(unit)
        .draw()
        .map_err(|e| fail(&e))?;
    let grey = RGBColor(0xb0, 0xb0, 0xb0);
    chart
        .draw_secondary_series(LineSeries::new(
            run.arrivals_per_second
                .iter()
                .enumerate()
                .map(|(t, n)| (t as f64 + 1.0, *n as f64)),
            grey,
        ))
        .map_err(|e| fail(&e))?
        .label(legend)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    for p in &run.policies {
        let c = colour(p.name);
        chart
            .draw_series(LineSeries::new(
                p.series
                    .replicas
                    .iter()
                    .enumerate()
                    .map(|(t, n)| (t as f64 + 1.0, f64::from(*n))),
                c.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(label(p.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Writes `contents` to `path`, with the path in any error.
pub fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::run::Series;

    fn policy(name: &'static str, replica_seconds: f64, p99: f64) -> PolicyRun {
        PolicyRun {
            name,
            replica_seconds,
            starting_seconds: 1.0,
            starts: 3,
            cancelled: 1,
            p50: 0.0,
            p99,
            over_hold_timeout: 0,
            scale_events: 2,
            arrivals: 10,
            started: 10,
            completed: 10,
            unfinished: 0,
            decisions: None,
            series: Series {
                replicas: vec![0, 1, 2],
                ready: vec![0, 0, 1],
                queued_max: vec![3, 0, 0],
            },
        }
    }

    fn run(trace: &'static str, rouse: f64, kpa: f64, hpa: f64) -> TraceRun {
        TraceRun {
            trace,
            signal: Signal::Concurrency,
            startup: Duration::from_secs(2),
            arrivals_per_second: vec![5, 3, 2],
            policies: vec![
                policy("rouse", rouse, 0.1),
                policy("kpa", kpa, 0.1),
                policy("hpa", hpa, 0.05),
            ],
        }
    }

    #[test]
    fn verdict_compares_with_the_cheaper_baseline() {
        let v = verdict(&run("step", 90.0, 100.0, 120.0)).unwrap();
        assert_eq!((v.better, v.cost_ok, v.p99_ok), ("kpa", true, true));
        assert!((v.ratio - 0.9).abs() < 1e-9);
        // Bursty traces need 20 % fewer.
        let v = verdict(&run("spike", 90.0, 100.0, 120.0)).unwrap();
        assert!(!v.cost_ok && !v.pass());
        // HPA cheaper, and its p99 is lower than rouse's.
        let v = verdict(&run("step", 90.0, 100.0, 95.0)).unwrap();
        assert_eq!((v.better, v.cost_ok, v.p99_ok), ("hpa", true, false));
    }

    #[test]
    fn csv_has_one_column_set_per_policy() {
        let csv = series_csv(&run("step", 1.0, 2.0, 3.0));
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(
                "t_s,arrivals_per_s,rouse_replicas,rouse_ready,rouse_queued_max,\
                 kpa_replicas,kpa_ready,kpa_queued_max,hpa_replicas,hpa_ready,hpa_queued_max"
            )
        );
        assert_eq!(lines.next(), Some("1,5,0,0,3,0,0,3,0,0,3"));
        assert_eq!(csv.lines().count(), 4);
        let summary = summary_csv(&[run("step", 90.0, 100.0, 120.0)]);
        assert!(summary.contains("step,2,rouse,90.0,1.0,0,100,0,2,3,1,10,10,0.900\n"));
        assert!(summary_markdown(&[run("spike", 90.0, 100.0, 120.0)]).contains("missed: cost"));
    }

    #[test]
    fn signal_tables_pair_rouse_with_the_hpa_like_baseline() {
        let concurrency = run("step", 90.0, 100.0, 120.0);
        let cpu = TraceRun {
            signal: Signal::Cpu,
            policies: vec![
                policy("rouse-cpu", 50.0, 0.2),
                policy("hpa-cpu", 100.0, 0.1),
            ],
            ..concurrency.clone()
        };
        let csv = signals_csv(&[cpu.clone(), concurrency.clone()]);
        let mut rows = csv.lines().skip(1);
        // Concurrency first, against the HPA-like baseline (not KPA-like).
        assert!(rows
            .next()
            .unwrap()
            .starts_with("step,2,concurrency,rouse,hpa,90.0,120.0,0.750,"));
        assert!(rows
            .next()
            .unwrap()
            .starts_with("step,2,cpu,rouse-cpu,hpa-cpu,50.0,100.0,0.500,0,0,200,100,"));
        let md = signals_markdown(&[concurrency, cpu]);
        assert!(md.contains("| cpu | step | 50 / 100 | 0.50 | 0 / 0 | 200 / 100 |"));
        assert!(md.contains("| cost |"));
        assert_eq!(stem(&run("step", 1.0, 1.0, 1.0), true), "step");
    }
}
