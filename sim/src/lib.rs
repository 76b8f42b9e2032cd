//! `rouse-sim`: a trace-driven autoscaling simulator. It runs rouse's real
//! autoscaler (`rouse_controller::autoscaler`) and two baselines written from
//! their published algorithms, a Knative-KPA-like one and an HPA + KEDA
//! HTTP add-on-like one, over the same seeded arrivals, and reports for each
//! the replica-seconds, queueing delay, requests held past the hold timeout
//! and scale events.
//!
//! Then the same traces on the other signals rouse scales on (request rate,
//! CPU utilization, a queue's backlog): rouse configured on each, against the
//! HPA-like baseline on the same signal, so each signal's table says what
//! rouse's handling of it is worth next to what Kubernetes users run today.
//!
//! Modules, in the order the data flows through them:
//! - `traces`: load shapes and their seeded arrivals;
//! - `model`: the simulated service (replicas, wait queue, accounting);
//! - `signals`: what rps, CPU and backlog are made of, and their meters;
//! - `policies`: rouse (the real autoscaler), KPA-like, HPA-like;
//! - `run`: one trace through every policy;
//! - `report`: CSV, SVG charts, the Markdown summaries.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

mod model;
mod policies;
mod report;
mod run;
mod signals;
mod traces;

pub use report::{signals_markdown, summary_markdown};
pub use run::TraceRun;

use model::ModelConfig;
use run::SimConfig;
use signals::Signal;
use traces::{Arrivals, Trace};

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
    /// Signals to run against the HPA-like baseline besides concurrency
    /// (comma-separated: rps, cpu, queue; `none` for none). Their files go
    /// to `<out>/signals/`, their tables to `signals.md`/`signals.csv`.
    #[arg(long, value_delimiter = ',', default_value = "rps,cpu,queue")]
    pub signals: Vec<String>,
    /// On the signal runs, give rouse a `behavior.scale_down` with this
    /// stabilization window (and no rate policy) instead of its own
    /// scale-down pacing.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub signal_down_window: Option<Duration>,
}

/// Everything one invocation ran.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The concurrency runs (rouse, KPA-like, HPA-like).
    pub runs: Vec<TraceRun>,
    /// The other signals' runs (rouse and HPA-like on each).
    pub signal_runs: Vec<TraceRun>,
}

impl Outcome {
    /// Every run, concurrency first (what the signal tables compare).
    pub fn all(&self) -> Vec<TraceRun> {
        self.runs.iter().chain(&self.signal_runs).cloned().collect()
    }
}

fn create_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The signals `--signals` names.
fn parse_signals(names: &[String]) -> Result<Vec<Signal>> {
    if names.iter().any(|n| n == "none") {
        return Ok(Vec::new());
    }
    names
        .iter()
        .map(|name| {
            Signal::parse(name)
                .with_context(|| format!("no signal `{name}` (rps, cpu, queue, none)"))
        })
        .collect()
}

/// Writes a run's per-second CSV, its chart and any decision logs into `dir`.
fn write_run(dir: &std::path::Path, run: &TraceRun, primary: bool) -> Result<()> {
    let stem = report::stem(run, primary);
    report::write(&dir.join(format!("{stem}.csv")), &report::series_csv(run))?;
    report::chart(run, &dir.join(format!("{stem}.svg")))?;
    for policy in &run.policies {
        if let Some(csv) = &policy.decisions {
            let name = format!("{stem}-{}-decisions.csv", policy.name);
            report::write(&dir.join(name), csv)?;
        }
    }
    Ok(())
}

/// Runs the simulation and writes every output; returns the runs.
pub fn main(args: Args) -> Result<Outcome> {
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
    let signals = parse_signals(&args.signals)?;
    let selected = select_traces(&args)?;
    let signal_dir = args.out.join("signals");
    create_dir(&args.out)?;
    if !signals.is_empty() {
        create_dir(&signal_dir)?;
    }

    let mut outcome = Outcome {
        runs: Vec::new(),
        signal_runs: Vec::new(),
    };
    for (index, &startup) in args.startup.iter().enumerate() {
        let config = sim_config(&args, startup);
        for trace in &selected {
            let run = run::run_trace(trace, &config);
            write_run(&args.out, &run, index == 0)?;
            outcome.runs.push(run);
            for &signal in &signals {
                let run = run::run_signal(trace, &config, signal);
                write_run(&signal_dir, &run, index == 0)?;
                outcome.signal_runs.push(run);
            }
        }
    }
    let runs = &outcome.runs;
    report::write(&args.out.join("summary.csv"), &report::summary_csv(runs))?;
    report::write(
        &args.out.join("summary.md"),
        &report::summary_markdown(runs),
    )?;
    if !signals.is_empty() {
        let all = outcome.all();
        report::write(&args.out.join("signals.csv"), &report::signals_csv(&all))?;
        report::write(
            &args.out.join("signals.md"),
            &report::signals_markdown(&all),
        )?;
    }
    Ok(outcome)
}

/// The traces `--trace` names (all when none), scaled by `--load-scale`.
fn select_traces(args: &Args) -> Result<Vec<Trace>> {
    let all = traces::standard();
    for name in &args.traces {
        if !all.iter().any(|t| t.name == name) {
            bail!("no trace `{name}`");
        }
    }
    Ok(all
        .iter()
        .filter(|t| args.traces.is_empty() || args.traces.iter().any(|n| n == t.name))
        .map(|t| t.scaled(args.load_scale))
        .collect())
}

fn sim_config(args: &Args, startup: Duration) -> SimConfig {
    SimConfig {
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
        signal_down_window: args.signal_down_window,
    }
}
