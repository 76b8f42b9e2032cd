//! The replicas of one service as the controller sees them: each one's
//! phase, and the probes that move it between phases.
//!
//! A replica is `Starting` until its readiness probe passes (or the backend
//! reports it ready), then `Ready` and re-probed every `readiness.period`;
//! scale-down marks it `Draining` in a generation of the endpoint set, and it
//! is `Stopping` once out of the set. Every change the proxies must see bumps
//! the set's generation and marks it for writing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_nats::messages::{Endpoint, EndpointSet, EndpointState, VERSION};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backend::PoolInfo;
use crate::probe::{self, Prober};
use crate::status::ReplicaStatus;

/// Consecutive failed probes that take a ready replica out of rotation.
pub const LIVENESS_FAILURES: u32 = 3;

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, not yet passing readiness.
    Starting,
    /// In the endpoint set as `ready`.
    Ready,
    /// In the endpoint set as `draining` since this generation.
    Draining { generation: u64, since: Instant },
    /// Out of the endpoint set, being stopped.
    Stopping,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining { .. } => "draining",
            Phase::Stopping => "stopping",
        }
    }

    /// Counts towards the replicas the service has (or will soon have).
    pub fn active(self) -> bool {
        matches!(self, Phase::Starting | Phase::Ready)
    }
}

#[derive(Debug)]
pub struct Tracked {
    pub addr: String,
    pub phase: Phase,
    /// When it entered its phase.
    pub since: Instant,
    /// Wall-clock microseconds: asked of the backend, and first passing probe.
    pub started_at_us: u64,
    pub ready_at_us: Option<u64>,
    /// A `Stopping` replica whose stop failed: how often, and when to stop
    /// it again (on the RESUBSCRIBE schedule, so an engine that refuses at
    /// once is not asked in a tight loop).
    pub stop_failures: u32,
    pub stop_again_at: Option<Instant>,
    /// The rank of its pool, for a pooled backend (0 = the first pool).
    pub pool: Option<usize>,
    probe: Option<JoinHandle<()>>,
}

impl Tracked {
    /// Replaces (and stops) the task probing this replica.
    pub fn set_probe(&mut self, probe: Option<JoinHandle<()>>) {
        if let Some(old) = std::mem::replace(&mut self.probe, probe) {
            old.abort();
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.set_probe(None);
    }
}

/// A probe result that changes a replica's phase.
#[derive(Debug)]
pub enum ProbeEvent {
    /// A starting replica passed its readiness probe.
    Ready(String),
    /// A ready replica failed [`LIVENESS_FAILURES`] probes in a row.
    Unready(String),
    /// Stopping the replica failed (its engine was down): stop it again
    /// once the backend answers.
    StopFailed(String),
}

/// The replicas of one service and the generation of their endpoint set.
#[derive(Debug, Default)]
pub struct Replicas {
    map: BTreeMap<String, Tracked>,
    generation: u64,
    /// The set must be written: it changed, or the last write failed.
    dirty: bool,
}

impl Replicas {
    pub fn get(&self, id: &str) -> Option<&Tracked> {
        self.map.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Tracked> {
        self.map.get_mut(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tracked)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn insert(
        &mut self,
        id: String,
        addr: String,
        phase: Phase,
        now: Instant,
        started_at_us: u64,
    ) {
        if phase != Phase::Starting {
            self.changed();
        }
        let tracked = Tracked {
            addr,
            phase,
            since: now,
            started_at_us,
            ready_at_us: None,
            stop_failures: 0,
            stop_again_at: None,
            pool: None,
            probe: None,
        };
        self.map.insert(id, tracked);
    }

    pub fn remove(&mut self, id: &str) -> Option<Tracked> {
        let removed = self.map.remove(id)?;
        if matches!(removed.phase, Phase::Ready | Phase::Draining { .. }) {
            self.changed();
        }
        Some(removed)
    }

    /// Forgets the replicas `which` picks (they are being stopped),
    /// taking them out of the set.
    pub fn take(&mut self, which: impl Fn(&str) -> bool) -> Vec<String> {
        let ids: Vec<String> = self.map.keys().filter(|id| which(id)).cloned().collect();
        for id in &ids {
            self.map.remove(id);
        }
        self.changed();
        ids
    }

    pub fn count(&self, predicate: impl Fn(Phase) -> bool) -> u32 {
        self.map.values().filter(|r| predicate(r.phase)).count() as u32
    }

    /// Ids of the replicas whose phase matches, oldest in that phase first.
    pub fn oldest_first(&self, phase: fn(Phase) -> bool) -> Vec<String> {
        let mut found: Vec<(Instant, &String)> = self
            .map
            .iter()
            .filter(|(_, r)| phase(r.phase))
            .map(|(id, r)| (r.since, id))
            .collect();
        found.sort();
        found.into_iter().map(|(_, id)| id.clone()).collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// The set the proxies see changed: a new generation to write.
    pub fn changed(&mut self) {
        self.generation += 1;
        self.dirty = true;
    }

    pub fn written(&mut self) {
        self.dirty = false;
    }

    /// Moves the generation base by `by`, keeping draining replicas'
    /// generations in step, and marks the set for writing.
    pub fn rebase(&mut self, by: u64) {
        self.generation += by;
        self.dirty = true;
        for replica in self.map.values_mut() {
            if let Phase::Draining { generation, since } = replica.phase {
                replica.phase = Phase::Draining {
                    generation: generation + by,
                    since,
                };
            }
        }
    }

    /// Continues after a stored generation (a previous controller's).
    pub fn continue_from(&mut self, stored: u64) {
        if stored > self.generation {
            self.rebase(stored - self.generation);
        }
    }

    /// What the proxies route by: ready and draining replicas.
    pub fn endpoint_set(&self) -> EndpointSet {
        let endpoints = self
            .map
            .iter()
            .filter_map(|(id, r)| {
                let state = match r.phase {
                    Phase::Ready => EndpointState::Ready,
                    Phase::Draining { .. } => EndpointState::Draining,
                    _ => return None,
                };
                Some(Endpoint {
                    id: id.clone(),
                    addr: r.addr.clone(),
                    state,
                    pool_rank: r.pool.and_then(|rank| u32::try_from(rank).ok()),
                })
            })
            .collect();
        EndpointSet {
            v: VERSION,
            generation: self.generation,
            endpoints,
        }
    }

    /// Each replica's status; `pools` names the pools by rank.
    pub fn status(&self, pools: &[PoolInfo]) -> Vec<ReplicaStatus> {
        self.map
            .iter()
            .map(|(id, r)| ReplicaStatus {
                id: id.clone(),
                addr: r.addr.clone(),
                state: r.phase.name(),
                started_at_us: r.started_at_us,
                ready_at_us: r.ready_at_us,
                cpu_cores: None,
                memory_bytes: None,
                pool: r
                    .pool
                    .and_then(|rank| pools.get(rank))
                    .map(|p| p.name.clone()),
            })
            .collect()
    }

    /// Replicas in pool `rank`: all of them, and the ready ones.
    pub fn in_pool(&self, rank: usize) -> (u32, u32) {
        let (mut all, mut ready) = (0, 0);
        for r in self.map.values().filter(|r| r.pool == Some(rank)) {
            all += 1;
            ready += u32::from(r.phase == Phase::Ready);
        }
        (all, ready)
    }
}

/// Probes a starting replica until it passes, fast at first.
pub fn probe_until_ready(
    prober: Arc<dyn Prober>,
    id: String,
    addr: String,
    events: mpsc::UnboundedSender<ProbeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        loop {
            if prober.ready(&addr).await {
                let _ = events.send(ProbeEvent::Ready(id));
                return;
            }
            tokio::time::sleep(probe::starting_interval(started.elapsed())).await;
        }
    })
}

/// Re-probes a ready replica every `period` until it fails
/// [`LIVENESS_FAILURES`] times in a row.
pub fn probe_while_ready(
    prober: Arc<dyn Prober>,
    id: String,
    addr: String,
    period: Duration,
    events: mpsc::UnboundedSender<ProbeEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            tokio::time::sleep(period).await;
            if prober.ready(&addr).await {
                failures = 0;
                continue;
            }
            failures += 1;
            if failures >= LIVENESS_FAILURES {
                let _ = events.send(ProbeEvent::Unready(id));
                return;
            }
        }
    })
}
