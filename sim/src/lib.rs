//! `rouse-sim`: a trace-driven autoscaling simulator. It runs rouse's real
//! autoscaler (`rouse_controller::autoscaler`) and two baselines written from
//! their published algorithms, a Knative-KPA-like one and an HPA + KEDA
//! HTTP add-on-like one, over the same seeded arrivals, and reports for each
//! the replica-seconds, queueing delay, requests held past the hold timeout
//! and scale events.
//!
//! Modules, in the order the data flows through them:
//! - `traces`: load shapes and their seeded arrivals;
//! - `model`: the simulated service (replicas, wait queue, accounting);
//! - `policies`: rouse (the real autoscaler), KPA-like, HPA-like;
//! - `run`: one trace through every policy;
//! - `report`: CSV, SVG charts, the Markdown summary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

mod model;
mod policies;
mod report;
mod run;
mod traces;

pub use report::summary_markdown;
pub use run::TraceRun;

use model::ModelConfig;
use run::SimConfig;
use traces::Arrivals;

/// Trace-driven autoscaling simulation: rouse vs KPA-like vs HPA-like.
#[derive(Debug, Parser)]
#[command(name = "rouse-sim")]
pub struct Args {
    /// Directory for the CSV files, charts and summary.
    #[arg(long, default_value = "bench/results/sim")]
    pub out: PathBuf,
    /// Seed of the arrival draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Replica startup times to simulate (comma-separated); the first one's
    /// files are `<trace>.csv`/`.svg`, the others' `<trace>-startup-<d>.*`.
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration, default_value = "2s,10s")]
    pub startup: Vec<Duration>,
    /// Time one request holds a replica slot.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "150ms")]
    pub service_time: Duration,
    /// Requests one replica serves at once.
    #[arg(long, default_value_t = 10)]
    pub container_concurrency: u32,
    /// Requests in flight per replica every policy aims for.
    #[arg(long, default_value_t = 7.0)]
    pub target: f64,
    /// rouse's scale_to_zero_after.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub scale_to_zero_after: Duration,
    /// Replica cap for every policy.
    #[arg(long, default_value_t = 50)]
    pub max_replicas: u32,
    /// Requests waiting longer are dropped and counted.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub hold_timeout: Duration,
    /// Simulation step (whole milliseconds).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    pub step: Duration,
    /// Only these traces (repeatable): step, spike, sawtooth, diurnal, on-off.
    #[arg(long = "trace")]
    pub traces: Vec<String>,
    /// Multiply every trace's rates by this.
    #[arg(long, default_value_t = 1.0)]
    pub load_scale: f64,
    /// Arrivals exactly at the rate instead of Poisson.
    #[arg(long)]
    pub deterministic: bool,
    /// Also write every rouse decision with its inputs to
    /// `<trace>-rouse-decisions.csv`.
    #[arg(long)]
    pub decisions: bool,
}

/// Runs the simulation and writes every output; returns the runs.
pub fn main(args: Args) -> Result<Vec<TraceRun>> {
    let step_ms = args.step.as_millis();
    if step_ms == 0 || args.step != Duration::from_millis(step_ms as u64) || 1000 % step_ms != 0 {
        bail!("--step must be a whole number of milliseconds dividing 1 s");
    }
    if !(args.target > 0.0 && args.load_scale >= 0.0) {
        bail!("--target must be positive and --load-scale non-negative");
    }
    if args.startup.is_empty() {
        bail!("--startup needs at least one duration");
    }
    let all = traces::standard();
    for name in &args.traces {
        if !all.iter().any(|t| t.name == name) {
            bail!("no trace `{name}`");
        }
    }
    let selected: Vec<_> = all
        .iter()
        .filter(|t| args.traces.is_empty() || args.traces.iter().any(|n| n == t.name))
        .map(|t| t.scaled(args.load_scale))
        .collect();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let mut runs = Vec::new();
    for (index, &startup) in args.startup.iter().enumerate() {
        let config = SimConfig {
            model: ModelConfig {
                step: args.step,
                service_time: args.service_time,
                container_concurrency: args.container_concurrency,
                startup,
                hold_timeout: args.hold_timeout,
                max_replicas: args.max_replicas,
            },
            target_concurrency: args.target,
            scale_to_zero_after: args.scale_to_zero_after,
            seed: args.seed,
            arrivals: if args.deterministic {
                Arrivals::Deterministic
            } else {
                Arrivals::Poisson
            },
            log_decisions: args.decisions,
        };
        for trace in &selected {
            let run = run::run_trace(trace, &config);
            let stem = report::stem(&run, index == 0);
            report::write(
                &args.out.join(format!("{stem}.csv")),
                &report::series_csv(&run),
            )?;
            report::chart(&run, &args.out.join(format!("{stem}.svg")))?;
            for policy in &run.policies {
                if let Some(csv) = &policy.decisions {
                    let name = format!("{stem}-{}-decisions.csv", policy.name);
                    report::write(&args.out.join(name), csv)?;
                }
            }
            runs.push(run);
        }
    }
    report::write(&args.out.join("summary.csv"), &report::summary_csv(&runs))?;
    report::write(
        &args.out.join("summary.md"),
        &report::summary_markdown(&runs),
    )?;
    Ok(runs)
}
