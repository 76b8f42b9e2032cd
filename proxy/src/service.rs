//! Per-service state shared by every request of that service.
//!
//! A request reaches its `Service` through the route table without any global
//! lock. The endpoint set is an `ArcSwap` snapshot replaced whole by the KV
//! watcher; the counters the load reports need are plain atomics. Endpoint
//! objects outlive snapshots (they are carried over by id) so that in-flight
//! counts survive an update of the set.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::uri::Authority;
use rouse_nats::config::{BackendProtocol, PoolPreference, ServiceConfig};
use rouse_nats::messages::{EndpointSet, EndpointState};

use crate::metrics::ServiceMetrics;
use crate::queue::HoldQueue;
use crate::wake_phase::WakePhase;

/// One replica of a service, as this proxy routes to it.
#[derive(Debug)]
pub struct Endpoint {
    pub id: Arc<str>,
    pub authority: Authority,
    /// Requests this proxy has in flight on it (including streaming bodies and
    /// upgraded connections).
    pub in_flight: AtomicU64,
    /// Set before the snapshot that marks it draining is published; a request
    /// that picked this endpoint re-checks it after counting itself in.
    pub draining: AtomicBool,
    /// Its pool's rank (`backend.pools`, 0 = first); 0 without pools.
    pub rank: u32,
}

/// The endpoint set of one KV revision.
#[derive(Debug, Default)]
pub struct EndpointSnapshot {
    pub generation: u64,
    pub all: Vec<Arc<Endpoint>>,
    /// The subset that may receive new requests; with `prefer: first`,
    /// in pool order (lowest rank first).
    pub ready: Vec<Arc<Endpoint>>,
}

/// Counters since start; load reports send their deltas.
#[derive(Debug, Default)]
pub struct Counters {
    pub arrivals: AtomicU64,
    pub completed: AtomicU64,
    pub in_flight: AtomicU64,
}

/// Everything the data path knows about one service.
///
/// One object per service name for the life of the process: a changed
/// definition (catalog, SIGHUP) updates its settings in place, so held
/// requests, in-flight counts and endpoints carry over. The settings are
/// atomics, read without a lock on every request.
pub struct Service {
    pub(crate) name: Arc<str>,
    response_timeout_ns: AtomicU64,
    hold_timeout_ns: AtomicU64,
    pub(crate) endpoints: ArcSwap<EndpointSnapshot>,
    pub(crate) counters: Counters,
    pub hold: HoldQueue,
    /// Most requests one replica gets at once from this proxy; 0 = no limit.
    container_concurrency: AtomicU64,
    /// `backend.prefer: first`: the least busy replica, ties going to the
    /// earlier pool (see `balance`).
    prefer_first: AtomicBool,
    /// `backend.protocol`: the HTTP version requests go out in (`forward`).
    protocol: AtomicU8,
    /// Whether the reporter counts it active (reports it every interval):
    /// set by the first arrival after a quiet report, which also asks for an
    /// immediate report; cleared by the report that finds it quiet.
    pub(crate) busy: AtomicBool,
    /// What its last report said (the reporter's own).
    pub(crate) reported: std::sync::Mutex<crate::report::Reported>,
    /// In flight at the last report; a surge well above it asks for an
    /// immediate report (`surge_signalled` keeps that to one per interval).
    pub(crate) reported_in_flight: AtomicU64,
    pub(crate) surge_signalled: AtomicBool,
    pub(crate) metrics: ServiceMetrics,
    /// Largest request body accepted (`max_body`); `u64::MAX`: any.
    max_body: AtomicU64,
    /// `hold.browser_page`: the waiting page browsers get while the
    /// service is cold, rendered once per definition.
    pub(crate) page: ArcSwapOption<bytes::Bytes>,
    /// How far a cold start has come (the waiting page's events).
    pub(crate) phase: tokio::sync::watch::Sender<WakePhase>,
    /// Waiting pages following the wake now: like held requests, they keep
    /// the service wanted (reports count them as held).
    pub(crate) page_watchers: AtomicUsize,
    /// Taken out of the catalog (`retire`): nothing more is held; what is
    /// in flight finishes. Cleared if the service is defined again.
    retired: AtomicBool,
}

/// What a service's settings fall back to: the proxy's own.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub response_timeout: Duration,
    /// `proxy.limits.max_body`.
    pub max_body: Option<u64>,
}

fn protocol_code(protocol: BackendProtocol) -> u8 {
    match protocol {
        BackendProtocol::Http1 => 0,
        BackendProtocol::H2c => 1,
        BackendProtocol::Auto => 2,
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

/// Why an endpoint set from KV was not applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("endpoint {id}: `{addr}` is not a host:port")]
    BadAddress { id: String, addr: String },
    #[error("endpoint {id} is listed twice")]
    Duplicate { id: String },
}

impl Service {
    pub fn new(
        config: &ServiceConfig,
        response_timeout: Duration,
        metrics: ServiceMetrics,
    ) -> Self {
        let service = Self {
            name: config.name.as_str().into(),
            response_timeout_ns: AtomicU64::new(0),
            hold_timeout_ns: AtomicU64::new(0),
            endpoints: ArcSwap::from_pointee(EndpointSnapshot::default()),
            counters: Counters::default(),
            hold: HoldQueue::new(config.hold.max_requests, config.hold.per_client_limit()),
            container_concurrency: AtomicU64::new(0),
            prefer_first: AtomicBool::new(false),
            protocol: AtomicU8::new(0),
            busy: AtomicBool::new(false),
            reported: Default::default(),
            reported_in_flight: AtomicU64::new(0),
            surge_signalled: AtomicBool::new(false),
            metrics,
            max_body: AtomicU64::new(u64::MAX),
            page: ArcSwapOption::empty(),
            phase: tokio::sync::watch::Sender::new(WakePhase::Waking),
            page_watchers: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        };
        service.update(
            config,
            Defaults {
                response_timeout,
                max_body: None,
            },
        );
        service
    }

    /// Requests held plus waiting pages following the wake: what keeps a
    /// cold service wanted (`wake` repeats, `held` in load reports).
    pub fn waiting(&self) -> usize {
        self.hold.held() + self.page_watchers.load(Ordering::Relaxed)
    }

    /// The service left the catalog: requests held now are answered at
    /// once (404, as new ones are) instead of waiting out `hold.timeout`
    /// for a replica that will not come, and waiting pages are told.
    /// Requests in flight finish; endpoint sets still apply, so their
    /// replicas drain as usual.
    pub(crate) fn retire(&self) {
        // Set before the release, which takes the queue lock that joining
        // also takes: a request either is in the queue and woken, or joins
        // after and sees the flag (`hold`).
        self.retired.store(true, Ordering::SeqCst);
        self.hold.release(usize::MAX);
        self.phase.send_replace(WakePhase::Removed);
    }

    /// Defined again after `retire`, before the last request let go of it.
    pub(crate) fn revive(&self) {
        self.retired.store(false, Ordering::SeqCst);
        let has_ready = !self.is_cold();
        self.phase
            .send_replace(WakePhase::Waking.after_endpoints(has_ready));
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// No replica is ready (draining ones do not count): a cold start, not
    /// replicas that are merely busy.
    pub(crate) fn is_cold(&self) -> bool {
        self.endpoints.load().ready.is_empty()
    }

    /// The controller scaled this service to `to` replicas (a `scaled`
    /// event, see `wake_phase`).
    pub fn scaled(&self, to: u32) {
        self.phase.send_if_modified(|phase| {
            let next = phase.after_scaled(to);
            std::mem::replace(phase, next) != next
        });
    }

    /// With `limit` as the body limit when the service sets none
    /// (`proxy.limits.max_body`).
    pub fn with_default_max_body(self, limit: Option<u64>) -> Self {
        if self.max_body() == u64::MAX {
            self.max_body
                .store(limit.unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        self
    }

    /// Takes the settings of a changed definition (same name). Requests in
    /// flight keep what they started with; the next ones see the new values.
    pub fn update(&self, config: &ServiceConfig, defaults: Defaults) {
        let response_timeout = config.response_timeout.unwrap_or(defaults.response_timeout);
        self.response_timeout_ns
            .store(nanos(response_timeout), Ordering::Relaxed);
        self.hold_timeout_ns
            .store(nanos(config.hold.timeout), Ordering::Relaxed);
        self.hold
            .set_limits(config.hold.max_requests, config.hold.per_client_limit());
        self.container_concurrency.store(
            u64::from(config.scaling.container_concurrency),
            Ordering::Relaxed,
        );
        self.prefer_first.store(
            config.backend.prefer == PoolPreference::First,
            Ordering::Relaxed,
        );
        self.protocol
            .store(protocol_code(config.backend.protocol), Ordering::Relaxed);
        let max_body = config
            .max_body
            .map(|b| b.as_u64())
            .or(defaults.max_body)
            .unwrap_or(u64::MAX);
        self.max_body.store(max_body, Ordering::Relaxed);
        let has_page = self.page.load().is_some();
        if config.hold.browser_page != has_page {
            self.page.store(
                config
                    .hold
                    .browser_page
                    .then(|| Arc::new(crate::waiting::render(&config.name))),
            );
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        Duration::from_nanos(self.response_timeout_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn hold_timeout(&self) -> Duration {
        Duration::from_nanos(self.hold_timeout_ns.load(Ordering::Relaxed))
    }

    pub(crate) fn container_concurrency(&self) -> u64 {
        self.container_concurrency.load(Ordering::Relaxed)
    }

    pub(crate) fn prefer_first(&self) -> bool {
        self.prefer_first.load(Ordering::Relaxed)
    }

    pub(crate) fn protocol(&self) -> BackendProtocol {
        match self.protocol.load(Ordering::Relaxed) {
            1 => BackendProtocol::H2c,
            2 => BackendProtocol::Auto,
            _ => BackendProtocol::Http1,
        }
    }

    /// Largest request body accepted; `u64::MAX`: any.
    pub(crate) fn max_body(&self) -> u64 {
        self.max_body.load(Ordering::Relaxed)
    }

    /// Replaces the endpoint set (the KV watcher orders updates by revision)
    /// and releases held requests when replicas are ready. Endpoints that
    /// cannot be used are skipped, the rest applied; the skipped ones are
    /// returned for the caller to count and log.
    pub fn apply(&self, set: &EndpointSet) -> Vec<ApplyError> {
        let current = self.endpoints.load();
        let by_id: HashMap<&str, &Arc<Endpoint>> =
            current.all.iter().map(|e| (&*e.id, e)).collect();
        let mut all: Vec<Arc<Endpoint>> = Vec::with_capacity(set.endpoints.len());
        let mut ready = Vec::with_capacity(set.endpoints.len());
        let mut skipped = Vec::new();
        for wanted in &set.endpoints {
            if all.iter().any(|e| *e.id == *wanted.id) {
                skipped.push(ApplyError::Duplicate {
                    id: wanted.id.clone(),
                });
                continue;
            }
            let Ok(authority) = wanted.addr.parse::<Authority>() else {
                skipped.push(ApplyError::BadAddress {
                    id: wanted.id.clone(),
                    addr: wanted.addr.clone(),
                });
                continue;
            };
            let rank = wanted.pool_rank.unwrap_or(0);
            let endpoint = match by_id.get(wanted.id.as_str()) {
                Some(existing) if existing.authority == authority && existing.rank == rank => {
                    Arc::clone(existing)
                }
                _ => Arc::new(Endpoint {
                    id: wanted.id.as_str().into(),
                    authority,
                    in_flight: AtomicU64::new(0),
                    draining: AtomicBool::new(false),
                    rank,
                }),
            };
            let draining = wanted.state == EndpointState::Draining;
            endpoint.draining.store(draining, Ordering::SeqCst);
            if !draining {
                ready.push(Arc::clone(&endpoint));
            }
            all.push(endpoint);
        }
        if self.prefer_first() {
            // Stable: the controller's order within a pool.
            ready.sort_by_key(|e| e.rank);
        }
        let has_ready = !ready.is_empty();
        self.endpoints.store(Arc::new(EndpointSnapshot {
            generation: set.generation,
            all,
            ready,
        }));
        if has_ready {
            self.hold.release(self.free_slots());
        }
        self.phase.send_if_modified(|phase| {
            let next = phase.after_endpoints(has_ready);
            std::mem::replace(phase, next) != next
        });
        skipped
    }

    /// Whether any replica can take a request now (ready, and under the
    /// per-replica cap when there is one).
    pub(crate) fn has_ready(&self) -> bool {
        let snapshot = self.endpoints.load();
        match self.container_concurrency() {
            0 => !snapshot.ready.is_empty(),
            cap => snapshot
                .ready
                .iter()
                .any(|e| e.in_flight.load(Ordering::SeqCst) < cap),
        }
    }

    /// How many more requests the ready replicas can take now.
    pub(crate) fn free_slots(&self) -> usize {
        match self.container_concurrency() {
            0 => usize::MAX,
            cap => self
                .endpoints
                .load()
                .ready
                .iter()
                .map(|e| cap.saturating_sub(e.in_flight.load(Ordering::SeqCst)) as usize)
                .sum(),
        }
    }

    /// A request on a capped replica finished: its slot goes to the oldest
    /// waiting request, if any.
    pub(crate) fn slot_freed(&self) {
        if self.container_concurrency() > 0 && self.hold.held() > 0 {
            self.hold.release(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;
    use rouse_nats::messages::{Endpoint as WireEndpoint, VERSION};

    fn service() -> Service {
        let yaml = "name: a\nhosts: [a]\nbackend: {process: {command: [x]}}\n";
        let config: ServiceConfig = serde_norway::from_str(yaml).expect("config");
        // Handles registered nowhere.
        let metrics = ProxyMetrics::new().for_service("test");
        Service::new(&config, Duration::from_secs(1), metrics)
    }

    fn set(generation: u64, endpoints: &[(&str, &str, EndpointState)]) -> EndpointSet {
        EndpointSet {
            v: VERSION,
            generation,
            endpoints: endpoints
                .iter()
                .map(|(id, addr, state)| WireEndpoint {
                    id: (*id).into(),
                    addr: (*addr).into(),
                    state: *state,
                    pool_rank: None,
                })
                .collect(),
        }
    }

    #[test]
    fn keeps_endpoint_identity_and_counts_across_updates() {
        let s = service();
        let ready = EndpointState::Ready;
        assert!(s.apply(&set(1, &[("r1", "127.0.0.1:1", ready)])).is_empty());
        let first = Arc::clone(&s.endpoints.load().ready[0]);
        first.in_flight.store(3, Ordering::SeqCst);
        let draining = EndpointState::Draining;
        let skipped = s.apply(&set(
            2,
            &[
                ("r1", "127.0.0.1:1", draining),
                ("r2", "127.0.0.1:2", ready),
            ],
        ));
        assert!(skipped.is_empty());
        let snap = s.endpoints.load();
        assert_eq!(snap.ready.len(), 1);
        assert_eq!(&*snap.ready[0].id, "r2");
        assert!(Arc::ptr_eq(&snap.all[0], &first));
        assert!(first.draining.load(Ordering::SeqCst));
        assert_eq!(first.in_flight.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn skips_bad_and_duplicate_endpoints_and_applies_the_rest() {
        let s = service();
        let ready = EndpointState::Ready;
        let draining = EndpointState::Draining;
        let skipped = s.apply(&set(
            6,
            &[
                ("r1", "not an addr", ready),
                ("r2", "127.0.0.1:2", ready),
                ("r2", "127.0.0.1:2", draining),
            ],
        ));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        let snap = s.endpoints.load();
        assert_eq!(snap.all.len(), 1);
        assert_eq!(&*snap.ready[0].id, "r2");
        assert!(!snap.ready[0].draining.load(Ordering::SeqCst));
    }
}
