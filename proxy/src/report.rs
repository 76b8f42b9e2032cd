//! Tells the controller what this proxy sees, off the hot path.
//!
//! Requests only bump atomics and, on a few edges, drop a `Signal` into a
//! bounded channel: the first held request of a cold service (→ `wake` at
//! once, from stage 3, `hold`), the first arrival at an idle service and a
//! surge of concurrency (→ a `load` report at once, from [`note_arrival`], so
//! scale-up does not wait for the next tick). Everything else is a periodic
//! report per service every `report_interval`, and a repeated `wake` every
//! second while requests are held (or a waiting page follows the wake,
//! `waiting`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use rouse_nats::messages::{self, Load, Wake, VERSION};
use rouse_nats::Subjects;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::catalog::Registry;
use crate::service::Service;

/// An edge the data path saw.
#[derive(Debug)]
pub enum Signal {
    /// A request was held while none was: wake the service now.
    Wake(Arc<Service>),
    /// A request arrived at a service reported idle: report now.
    Busy(Arc<Service>),
}

/// Concurrency below which a surge is not worth an extra report.
const SURGE_MIN: u64 = 4;

/// Counts a routed request's arrival; asks for an immediate report when the
/// service was idle, or when its concurrency has surged to twice what the
/// last report said (so a load step is acted on within milliseconds, not at
/// the next report).
pub fn note_arrival(service: &Arc<Service>, signals: &mpsc::Sender<Signal>) {
    service.counters.arrivals.fetch_add(1, Ordering::Relaxed);
    if !service.busy.load(Ordering::Relaxed) && !service.busy.swap(true, Ordering::Relaxed) {
        let _ = signals.try_send(Signal::Busy(Arc::clone(service)));
        return;
    }
    let now = service.counters.in_flight.load(Ordering::Relaxed) + service.hold.held() as u64;
    let reported = service.reported_in_flight.load(Ordering::Relaxed);
    if now >= SURGE_MIN
        && now >= 2 * reported
        && !service.surge_signalled.load(Ordering::Relaxed)
        && !service.surge_signalled.swap(true, Ordering::Relaxed)
    {
        let _ = signals.try_send(Signal::Busy(Arc::clone(service)));
    }
}

/// How often a `wake` is repeated while requests are held.
const WAKE_REPEAT: Duration = Duration::from_secs(1);

/// Deltas are computed against the previous report of the same service.
struct Previous {
    arrivals: u64,
    completed: u64,
    at: Instant,
}

/// Publishes `wake` and `load` for every service of this proxy.
pub struct Reporter {
    client: Client,
    subjects: Subjects,
    proxy_id: String,
    interval: Duration,
    services: Vec<Arc<Service>>,
    previous: Vec<Previous>,
    seq: u64,
    /// Where the services come from when they can change (the catalog);
    /// without it, the list given to `new` is the list for good.
    registry: Option<Arc<Registry>>,
    /// The registry's list as of the last `sync`.
    synced: Option<Arc<Vec<Arc<Service>>>>,
}

impl Reporter {
    pub fn new(
        client: Client,
        subjects: Subjects,
        proxy_id: String,
        interval: Duration,
        services: Vec<Arc<Service>>,
    ) -> Self {
        let now = Instant::now();
        let previous = services
            .iter()
            .map(|_| Previous {
                arrivals: 0,
                completed: 0,
                at: now,
            })
            .collect();
        Self {
            client,
            subjects,
            proxy_id,
            interval,
            services,
            previous,
            seq: 0,
            registry: None,
            synced: None,
        }
    }

    /// Follows `registry`'s services: new ones are reported from their first
    /// interval, removed ones until nothing of theirs is in flight or held.
    pub fn following(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self.sync();
        self
    }

    fn sync(&mut self) {
        let Some(registry) = &self.registry else {
            return;
        };
        let current = registry.services();
        // Unchanged list and no removed service still reported: nothing to do.
        let unchanged = self
            .synced
            .as_ref()
            .is_some_and(|synced| Arc::ptr_eq(synced, &current));
        if unchanged && self.services.len() == current.len() {
            return;
        }
        let old_services = std::mem::take(&mut self.services);
        let old_previous = std::mem::take(&mut self.previous);
        // By object address: one entry per service, looked up once.
        let mut carried: HashMap<*const Service, (Arc<Service>, Previous)> = old_services
            .into_iter()
            .zip(old_previous)
            .map(|(service, previous)| (Arc::as_ptr(&service), (service, previous)))
            .collect();
        let now = Instant::now();
        for service in current.iter() {
            let previous = carried.remove(&Arc::as_ptr(service)).map_or(
                Previous {
                    arrivals: 0,
                    completed: 0,
                    at: now,
                },
                |(_, previous)| previous,
            );
            self.services.push(Arc::clone(service));
            self.previous.push(previous);
        }
        for (service, previous) in carried.into_values() {
            let busy =
                service.counters.in_flight.load(Ordering::Relaxed) > 0 || service.waiting() > 0;
            if busy {
                self.services.push(service);
                self.previous.push(previous);
            }
        }
        self.synced = Some(current);
    }

    /// Runs until the signal channel closes.
    pub async fn run(mut self, mut signals: mpsc::Receiver<Signal>) {
        let mut report_tick = tokio::time::interval(self.interval);
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wake_tick = tokio::time::interval(WAKE_REPEAT);
        wake_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = report_tick.tick() => {
                    self.sync();
                    for index in 0..self.services.len() {
                        self.report(index).await;
                    }
                }
                _ = wake_tick.tick() => {
                    for index in 0..self.services.len() {
                        if self.services[index].waiting() > 0 {
                            self.wake(index).await;
                        }
                    }
                }
                signal = signals.recv() => match signal {
                    Some(Signal::Wake(service)) => {
                        if self.index_of(&service).is_none() {
                            self.sync();
                        }
                        if let Some(index) = self.index_of(&service) {
                            self.wake(index).await;
                            self.report(index).await;
                        }
                    }
                    Some(Signal::Busy(service)) => {
                        if self.index_of(&service).is_none() {
                            self.sync();
                        }
                        if let Some(index) = self.index_of(&service) {
                            self.report(index).await;
                        }
                    }
                    None => return,
                },
            }
        }
    }

    fn index_of(&self, service: &Arc<Service>) -> Option<usize> {
        self.services.iter().position(|s| Arc::ptr_eq(s, service))
    }

    async fn wake(&self, index: usize) {
        let service = &self.services[index];
        let wake = Wake {
            v: VERSION,
            service: service.name.to_string(),
            proxy: self.proxy_id.clone(),
            held: service.waiting() as u64,
            at_ms: messages::now_ms(),
        };
        self.publish(self.subjects.wake(&service.name), messages::encode(&wake))
            .await;
    }

    async fn report(&mut self, index: usize) {
        self.seq += 1;
        let load = snapshot_load(
            &self.services[index],
            &mut self.previous[index],
            &self.proxy_id,
            self.seq,
        );
        let subject = self.subjects.load(&load.service);
        self.publish(subject, messages::encode(&load)).await;
    }

    async fn publish(&self, subject: String, payload: bytes::Bytes) {
        if let Err(err) = self.client.publish(subject, payload).await {
            tracing::debug!(error = %err, "report not published");
        }
    }
}

/// Reads one service's counters into a report and marks it idle when quiet.
///
/// The endpoint generation is read before the per-endpoint counts; with the
/// balancer's count-then-check order this guarantees a report claiming zero
/// in flight on a draining endpoint is never followed by a new request to it.
fn snapshot_load(service: &Service, previous: &mut Previous, proxy: &str, seq: u64) -> Load {
    let endpoints = service.endpoints.load();
    let per_endpoint: BTreeMap<String, u64> = endpoints
        .all
        .iter()
        .map(|e| (e.id.to_string(), e.in_flight.load(Ordering::SeqCst)))
        .collect();
    let counters = &service.counters;
    let arrivals_total = counters.arrivals.load(Ordering::Relaxed);
    let completed_total = counters.completed.load(Ordering::Relaxed);
    let in_flight = counters.in_flight.load(Ordering::Relaxed);
    // Waiting pages count as held: a browser waiting must not see its
    // service scaled back to zero.
    let held = service.waiting() as u64;
    let now = Instant::now();
    let load = Load {
        v: VERSION,
        service: service.name.to_string(),
        proxy: proxy.to_string(),
        seq,
        interval_ms: now.duration_since(previous.at).as_millis() as u64,
        arrivals: arrivals_total.saturating_sub(previous.arrivals),
        completed: completed_total.saturating_sub(previous.completed),
        in_flight,
        held,
        per_endpoint,
        endpoints_generation: endpoints.generation,
        at_ms: messages::now_ms(),
    };
    *previous = Previous {
        arrivals: arrivals_total,
        completed: completed_total,
        at: now,
    };
    service
        .reported_in_flight
        .store(in_flight + held, Ordering::Relaxed);
    service.surge_signalled.store(false, Ordering::Relaxed);
    if load.arrivals == 0 && in_flight == 0 && held == 0 {
        service.busy.store(false, Ordering::Relaxed);
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;
    use crate::service::Defaults;
    use futures::StreamExt;
    use rouse_nats::config::ServiceConfig;

    fn spec(name: &str) -> ServiceConfig {
        serde_norway::from_str(&format!(
            "name: {name}\nhosts: [{name}.test]\nbackend: {{process: {{command: [x]}}}}\n"
        ))
        .expect("spec")
    }

    /// The next report of `service` (others skipped), within 20 s.
    async fn next_of(reports: &mut async_nats::Subscriber, service: &str) -> Load {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(message) = reports.next().await {
                let load: Load = messages::decode(&message.payload).expect("a load report");
                if load.service == service {
                    return Some(load);
                }
            }
            None
        })
        .await;
        found
            .expect("a report within 20 s")
            .expect("subscription open")
    }

    /// Following the registry: a service added later is reported, and a
    /// removed one is reported for as long as it has a request in flight
    /// (the controller's drain needs that count), then no more.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_follow_the_services_in_force_and_outlast_a_removal_while_busy() {
        let dir = tempfile::tempdir().expect("dir");
        let nats = rouse_e2e::nats::NatsServer::start_in(dir.path()).await;
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut reports = client.subscribe("rouse.load.*").await.expect("subscribe");
        let defaults = Defaults {
            response_timeout: Duration::from_secs(1),
            max_body: None,
        };
        let registry = Arc::new(Registry::new(
            &[spec("kept"), spec("gone")],
            defaults,
            Arc::new(ProxyMetrics::new()),
        ));
        let gone = Arc::clone(&registry.services()[1]);
        gone.counters.in_flight.store(1, Ordering::Relaxed);
        let reporter = Reporter::new(
            client.clone(),
            Subjects::new("rouse"),
            "p".into(),
            Duration::from_millis(100),
            Vec::new(),
        )
        .following(Arc::clone(&registry));
        let (_signals, signal_rx) = mpsc::channel(8);
        tokio::spawn(reporter.run(signal_rx));

        registry.set_file(vec![spec("kept"), spec("added")]);
        assert_eq!(next_of(&mut reports, "added").await.in_flight, 0);
        // Removed, but a request is still in flight on it: still reported.
        for _ in 0..3 {
            assert_eq!(next_of(&mut reports, "gone").await.in_flight, 1);
        }
        gone.counters.in_flight.store(0, Ordering::Relaxed);
        // Its request done: dropped at the next tick (what was already
        // published may still arrive) while the others go on.
        let mut gone_after = 0;
        for _ in 0..20 {
            let message = tokio::time::timeout(Duration::from_secs(20), reports.next())
                .await
                .expect("reports go on")
                .expect("subscription open");
            let load: Load = messages::decode(&message.payload).expect("a load report");
            if load.service == "gone" {
                gone_after += 1;
            }
        }
        assert!(
            gone_after <= 3,
            "`gone` reported {gone_after} times after it went idle"
        );
    }
}
