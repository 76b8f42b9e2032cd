//! Runs every policy over a trace on the same arrivals, and collects what the
//! report needs: on concurrency, rouse against both baselines; on each other
//! signal, rouse configured on that signal against the HPA-like baseline on
//! the same one, with targets equivalent to the concurrency target.

use std::time::Duration;

use rouse_nats::config::{MetricSpec, ScalingConfig, ScalingRules, SelectPolicy};

use super::model::{Cluster, ModelConfig};
use super::policies::hpa::{HpaConfig, Keda, KedaMetric};
use super::policies::hpa_cpu::HpaCpu;
use super::policies::kpa::{Kpa, KpaConfig};
use super::policies::rouse::{Rouse, RouseTiming};
use super::policies::{Common, Policy};
use super::signals::{CpuMeter, Signal};
use super::traces::{Arrivals, Trace};

/// rouse's meter: samples every second, CPU rates over the last 5 s (the
/// controller's `SAMPLE_EVERY` and `RATE_WINDOW`).
const METER_EVERY: Duration = Duration::from_secs(1);
const METER_WINDOW: Duration = Duration::from_secs(5);

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
    /// `behavior.scale_down.stabilization_window` for rouse on the other
    /// signals; `None` keeps rouse's own scale-down pacing.
    pub signal_down_window: Option<Duration>,
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

    /// Requests per second per replica at the concurrency target (Little's
    /// law: 7 in flight at 150 ms each is 46.7 req/s).
    pub fn rps_target(&self) -> f64 {
        self.target_concurrency / self.model.service_time.as_secs_f64()
    }

    /// CPU utilization at the concurrency target, in percent (7 of 10 slots
    /// busy is 70 %).
    pub fn cpu_target_percent(&self) -> f64 {
        100.0 * self.target_concurrency / f64::from(self.model.container_concurrency.max(1))
    }

    /// Backlog per replica: the concurrency target (a worker's backlog is
    /// what it holds in service plus its share of the waiting messages).
    pub fn queue_target(&self) -> f64 {
        self.target_concurrency
    }

    /// rouse's scaling section on `signal` alone.
    pub fn signal_scaling(&self, signal: Signal) -> ScalingConfig {
        let metric = match signal {
            Signal::Concurrency => return self.rouse_scaling(),
            Signal::Rps => MetricSpec::Rps {
                target: self.rps_target(),
            },
            Signal::Cpu => MetricSpec::Cpu {
                target: self.cpu_target_percent(),
            },
            Signal::Queue => MetricSpec::Queue {
                stream: "JOBS".into(),
                consumer: "workers".into(),
                target: self.queue_target(),
            },
        };
        let mut scaling = ScalingConfig {
            metrics: vec![metric],
            ..self.rouse_scaling()
        };
        if let Some(window) = self.signal_down_window {
            scaling.behavior.scale_down = Some(ScalingRules {
                stabilization_window: window,
                policies: Vec::new(),
                select: SelectPolicy::Max,
            });
        }
        scaling
    }

    /// The service as `signal` sees it: a queue's messages wait as long as
    /// it takes (JetStream keeps them), requests wait up to the hold timeout.
    pub fn model_for(&self, signal: Signal) -> ModelConfig {
        match signal {
            Signal::Queue => ModelConfig {
                hold_timeout: Duration::MAX,
                ..self.model.clone()
            },
            _ => self.model.clone(),
        }
    }

    fn rouse(&self, scaling: ScalingConfig) -> Rouse {
        let rouse = Rouse::new(scaling, RouseTiming::default(), &self.common());
        if self.log_decisions {
            rouse.with_log()
        } else {
            rouse
        }
    }

    /// rouse and the HPA-like baseline on `signal`, fresh; on concurrency,
    /// the three policies of the main comparison.
    pub fn signal_policies(&self, signal: Signal) -> Vec<Box<dyn Policy>> {
        let common = self.common();
        let rouse = self.rouse(self.signal_scaling(signal));
        let hpa = HpaConfig::defaults(&common);
        let steps = |d: Duration| self.model.steps(d);
        match signal {
            Signal::Concurrency => self.policies(),
            Signal::Rps => vec![
                Box::new(rouse.named("rouse-rps")),
                Box::new(Keda::on_metric(
                    "hpa-rps",
                    KedaMetric::request_rate(),
                    HpaConfig {
                        target: self.rps_target(),
                        ..hpa
                    },
                    &common,
                )),
            ],
            Signal::Cpu => {
                let cc = self.model.container_concurrency;
                let meter = CpuMeter::new(steps(METER_EVERY), 0, steps(METER_WINDOW), cc);
                vec![
                    Box::new(rouse.named("rouse-cpu").with_cpu(meter)),
                    Box::new(HpaCpu::new(self.cpu_target_percent(), hpa, cc, &common)),
                ]
            }
            Signal::Queue => vec![
                Box::new(rouse.named("rouse-queue").queue_worker(METER_EVERY)),
                Box::new(Keda::on_metric(
                    "hpa-queue",
                    KedaMetric::Backlog,
                    HpaConfig {
                        target: self.queue_target(),
                        poll_ms: hpa.keda_polling_ms,
                        ..hpa
                    },
                    &common,
                )),
            ],
        }
    }

    /// The three policies, fresh.
    pub fn policies(&self) -> Vec<Box<dyn Policy>> {
        let common = self.common();
        vec![
            Box::new(self.rouse(self.rouse_scaling())),
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
    /// What the policies scale on.
    pub signal: Signal,
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
    run_signal(trace, config, Signal::Concurrency)
}

/// Runs the policies of `signal` over `trace`, on the same arrivals as every
/// other signal's.
pub fn run_signal(trace: &Trace, config: &SimConfig, signal: Signal) -> TraceRun {
    let step_secs = config.model.step_secs();
    let mut rng = fastrand::Rng::with_seed(trace_seed(config.seed, trace.name));
    let arrivals = trace.arrivals(step_secs, config.arrivals, &mut rng);
    let steps_per_second = ((1.0 / step_secs).round() as usize).max(1);
    let arrivals_per_second = arrivals
        .chunks(steps_per_second)
        .map(|c| c.iter().map(|n| u64::from(*n)).sum())
        .collect();
    let model = config.model_for(signal);
    let policies = config
        .signal_policies(signal)
        .into_iter()
        .map(|mut policy| run_policy(&arrivals, policy.as_mut(), &model))
        .collect();
    TraceRun {
        trace: trace.name,
        signal,
        startup: config.model.startup,
        arrivals_per_second,
        policies,
    }
}

/// Drives one policy over per-step `arrivals`.
pub fn run_policy(arrivals: &[u32], policy: &mut dyn Policy, model: &ModelConfig) -> PolicyRun {
    let mut desired = policy.initial_replicas().min(model.max_replicas);
    let mut cluster = Cluster::with_ready(model.clone(), desired);
    let steps_per_second = ((1.0 / model.step_secs()).round() as u64).max(1);
    let mut scale_events = 0;
    let mut series = Series::default();
    let mut queued_max = 0;
    let metered = policy.wants_replicas();
    let mut replicas = Vec::new();
    for (step, &n) in (0u64..).zip(arrivals) {
        let view = cluster.advance(step, n);
        if metered {
            cluster.replica_stats(&mut replicas);
            policy.meter(step, &replicas);
        }
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
            signal_down_window: None,
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

    fn flat(rate: f64, duration: f64) -> Trace {
        Trace {
            name: "flat",
            duration,
            shape: Shape::Step {
                low: rate,
                high: rate,
                up_at: 0.0,
                down_at: duration,
            },
        }
    }

    #[test]
    fn signal_targets_match_the_concurrency_target() {
        let config = quick();
        assert!((config.rps_target() - 7.0 / 0.15).abs() < 1e-9);
        assert!((config.cpu_target_percent() - 70.0).abs() < 1e-9);
        assert_eq!(config.queue_target(), 7.0);
        let cpu = config.signal_scaling(Signal::Cpu);
        assert_eq!(cpu.metrics, vec![MetricSpec::Cpu { target: 70.0 }]);
        assert_eq!(cpu.target_rps, None);
    }

    #[test]
    fn every_signal_conserves_requests_and_queues_drop_nothing() {
        let config = quick();
        for trace in standard() {
            let short = Trace {
                duration: 300.0,
                ..trace.scaled(0.5)
            };
            for signal in Signal::MEASURED {
                let run = run_signal(&short, &config, signal);
                let arrivals: u64 = run.arrivals_per_second.iter().sum();
                assert_eq!(run.policies.len(), 2);
                for p in &run.policies {
                    let what = format!("{} {} {}", run.trace, signal, p.name);
                    assert_eq!(p.arrivals, arrivals, "{what}");
                    assert_eq!(
                        p.arrivals,
                        p.completed + p.unfinished + p.over_hold_timeout,
                        "{what}"
                    );
                    if signal == Signal::Queue {
                        assert_eq!(p.over_hold_timeout, 0, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_signal_serves_a_steady_load() {
        let run_all = |signal| run_signal(&flat(100.0, 600.0), &quick(), signal);
        for signal in Signal::MEASURED {
            for p in &run_all(signal).policies {
                // 15 in flight: 3 replicas at 7 each (70 % CPU, 47 req/s, a
                // backlog of 7).
                let last = p.series.ready.last().copied().unwrap_or(0);
                assert!((2..=6).contains(&last), "{signal} {} {last}", p.name);
                assert_eq!(p.over_hold_timeout, 0, "{signal} {}", p.name);
            }
        }
    }

    #[test]
    fn the_cpu_baseline_starts_with_one_ready_replica_and_keeps_it() {
        let run = run_signal(&flat(0.0, 120.0), &quick(), Signal::Cpu);
        let rouse = run.policy("rouse-cpu").unwrap();
        let hpa = run.policy("hpa-cpu").unwrap();
        assert_eq!((rouse.replica_seconds, rouse.scale_events), (0.0, 0));
        assert!(hpa.series.ready.iter().all(|n| *n == 1));
        assert_eq!(hpa.starts, 0);
    }

    #[test]
    fn rouse_on_a_queue_wakes_on_a_backlog_and_returns_to_zero_dropping_nothing() {
        // Nothing for 10 s, 20 s of 100 messages/s, then nothing for 90 s.
        let burst = Trace {
            name: "burst",
            duration: 120.0,
            shape: Shape::Step {
                low: 0.0,
                high: 100.0,
                up_at: 10.0,
                down_at: 30.0,
            },
        };
        let config = quick();
        let run = run_signal(&burst, &config, Signal::Queue);
        let rouse = run.policy("rouse-queue").unwrap();
        let replicas = &rouse.series.replicas;
        // Nothing before the first message; replicas once there is a backlog.
        assert!(replicas[..10].iter().all(|n| *n == 0), "{replicas:?}");
        assert!(replicas[10..30].iter().all(|n| *n > 0), "{replicas:?}");
        // Every message done, none dropped, and back at zero by the end...
        assert_eq!((rouse.over_hold_timeout, rouse.unfinished), (0, 0));
        assert_eq!(rouse.completed, rouse.arrivals);
        assert_eq!(replicas.last(), Some(&0));
        // ...but only once the backlog has been empty for scale_to_zero_after
        // (the last messages arrive just before 30 s).
        let zero_again = replicas[30..].iter().position(|n| *n == 0).unwrap() + 30;
        let idle = config.scale_to_zero_after.as_secs() as usize;
        assert!(zero_again >= 30 + idle, "zero at {zero_again} s");
    }
}
