//! Scaling policies under test. Each sees the simulated service the way its
//! real counterpart sees a real one: rouse through pushed reports and wakes,
//! the KPA-like baseline through per-second scrapes and a 2 s tick, the
//! HPA/KEDA-like baseline through a 500 ms poll and a 15 s sync. Policies
//! that scale on CPU also read every replica's CPU counter through
//! [`Policy::meter`], as their controllers' metering does beside the
//! decision loop.

use crate::model::{ReplicaStat, View};

pub mod hpa;
pub mod hpa_cpu;
pub mod kpa;
pub mod rouse;

/// A scaling policy driven by the simulation clock.
pub trait Policy {
    /// Short name, used in CSV columns and charts.
    fn name(&self) -> &'static str;

    /// Called after every step with what the service looks like; returns a
    /// replica count when the policy decided one this step.
    fn on_step(&mut self, view: &View) -> Option<u32>;

    /// Every decision with its inputs, as CSV, if the policy kept them.
    fn decision_csv(&self) -> Option<String> {
        None
    }

    /// Replicas already ready when the trace starts (a policy that never
    /// goes below one starts with one).
    fn initial_replicas(&self) -> u32 {
        0
    }

    /// Whether [`Policy::meter`] should be called.
    fn wants_replicas(&self) -> bool {
        false
    }

    /// Called after every step, before [`Policy::on_step`], with every
    /// replica's state and CPU counter, when [`Policy::wants_replicas`].
    fn meter(&mut self, _step: u64, _replicas: &[ReplicaStat]) {}
}

/// Parameters every policy shares, so they are compared on equal terms.
#[derive(Debug, Clone)]
pub struct Common {
    /// Simulation step, in milliseconds.
    pub step_ms: u64,
    /// Requests in flight per replica to aim for.
    pub target_concurrency: f64,
    pub max_replicas: u32,
}

/// A recurring event on the simulation clock: due at multiples of `every`
/// (ms) starting at `first`.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    every_ms: u64,
    next_ms: u64,
}

impl Every {
    pub fn new(every_ms: u64, first_ms: u64) -> Self {
        Self {
            every_ms: every_ms.max(1),
            next_ms: first_ms,
        }
    }

    /// Whether the event is due at `now_ms`; moves on to the next one if so.
    pub fn due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_ms {
            return false;
        }
        // Skip missed ticks (like tokio's `MissedTickBehavior::Delay`): one
        // event per call at most.
        self.next_ms += self.every_ms;
        if self.next_ms <= now_ms {
            self.next_ms = now_ms + self.every_ms;
        }
        true
    }
}
