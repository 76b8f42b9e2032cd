//! The simulated service: replicas, a FIFO wait queue in front of them, and
//! the bookkeeping every policy is judged by.
//!
//! Time is discrete (`step` long, 10 ms by default). In one step, in this
//! order: starting replicas whose startup has passed become ready, finished
//! requests leave their replica, draining replicas with nothing left in flight
//! go away, the step's arrivals join the queue, requests that waited longer
//! than the hold timeout are dropped (and counted), and the queue is served in
//! arrival order by ready replicas with a free slot (least busy first). The
//! policy then looks at the result and may ask for another replica count.
//!
//! Scale-up starts replicas that serve after `startup`; scale-down first
//! cancels replicas still starting (newest first), then drains ready ones
//! (newest first): a draining replica takes no new request, finishes what it
//! has and only then goes away, so no request is ever lost to a scale-down.
//! Every replica that exists, starting, ready or draining, costs.
//!
//! Each replica also counts its busy slot-steps (slots in use, summed over
//! steps): the CPU time a controller would read from it, with a request in
//! service using `1 / container_concurrency` of the replica's CPU. Policies
//! that scale on CPU read those counters through [`ReplicaStat`], the way a
//! metering task reads a backend's cumulative CPU time.

use std::collections::VecDeque;
use std::time::Duration;

/// Fixed parameters of the simulated service.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Length of one simulation step.
    pub step: Duration,
    /// How long one request keeps a replica slot.
    pub service_time: Duration,
    /// Requests one replica serves at once; more wait in the queue.
    pub container_concurrency: u32,
    /// From the decision to start a replica until it serves.
    pub startup: Duration,
    /// A request still waiting after this long is dropped (503 in rouse).
    pub hold_timeout: Duration,
    /// No policy gets more replicas than this.
    pub max_replicas: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(10),
            service_time: Duration::from_millis(150),
            container_concurrency: 10,
            startup: Duration::from_secs(2),
            hold_timeout: Duration::from_secs(30),
            max_replicas: 50,
        }
    }
}

impl ModelConfig {
    /// `duration` in whole steps, rounded up (saturating: `Duration::MAX`
    /// is never).
    pub fn steps(&self, duration: Duration) -> u64 {
        let step = self.step.as_nanos().max(1);
        u64::try_from(duration.as_nanos().div_ceil(step)).unwrap_or(u64::MAX)
    }

    pub fn step_secs(&self) -> f64 {
        self.step.as_secs_f64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting { ready_at: u64 },
    Ready,
    Draining,
}

#[derive(Debug)]
struct Replica {
    /// Unique within one simulation, in the order replicas were asked for.
    id: u64,
    phase: Phase,
    /// Step the replica was asked for; newest go first on scale-down.
    since: u64,
    /// Step it became ready, once it has.
    ready_since: Option<u64>,
    /// Steps at which the requests it serves finish, oldest first (a fixed
    /// service time keeps them in order).
    in_service: VecDeque<u64>,
    /// Slots in use, summed over every step so far.
    busy_slot_steps: u64,
}

/// Where a replica is in its life, as a metering policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaPhase {
    Starting,
    Ready,
    Draining,
}

/// One replica's state and CPU counter, after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaStat {
    pub id: u64,
    pub phase: ReplicaPhase,
    /// Step it became ready, once it has.
    pub ready_since: Option<u64>,
    /// Slots in use, summed over every step of its life: its cumulative CPU
    /// time in slot-steps.
    pub busy_slot_steps: u64,
}

/// CPU utilization, as a share of one replica's CPU, from `busy_slot_steps`
/// accumulated over `steps` steps: a full replica is 1.0, an idle one 0.0.
pub fn cpu_share(busy_slot_steps: u64, steps: u64, container_concurrency: u32) -> f64 {
    let capacity = steps.saturating_mul(u64::from(container_concurrency.max(1)));
    if capacity == 0 {
        return 0.0;
    }
    busy_slot_steps as f64 / capacity as f64
}

/// Counts of queueing delays, one bucket per step of waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        let index = value as usize;
        if index >= self.buckets.len() {
            self.buckets.resize(index + 1, 0);
        }
        self.buckets[index] += 1;
        self.count += 1;
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Nearest-rank percentile (`q` in 0..=1): the smallest recorded value
    /// with at least `q` of all values at or below it. `None` when empty.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (value, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(value as u64);
            }
        }
        // Unreachable while `count` matches the buckets; the largest value.
        self.buckets.iter().rposition(|n| *n > 0).map(|v| v as u64)
    }
}

/// What a policy can see after a step. Each policy picks from it what its
/// real counterpart would get (and when).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct View {
    pub step: u64,
    /// Requests that arrived in this step.
    pub arrivals: u32,
    /// Requests a replica is serving.
    pub in_service: u64,
    /// Requests waiting in the queue.
    pub queued: u64,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// The queue was empty before this step's arrivals and is not now: the
    /// first held request, the edge on which rouse's proxy sends `wake`.
    pub newly_held: bool,
}

impl View {
    /// Replicas ready or starting: what a scale decision counts as current.
    pub fn active(&self) -> u32 {
        self.ready + self.starting
    }

    /// Every request not finished: in service plus waiting.
    pub fn outstanding(&self) -> u64 {
        self.in_service + self.queued
    }
}

/// Running totals of one simulation.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub arrivals: u64,
    /// Requests that got a replica slot.
    pub started: u64,
    pub completed: u64,
    /// Requests that waited past the hold timeout.
    pub dropped: u64,
    /// Sum over steps of replicas that exist (starting, ready or draining).
    pub replica_steps: u64,
    /// The part of `replica_steps` spent starting.
    pub starting_steps: u64,
    /// Replicas asked for.
    pub starts: u64,
    /// Replicas cancelled before they became ready.
    pub cancelled: u64,
    /// Waits of started requests, and of dropped ones (at what they had
    /// waited when dropped), in steps.
    pub delays: Histogram,
}

/// The simulated service.
#[derive(Debug)]
pub struct Cluster {
    config: ModelConfig,
    service_steps: u64,
    startup_steps: u64,
    timeout_steps: u64,
    replicas: Vec<Replica>,
    /// Arrival step of every waiting request, oldest first.
    queue: VecDeque<u64>,
    totals: Totals,
    next_id: u64,
}

impl Cluster {
    pub fn new(config: ModelConfig) -> Self {
        Self {
            service_steps: config.steps(config.service_time).max(1),
            startup_steps: config.steps(config.startup),
            timeout_steps: config.steps(config.hold_timeout),
            config,
            replicas: Vec::new(),
            queue: VecDeque::new(),
            totals: Totals::default(),
            next_id: 0,
        }
    }

    /// A service that already has `ready` replicas serving when the trace
    /// starts (a baseline that never goes below one); they are not counted
    /// as starts.
    pub fn with_ready(config: ModelConfig, ready: u32) -> Self {
        let mut cluster = Self::new(config);
        for _ in 0..ready {
            let replica = cluster.replica(Phase::Ready, 0);
            cluster.replicas.push(Replica {
                ready_since: Some(0),
                ..replica
            });
        }
        cluster
    }

    fn replica(&mut self, phase: Phase, now: u64) -> Replica {
        self.next_id += 1;
        Replica {
            id: self.next_id,
            phase,
            since: now,
            ready_since: None,
            in_service: VecDeque::new(),
            busy_slot_steps: 0,
        }
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Runs step `now` with `arrivals` new requests; see the module docs.
    pub fn advance(&mut self, now: u64, arrivals: u32) -> View {
        for replica in &mut self.replicas {
            if let Phase::Starting { ready_at } = replica.phase {
                if ready_at <= now {
                    replica.phase = Phase::Ready;
                    replica.ready_since = Some(now);
                }
            }
            while replica.in_service.front().is_some_and(|end| *end <= now) {
                replica.in_service.pop_front();
                self.totals.completed += 1;
            }
        }
        self.replicas
            .retain(|r| !(r.phase == Phase::Draining && r.in_service.is_empty()));

        let was_empty = self.queue.is_empty();
        self.queue
            .extend(std::iter::repeat_n(now, arrivals as usize));
        self.totals.arrivals += u64::from(arrivals);

        while let Some(&arrived) = self.queue.front() {
            let waited = now - arrived;
            if waited <= self.timeout_steps {
                break;
            }
            self.queue.pop_front();
            self.totals.dropped += 1;
            self.totals.delays.record(waited);
        }

        self.dispatch(now);
        let mut view = View {
            step: now,
            arrivals,
            queued: self.queue.len() as u64,
            newly_held: was_empty && !self.queue.is_empty(),
            ..View::default()
        };
        for replica in &mut self.replicas {
            replica.busy_slot_steps += replica.in_service.len() as u64;
            view.in_service += replica.in_service.len() as u64;
            match replica.phase {
                Phase::Starting { .. } => view.starting += 1,
                Phase::Ready => view.ready += 1,
                Phase::Draining => view.draining += 1,
            }
        }
        view
    }

    /// Serves the queue in order while a ready replica has a free slot.
    fn dispatch(&mut self, now: u64) {
        let limit = self.config.container_concurrency.max(1) as usize;
        while !self.queue.is_empty() {
            let least_busy = self
                .replicas
                .iter_mut()
                .filter(|r| r.phase == Phase::Ready && r.in_service.len() < limit)
                .min_by_key(|r| r.in_service.len());
            let Some(replica) = least_busy else { break };
            let Some(arrived) = self.queue.pop_front() else {
                break;
            };
            replica.in_service.push_back(now + self.service_steps);
            self.totals.started += 1;
            self.totals.delays.record(now - arrived);
        }
    }

    /// Replicas ready or starting.
    pub fn active(&self) -> u32 {
        self.replicas
            .iter()
            .filter(|r| r.phase != Phase::Draining)
            .count() as u32
    }

    /// Replicas that exist and cost: starting, ready or draining.
    pub fn billed(&self) -> u32 {
        self.replicas.len() as u32
    }

    pub fn in_service(&self) -> u64 {
        self.replicas
            .iter()
            .map(|r| r.in_service.len() as u64)
            .sum()
    }

    pub fn queued(&self) -> u64 {
        self.queue.len() as u64
    }

    /// Every replica's state and CPU counter, into `out` (cleared first).
    pub fn replica_stats(&self, out: &mut Vec<ReplicaStat>) {
        out.clear();
        out.extend(self.replicas.iter().map(|r| ReplicaStat {
            id: r.id,
            phase: match r.phase {
                Phase::Starting { .. } => ReplicaPhase::Starting,
                Phase::Ready => ReplicaPhase::Ready,
                Phase::Draining => ReplicaPhase::Draining,
            },
            ready_since: r.ready_since,
            busy_slot_steps: r.busy_slot_steps,
        }));
    }

    /// Makes `target` (capped at `max_replicas`) replicas active, starting
    /// new ones or cancelling/draining the newest.
    pub fn scale_to(&mut self, now: u64, target: u32) {
        let target = target.min(self.config.max_replicas);
        let active = self.active();
        if target > active {
            let ready_at = now + self.startup_steps;
            self.totals.starts += u64::from(target - active);
            for _ in active..target {
                let replica = self.replica(Phase::Starting { ready_at }, now);
                self.replicas.push(replica);
            }
            return;
        }
        let mut excess = active - target;
        // Starting replicas serve nothing yet: cancel those first, newest first.
        while excess > 0 {
            let newest = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| matches!(r.phase, Phase::Starting { .. }))
                .max_by_key(|(_, r)| r.since)
                .map(|(i, _)| i);
            let Some(index) = newest else { break };
            self.replicas.swap_remove(index);
            self.totals.cancelled += 1;
            excess -= 1;
        }
        while excess > 0 {
            let newest = self
                .replicas
                .iter_mut()
                .filter(|r| r.phase == Phase::Ready)
                .max_by_key(|r| r.since);
            let Some(replica) = newest else { break };
            replica.phase = Phase::Draining;
            excess -= 1;
        }
        self.replicas
            .retain(|r| !(r.phase == Phase::Draining && r.in_service.is_empty()));
    }

    /// Adds this step's cost; call once per step, after any scaling.
    pub fn account(&mut self) {
        self.totals.replica_steps += u64::from(self.billed());
        self.totals.starting_steps += self
            .replicas
            .iter()
            .filter(|r| matches!(r.phase, Phase::Starting { .. }))
            .count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig {
            step: Duration::from_millis(100),
            service_time: Duration::from_millis(200),
            container_concurrency: 2,
            startup: Duration::from_secs(1),
            hold_timeout: Duration::from_secs(3),
            max_replicas: 10,
        }
    }

    fn assert_conserved(cluster: &Cluster) {
        let t = cluster.totals();
        assert_eq!(t.arrivals, t.started + t.dropped + cluster.queued());
        assert_eq!(t.started, t.completed + cluster.in_service());
        assert_eq!(t.delays.count(), t.started + t.dropped);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(0.5), Some(50));
        assert_eq!(h.percentile(0.99), Some(99));
        assert_eq!(h.percentile(1.0), Some(100));
        assert_eq!(h.percentile(0.0), Some(1));
        let mut skewed = Histogram::default();
        for _ in 0..98 {
            skewed.record(0);
        }
        skewed.record(7);
        skewed.record(300);
        assert_eq!(skewed.percentile(0.5), Some(0));
        assert_eq!(skewed.percentile(0.98), Some(0));
        assert_eq!(skewed.percentile(0.99), Some(7));
        assert_eq!(skewed.percentile(0.999), Some(300));
    }

    #[test]
    fn requests_wait_for_startup_then_are_served_in_order() {
        let mut c = Cluster::new(config());
        let v = c.advance(0, 3);
        assert!(v.newly_held);
        assert_eq!((v.queued, v.in_service), (3, 0));
        c.scale_to(0, 2);
        assert_eq!((c.active(), c.billed()), (2, 2));
        for step in 1..10 {
            c.advance(step, 0);
        }
        let v = c.advance(10, 0);
        // Ready at 1 s (step 10): both replicas take what they can.
        assert_eq!((v.ready, v.in_service, v.queued), (2, 3, 0));
        assert_eq!(c.totals().delays.percentile(1.0), Some(10));
        assert_conserved(&c);
    }

    #[test]
    fn full_replicas_queue_the_rest_fifo() {
        let mut c = Cluster::new(ModelConfig {
            startup: Duration::ZERO,
            ..config()
        });
        c.scale_to(0, 1);
        let v = c.advance(0, 5);
        assert_eq!((v.in_service, v.queued), (2, 3));
        assert!(v.newly_held);
        // Service is 2 steps: the first two finish at step 2, the next two start.
        c.advance(1, 0);
        let v = c.advance(2, 0);
        assert_eq!((v.in_service, v.queued, v.newly_held), (2, 1, false));
        assert_conserved(&c);
    }

    #[test]
    fn scale_down_cancels_starting_then_drains_without_dropping() {
        let mut c = Cluster::new(config());
        c.scale_to(0, 1);
        for step in 0..10 {
            c.advance(step, 0);
        }
        c.advance(10, 2); // the ready replica takes both
        c.scale_to(10, 3); // two more starting
        assert_eq!(c.billed(), 3);
        c.scale_to(10, 0);
        assert_eq!((c.totals().starts, c.totals().cancelled), (3, 2));
        // The starting ones are gone at once; the busy one drains.
        let v = c.advance(11, 0);
        assert_eq!(
            (v.ready, v.starting, v.draining, v.in_service),
            (0, 0, 1, 2)
        );
        let v = c.advance(12, 0);
        assert_eq!((v.draining, v.in_service), (0, 0));
        assert_eq!(c.billed(), 0);
        assert_eq!(c.totals().completed, 2);
        assert_conserved(&c);
    }

    #[test]
    fn waits_past_the_hold_timeout_are_dropped() {
        let mut c = Cluster::new(config());
        c.advance(0, 4);
        for step in 1..=30 {
            c.advance(step, 0);
        }
        assert_eq!(c.totals().dropped, 0);
        let v = c.advance(31, 1);
        assert_eq!((c.totals().dropped, v.queued), (4, 1));
        assert_conserved(&c);
    }

    #[test]
    fn conservation_under_random_load_and_scaling() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut c = Cluster::new(config());
        let mut billed = 0;
        for step in 0..5_000 {
            let v = c.advance(step, rng.u32(0..4));
            if step % 13 == 0 {
                c.scale_to(step, rng.u32(0..8));
            }
            c.account();
            billed += u64::from(c.billed());
            assert!(v.in_service <= u64::from(v.ready + v.draining) * 2);
            assert_conserved(&c);
        }
        assert_eq!(c.totals().replica_steps, billed);
        assert!(c.totals().completed > 0);
    }

    #[test]
    fn ready_replicas_at_the_start_serve_at_once_and_count_busy_slots() {
        let mut c = Cluster::with_ready(config(), 1);
        let v = c.advance(0, 3);
        assert_eq!((v.ready, v.in_service, v.queued), (1, 2, 1));
        assert_eq!(c.totals().starts, 0);
        let mut stats = Vec::new();
        c.replica_stats(&mut stats);
        assert_eq!(stats.len(), 1);
        assert_eq!(
            (
                stats[0].phase,
                stats[0].ready_since,
                stats[0].busy_slot_steps
            ),
            (ReplicaPhase::Ready, Some(0), 2)
        );
        assert_eq!(cpu_share(stats[0].busy_slot_steps, 1, 2), 1.0);
        assert_eq!(cpu_share(0, 10, 2), 0.0);
        // A hold timeout of `Duration::MAX` never drops.
        assert_eq!(config().steps(Duration::MAX), u64::MAX);
    }
}
