//! What the loop learns: the replicas a previous controller left (adoption
//! at start), the backend's list on every pass (exits, startup timeouts,
//! replicas a count-based backend created, reported readiness), and probe
//! results. Each turns into a phase change of [`Replicas`](super::replicas).

use std::sync::Arc;
use std::time::Instant;

use rouse_nats::messages::{EndpointSet, EndpointState};

use super::error::ReconcileError;
use super::replicas::{self, Phase, ProbeEvent, LIVENESS_FAILURES};
use super::{now, now_us, ServiceLoop};
use crate::backend::{Health, Readiness, Replica};
use crate::metrics::ControllerMetrics;

impl ServiceLoop {
    /// Takes over the replicas a previous controller left; `false` while the
    /// backend cannot be listed (tried again on later passes).
    pub(super) async fn adopt(&mut self, now: Instant) -> bool {
        let Some(replicas) = self.list(now).await else {
            return false;
        };
        let listed = match self
            .published
            .read(&self.name, &mut self.replicas, &*self.wiring.publisher)
            .await
        {
            Ok(listed) => listed,
            Err(err) => {
                self.fail(ReconcileError::Publish(err), now);
                None
            }
        };
        self.adopted = true;
        for replica in replicas {
            if replica.health != Health::Running {
                let _ = self.backend.stop(&replica.id).await;
                continue;
            }
            let phase = match stored_state(listed.as_ref(), &replica) {
                Some(EndpointState::Ready) => Phase::Ready,
                // Finish the drain the previous controller began.
                Some(EndpointState::Draining) => Phase::Draining {
                    generation: self.replicas.generation() + 1,
                    since: now,
                },
                None => Phase::Starting,
            };
            self.track(replica, phase, now, now_us());
        }
        // Write the set even if unchanged, replacing entries of dead replicas.
        self.replicas.rebase(0);
        self.publish_endpoints(now).await;
        self.update_status(now);
        true
    }

    /// The backend's replicas, or `None` after counting the failure; a
    /// failing backend is asked again on the RESUBSCRIBE schedule, and not
    /// at all (`None`) until then.
    async fn list(&mut self, now: Instant) -> Option<Vec<Replica>> {
        if self.list_retry_at.is_some_and(|at| now < at) {
            return None;
        }
        match self.backend.list().await {
            Ok(listed) => {
                if self.list_failures > 0 {
                    tracing::info!(service = %self.name, "backend answers again");
                    self.list_failures = 0;
                    self.list_retry_at = None;
                    self.last_error = None;
                }
                Some(listed)
            }
            Err(err) => {
                let delay = rouse_nats::backoff::RESUBSCRIBE.nth(self.list_failures as usize);
                self.list_failures += 1;
                self.list_retry_at = Some(now + delay);
                self.fail(ReconcileError::List(err), now);
                None
            }
        }
    }

    pub(super) fn track(
        &mut self,
        replica: Replica,
        phase: Phase,
        now: Instant,
        started_at_us: u64,
    ) {
        let Replica {
            id,
            addr,
            readiness,
            ..
        } = replica;
        self.replicas
            .insert(id.clone(), addr, phase, now, started_at_us);
        let pool = self.backend.pool_of(&id);
        if let Some(tracked) = self.replicas.get_mut(&id) {
            tracked.pool = pool;
        }
        self.watch(&id, readiness);
    }

    /// (Re)starts the probe that fits the replica's phase. Replicas whose
    /// readiness the backend reports are not probed: `sync_backend` moves
    /// them.
    pub(super) fn watch(&mut self, id: &str, readiness: Readiness) {
        let Some(replica) = self.replicas.get(id) else {
            return;
        };
        let (phase, addr) = (replica.phase, replica.addr.clone());
        let probe = match (readiness, phase) {
            (Readiness::Reported(_), _) => None,
            (Readiness::Probe, Phase::Starting) => Some(replicas::probe_until_ready(
                Arc::clone(&self.wiring.prober),
                id.to_string(),
                addr,
                self.probe_tx.clone(),
            )),
            (Readiness::Probe, Phase::Ready) => Some(replicas::probe_while_ready(
                Arc::clone(&self.wiring.prober),
                id.to_string(),
                addr,
                self.spec.readiness.period,
                self.probe_tx.clone(),
            )),
            (Readiness::Probe, _) => None,
        };
        if let Some(replica) = self.replicas.get_mut(id) {
            replica.set_probe(probe);
        }
    }

    pub(super) fn on_probe(&mut self, event: ProbeEvent) {
        match event {
            ProbeEvent::Ready(id) => self.on_ready(&id, Readiness::Probe),
            ProbeEvent::Unready(id) => self.on_unready(&id, Readiness::Probe),
            ProbeEvent::StopFailed(id) => {
                if let Some(replica) = self.replicas.get_mut(&id) {
                    if replica.phase == Phase::Stopping {
                        let delay =
                            rouse_nats::backoff::RESUBSCRIBE.nth(replica.stop_failures as usize);
                        replica.stop_failures += 1;
                        replica.stop_again_at = Some(now() + delay);
                    }
                }
            }
        }
    }

    pub(super) fn on_ready(&mut self, id: &str, readiness: Readiness) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        if replica.phase != Phase::Starting {
            return;
        }
        replica.phase = Phase::Ready;
        replica.ready_at_us = Some(now_us());
        let took = now().saturating_duration_since(replica.since);
        self.watch(id, readiness);
        self.wiring
            .metrics
            .backend_start
            .get_or_create(&ControllerMetrics::label(&self.name))
            .observe(took.as_secs_f64());
        tracing::info!(service = %self.name, replica = %id, ?took, "replica ready");
        self.start_failures = 0;
        self.last_error = None;
        self.replicas.changed();
    }

    /// A ready replica stopped answering its probe: out of rotation, and
    /// probed like a starting one (replaced if it does not recover within
    /// the startup timeout).
    pub(super) fn on_unready(&mut self, id: &str, readiness: Readiness) {
        let Some(replica) = self.replicas.get_mut(id) else {
            return;
        };
        if replica.phase != Phase::Ready {
            return;
        }
        replica.phase = Phase::Starting;
        replica.since = now();
        self.watch(id, readiness);
        self.replicas.changed();
        let id = id.to_string();
        let failure = match readiness {
            Readiness::Probe => ReconcileError::Unready {
                id,
                failures: LIVENESS_FAILURES,
            },
            Readiness::Reported(_) => ReconcileError::Unhealthy { id },
        };
        self.fail(failure, now());
    }

    /// Exits, vanished replicas, startup timeouts, new replicas the backend
    /// started on its own (a count it was given), reported readiness.
    pub(super) async fn sync_backend(&mut self, now: Instant) {
        let Some(listed) = self.list(now).await else {
            return;
        };
        let timeout = self.backend.startup_timeout();
        // Replicas to forget, with the failure that took them (none when
        // the backend simply no longer lists them).
        let mut gone: Vec<(String, Option<ReconcileError>)> = Vec::new();
        // Replicas the backend still runs or keeps that must go: stops that
        // failed, and dead ones nobody tracks (their containers would litter).
        let mut stop_again: Vec<String> = Vec::new();
        for replica in &listed {
            if replica.health != Health::Running {
                match &replica.health {
                    Health::Exited(reason) if self.replicas.contains(&replica.id) => {
                        let failure = ReconcileError::ReplicaFailed {
                            id: replica.id.clone(),
                            reason: reason.clone(),
                        };
                        gone.push((replica.id.clone(), Some(failure)));
                    }
                    _ => stop_again.push(replica.id.clone()),
                }
                continue;
            }
            if let Some(tracked) = self.replicas.get_mut(&replica.id) {
                if let Some(at) = tracked.stop_again_at {
                    if now >= at {
                        tracked.stop_again_at = None;
                        stop_again.push(replica.id.clone());
                    }
                    continue;
                }
            }
            if !self.replicas.contains(&replica.id) {
                // Asked for by count, or a partly failed start: probe it like
                // a new one rather than leak it.
                self.requested = self.requested.saturating_sub(1);
                self.track(replica.clone(), Phase::Starting, now, now_us());
            }
            match replica.readiness {
                Readiness::Reported(true) => self.on_ready(&replica.id, replica.readiness),
                Readiness::Reported(false) => self.on_unready(&replica.id, replica.readiness),
                Readiness::Probe => {}
            }
        }
        for (id, tracked) in self.replicas.iter() {
            if !listed.iter().any(|r| &r.id == id) {
                gone.push((id.clone(), None));
            } else if tracked.phase == Phase::Starting
                && now.duration_since(tracked.since) > self.backend.startup_timeout_of(id)
            {
                let failure = ReconcileError::StartupTimeout {
                    id: id.clone(),
                    timeout: self.backend.startup_timeout_of(id),
                };
                gone.push((id.clone(), Some(failure)));
            }
        }
        for (id, failure) in gone {
            let Some(replica) = self.replicas.remove(&id) else {
                continue;
            };
            let Some(failure) = failure else { continue };
            if replica.phase != Phase::Stopping {
                self.fail(failure, now);
            }
            self.stop_in_background(id);
        }
        for id in stop_again {
            self.stop_in_background(id);
        }
        if self.requested > 0 && now.duration_since(self.requested_at) > timeout {
            let missing = std::mem::take(&mut self.requested);
            self.fail(ReconcileError::NotListed { missing, timeout }, now);
        }
    }
}

/// The state a stored endpoint set gives a replica, if it lists it.
fn stored_state(set: Option<&EndpointSet>, replica: &Replica) -> Option<EndpointState> {
    set?.endpoints
        .iter()
        .find(|e| e.id == replica.id && e.addr == replica.addr)
        .map(|e| e.state)
}
