//! Leader election: several controllers may run, one acts.
//!
//! One lease record names the leader. It lives in a `coordination.k8s.io`
//! Lease ([`kube`]) or a NATS KV key ([`nats`]); both stores offer the same
//! three calls (read with a version, create if absent, replace if the
//! version still matches), so the algorithm here is one for both.
//!
//! It is client-go's: a standby never compares clocks with the leader. It
//! notes *its own* time whenever the record changes (every renewal changes
//! its version) and takes the lease once it saw no change for the record's
//! duration. The leader renews every `retry_period` and stops acting if it
//! could not renew for `duration - retry_period`, before any standby can
//! have taken over; rouse then exits, and a supervisor restarts it as a
//! standby. A stopping leader releases the lease, so a standby takes over
//! at once instead of after the duration.
//!
//! The decision ([`decide`]) is pure and tested on a fake clock; the stores
//! are tested against a real nats-server and the fake API server (e2e).

pub mod kube;
pub mod nats;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use rouse_nats::config::LeaderElection;
use tokio::sync::watch;

/// The lease's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Who leads; empty when released.
    pub holder: String,
    pub duration: Duration,
    /// How often the lease changed hands.
    pub transitions: u32,
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the record's new version.
    Done(String),
    /// Someone else wrote first (or created it first).
    Conflict,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct LeaseError {
    pub what: String,
    pub message: String,
}

/// Where the lease record lives.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The record and its version, `None` when there is none.
    async fn get(&self) -> Result<Option<(Record, String)>, LeaseError>;
    async fn create(&self, record: &Record) -> Result<Written, LeaseError>;
    /// Replaces the record if its version is still `version`.
    async fn update(&self, record: &Record, version: &str) -> Result<Written, LeaseError>;
    /// For logs: where the lease is.
    fn describe(&self) -> String;
}

/// What to do with the lease as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Renew,
    Take,
    Wait,
}

/// The pure rule: `observed_at` is when this controller last saw the
/// record change, by its own clock.
pub fn decide(me: &str, current: Option<&Record>, observed_at: Instant, now: Instant) -> Step {
    match current {
        None => Step::Create,
        Some(record) if record.holder == me => Step::Renew,
        Some(record) if record.holder.is_empty() => Step::Take,
        Some(record) if now.saturating_duration_since(observed_at) >= record.duration => Step::Take,
        Some(_) => Step::Wait,
    }
}

/// One controller's side of the election.
pub struct Elector {
    identity: String,
    duration: Duration,
    retry: Duration,
    store: Box<dyn LeaseStore>,
    /// The version last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
    /// The version this controller last wrote while leading.
    held: Option<String>,
}

impl Elector {
    pub fn new(config: &LeaderElection, store: Box<dyn LeaseStore>) -> Self {
        Self {
            identity: config.identity.clone().unwrap_or_else(default_identity),
            duration: config.duration,
            retry: config.retry_period,
            store,
            observed: None,
            held: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: reads the lease and creates, renews or takes it when the
    /// rule says so. `true` when this controller leads after it.
    pub async fn round(&mut self, now: Instant) -> Result<bool, LeaseError> {
        let current = self.store.get().await?;
        let observed_at = match (&current, &self.observed) {
            (Some((_, version)), Some((seen, at))) if version == seen => *at,
            (Some((_, version)), _) => {
                self.observed = Some((version.clone(), now));
                now
            }
            (None, _) => now,
        };
        let record = current.as_ref().map(|(record, _)| record);
        let step = decide(&self.identity, record, observed_at, now);
        let written = match (step, &current) {
            (Step::Wait, _) => Written::Conflict,
            (Step::Create, _) => self.store.create(&self.record(0)).await?,
            (Step::Renew | Step::Take, Some((record, version))) => {
                let transitions = match step {
                    Step::Take => record.transitions.saturating_add(1),
                    _ => record.transitions,
                };
                self.store
                    .update(&self.record(transitions), version)
                    .await?
            }
            (Step::Renew | Step::Take, None) => Written::Conflict,
        };
        match written {
            Written::Done(version) => {
                if step != Step::Renew {
                    tracing::info!(identity = %self.identity, lease = %self.store.describe(), "leading");
                }
                self.observed = Some((version.clone(), now));
                self.held = Some(version);
                Ok(true)
            }
            Written::Conflict => {
                self.held = None;
                Ok(false)
            }
        }
    }

    /// Gives the lease up, so a standby need not wait out its duration.
    pub async fn release(&mut self) {
        let Some(version) = self.held.take() else {
            return;
        };
        let released = Record {
            holder: String::new(),
            duration: self.duration,
            transitions: 0,
        };
        match self.store.update(&released, &version).await {
            Ok(Written::Done(_)) => {
                tracing::info!(lease = %self.store.describe(), "lease released")
            }
            Ok(Written::Conflict) => {}
            Err(err) => tracing::warn!(error = %err, "releasing the lease failed"),
        }
    }

    fn record(&self, transitions: u32) -> Record {
        Record {
            holder: self.identity.clone(),
            duration: self.duration,
            transitions,
        }
    }

    /// Runs rounds until this controller leads, then keeps renewing;
    /// `leading` turns true when it leads. Ends with [`Ended::Lost`] when
    /// leadership is lost (another holder, or no renewal for `duration -
    /// retry_period`): the caller must stop acting at once. Ends with
    /// [`Ended::Released`] once `stop` turns true, releasing the lease.
    pub async fn lead(
        mut self,
        leading: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> Ended {
        let mut renewed_at: Option<Instant> = None;
        let deadline = self.duration.saturating_sub(self.retry);
        loop {
            let now = crate::reconcile::now();
            match self.round(now).await {
                Ok(true) => {
                    renewed_at = Some(now);
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(false) if renewed_at.is_some() => {
                    tracing::error!(lease = %self.store.describe(), "another controller holds the lease now");
                    return Ended::Lost;
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "lease round failed");
                    if renewed_at.is_some_and(|at| now.duration_since(at) >= deadline) {
                        tracing::error!(?deadline, "could not renew the lease in time");
                        return Ended::Lost;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = async { drop(stop.wait_for(|stop| *stop).await) } => {
                    self.release().await;
                    return Ended::Released;
                }
            }
        }
    }
}

/// How [`Elector::lead`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Lost,
    Released,
}

/// `<hostname>-<pid>`: unique among controllers, new on every start.
fn default_identity() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "rouse".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn held_by(holder: &str) -> Record {
        Record {
            holder: holder.into(),
            duration: Duration::from_secs(10),
            transitions: 0,
        }
    }

    #[test]
    fn the_rule_creates_renews_waits_and_takes_over_after_the_duration() {
        let t0 = Instant::now();
        let secs = |n| t0 + Duration::from_secs(n);
        assert_eq!(decide("a", None, t0, t0), Step::Create);
        assert_eq!(decide("a", Some(&held_by("a")), t0, secs(60)), Step::Renew);
        assert_eq!(decide("a", Some(&held_by("b")), t0, secs(9)), Step::Wait);
        assert_eq!(decide("a", Some(&held_by("b")), t0, secs(10)), Step::Take);
        assert_eq!(decide("a", Some(&held_by("")), t0, t0), Step::Take);
    }

    /// A store in memory, with versions, for two electors to share.
    #[derive(Default, Clone)]
    struct Memory(Arc<Mutex<Option<(Record, u64)>>>);

    #[async_trait]
    impl LeaseStore for Memory {
        async fn get(&self) -> Result<Option<(Record, String)>, LeaseError> {
            let slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Ok(slot.as_ref().map(|(r, v)| (r.clone(), v.to_string())))
        }
        async fn create(&self, record: &Record) -> Result<Written, LeaseError> {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_some() {
                return Ok(Written::Conflict);
            }
            *slot = Some((record.clone(), 1));
            Ok(Written::Done("1".into()))
        }
        async fn update(&self, record: &Record, version: &str) -> Result<Written, LeaseError> {
            let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some((_, v)) if v.to_string() == version => {
                    let next = v + 1;
                    *slot = Some((record.clone(), next));
                    Ok(Written::Done(next.to_string()))
                }
                _ => Ok(Written::Conflict),
            }
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn elector(name: &str, store: &Memory) -> Elector {
        let config = LeaderElection {
            lease: rouse_nats::config::LeaseKind::Nats,
            name: "rouse-controller".into(),
            namespace: "default".into(),
            duration: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            identity: Some(name.into()),
        };
        Elector::new(&config, Box::new(store.clone()))
    }

    #[tokio::test]
    async fn one_leads_the_other_takes_over_only_after_the_leader_stops_renewing() {
        let store = Memory::default();
        let (mut a, mut b) = (elector("a", &store), elector("b", &store));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(a.round(at(0)).await.expect("round"));
        assert!(!b.round(at(0)).await.expect("round"));
        // a renews every 2 s: b never takes over, however long it watches.
        for s in (2..40).step_by(2) {
            assert!(a.round(at(s)).await.expect("round"), "a renews at {s}s");
            assert!(!b.round(at(s)).await.expect("round"), "b waits at {s}s");
        }
        // a dies after its renewal at 38 s: b takes over once it saw no
        // change for the lease's duration, by its own clock.
        assert!(!b.round(at(46)).await.expect("round"));
        assert!(b.round(at(48)).await.expect("round"));
        let (record, _) = store.get().await.expect("get").expect("record");
        assert_eq!((record.holder.as_str(), record.transitions), ("b", 1));
        // a, back from a pause, finds it lost the lease.
        assert!(!a.round(at(49)).await.expect("round"));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let store = Memory::default();
        let (mut a, mut b) = (elector("a", &store), elector("b", &store));
        let t0 = Instant::now();
        assert!(a.round(t0).await.expect("round"));
        assert!(!b.round(t0).await.expect("round"));
        a.release().await;
        assert!(b.round(t0 + Duration::from_millis(1)).await.expect("round"));
    }

    #[tokio::test]
    async fn two_candidates_racing_for_a_free_lease_elect_one() {
        let store = Memory::default();
        let (mut a, mut b) = (elector("a", &store), elector("b", &store));
        let t0 = Instant::now();
        let (won_a, won_b) = tokio::join!(a.round(t0), b.round(t0));
        let won = [won_a.expect("round"), won_b.expect("round")];
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    }
}
