//! Stand-ins for what the loop talks to: a backend that runs nothing, a
//! prober that passes the addresses it is told to, a publisher that keeps
//! the endpoint set in memory.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rouse_nats::messages::{EndpointSet, Scaled};

use super::SERVICE;
use crate::backend::{Backend, BackendError, Health, Readiness, Replica, Started};
use crate::probe::Prober;
use crate::reconcile::error::PublishError;
use crate::reconcile::{now, Publisher};

// ---- the backend ---------------------------------------------------------

#[derive(Default)]
pub struct BackendState {
    pub replicas: BTreeMap<String, Replica>,
    pub next: u32,
    /// Starts fail while set.
    pub broken: bool,
    /// Like Kubernetes: `ensure` sets a count, replicas appear later.
    pub by_count: bool,
    pub target: usize,
    pub ensure_calls: Vec<(Instant, usize)>,
    pub stopped: Vec<String>,
    /// Like an engine that is down: `list` and `stop` fail while set.
    pub unreachable: bool,
    /// `stop` fails while set (`list` still answers).
    pub stop_fails: bool,
    pub list_calls: usize,
    pub stop_calls: usize,
    /// Like a cluster: replicas outlive the controller.
    pub keeps_replicas: bool,
    /// Like a StatefulSet: the oldest replica (lowest id) goes first.
    pub remove_oldest: bool,
    /// Ids `<prefix>-N` and addresses `10.0.<subnet>.N` instead of
    /// `echo-N` and `10.0.0.N`, for several fakes as pools of one service.
    pub prefix: Option<&'static str>,
    pub subnet: u8,
}

fn unreachable() -> BackendError {
    BackendError::Engine {
        what: "listing containers".into(),
        message: "cannot reach the engine".into(),
    }
}

#[derive(Default)]
pub struct FakeBackend(pub Mutex<BackendState>);

impl FakeBackend {
    pub fn state(&self) -> std::sync::MutexGuard<'_, BackendState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, readiness: Readiness) -> Replica {
        let mut state = self.state();
        state.next += 1;
        let id = format!("{}-{}", state.prefix.unwrap_or(SERVICE), state.next);
        let replica = Replica {
            addr: format!("10.0.{}.{}:80", state.subnet, state.next),
            id: id.clone(),
            health: Health::Running,
            readiness,
        };
        state.replicas.insert(id, replica.clone());
        replica
    }

    pub fn running(&self) -> Vec<String> {
        let state = self.state();
        state
            .replicas
            .values()
            .filter(|r| r.health == Health::Running)
            .map(|r| r.id.clone())
            .collect()
    }

    pub fn set(&self, id: &str, change: impl FnOnce(&mut Replica)) {
        if let Some(replica) = self.state().replicas.get_mut(id) {
            change(replica);
        }
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn startup_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        let running = self.running().len();
        {
            let mut state = self.state();
            state.ensure_calls.push((now(), n));
            if state.broken {
                return Err(BackendError::Spawn {
                    command: "app".into(),
                    source: std::io::Error::other("no such file"),
                });
            }
            if state.by_count {
                state.target = n;
                return Ok(Started {
                    replicas: Vec::new(),
                    pending: n.saturating_sub(running),
                });
            }
        }
        let replicas = (running..n).map(|_| self.add(Readiness::Probe)).collect();
        Ok(Started {
            replicas,
            pending: 0,
        })
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        let mut state = self.state();
        state.list_calls += 1;
        if state.unreachable {
            return Err(unreachable());
        }
        Ok(state.replicas.values().cloned().collect())
    }

    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let mut state = self.state();
        state.stop_calls += 1;
        if state.unreachable || state.stop_fails {
            return Err(unreachable());
        }
        if state.replicas.remove(id).is_some() {
            state.stopped.push(id.to_string());
        }
        Ok(())
    }

    fn removal_order(&self, ids: &mut [String]) {
        if self.state().remove_oldest {
            // Last is removed first: put the lowest id last.
            ids.sort_by(|a, b| b.cmp(a));
        }
    }

    fn keeps_replicas_on_shutdown(&self) -> bool {
        self.state().keeps_replicas
    }

    fn picks_its_victim(&self) -> bool {
        self.state().remove_oldest
    }
}

// ---- probes and NATS -----------------------------------------------------

/// Addresses whose readiness probe passes.
#[derive(Default)]
pub struct FakeProber(Mutex<HashSet<String>>);

impl FakeProber {
    pub fn pass(&self, addr: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.into());
    }
}

#[async_trait]
impl Prober for FakeProber {
    async fn ready(&self, addr: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(addr)
    }
}

#[derive(Default)]
pub struct MemoryPublisher {
    pub set: Mutex<Option<EndpointSet>>,
    pub writes: Mutex<Vec<EndpointSet>>,
    pub events: Mutex<Vec<Scaled>>,
    pub offline: AtomicBool,
}

impl MemoryPublisher {
    pub fn current(&self) -> Option<EndpointSet> {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn events(&self) -> Vec<(u32, u32, String)> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .map(|e| (e.from, e.to, e.reason.clone()))
            .collect()
    }
}

#[async_trait]
impl Publisher for MemoryPublisher {
    async fn read(&self, _service: &str) -> Result<Option<EndpointSet>, PublishError> {
        Ok(self.current())
    }

    async fn write(&self, _service: &str, set: &EndpointSet) -> Result<u64, PublishError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(PublishError {
                what: "writing",
                message: "offline".into(),
            });
        }
        *self.set.lock().unwrap_or_else(|p| p.into_inner()) = Some(set.clone());
        let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        writes.push(set.clone());
        // One bucket revision per write, as KV numbers them.
        Ok(writes.len() as u64)
    }

    fn scaled(&self, event: Scaled) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    fn connected(&self) -> bool {
        !self.offline.load(Ordering::SeqCst)
    }
}
