//! One reconcile loop per service: observe, decide, act, publish.
//!
//! The loop runs on every tick, every report or wake from a proxy, and every
//! probe result, so a replica turning ready reaches the proxies at once. Each
//! pass:
//! 1. syncs with the backend (exits, adoptions, startup timeouts);
//! 2. asks the autoscaler for a replica count;
//! 3. scales up (un-draining first, then starting) or down (cancelling
//!    starting replicas first, then marking ready ones `draining`);
//! 4. stops draining replicas once every live proxy reports nothing in flight
//!    on them (or `drain_timeout` passes);
//! 5. writes the endpoint set to KV when it changed, and its status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::Client;
use rouse_nats::config::{Probe, ServiceConfig, ShutdownPolicy};
use rouse_nats::messages::{self, Endpoint, EndpointSet, EndpointState, Scaled, VERSION};
use rouse_nats::{bus, Subjects};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::autoscaler::{Autoscaler, Decision};
use crate::backend::{Backend, Health};
use crate::intake::Inbox;
use crate::metrics::{ControllerMetrics, ScaleLabel};
use crate::probe;
use crate::status::{ReplicaStatus, ScaleEvent, ServiceStatus, StatusBoard};

/// Where a replica is in its life, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
    fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining { .. } => "draining",
            Phase::Stopping => "stopping",
        }
    }

    fn active(self) -> bool {
        matches!(self, Phase::Starting | Phase::Ready)
    }
}

#[derive(Debug)]
struct Tracked {
    addr: String,
    phase: Phase,
    since: Instant,
    /// Wall-clock microseconds: asked of the backend, and first passing probe.
    started_at_us: u64,
    ready_at_us: Option<u64>,
    probe: Option<JoinHandle<()>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.take() {
            probe.abort();
        }
    }
}

/// A probe result that changes a replica's phase.
#[derive(Debug)]
enum ProbeEvent {
    /// A starting replica passed its readiness probe.
    Ready(String),
    /// A ready replica failed `LIVENESS_FAILURES` probes in a row.
    Unready(String),
}

/// How long a stopping controller tries to clear a service's endpoint set.
const SHUTDOWN_PUBLISH_LIMIT: Duration = Duration::from_secs(3);

/// Consecutive failed probes that take a ready replica out of rotation.
const LIVENESS_FAILURES: u32 = 3;

/// Everything one service loop talks to.
pub struct Wiring {
    pub client: Client,
    pub subjects: Subjects,
    pub status: Arc<StatusBoard>,
    pub metrics: Arc<ControllerMetrics>,
    pub tick: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub on_shutdown: ShutdownPolicy,
}

/// The reconcile loop of one service.
pub struct ServiceLoop {
    name: String,
    spec: ServiceConfig,
    backend_kind: &'static str,
    probe: Probe,
    backend: Arc<dyn Backend>,
    inbox: Arc<Inbox>,
    wiring: Wiring,
    autoscaler: Autoscaler,
    replicas: BTreeMap<String, Tracked>,
    /// Generation of the set last written (or to be written) to KV.
    generation: u64,
    /// The set must be written: it changed, or the last write failed.
    dirty: bool,
    /// The current KV value has been read, so `generation` continues it.
    kv_read: bool,
    /// The generation last written to KV, and when.
    published_generation: u64,
    published_at: Instant,
    store: Option<kv::Store>,
    ready_tx: mpsc::UnboundedSender<ProbeEvent>,
    ready_rx: mpsc::UnboundedReceiver<ProbeEvent>,
    desired: u32,
    last_scale: Option<ScaleEvent>,
    last_error: Option<String>,
    start_failures: u32,
    retry_at: Option<Instant>,
}

impl ServiceLoop {
    pub fn new(
        spec: ServiceConfig,
        backend_kind: &'static str,
        backend: Arc<dyn Backend>,
        inbox: Arc<Inbox>,
        wiring: Wiring,
    ) -> Self {
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        Self {
            name: spec.name.clone(),
            probe: spec.readiness.probe(),
            autoscaler: Autoscaler::new(spec.scaling.clone(), Instant::now()),
            spec,
            backend_kind,
            backend,
            inbox,
            wiring,
            replicas: BTreeMap::new(),
            generation: 0,
            dirty: false,
            kv_read: false,
            published_generation: 0,
            published_at: Instant::now(),
            store: None,
            ready_tx,
            ready_rx,
            desired: 0,
            last_scale: None,
            last_error: None,
            start_failures: 0,
            retry_at: None,
        }
    }

    /// Runs until shutdown is signalled.
    pub async fn run(mut self) {
        self.adopt().await;
        let mut tick = tokio::time::interval(self.wiring.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.wiring.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(event) = self.ready_rx.recv() => self.on_probe(event),
                _ = self.inbox.wakeup.notified() => {}
                _ = tick.tick() => {}
            }
            self.reconcile().await;
        }
        self.stop_everything().await;
    }

    /// Takes over replicas a previous controller left running. Those the KV
    /// set already lists as ready stay ready (warm traffic must not notice the
    /// restart); others are probed like new ones.
    async fn adopt(&mut self) {
        let listed = self.read_kv().await;
        let Ok(replicas) = self.backend.list().await else {
            return;
        };
        let now = Instant::now();
        for replica in replicas {
            if replica.health != Health::Running {
                let _ = self.backend.stop(&replica.id).await;
                continue;
            }
            let listed_state = listed.as_ref().and_then(|set| {
                set.endpoints
                    .iter()
                    .find(|e| e.id == replica.id && e.addr == replica.addr)
                    .map(|e| e.state)
            });
            let phase = match listed_state {
                Some(EndpointState::Ready) => Phase::Ready,
                // Finish the drain the previous controller began.
                Some(EndpointState::Draining) => Phase::Draining {
                    generation: self.generation + 1,
                    since: now,
                },
                None => Phase::Starting,
            };
            self.track(replica.id, replica.addr, phase, now, now_us());
        }
        // Write the set even if unchanged, replacing entries of dead replicas.
        self.dirty = true;
        self.publish_endpoints().await;
        self.update_status(now);
    }

    async fn reconcile(&mut self) {
        let now = Instant::now();
        self.sync_backend(now).await;
        let observation = self.inbox.observations().observe(now);
        let active = self.count(Phase::active);
        let mut decision = self.autoscaler.decide(now, &observation, active);
        if decision.replicas < active && !self.connected() {
            // Without reports, "idle" only means "cut off": keep what serves.
            decision.replicas = active;
        }
        self.desired = decision.replicas;
        if decision.replicas > active {
            self.scale_up(decision, active, now).await;
        } else if decision.replicas < active {
            self.scale_down(decision, active, now);
        }
        self.progress_drains(now);
        self.publish_endpoints().await;
        self.update_status(now);
    }

    fn connected(&self) -> bool {
        self.wiring.client.connection_state() == async_nats::connection::State::Connected
    }

    fn count(&self, predicate: impl Fn(Phase) -> bool) -> u32 {
        self.replicas
            .values()
            .filter(|r| predicate(r.phase))
            .count() as u32
    }

    fn track(&mut self, id: String, addr: String, phase: Phase, now: Instant, started_at_us: u64) {
        let probe = match phase {
            Phase::Starting => Some(self.spawn_probe(&id, &addr)),
            Phase::Ready => Some(self.spawn_liveness(&id, &addr)),
            _ => None,
        };
        if phase != Phase::Starting {
            self.changed();
        }
        self.replicas.insert(
            id,
            Tracked {
                addr,
                phase,
                since: now,
                started_at_us,
                ready_at_us: None,
                probe,
            },
        );
    }

    fn spawn_probe(&self, id: &str, addr: &str) -> JoinHandle<()> {
        let (id, addr, kind, tx) = (
            id.to_string(),
            addr.to_string(),
            self.probe.clone(),
            self.ready_tx.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                if probe::probe(&kind, &addr).await {
                    let _ = tx.send(ProbeEvent::Ready(id));
                    return;
                }
                tokio::time::sleep(probe::starting_interval(started.elapsed())).await;
            }
        })
    }

    fn on_probe(&mut self, event: ProbeEvent) {
        match event {
            ProbeEvent::Ready(id) => self.on_ready(&id),
            ProbeEvent::Unready(id) => self.on_unready(&id),
        }
    }

    fn on_ready(&mut self, id: &str) {
        let Some(addr) = self
            .replicas
            .get(id)
            .filter(|r| r.phase == Phase::Starting)
            .map(|r| r.addr.clone())
        else {
            return;
        };
        let liveness = self.spawn_liveness(id, &addr);
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        replica.phase = Phase::Ready;
        if let Some(old) = replica.probe.replace(liveness) {
            old.abort();
        }
        replica.ready_at_us = Some(now_us());
        let took = replica.since.elapsed();
        self.wiring
            .metrics
            .backend_start
            .get_or_create(&ControllerMetrics::label(&self.name))
            .observe(took.as_secs_f64());
        tracing::info!(service = %self.name, replica = %id, ?took, "replica ready");
        self.start_failures = 0;
        self.last_error = None;
        self.changed();
    }

    /// A ready replica stopped answering its probe: out of rotation, and
    /// probed like a starting one (replaced if it does not recover within
    /// the startup timeout).
    fn on_unready(&mut self, id: &str) {
        let Some(replica) = self.replicas.get(id) else {
            return;
        };
        if replica.phase != Phase::Ready {
            return;
        }
        let addr = replica.addr.clone();
        let probe = self.spawn_probe(id, &addr);
        if let Some(replica) = self.replicas.get_mut(id) {
            replica.phase = Phase::Starting;
            replica.since = Instant::now();
            if let Some(old) = replica.probe.replace(probe) {
                old.abort();
            }
        }
        self.backend_error(format!(
            "replica {id} failed {LIVENESS_FAILURES} readiness probes in a row"
        ));
        self.changed();
    }

    /// Re-probes a ready replica every `readiness.period`.
    fn spawn_liveness(&self, id: &str, addr: &str) -> JoinHandle<()> {
        let (id, addr, kind, tx, period) = (
            id.to_string(),
            addr.to_string(),
            self.probe.clone(),
            self.ready_tx.clone(),
            self.spec.readiness.period,
        );
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                tokio::time::sleep(period).await;
                if probe::probe(&kind, &addr).await {
                    failures = 0;
                    continue;
                }
                failures += 1;
                if failures >= LIVENESS_FAILURES {
                    let _ = tx.send(ProbeEvent::Unready(id));
                    return;
                }
            }
        })
    }

    fn changed(&mut self) {
        self.generation += 1;
        self.dirty = true;
    }

    /// Exits, vanished replicas, startup timeouts.
    async fn sync_backend(&mut self, now: Instant) {
        let listed = match self.backend.list().await {
            Ok(listed) => listed,
            Err(err) => {
                self.backend_error(format!("listing replicas: {err}"));
                return;
            }
        };
        // Replicas the backend runs that this loop lost track of (a partly
        // failed start): probe them like new ones rather than leak them.
        for replica in &listed {
            if replica.health == Health::Running && !self.replicas.contains_key(&replica.id) {
                let (id, addr) = (replica.id.clone(), replica.addr.clone());
                self.track(id, addr, Phase::Starting, now, now_us());
            }
        }
        let present: BTreeMap<&str, &Health> =
            listed.iter().map(|r| (r.id.as_str(), &r.health)).collect();
        let mut gone = Vec::new();
        for (id, replica) in &self.replicas {
            match present.get(id.as_str()) {
                None => gone.push((id.clone(), None)),
                Some(Health::Exited(reason)) => gone.push((id.clone(), Some(reason.clone()))),
                Some(Health::Running) => {
                    let timeout = self.startup_timeout();
                    if replica.phase == Phase::Starting
                        && now.duration_since(replica.since) > timeout
                    {
                        gone.push((id.clone(), Some(format!("not ready within {timeout:?}"))));
                    }
                }
            }
        }
        for (id, reason) in gone {
            let Some(replica) = self.replicas.remove(&id) else {
                continue;
            };
            if matches!(replica.phase, Phase::Ready | Phase::Draining { .. }) {
                self.changed();
            }
            if let Some(reason) = reason {
                if replica.phase != Phase::Stopping {
                    self.backend_error(format!("replica {id} failed: {reason}"));
                    self.note_start_failure(now);
                }
                let backend = Arc::clone(&self.backend);
                tokio::spawn(async move { backend.stop(&id).await });
            }
        }
    }

    fn startup_timeout(&self) -> Duration {
        match &self.spec.backend.process {
            Some(process) => process.startup_timeout,
            None => Duration::from_secs(300),
        }
    }

    async fn scale_up(&mut self, decision: Decision, active: u32, now: Instant) {
        let mut active = active;
        // A draining replica is the cheapest new capacity: it is already warm.
        let draining: Vec<String> = self
            .replicas
            .iter()
            .filter(|(_, r)| matches!(r.phase, Phase::Draining { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in draining
            .into_iter()
            .take((decision.replicas - active) as usize)
        {
            if let Some(replica) = self.replicas.get_mut(&id) {
                replica.phase = Phase::Ready;
                active += 1;
                self.changed();
            }
        }
        if active >= decision.replicas {
            return;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return;
        }
        let existing = self.count(|p| p != Phase::Stopping) as usize;
        let wanted = existing + (decision.replicas - active) as usize;
        let from = active;
        let asked_at_us = now_us();
        match self.backend.ensure(wanted).await {
            Ok(started) => {
                let any = !started.is_empty();
                for replica in started {
                    self.track(replica.id, replica.addr, Phase::Starting, now, asked_at_us);
                }
                if any {
                    self.record_scale(from, decision.replicas, decision.reason.as_str());
                }
            }
            Err(err) => {
                self.backend_error(err.to_string());
                self.note_start_failure(now);
            }
        }
    }

    fn scale_down(&mut self, decision: Decision, active: u32, now: Instant) {
        let mut excess = active - decision.replicas;
        // Replicas still starting carry no traffic: cancel those first, newest first.
        let mut starting: Vec<(Instant, String)> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.phase == Phase::Starting)
            .map(|(id, r)| (r.since, id.clone()))
            .collect();
        starting.sort();
        while excess > 0 {
            let Some((_, id)) = starting.pop() else { break };
            self.stop_replica(&id);
            excess -= 1;
        }
        let mut ready: Vec<(Instant, String)> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.phase == Phase::Ready)
            .map(|(id, r)| (r.since, id.clone()))
            .collect();
        ready.sort();
        if excess > 0 {
            self.changed();
        }
        while excess > 0 {
            let Some((_, id)) = ready.pop() else { break };
            if let Some(replica) = self.replicas.get_mut(&id) {
                replica.phase = Phase::Draining {
                    generation: self.generation,
                    since: now,
                };
                tracing::info!(service = %self.name, replica = %id, generation = self.generation, "draining replica");
            }
            excess -= 1;
        }
        self.record_scale(active, decision.replicas, decision.reason.as_str());
    }

    fn progress_drains(&mut self, now: Instant) {
        let drain_timeout = self.spec.scaling.drain_timeout;
        let (published, published_at) = (self.published_generation, self.published_at);
        let observations = self.inbox.observations();
        let finished: Vec<(String, bool)> = self
            .replicas
            .iter()
            .filter_map(|(id, r)| match r.phase {
                // Until the proxies can have seen it draining, it is not.
                Phase::Draining { generation, .. } if generation > published => None,
                Phase::Draining { generation, since } => {
                    let timed_out = now.duration_since(since) >= drain_timeout;
                    let drained = observations.drained(id, generation, published_at, now);
                    (timed_out || drained).then(|| (id.clone(), timed_out))
                }
                _ => None,
            })
            .collect();
        drop(observations);
        for (id, timed_out) in finished {
            if timed_out {
                tracing::warn!(service = %self.name, replica = %id, ?drain_timeout, "drain timed out; stopping anyway");
            } else {
                tracing::info!(service = %self.name, replica = %id, "replica drained");
            }
            self.changed();
            self.stop_replica(&id);
        }
    }

    /// Takes a replica out of rotation and stops it in the background.
    fn stop_replica(&mut self, id: &str) {
        if let Some(replica) = self.replicas.get_mut(id) {
            replica.phase = Phase::Stopping;
            if let Some(probe) = replica.probe.take() {
                probe.abort();
            }
        }
        let backend = Arc::clone(&self.backend);
        let id = id.to_string();
        tokio::spawn(async move {
            if let Err(err) = backend.stop(&id).await {
                tracing::warn!(replica = %id, error = %err, "stopping replica failed");
            }
        });
    }

    fn note_start_failure(&mut self, now: Instant) {
        let delay = rouse_nats::backoff::RESTART.nth(self.start_failures as usize);
        self.start_failures += 1;
        self.retry_at = Some(now + delay);
    }

    fn backend_error(&mut self, message: String) {
        tracing::error!(service = %self.name, error = %message, "backend error");
        self.wiring
            .metrics
            .backend_errors
            .get_or_create(&ControllerMetrics::label(&self.name))
            .inc();
        self.last_error = Some(message);
    }

    fn record_scale(&mut self, from: u32, to: u32, reason: &str) {
        if from == to {
            return;
        }
        let direction = if to > from { "up" } else { "down" };
        tracing::info!(service = %self.name, from, to, reason, "scaling");
        self.wiring
            .metrics
            .scale_events
            .get_or_create(&ScaleLabel {
                service: self.name.clone(),
                direction,
            })
            .inc();
        let event = Scaled {
            v: VERSION,
            service: self.name.clone(),
            from,
            to,
            reason: reason.to_string(),
            at_ms: messages::now_ms(),
        };
        self.last_scale = Some(ScaleEvent {
            from,
            to,
            reason: event.reason.clone(),
            at_ms: event.at_ms,
        });
        let client = self.wiring.client.clone();
        let subject = self.wiring.subjects.scaled(&self.name);
        tokio::spawn(async move {
            if let Err(err) = client.publish(subject, messages::encode(&event)).await {
                tracing::debug!(error = %err, "scaled event not published");
            }
        });
    }

    fn endpoint_set(&self) -> EndpointSet {
        let endpoints = self
            .replicas
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
                })
            })
            .collect();
        EndpointSet {
            v: VERSION,
            generation: self.generation,
            endpoints,
        }
    }

    async fn bucket(&mut self) -> Option<kv::Store> {
        if self.store.is_none() {
            let js = jetstream::new(self.wiring.client.clone());
            match bus::endpoints_bucket(&js).await {
                Ok(store) => self.store = Some(store),
                Err(err) => {
                    tracing::warn!(service = %self.name, error = %err, "endpoints bucket unavailable")
                }
            }
        }
        self.store.clone()
    }

    /// The set currently in KV; continues its generation.
    async fn read_kv(&mut self) -> Option<EndpointSet> {
        let store = self.bucket().await?;
        match store.entry(self.name.as_str()).await {
            Ok(entry) => {
                self.kv_read = true;
                let set = entry
                    .filter(|e| e.operation == kv::Operation::Put)
                    .and_then(|e| messages::decode::<EndpointSet>(&e.value).ok());
                if let Some(set) = &set {
                    self.generation = self.generation.max(set.generation);
                }
                set
            }
            Err(err) => {
                tracing::warn!(service = %self.name, error = %err, "cannot read endpoint set");
                None
            }
        }
    }

    async fn publish_endpoints(&mut self) {
        if !self.dirty {
            return;
        }
        if !self.kv_read {
            // A drain compares generations, so never publish one the proxies
            // have already seen: continue from the stored value.
            let before = self.generation;
            if self.read_kv().await.is_none() && !self.kv_read {
                return;
            }
            self.generation += 1;
            let bump = self.generation - before;
            self.bump_draining(bump);
        }
        let Some(store) = self.bucket().await else {
            return;
        };
        let set = self.endpoint_set();
        match store.put(self.name.as_str(), messages::encode(&set)).await {
            Ok(_) => {
                self.dirty = false;
                self.published_generation = set.generation;
                self.published_at = Instant::now();
                tracing::debug!(service = %self.name, generation = set.generation, endpoints = set.endpoints.len(), "endpoint set published");
            }
            Err(err) => {
                tracing::warn!(service = %self.name, error = %err, "cannot publish endpoint set; will retry");
                self.store = None;
            }
        }
    }

    /// Keeps draining generations in step when the generation base moved.
    fn bump_draining(&mut self, by: u64) {
        for replica in self.replicas.values_mut() {
            if let Phase::Draining { generation, since } = replica.phase {
                replica.phase = Phase::Draining {
                    generation: generation + by,
                    since,
                };
            }
        }
    }

    fn update_status(&self, now: Instant) {
        let totals = self.inbox.observations().totals(now);
        let ready = self.count(|p| p == Phase::Ready);
        let label = ControllerMetrics::label(&self.name);
        self.wiring
            .metrics
            .desired
            .get_or_create(&label)
            .set(self.desired as i64);
        self.wiring
            .metrics
            .ready
            .get_or_create(&label)
            .set(ready as i64);
        let status = ServiceStatus {
            name: self.name.clone(),
            backend: self.backend_kind,
            desired: self.desired,
            ready,
            replicas: self
                .replicas
                .iter()
                .map(|(id, r)| ReplicaStatus {
                    id: id.clone(),
                    addr: r.addr.clone(),
                    state: r.phase.name(),
                    started_at_us: r.started_at_us,
                    ready_at_us: r.ready_at_us,
                })
                .collect(),
            held: totals.held,
            in_flight: totals.in_flight,
            proxies: totals.proxies,
            last_scale: self.last_scale.clone(),
            last_error: self.last_error.clone(),
        };
        self.wiring.status.insert(self.name.clone(), status);
    }

    /// On SIGTERM with `on_shutdown: stop`: take every replica out of the
    /// endpoint set, then stop them all.
    async fn stop_everything(&mut self) {
        if self.wiring.on_shutdown == ShutdownPolicy::Keep {
            tracing::info!(service = %self.name, replicas = self.replicas.len(), "leaving replicas running for the next controller");
            return;
        }
        let ids: Vec<String> = self.replicas.keys().cloned().collect();
        self.replicas.clear();
        self.changed();
        // With NATS gone, do not hang the shutdown on a write that cannot land.
        if tokio::time::timeout(SHUTDOWN_PUBLISH_LIMIT, self.publish_endpoints())
            .await
            .is_err()
        {
            tracing::warn!(service = %self.name, "could not clear the endpoint set before stopping replicas");
        }
        let stops = ids.iter().map(|id| self.backend.stop(id));
        for result in futures::future::join_all(stops).await {
            if let Err(err) = result {
                tracing::warn!(service = %self.name, error = %err, "stopping replica failed");
            }
        }
        tracing::info!(service = %self.name, stopped = ids.len(), "replicas stopped");
    }
}

/// Microseconds since the Unix epoch, for the status API's timestamps.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
