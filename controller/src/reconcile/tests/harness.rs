//! The loop under test, with the fakes wired in, and what a proxy would
//! send it; every wait is on a condition, in virtual time, with a bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rouse_nats::config::{ServiceConfig, ShutdownPolicy};
use rouse_nats::messages::{EndpointState, Load, Wake, VERSION};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::fakes::{FakeBackend, FakeProber, MemoryPublisher};
use super::{secs, service, SERVICE};
use crate::backend::Backend;
use crate::intake::Inbox;
use crate::metrics::ControllerMetrics;
use crate::probe::Prober;
use crate::reconcile::{now, Publisher, Retire, ServiceLoop, Wiring};
use crate::status::{ServiceStatus, StatusBoard};

// ---- the harness ---------------------------------------------------------

pub struct Harness {
    pub backend: Arc<FakeBackend>,
    pub prober: Arc<FakeProber>,
    pub publisher: Arc<MemoryPublisher>,
    pub inbox: Arc<Inbox>,
    pub metrics: Arc<ControllerMetrics>,
    pub status: Arc<StatusBoard>,
    /// The service the loop runs; change it before `start`.
    pub spec: ServiceConfig,
    /// The backend the loop runs on instead of `backend` (a pooled one).
    pub run_on: Option<Arc<dyn Backend>>,
    shutdown: watch::Sender<bool>,
    /// What the fleet would tell the loop (see [`Harness::retire`]).
    retire: watch::Sender<Retire>,
    task: Option<JoinHandle<()>>,
    seq: u64,
}

impl Harness {
    pub fn new() -> Self {
        let (shutdown, _) = watch::channel(false);
        let (retire, _) = watch::channel(Retire::No);
        Self {
            backend: Arc::default(),
            prober: Arc::default(),
            publisher: Arc::default(),
            inbox: Arc::new(Inbox::new(Duration::from_secs(1))),
            metrics: Arc::new(ControllerMetrics::new()),
            status: Arc::default(),
            spec: service(),
            run_on: None,
            shutdown,
            retire,
            task: None,
            seq: 0,
        }
    }

    pub fn start(&mut self) {
        let wiring = Wiring {
            publisher: Arc::clone(&self.publisher) as Arc<dyn Publisher>,
            prober: Arc::clone(&self.prober) as Arc<dyn Prober>,
            status: Arc::clone(&self.status),
            metrics: Arc::clone(&self.metrics),
            tick: Duration::from_millis(500),
            shutdown: self.shutdown.subscribe(),
            on_shutdown: ShutdownPolicy::Stop,
            backlog: None,
        };
        let backend = match &self.run_on {
            Some(backend) => Arc::clone(backend),
            None => Arc::clone(&self.backend) as Arc<dyn Backend>,
        };
        let service_loop =
            ServiceLoop::new(self.spec.clone(), backend, Arc::clone(&self.inbox), wiring)
                .retired_by(self.retire.subscribe());
        self.task = Some(tokio::spawn(service_loop.run()));
    }

    /// What one proxy would send: a wake while requests are held.
    pub fn wake(&self) {
        let wake = Wake {
            v: VERSION,
            service: SERVICE.into(),
            proxy: "p1".into(),
            held: 1,
            at_ms: 0,
        };
        self.inbox.observations().record_wake(&wake, now());
        self.inbox.wakeup.notify_one();
    }

    /// One load report of proxy `p1`, routing by the set currently stored,
    /// with `per_endpoint` requests in flight.
    pub fn report(&mut self, arrivals: u64, per_endpoint: &[(&str, u64)]) {
        self.seq += 1;
        let generation = self.publisher.current().map_or(0, |s| s.generation);
        let per_endpoint: BTreeMap<String, u64> = per_endpoint
            .iter()
            .map(|(id, n)| (id.to_string(), *n))
            .collect();
        let load = Load {
            v: VERSION,
            service: SERVICE.into(),
            proxy: "p1".into(),
            seq: self.seq,
            interval_ms: 500,
            arrivals,
            completed: arrivals,
            in_flight: per_endpoint.values().sum(),
            held: 0,
            per_endpoint,
            endpoints_generation: generation,
            at_ms: 0,
        };
        self.inbox.observations().record_load(load, now());
        self.inbox.wakeup.notify_one();
    }

    /// Reports every 500 ms (virtual) until `done` holds, at most `limit`.
    /// Returns whether it held.
    pub async fn reporting_until(
        &mut self,
        limit: Duration,
        mut per_endpoint: impl FnMut(&Self) -> Vec<(String, u64)>,
        mut done: impl FnMut(&Self) -> bool,
    ) -> bool {
        let deadline = now() + limit;
        while now() < deadline {
            if done(self) {
                return true;
            }
            let load = per_endpoint(self);
            let load: Vec<(&str, u64)> = load.iter().map(|(id, n)| (id.as_str(), *n)).collect();
            self.report(0, &load);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        done(self)
    }

    /// Waits (virtual time) until `done` holds, at most `limit`.
    pub async fn until(&self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = now() + limit;
        while now() < deadline {
            if done(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done(self)
    }

    pub fn endpoints(&self, state: EndpointState) -> Vec<String> {
        self.publisher.current().map_or_else(Vec::new, |set| {
            set.endpoints
                .into_iter()
                .filter(|e| e.state == state)
                .map(|e| e.id)
                .collect()
        })
    }

    pub fn status(&self) -> Option<ServiceStatus> {
        self.status.get(SERVICE)
    }

    pub fn backend_errors(&self) -> i64 {
        self.metrics
            .backend_errors
            .get_or_create(&ControllerMetrics::label(SERVICE))
            .get() as i64
    }

    /// Wakes the service and brings its first replica to ready.
    pub async fn warm(&mut self) -> String {
        self.wake();
        assert!(
            self.until(secs(5), |h| !h.backend.running().is_empty())
                .await
        );
        let id = self.backend.running()[0].clone();
        let addr = self.backend.state().replicas[&id].addr.clone();
        self.prober.pass(&addr);
        assert!(
            self.until(secs(5), |h| h.endpoints(EndpointState::Ready)
                == [id.clone()])
                .await
        );
        id
    }

    /// Brings the service to two ready replicas with twenty in flight.
    pub async fn warm_two(&mut self) {
        let first = self.warm().await;
        let load = move |_: &Harness| vec![(first.clone(), 20)];
        assert!(
            self.reporting_until(secs(10), load, |h| h.backend.running().len() == 2)
                .await
        );
        for id in self.backend.running() {
            let addr = self.backend.state().replicas[&id].addr.clone();
            self.prober.pass(&addr);
        }
        assert!(
            self.until(secs(5), |h| h.endpoints(EndpointState::Ready).len() == 2)
                .await
        );
    }

    /// Tells the loop what the fleet would: the service was removed
    /// ([`Retire::Remove`]) or defined again ([`Retire::Replace`]).
    pub fn retire(&self, why: Retire) {
        let _ = self.retire.send(why);
    }

    /// Whether the loop has ended.
    pub fn ended(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.is_finished())
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
