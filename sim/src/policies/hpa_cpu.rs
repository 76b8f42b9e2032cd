//! An HPA-like baseline on CPU utilization (a `Resource` metric with an
//! `averageUtilization` target), written from the Kubernetes HPA and
//! metrics-server documentation:
//! - metrics-server scrapes each pod's cumulative CPU time every 15 s
//!   (`--metric-resolution`) and serves the rate between its last two
//!   scrapes (window 15 s, timestamped at the later one); a pod seen once
//!   has no metric yet;
//! - the HPA syncs every 15 s, half a period after the scrapes (the two
//!   clocks are not aligned; on average the HPA reads a point 7.5 s old);
//! - pods are grouped as the HPA's replica calculator groups them: pods not
//!   ready yet (here: starting) and ready pods whose metric window began
//!   before they became ready (`cpu-initialization-period`) are *unready*,
//!   ready pods without a metric are *missing*; the formula is
//!   ceil(current × utilization / target) within the 10 % tolerance, with
//!   unready pods counted as 0 % on scale-up and ignored on scale-down, and
//!   missing pods counted as 0 % on scale-up and 100 % of the target on
//!   scale-down. This is the formula rouse's controller implements
//!   (`rouse_controller::autoscaler::signals::utilization`), reused here,
//!   so the two differ in what they measure, when, and how they pace
//!   changes, not in the arithmetic;
//! - no metric at all: the HPA cannot compute and leaves the count alone;
//! - then the HPA's default behaviour (see [`super::hpa`]), minimum 1: an
//!   HPA on CPU never scales to zero (nor does KEDA's cpu trigger), so the
//!   baseline runs one ready replica from the start.

use rouse_controller::autoscaler::signals::{utilization, Need};

use super::hpa::{Hpa, HpaConfig};
use super::{Common, Every, Policy};
use crate::model::{ReplicaPhase, ReplicaStat, View};
use crate::signals::CpuMeter;

/// metrics-server's scrape period and the HPA's sync period, ms.
const RESOLUTION_MS: u64 = 15_000;

pub struct HpaCpu {
    step_ms: u64,
    /// Target utilization as a share (0.7 = 70 %).
    target: f64,
    tolerance: f64,
    hpa: Hpa,
    sync: Every,
    metrics_server: CpuMeter,
    replicas: Vec<ReplicaStat>,
}

impl HpaCpu {
    /// `target_percent` of each replica's CPU; `config` paces the changes.
    pub fn new(
        target_percent: f64,
        config: HpaConfig,
        container_concurrency: u32,
        common: &Common,
    ) -> Self {
        let step_ms = common.step_ms.max(1);
        let resolution = RESOLUTION_MS / step_ms;
        Self {
            step_ms,
            target: target_percent / 100.0,
            tolerance: config.tolerance,
            sync: Every::new(config.sync_ms, config.sync_ms),
            hpa: Hpa::new(HpaConfig {
                min_replicas: config.min_replicas.max(1),
                ..config
            }),
            metrics_server: CpuMeter::new(
                resolution,
                resolution / 2,
                resolution,
                container_concurrency,
            ),
            replicas: Vec::new(),
        }
    }

    /// Each ready pod's utilization as the HPA groups it: `Some` with a
    /// metric, `None` when missing; unready pods are left out.
    fn samples(&self) -> Vec<Option<f64>> {
        self.replicas
            .iter()
            .filter(|r| r.phase == ReplicaPhase::Ready)
            .filter_map(|r| match self.metrics_server.point(r.id) {
                None => Some(None),
                Some(point) => {
                    let window_start = point.at.saturating_sub(point.window);
                    let ready = r.ready_since.unwrap_or(u64::MAX);
                    (window_start >= ready).then_some(Some(point.share))
                }
            })
            .collect()
    }
}

impl Policy for HpaCpu {
    fn name(&self) -> &'static str {
        "hpa-cpu"
    }

    fn initial_replicas(&self) -> u32 {
        1
    }

    fn wants_replicas(&self) -> bool {
        true
    }

    fn meter(&mut self, step: u64, replicas: &[ReplicaStat]) {
        self.metrics_server.observe(step, replicas);
        self.replicas.clear();
        self.replicas.extend_from_slice(replicas);
    }

    fn on_step(&mut self, view: &View) -> Option<u32> {
        let now_ms = view.step * self.step_ms;
        if !self.sync.due(now_ms) {
            return None;
        }
        let current = view.active();
        match utilization(current, &self.samples(), self.target, self.tolerance) {
            Need::Replicas(raw) => Some(self.hpa.sync_raw(now_ms, current, raw)),
            Need::Missing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa() -> HpaCpu {
        let common = Common {
            step_ms: 10,
            target_concurrency: 7.0,
            max_replicas: 10,
        };
        HpaCpu::new(70.0, HpaConfig::defaults(&common), 10, &common)
    }

    fn stat(id: u64, phase: ReplicaPhase, ready_since: Option<u64>, busy: u64) -> ReplicaStat {
        ReplicaStat {
            id,
            phase,
            ready_since,
            busy_slot_steps: busy,
        }
    }

    #[test]
    fn a_metric_from_before_readiness_is_unready_and_a_pod_seen_once_missing() {
        let mut h = hpa();
        // Scrapes at 7.5 s, 22.5 s (steps 750, 2250). Replica 1 was ready
        // before the first scrape; replica 2 became ready in between;
        // replica 3 appeared after the first scrape; 4 is still starting.
        let first = [
            stat(1, ReplicaPhase::Ready, Some(0), 0),
            stat(2, ReplicaPhase::Starting, None, 0),
        ];
        h.meter(750, &first);
        let second = [
            // 1 500 steps × 10 slots × 90 %.
            stat(1, ReplicaPhase::Ready, Some(0), 13_500),
            stat(2, ReplicaPhase::Ready, Some(1000), 7_500),
            stat(3, ReplicaPhase::Ready, Some(2000), 0),
            stat(4, ReplicaPhase::Starting, None, 0),
        ];
        h.meter(2250, &second);
        let samples = h.samples();
        assert_eq!(samples.len(), 2);
        assert!((samples[0].unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(samples[1], None);
        // 4 current, 90 % on the one pod with a metric against 70 % says up;
        // counting the missing and unready ones as idle, 0.9 / (0.7 × 4) ≈
        // 0.32 says down: a flipped correction keeps the count.
        assert_eq!(utilization(4, &samples, 0.7, 0.1), Need::Replicas(4));
    }

    #[test]
    fn syncs_every_15_s_and_never_goes_below_one() {
        let mut h = hpa();
        let idle = View {
            step: 1500,
            ready: 2,
            ..View::default()
        };
        // No metric yet: nothing to act on.
        assert_eq!(h.on_step(&idle), None);
        let stats = [
            stat(1, ReplicaPhase::Ready, Some(0), 0),
            stat(2, ReplicaPhase::Ready, Some(0), 0),
        ];
        h.meter(750, &stats);
        h.meter(2250, &stats);
        assert_eq!(h.on_step(&View { step: 2500, ..idle }), None);
        // Idle for a stabilisation window: down to the minimum, 1.
        let mut last = None;
        for k in 3..=40u64 {
            h.meter(k * 1500 - 750, &stats);
            if let Some(n) = h.on_step(&View {
                step: k * 1500,
                ..idle
            }) {
                last = Some(n);
            }
        }
        assert_eq!(last, Some(1));
        assert_eq!(h.initial_replicas(), 1);
    }
}
