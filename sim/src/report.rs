//! CSV files, SVG charts and the Markdown summary.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::run::{PolicyRun, TraceRun};

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

/// File stem of a trace's outputs: `<trace>`, or `<trace>-startup-<d>` for
/// startups after the first.
pub fn stem(run: &TraceRun, primary: bool) -> String {
    if primary {
        run.trace.to_string()
    } else {
        format!(
            "{}-startup-{}",
            run.trace,
            humantime::format_duration(run.startup)
        )
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

fn colour(name: &str) -> RGBColor {
    match name {
        "rouse" => RGBColor(0x1f, 0x77, 0xb4),
        "kpa" => RGBColor(0xd6, 0x27, 0x28),
        _ => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

fn label(name: &str) -> &str {
    match name {
        "kpa" => "KPA-like",
        "hpa" => "HPA+KEDA-like",
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
    let caption = format!(
        "{}: replicas and load (replica startup {})",
        run.trace,
        humantime::format_duration(run.startup)
    );
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
        .y_desc("arrivals (req/s)")
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
        .label("load (req/s, right axis)")
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
}
