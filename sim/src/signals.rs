//! The scaling signals besides concurrency, and how each controller measures
//! them on the simulated service.
//!
//! - **rps**: arrivals per second. rouse hears it in the proxies' reports
//!   (`Observation::arrival_rate`); the HTTP add-on's interceptor counts
//!   requests in 1 s buckets over a sliding window ([`RateWindow`]).
//! - **cpu**: a request in service uses `1 / container_concurrency` of its
//!   replica's CPU, so a replica's utilization is the share of its slots
//!   busy, and a full replica is at 100 %. Each replica keeps a cumulative
//!   CPU counter (busy slot-steps, see [`crate::model::ReplicaStat`]); a
//!   [`CpuMeter`] samples the counters periodically and turns them into
//!   rates over a window, as rouse's controller meter (every 1 s, over the
//!   last 5 s) and metrics-server (every 15 s, between its last two scrapes)
//!   do with a backend's CPU time.
//! - **queue**: the service as a queue worker: arrivals are messages, and
//!   the backlog is what the consumer has not finished (waiting + in
//!   service), read by a poll. Messages never time out.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crate::model::{cpu_share, ReplicaStat};

/// What a run scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// In-flight requests: the main comparison, against all three policies.
    Concurrency,
    Rps,
    Cpu,
    Queue,
}

impl Signal {
    /// The signals run against the HPA-like baseline on the same signal.
    pub const MEASURED: [Signal; 3] = [Signal::Rps, Signal::Cpu, Signal::Queue];

    pub fn name(self) -> &'static str {
        match self {
            Signal::Concurrency => "concurrency",
            Signal::Rps => "rps",
            Signal::Cpu => "cpu",
            Signal::Queue => "queue",
        }
    }

    pub fn parse(name: &str) -> Option<Signal> {
        Signal::MEASURED.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One replica's CPU utilization as a meter last computed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPoint {
    /// Share of the replica's CPU (1.0 = all of it).
    pub share: f64,
    /// Step of the sample the rate ends at.
    pub at: u64,
    /// Steps the rate spans (it starts at `at - window`).
    pub window: u64,
}

/// Samples every replica's CPU counter every `every` steps and keeps, per
/// replica, the rate over up to `window` steps of history (the oldest kept
/// sample is the newest one at least `window` old, as rouse's meter keeps
/// it). A replica's first sample gives no rate; replicas gone are forgotten.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    every: u64,
    /// Samples are taken at steps ≡ `phase` (mod `every`).
    phase: u64,
    window: u64,
    container_concurrency: u32,
    history: HashMap<u64, VecDeque<(u64, u64)>>,
    latest: HashMap<u64, CpuPoint>,
}

impl CpuMeter {
    /// `every`, `phase` and `window` in steps.
    pub fn new(every: u64, phase: u64, window: u64, container_concurrency: u32) -> Self {
        let every = every.max(1);
        Self {
            every,
            phase: phase % every,
            window: window.max(1),
            container_concurrency,
            history: HashMap::new(),
            latest: HashMap::new(),
        }
    }

    /// Takes a sample of `replicas` if one is due at `step`.
    pub fn observe(&mut self, step: u64, replicas: &[ReplicaStat]) {
        if step % self.every != self.phase {
            return;
        }
        for replica in replicas {
            let history = self.history.entry(replica.id).or_default();
            history.push_back((step, replica.busy_slot_steps));
            while history.len() > 2
                && history
                    .get(1)
                    .is_some_and(|(at, _)| step - *at >= self.window)
            {
                history.pop_front();
            }
            let Some(&(from, busy_then)) = history.front() else {
                continue;
            };
            if step > from {
                let busy = replica.busy_slot_steps - busy_then;
                let point = CpuPoint {
                    share: cpu_share(busy, step - from, self.container_concurrency),
                    at: step,
                    window: step - from,
                };
                self.latest.insert(replica.id, point);
            }
        }
        self.history
            .retain(|id, _| replicas.iter().any(|r| r.id == *id));
        self.latest
            .retain(|id, _| replicas.iter().any(|r| r.id == *id));
    }

    /// The latest rate of replica `id`, if it has one.
    pub fn point(&self, id: u64) -> Option<CpuPoint> {
        self.latest.get(&id).copied()
    }
}

/// A request rate over a sliding window of whole seconds, counted in 1 s
/// buckets; the second in progress counts too, so the first request shows
/// at once.
#[derive(Debug, Clone)]
pub struct RateWindow {
    seconds: usize,
    /// Counts of the last `seconds - 1` whole seconds, oldest first.
    buckets: VecDeque<u64>,
    this_second: u64,
}

impl RateWindow {
    pub fn new(seconds: usize) -> Self {
        Self {
            seconds: seconds.max(1),
            buckets: VecDeque::new(),
            this_second: 0,
        }
    }

    /// Counts `arrivals`; `second_ends` closes the current bucket after them.
    pub fn record(&mut self, arrivals: u32, second_ends: bool) {
        self.this_second += u64::from(arrivals);
        if second_ends {
            self.buckets
                .push_back(std::mem::take(&mut self.this_second));
            while self.buckets.len() >= self.seconds {
                self.buckets.pop_front();
            }
        }
    }

    /// Requests per second over the window.
    pub fn rate(&self) -> f64 {
        let total: u64 = self.buckets.iter().sum::<u64>() + self.this_second;
        total as f64 / self.seconds as f64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{Cluster, ModelConfig, ReplicaPhase};

    /// 100 ms steps, 200 ms service, two slots: one arrival per step keeps
    /// one replica exactly full.
    fn config() -> ModelConfig {
        ModelConfig {
            step: Duration::from_millis(100),
            service_time: Duration::from_millis(200),
            container_concurrency: 2,
            startup: Duration::ZERO,
            hold_timeout: Duration::from_secs(30),
            max_replicas: 10,
        }
    }

    /// Runs `steps` steps with `arrivals(step)` through a meter sampling
    /// every second over 5 s; returns the cluster's stats and the meter.
    fn metered(
        cluster: &mut Cluster,
        steps: u64,
        arrivals: impl Fn(u64) -> u32,
    ) -> (Vec<ReplicaStat>, CpuMeter) {
        let mut meter = CpuMeter::new(10, 0, 50, 2);
        let mut stats = Vec::new();
        for step in 0..steps {
            cluster.advance(step, arrivals(step));
            cluster.replica_stats(&mut stats);
            meter.observe(step, &stats);
        }
        (stats, meter)
    }

    #[test]
    fn a_full_replica_is_at_one_and_an_idle_one_at_zero() {
        let mut busy = Cluster::with_ready(config(), 1);
        let (stats, meter) = metered(&mut busy, 101, |_| 1);
        assert_eq!(stats.len(), 1);
        let point = meter.point(stats[0].id).unwrap();
        assert!((point.share - 1.0).abs() < 1e-9, "{point:?}");
        assert_eq!((point.at, point.window), (100, 50));

        let mut idle = Cluster::with_ready(config(), 1);
        let (stats, meter) = metered(&mut idle, 101, |_| 0);
        assert_eq!(meter.point(stats[0].id).map(|p| p.share), Some(0.0));
    }

    #[test]
    fn half_the_slots_busy_is_half_the_cpu_and_the_first_sample_has_no_rate() {
        // One arrival every other step: one slot of two busy on average.
        let mut c = Cluster::with_ready(config(), 1);
        let (stats, meter) = metered(&mut c, 61, |s| u32::from(s % 2 == 0));
        let share = meter.point(stats[0].id).unwrap().share;
        assert!((share - 0.5).abs() < 0.05, "{share}");
        let mut fresh = CpuMeter::new(10, 0, 50, 2);
        fresh.observe(70, &stats);
        assert_eq!(fresh.point(stats[0].id), None);
    }

    #[test]
    fn the_window_forgets_old_load_and_replicas_that_left() {
        // Full for 5 s, then idle: 5 s later the 5 s rate is back to zero.
        let mut c = Cluster::with_ready(config(), 1);
        let (stats, meter) = metered(&mut c, 101, |s| u32::from(s < 50));
        assert_eq!(stats[0].phase, ReplicaPhase::Ready);
        assert_eq!(meter.point(stats[0].id).map(|p| p.share), Some(0.0));
        let mut meter = meter;
        meter.observe(110, &[]);
        assert_eq!(meter.point(stats[0].id), None);
    }

    #[test]
    fn rate_window_counts_the_current_second_and_slides() {
        let mut w = RateWindow::new(3);
        w.record(6, false);
        assert_eq!(w.rate(), 2.0);
        w.record(0, true); // second 1: 6
        w.record(3, true); // second 2: 3
        w.record(0, true); // second 3: 0; second 1 leaves the window
        assert_eq!(w.rate(), 1.0);
        assert_eq!(Signal::parse("cpu"), Some(Signal::Cpu));
        assert_eq!(Signal::parse("concurrency"), None);
    }
}
