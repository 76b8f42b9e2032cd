//! One reconcile loop per service: observe, decide, act, publish.
//!
//! The loop runs on every tick, every report or wake from a proxy, and every
//! probe result, so a replica turning ready reaches the proxies at once. A
//! loop with nothing to look after (no replica, nothing wanted, nothing
//! reported) skips the ticks and only looks again every [`IDLE_RESYNC`] or
//! so, so thousands of idle services cost next to nothing. Each pass:
//! 1. syncs with the backend (exits, adoptions, startup timeouts);
//! 2. asks the autoscaler for a replica count;
//! 3. scales up (un-draining first, then starting) or down (cancelling
//!    starting replicas first, then marking ready ones `draining`);
//! 4. stops draining replicas once every live proxy reports nothing in flight
//!    on them (or `drain_timeout` passes);
//! 5. writes the endpoint set when it changed, and its status.
//!
//! The loop's decisions live here; [`replicas`] keeps each replica's phase
//! and runs its probes, [`publish`] writes what the proxies see, and
//! [`error`] decides what each failure does. Time comes from tokio's clock,
//! so the tests drive whole scale-up/drain/timeout stories with a paused
//! clock, a fake backend and an in-memory publisher.

mod error;
mod outcome;
mod publish;
mod replicas;
mod sync;
#[cfg(test)]
mod tests;

pub use publish::{NatsPublisher, Publisher};

use error::ReconcileError;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_nats::config::{ScalingDriver, ServiceConfig, ShutdownPolicy};
use tokio::sync::{mpsc, watch};

use crate::autoscaler::{Autoscaler, Decision};
use crate::backend::Backend;
use crate::intake::Inbox;
use crate::meter::{BacklogSource, Meter};
use crate::metrics::ControllerMetrics;
use crate::probe::Prober;
use crate::status::{ScaleEvent, StatusBoard};
use publish::Published;
use replicas::{Phase, ProbeEvent, Replicas};

/// Resolves with what `retire` (if any) says once `wanted` holds for it:
/// any reason to end (`!= No`), or, for a removal, the service back
/// (`== Replace`).
async fn retired(
    retire: &mut Option<watch::Receiver<Retire>>,
    wanted: impl Fn(Retire) -> bool,
) -> Retire {
    let Some(receiver) = retire else {
        return std::future::pending().await;
    };
    let why = receiver.wait_for(|why| wanted(*why)).await.map(|why| *why);
    match why {
        Ok(why) => why,
        // The fleet is gone: only shutdown ends the loop now.
        Err(_) => std::future::pending().await,
    }
}

/// How long a removal may go on after its `drain_timeout` (stops that
/// take a while, a replica still starting) before what is left is stopped
/// at once.
const REMOVAL_SLACK: Duration = Duration::from_secs(30);

/// How often a loop with nothing to look after still syncs with its
/// backend (a replica started by hand is adopted), plus up to half of it
/// again at random so thousands of idle loops do not sync together. Like a
/// Kubernetes controller's resync period it only catches drift: reports,
/// wakes, pins, probe results and proxies joining or leaving wake a loop at
/// once. At 10,000 idle services, 30 s cost the controller about a tenth of
/// a core; 5 minutes make it a hundredth.
pub const IDLE_RESYNC: Duration = Duration::from_secs(300);

/// The controller's clock: tokio's, so tests can pause and advance it.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Everything one service loop talks to.
pub struct Wiring {
    pub publisher: Arc<dyn Publisher>,
    pub prober: Arc<dyn Prober>,
    pub status: Arc<StatusBoard>,
    pub metrics: Arc<ControllerMetrics>,
    pub tick: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub on_shutdown: ShutdownPolicy,
    /// The queue a `queue` metric reads.
    pub backlog: Option<Arc<dyn BacklogSource>>,
}

/// Why a loop is told to end before the controller shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Keep running.
    No,
    /// The definition changed: end without touching the replicas, for the
    /// next loop (with the new definition) to adopt.
    Replace,
    /// The service was removed: drain its replicas (the proxies finish
    /// what they have in flight on them), then stop them, whatever
    /// `controller.on_shutdown` says. A `Replace` sent while they drain (the
    /// service defined again) hands them, as they are, to the next loop.
    Remove,
}

/// The reconcile loop of one service.
pub struct ServiceLoop {
    name: String,
    spec: ServiceConfig,
    backend: Arc<dyn Backend>,
    inbox: Arc<Inbox>,
    wiring: Wiring,
    autoscaler: Autoscaler,
    /// CPU, memory and backlog, for services that scale on them.
    meter: Option<Arc<Meter>>,
    replicas: Replicas,
    published: Published,
    /// Asked of a backend that could not name them yet (see [`Backend`]).
    requested: u32,
    requested_at: Instant,
    probe_tx: mpsc::UnboundedSender<ProbeEvent>,
    probe_rx: mpsc::UnboundedReceiver<ProbeEvent>,
    desired: u32,
    last_scale: Option<ScaleEvent>,
    last_error: Option<String>,
    start_failures: u32,
    retry_at: Option<Instant>,
    /// The backend's replicas were taken over (see `adopt`).
    adopted: bool,
    /// Failed `list` calls in a row, and when to try again: an engine that
    /// is down is asked on the RESUBSCRIBE schedule, not every tick.
    list_failures: u32,
    list_retry_at: Option<Instant>,
    /// When a pass last found NATS unreachable (see `cut_off`).
    cut_off_at: Option<Instant>,
    /// Ends the loop early (see [`Retire`]); `None`: only shutdown ends it.
    retire: Option<watch::Receiver<Retire>>,
    /// The service was removed: every pass wants zero replicas.
    removing: bool,
}

impl ServiceLoop {
    pub fn new(
        spec: ServiceConfig,
        backend: Arc<dyn Backend>,
        inbox: Arc<Inbox>,
        wiring: Wiring,
    ) -> Self {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let now = now();
        wiring.metrics.init_service(&spec.name);
        Self {
            name: spec.name.clone(),
            autoscaler: Autoscaler::new(spec.scaling.clone(), now),
            meter: Meter::for_service(&spec).map(Arc::new),
            spec,
            backend,
            inbox,
            wiring,
            replicas: Replicas::default(),
            published: Published::new(now),
            requested: 0,
            requested_at: now,
            probe_tx,
            probe_rx,
            desired: 0,
            last_scale: None,
            last_error: None,
            start_failures: 0,
            retry_at: None,
            adopted: false,
            list_failures: 0,
            list_retry_at: None,
            cut_off_at: None,
            retire: None,
            removing: false,
        }
    }

    /// Ends when `retire` says so, besides at shutdown.
    pub fn retired_by(mut self, retire: watch::Receiver<Retire>) -> Self {
        self.retire = Some(retire);
        self
    }

    /// Runs until shutdown is signalled.
    pub async fn run(mut self) {
        if let Some(meter) = &self.meter {
            tokio::spawn(Arc::clone(meter).sample(
                Arc::clone(&self.backend),
                self.wiring.backlog.clone(),
                Arc::clone(&self.inbox.wakeup),
                self.wiring.shutdown.clone(),
            ));
        }
        self.adopt(now()).await;
        let mut tick = tokio::time::interval(self.wiring.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.wiring.shutdown.clone();
        let mut retire = self.retire.take();
        let retired = loop {
            let idle = self.idle(now());
            let resync = IDLE_RESYNC + IDLE_RESYNC.mul_f64(fastrand::f64() / 2.0);
            let cause = tokio::select! {
                biased;
                _ = shutdown.changed() => break Retire::No,
                why = retired(&mut retire, |why| why != Retire::No) => break why,
                Some(event) = self.probe_rx.recv() => {
                    self.on_probe(event);
                    "message"
                }
                _ = self.inbox.wakeup.notified() => "message",
                _ = tick.tick(), if !idle => "tick",
                _ = tokio::time::sleep(resync), if idle => "resync",
            };
            let cause = crate::metrics::PassLabel { cause };
            self.wiring.metrics.passes.get_or_create(&cause).inc();
            self.reconcile().await;
        };
        match retired {
            Retire::No => self.stop_everything(self.wiring.on_shutdown).await,
            Retire::Replace => {
                tracing::info!(service = %self.name, "definition changed; handing the replicas to the next loop")
            }
            Retire::Remove => self.run_removal(shutdown, retire).await,
        }
    }

    /// What is left of a removed service's loop: its replicas drain like a
    /// scale-down to zero (the proxies dropped its routes, but finish what
    /// they have in flight), then whatever is left is stopped and its status
    /// forgotten. Ends early, leaving the replicas as they are, if the
    /// service is defined again meanwhile; shutdown stops them at once.
    async fn run_removal(
        &mut self,
        mut shutdown: watch::Receiver<bool>,
        mut retire: Option<watch::Receiver<Retire>>,
    ) {
        // Replicas rouse does not stop (a platform's own, or KEDA's count)
        // have nothing to drain for.
        let drains = !self.follows_keda() && !self.backend.keeps_replicas_on_shutdown();
        if drains {
            tracing::info!(service = %self.name, replicas = self.replicas.len(), "service removed; draining its replicas");
            self.removing = true;
            let mut tick = tokio::time::interval(self.wiring.tick);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The drains end by `drain_timeout`; this bounds the rest (say,
            // pods an outside actor keeps bringing back).
            let deadline = tokio::time::sleep(self.spec.scaling.drain_timeout + REMOVAL_SLACK);
            tokio::pin!(deadline);
            loop {
                self.reconcile().await;
                if self.requested == 0 && self.replicas.count(|p| p != Phase::Stopping) == 0 {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    () = &mut deadline => {
                        tracing::warn!(service = %self.name, "removal still had replicas after drain_timeout and more; stopping them");
                        break;
                    }
                    _ = retired(&mut retire, |why| why == Retire::Replace) => {
                        tracing::info!(service = %self.name, "service defined again while draining; handing the replicas to the next loop");
                        return;
                    }
                    Some(event) = self.probe_rx.recv() => self.on_probe(event),
                    _ = self.inbox.wakeup.notified() => {}
                    _ = tick.tick() => {}
                }
            }
        }
        self.stop_everything(ShutdownPolicy::Stop).await;
        self.wiring.status.remove(&self.name);
    }

    /// Takes over replicas a previous controller left running. Those the KV
    /// set already lists as ready stay ready (warm traffic must not notice the
    /// restart); others are probed like new ones.
    async fn reconcile(&mut self) {
        let now = now();
        // Until the backend could be listed once, nothing it runs is known:
        // decide nothing, publish nothing, so the set a previous controller
        // left keeps serving.
        if !self.adopted && !self.adopt(now).await {
            return;
        }
        self.sync_backend(now).await;
        if self.follows_keda() {
            // KEDA's HPA sets the count; rouse follows the pods it makes.
            self.desired = self.active();
            self.publish_endpoints(now).await;
            self.update_status(now);
            return;
        }
        let active = self.active();
        let decision = if self.removing {
            // Zero, whatever the autoscaler, a pin or `min_replicas` say.
            Decision {
                replicas: 0,
                reason: crate::autoscaler::Reason::Removed,
            }
        } else {
            self.decide(now, active)
        };
        self.desired = decision.replicas;
        if decision.replicas > active {
            self.scale_up(decision, active, now).await;
        } else if decision.replicas < active {
            self.scale_down(decision, active, now).await;
        }
        self.progress_drains(now);
        self.publish_endpoints(now).await;
        self.update_status(now);
    }

    /// The replica count the autoscaler wants, within the pools' capacity,
    /// a pin, and what a loop cut off from the reports must keep.
    fn decide(&mut self, now: Instant, active: u32) -> Decision {
        let cut_off = self.cut_off(now);
        let observation = self.inbox.observations().observe(now);
        let measured = self.measured(now);
        let mut decision = self
            .autoscaler
            .decide_with(now, &observation, active, &measured);
        if let Some(capacity) = self.backend.capacity() {
            // Overflow pools hold no more than their caps.
            decision.replicas = decision.replicas.min(capacity);
        }
        if let Some(pin) = self.inbox.pin() {
            decision = Decision {
                replicas: pin.min(self.spec.scaling.max_replicas),
                reason: crate::autoscaler::Reason::Pinned,
            };
        }
        if decision.replicas < active && cut_off {
            // Without reports, "idle" only means "cut off": keep what serves.
            decision.replicas = active;
        }
        decision
    }

    /// Whether the loop is cut off from the proxies' reports: NATS is
    /// unreachable, or was until too recently for every proxy to have
    /// reconnected and reported again. Proxies reconnect on their own
    /// schedule, so the controller may be back first; the reports missed
    /// meanwhile must not read as an idle service (scaled to zero while a
    /// proxy, not yet back to see the drain, still sends it traffic).
    fn cut_off(&mut self, now: Instant) -> bool {
        if !self.wiring.publisher.connected() {
            self.cut_off_at = Some(now);
            return true;
        }
        let Some(at) = self.cut_off_at else {
            return false;
        };
        // A proxy's next attempt comes within RECONNECT's longest delay
        // plus as much jitter; its first report within a liveness period.
        let grace = rouse_nats::backoff::RECONNECT.max * 2 + self.inbox.observations().liveness();
        if now.saturating_duration_since(at) < grace {
            return true;
        }
        self.cut_off_at = None;
        false
    }

    /// Whether the loop has nothing to look after until a message comes: no
    /// replica in any phase and none requested, nothing wanted (or pinned),
    /// everything written, no retry pending, and nothing reported that the
    /// autoscaler could act on. A report, wake, pin or probe result wakes the
    /// loop through the inbox as before; only the ticks stop. Services that
    /// scale on sampled figures (CPU, memory, a queue) or follow KEDA keep
    /// ticking.
    fn idle(&self, now: Instant) -> bool {
        self.adopted
            && self.meter.is_none()
            && !self.follows_keda()
            && self.replicas.len() == 0
            && !self.replicas.dirty()
            && self.requested == 0
            && self.desired == 0
            && self.spec.scaling.min_replicas == 0
            && self.inbox.pin().is_none_or(|pin| pin == 0)
            && self.retry_at.is_none()
            && self.list_retry_at.is_none()
            && self.cut_off_at.is_none()
            && self.inbox.observations().quiet(now)
    }

    /// What the meter says about the ready replicas and the queue.
    fn measured(&self, now: Instant) -> crate::autoscaler::Measured {
        let Some(meter) = &self.meter else {
            return Default::default();
        };
        let ready: Vec<&str> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.phase == Phase::Ready)
            .map(|(id, _)| id.as_str())
            .collect();
        meter.measured(now, &ready)
    }

    /// `scaling.driver: keda`: the replica count is KEDA's, never rouse's.
    fn follows_keda(&self) -> bool {
        self.spec.scaling.driver == ScalingDriver::Keda
    }

    /// Replicas serving or about to: starting, ready, and requested.
    fn active(&self) -> u32 {
        self.replicas.count(Phase::active) + self.requested
    }

    /// Starts tracking a replica the backend runs, in `phase`.
    async fn scale_up(&mut self, decision: Decision, active: u32, now: Instant) {
        let before = active;
        let mut active = active;
        // A draining replica is the cheapest new capacity: it is already warm.
        let draining = self
            .replicas
            .oldest_first(|p| matches!(p, Phase::Draining { .. }));
        for id in draining
            .into_iter()
            .take((decision.replicas - active) as usize)
        {
            if let Some(replica) = self.replicas.get_mut(&id) {
                replica.phase = Phase::Ready;
                active += 1;
                self.replicas.changed();
            }
        }
        if active >= decision.replicas || self.retry_at.is_some_and(|at| now < at) {
            // Taking drains back is a scale-up too: say so, as a start would.
            self.record_scale(before, active, decision.reason.as_str());
            return;
        }
        let existing = self.replicas.count(|p| p != Phase::Stopping) + self.requested;
        let missing = decision.replicas - active;
        let wanted = existing + missing;
        let asked_at_us = now_us();
        match self.backend.ensure(wanted as usize).await {
            Ok(started) => {
                for replica in started.replicas {
                    self.track(replica, Phase::Starting, now, asked_at_us);
                }
                let pending = u32::try_from(started.pending).unwrap_or(u32::MAX);
                if pending > self.requested {
                    self.requested_at = now;
                }
                self.requested = pending;
                self.record_scale(active, decision.replicas, decision.reason.as_str());
            }
            Err(err) => self.fail(ReconcileError::Start(err), now),
        }
    }

    async fn scale_down(&mut self, decision: Decision, active: u32, now: Instant) {
        let mut excess = active - decision.replicas;
        // Replicas not even listed yet carry no traffic: take those back first.
        if self.requested > 0 {
            let cancelled = excess.min(self.requested);
            self.requested -= cancelled;
            excess -= cancelled;
            let keep = self.replicas.count(|p| p != Phase::Stopping) + self.requested;
            if let Err(err) = self.backend.ensure(keep as usize).await {
                self.fail(ReconcileError::Start(err), now);
            }
        }
        if self.backend.picks_its_victim() {
            self.scale_down_in_order(excess, now);
            self.record_scale(active, decision.replicas, decision.reason.as_str());
            return;
        }
        // Then replicas still starting, newest first.
        let mut starting = self.replicas.oldest_first(|p| p == Phase::Starting);
        self.backend.removal_order(&mut starting);
        while excess > 0 {
            let Some(id) = starting.pop() else { break };
            self.stop_replica(&id);
            excess -= 1;
        }
        let mut ready = self.replicas.oldest_first(|p| p == Phase::Ready);
        self.backend.removal_order(&mut ready);
        if excess > 0 {
            self.replicas.changed();
        }
        let generation = self.replicas.generation();
        while excess > 0 {
            let Some(id) = ready.pop() else { break };
            if let Some(replica) = self.replicas.get_mut(&id) {
                replica.phase = Phase::Draining {
                    generation,
                    since: now,
                };
                tracing::info!(service = %self.name, replica = %id, generation, "draining replica");
            }
            excess -= 1;
        }
        self.record_scale(active, decision.replicas, decision.reason.as_str());
    }

    /// Scale-down on a platform that removes the last replica of its own
    /// order whichever one is stopped (a StatefulSet): stopping a starting
    /// pod below a ready one would remove the ready one, undrained. So the
    /// candidates come strictly from the end of that order: a starting one
    /// is stopped, a ready one drained, and one still draining holds the
    /// rest back until it is gone.
    fn scale_down_in_order(&mut self, mut excess: u32, now: Instant) {
        if excess == 0 {
            return;
        }
        let mut candidates = self.replicas.oldest_first(|p| p != Phase::Stopping);
        self.backend.removal_order(&mut candidates);
        self.replicas.changed();
        let generation = self.replicas.generation();
        while excess > 0 {
            let Some(id) = candidates.pop() else { break };
            let Some(replica) = self.replicas.get_mut(&id) else {
                continue;
            };
            match replica.phase {
                Phase::Starting => self.stop_replica(&id),
                Phase::Ready => {
                    replica.phase = Phase::Draining {
                        generation,
                        since: now,
                    };
                    tracing::info!(service = %self.name, replica = %id, generation, "draining replica");
                }
                Phase::Draining { .. } | Phase::Stopping => break,
            }
            excess -= 1;
        }
    }

    fn progress_drains(&mut self, now: Instant) {
        let drain_timeout = self.spec.scaling.drain_timeout;
        let (published, revision, published_at) = (
            self.published.generation,
            self.published.revision,
            self.published.at,
        );
        let observations = self.inbox.observations();
        let finished: Vec<(String, bool)> = self
            .replicas
            .iter()
            .filter_map(|(id, r)| match r.phase {
                // Until the proxies can have seen it draining, it is not.
                Phase::Draining { generation, .. } if generation > published => None,
                Phase::Draining { generation, since } => {
                    let timed_out = now.duration_since(since) >= drain_timeout;
                    let drained = observations.drained(id, generation, revision, published_at, now);
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
            self.replicas.changed();
            self.stop_replica(&id);
        }
    }

    /// Takes a replica out of rotation and stops it in the background.
    fn stop_replica(&mut self, id: &str) {
        if let Some(replica) = self.replicas.get_mut(id) {
            replica.phase = Phase::Stopping;
            replica.set_probe(None);
        }
        self.stop_in_background(id.to_string());
    }

    /// Stops a replica in a task; a failed stop (the engine down) comes
    /// back as [`ProbeEvent::StopFailed`] and is tried again, on a backoff,
    /// while the backend still lists the replica.
    fn stop_in_background(&self, id: String) {
        if self.follows_keda() {
            // Stopping would lower the count KEDA set.
            tracing::debug!(service = %self.name, replica = %id, "not stopping: KEDA sets the count");
            return;
        }
        let backend = Arc::clone(&self.backend);
        let service = self.name.clone();
        let events = self.probe_tx.clone();
        tokio::spawn(async move {
            if let Err(source) = backend.stop(&id).await {
                let err = ReconcileError::Stop {
                    id: id.clone(),
                    source,
                };
                tracing::warn!(%service, error = %err, "stopping replica failed");
                let _ = events.send(ProbeEvent::StopFailed(id));
            }
        });
    }
}

/// Microseconds since the Unix epoch, for the status API's timestamps.
pub(super) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
