//! Runs every policy over a trace on the same arrivals, and collects what the
//! report needs.

use std::time::Duration;

use rouse_nats::config::ScalingConfig;

use super::model::{Cluster, ModelConfig};
use super::policies::hpa::{HpaConfig, Keda};
use super::policies::kpa::{Kpa, KpaConfig};
use super::policies::rouse::{Rouse, RouseTiming};
use super::policies::{Common, Policy};
use super::traces::{Arrivals, Trace};

/// Everything one simulation depends on.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub model: ModelConfig,
    /// Requests in flight per replica that every policy aims for.
    pub target_concurrency: f64,
    /// rouse's `scale_to_zero_after`.
    pub scale_to_zero_after: Duration,
    pub seed: u64,
    pub arrivals: Arrivals,
    /// Keep rouse's decisions with their inputs.
    pub log_decisions: bool,
}

impl SimConfig {
    fn common(&self) -> Common {
        Common {
            step_ms: (self.model.step.as_millis() as u64).max(1),
            target_concurrency: self.target_concurrency,
            max_replicas: self.model.max_replicas,
        }
    }

    /// rouse's scaling section: the shared targets; everything else is
    /// rouse's default, whatever the autoscaler's current version has.
    pub fn rouse_scaling(&self) -> ScalingConfig {
        ScalingConfig {
            min_replicas: 0,
            max_replicas: self.model.max_replicas,
            target_concurrency: self.target_concurrency,
            scale_to_zero_after: self.scale_to_zero_after,
            container_concurrency: self.model.container_concurrency,
            ..Default::default()
        }
    }

    /// The three policies, fresh.
    pub fn policies(&self) -> Vec<Box<dyn Policy>> {
        let common = self.common();
        vec![
            Box::new({
                let rouse = Rouse::new(self.rouse_scaling(), RouseTiming::default(), &common);
                if self.log_decisions {
                    rouse.with_log()
                } else {
                    rouse
                }
            }),
            Box::new(Kpa::new(KpaConfig::knative_defaults(&common), &common)),
            Box::new(Keda::new(HpaConfig::defaults(&common), &common)),
        ]
    }
}

/// Per-second samples of one policy's run.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Replicas that exist (starting, ready or draining) at the end of each second.
    pub replicas: Vec<u32>,
    /// Replicas ready at the end of each second.
    pub ready: Vec<u32>,
    /// Longest queue seen during each second.
    pub queued_max: Vec<u64>,
}

/// The outcome of one policy on one trace.
#[derive(Debug, Clone)]
pub struct PolicyRun {
    pub name: &'static str,
    pub replica_seconds: f64,
    /// The part of `replica_seconds` spent by replicas still starting.
    pub starting_seconds: f64,
    /// Replicas asked for, and cancelled before they were ready.
    pub starts: u64,
    pub cancelled: u64,
    /// Queueing delay percentiles, seconds.
    pub p50: f64,
    pub p99: f64,
    pub over_hold_timeout: u64,
    /// Changes of the desired replica count.
    pub scale_events: u64,
    pub arrivals: u64,
    pub started: u64,
    pub completed: u64,
    /// Queued or in service when the trace ended.
    pub unfinished: u64,
    pub series: Series,
    /// The policy's decisions as CSV, when it kept them.
    pub decisions: Option<String>,
}

/// All policies on one trace.
#[derive(Debug, Clone)]
pub struct TraceRun {
    pub trace: &'static str,
    pub startup: Duration,
    pub arrivals_per_second: Vec<u64>,
    pub policies: Vec<PolicyRun>,
}

impl TraceRun {
    pub fn policy(&self, name: &str) -> Option<&PolicyRun> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// A stable per-trace seed, so adding a trace does not change the others.
fn trace_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    name.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs every policy over `trace`, all on the same arrivals.
pub fn run_trace(trace: &Trace, config: &SimConfig) -> TraceRun {
    let step_secs = config.model.step_secs();
    let mut rng = fastrand::Rng::with_seed(trace_seed(config.seed, trace.name));
    let arrivals = trace.arrivals(step_secs, config.arrivals, &mut rng);
    let steps_per_second = ((1.0 / step_secs).round() as usize).max(1);
    let arrivals_per_second = arrivals
        .chunks(steps_per_second)
        .map(|c| c.iter().map(|n| u64::from(*n)).sum())
        .collect();
    let policies = config
        .policies()
        .into_iter()
        .map(|mut policy| run_policy(&arrivals, policy.as_mut(), &config.model))
        .collect();
    TraceRun {
        trace: trace.name,
        startup: config.model.startup,
        arrivals_per_second,
        policies,
    }
}

/// Drives one policy over per-step `arrivals`.
pub fn run_policy(arrivals: &[u32], policy: &mut dyn Policy, model: &ModelConfig) -> PolicyRun {
    let mut cluster = Cluster::new(model.clone());
    let steps_per_second = ((1.0 / model.step_secs()).round() as u64).max(1);
    let mut desired = 0;
    let mut scale_events = 0;
    let mut series = Series::default();
    let mut queued_max = 0;
    for (step, &n) in (0u64..).zip(arrivals) {
        let view = cluster.advance(step, n);
        if let Some(want) = policy.on_step(&view) {
            let want = want.min(model.max_replicas);
            if want != desired {
                scale_events += 1;
                desired = want;
            }
            cluster.scale_to(step, want);
        }
        cluster.account();
        queued_max = queued_max.max(cluster.queued());
        if (step + 1) % steps_per_second == 0 {
            series.replicas.push(cluster.billed());
            series.ready.push(view.ready);
            series.queued_max.push(std::mem::take(&mut queued_max));
        }
    }
    let totals = cluster.totals();
    let step_secs = model.step_secs();
    let percentile = |q| totals.delays.percentile(q).unwrap_or(0) as f64 * step_secs;
    PolicyRun {
        name: policy.name(),
        replica_seconds: totals.replica_steps as f64 * step_secs,
        starting_seconds: totals.starting_steps as f64 * step_secs,
        starts: totals.starts,
        cancelled: totals.cancelled,
        p50: percentile(0.5),
        p99: percentile(0.99),
        over_hold_timeout: totals.dropped,
        scale_events,
        arrivals: totals.arrivals,
        started: totals.started,
        completed: totals.completed,
        unfinished: cluster.queued() + cluster.in_service(),
        series,
        decisions: policy.decision_csv(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::{standard, Shape};

    fn quick() -> SimConfig {
        SimConfig {
            model: ModelConfig::default(),
            target_concurrency: 7.0,
            scale_to_zero_after: Duration::from_secs(30),
            seed: 1,
            arrivals: Arrivals::Poisson,
            log_decisions: false,
        }
    }

    #[test]
    fn every_policy_conserves_requests_on_every_trace() {
        let config = quick();
        for trace in standard() {
            let short = Trace {
                duration: 300.0,
                ..trace.scaled(0.5)
            };
            let run = run_trace(&short, &config);
            assert_eq!(run.policies.len(), 3);
            let arrivals: u64 = run.arrivals_per_second.iter().sum();
            for p in &run.policies {
                assert_eq!(p.arrivals, arrivals, "{} {}", run.trace, p.name);
                assert_eq!(
                    p.arrivals,
                    p.completed + p.unfinished + p.over_hold_timeout,
                    "{} {}",
                    run.trace,
                    p.name
                );
                assert_eq!(p.series.replicas.len(), 300);
            }
        }
    }

    #[test]
    fn runs_are_reproducible() {
        let trace = &standard()[1];
        let a = run_trace(trace, &quick());
        let b = run_trace(trace, &quick());
        for (x, y) in a.policies.iter().zip(&b.policies) {
            assert_eq!(x.replica_seconds, y.replica_seconds);
            assert_eq!(x.series.replicas, y.series.replicas);
        }
    }

    #[test]
    fn no_traffic_costs_nothing() {
        let idle = Trace {
            name: "idle",
            duration: 120.0,
            shape: Shape::OnOff {
                idle: 1000.0,
                burst: 1.0,
                rate: 100.0,
            },
        };
        let run = run_trace(&idle, &quick());
        for p in &run.policies {
            assert_eq!((p.replica_seconds, p.scale_events), (0.0, 0), "{}", p.name);
        }
    }

    #[test]
    fn everyone_serves_a_steady_load() {
        let flat = Trace {
            name: "flat",
            duration: 600.0,
            shape: Shape::Step {
                low: 100.0,
                high: 100.0,
                up_at: 0.0,
                down_at: 600.0,
            },
        };
        let run = run_trace(&flat, &quick());
        for p in &run.policies {
            // 100 req/s × 150 ms = 15 in flight: 3 replicas at a target of 7.
            let last = p.series.ready.last().copied().unwrap_or(0);
            assert!((2..=6).contains(&last), "{} {last}", p.name);
            assert_eq!(p.over_hold_timeout, 0, "{}", p.name);
        }
    }
}
