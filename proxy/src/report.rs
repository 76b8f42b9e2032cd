//! Tells the controller what this proxy sees, off the hot path, in
//! proportion to what is happening rather than to what is configured.
//!
//! Requests only bump atomics and, on a few edges, reach the reporter
//! through [`Signals`]: the first arrival at an idle service enlists it among
//! the *active* services (and asks for a `load` report at once, so scale-up
//! does not wait for the next tick), as does the first held request of a cold
//! service (→ `wake` at once, from stage 3, `hold`) and a surge of
//! concurrency (→ an immediate `load`, from [`note_arrival`]).
//!
//! Every `report_interval` the reporter sends one [`Report`] for the whole
//! proxy: its heartbeat, with an entry for each active service only. A
//! service found quiet (no arrival, nothing in flight or held) is reported
//! that last time as absent and leaves the active set, so a proxy with
//! 10,000 idle services sends one small message per interval and touches
//! none of them. While requests are held, `wake` is repeated every second
//! (also while a waiting page follows the wake, `waiting`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::Client;
use rouse_nats::messages::{self, Load, Report, ServiceLoad, Wake, VERSION};
use rouse_nats::Subjects;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::service::Service;

/// An edge the data path saw, for an immediate message.
#[derive(Debug)]
pub enum Signal {
    /// A request was held while none was: wake the service now.
    Wake(Arc<Service>),
    /// A request arrived at an idle service, or concurrency surged: report now.
    Busy(Arc<Service>),
}

/// Room for edge signals; when full, the next periodic report covers the
/// edge (an enlisted service is never lost: enlisting does not go through
/// the channel).
const SIGNAL_CAPACITY: usize = 1024;

/// The data path's side of the reporter: enlists services that turn active
/// and asks for immediate messages. Cheap to clone; every call is lock-free
/// except enlisting, which happens once per idle → active edge of a service.
#[derive(Clone)]
pub struct Signals {
    tx: mpsc::Sender<Signal>,
    enlisted: Arc<Mutex<Vec<Arc<Service>>>>,
}

/// The reporter's side of [`Signals`].
pub struct SignalReceiver {
    rx: mpsc::Receiver<Signal>,
    enlisted: Arc<Mutex<Vec<Arc<Service>>>>,
}

impl Signals {
    pub fn channel() -> (Signals, SignalReceiver) {
        let (tx, rx) = mpsc::channel(SIGNAL_CAPACITY);
        let enlisted = Arc::new(Mutex::new(Vec::new()));
        (
            Signals {
                tx,
                enlisted: Arc::clone(&enlisted),
            },
            SignalReceiver { rx, enlisted },
        )
    }

    /// Requests are held (or a waiting page follows the wake): wake the
    /// service now, and report it from now on.
    pub fn wake(&self, service: &Arc<Service>) {
        self.enlist(service);
        let _ = self.tx.try_send(Signal::Wake(Arc::clone(service)));
    }

    /// Makes `service` active unless it is: the reporter reports it every
    /// interval until it is quiet again. Returns whether it was idle.
    fn enlist(&self, service: &Arc<Service>) -> bool {
        // SeqCst pairs with `Reporter::release`: either it sees the request
        // this edge belongs to, or this swap sees its `false`.
        if service.busy.load(Ordering::SeqCst) || service.busy.swap(true, Ordering::SeqCst) {
            return false;
        }
        lock(&self.enlisted).push(Arc::clone(service));
        true
    }

    fn busy(&self, service: &Arc<Service>) {
        let _ = self.tx.try_send(Signal::Busy(Arc::clone(service)));
    }
}

impl SignalReceiver {
    /// The next signal (for harnesses that run no reporter).
    pub async fn recv(&mut self) -> Option<Signal> {
        self.rx.recv().await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Concurrency below which a surge is not worth an extra report.
const SURGE_MIN: u64 = 4;

/// Counts a routed request's arrival; enlists an idle service and asks for
/// an immediate report, as it does when concurrency has surged to twice what
/// the last report said (so a load step is acted on within milliseconds,
/// not at the next report).
pub fn note_arrival(service: &Arc<Service>, signals: &Signals) {
    service.counters.arrivals.fetch_add(1, Ordering::SeqCst);
    if signals.enlist(service) {
        signals.busy(service);
        return;
    }
    let now = service.counters.in_flight.load(Ordering::Relaxed) + service.hold.held() as u64;
    let reported = service.reported_in_flight.load(Ordering::Relaxed);
    if now >= SURGE_MIN
        && now >= 2 * reported
        && !service.surge_signalled.load(Ordering::Relaxed)
        && !service.surge_signalled.swap(true, Ordering::Relaxed)
    {
        signals.busy(service);
    }
}

/// How often a `wake` is repeated while requests are held.
const WAKE_REPEAT: Duration = Duration::from_secs(1);

/// What the previous report of a service said, for the next one's deltas;
/// kept in the [`Service`], so a service that goes idle and comes back
/// continues from it. Only the reporter touches it.
#[derive(Debug)]
pub struct Reported {
    arrivals: u64,
    completed: u64,
    at: Instant,
}

impl Default for Reported {
    fn default() -> Self {
        Self {
            arrivals: 0,
            completed: 0,
            at: Instant::now(),
        }
    }
}

/// Publishes `wake`, immediate `load`s and the periodic [`Report`].
pub struct Reporter {
    client: Client,
    subjects: Subjects,
    proxy_id: String,
    report_subject: String,
    interval: Duration,
    /// Services reported every interval: enlisted, not yet found quiet.
    active: Vec<Arc<Service>>,
    /// Grows by one per message; see [`Report::seq`].
    seq: u64,
    last_report: Instant,
    /// How far the endpoint watch has come (`EndpointWatcher::revision`).
    endpoints_revision: Arc<AtomicU64>,
}

impl Reporter {
    pub fn new(
        client: Client,
        subjects: Subjects,
        proxy_id: String,
        interval: Duration,
        endpoints_revision: Arc<AtomicU64>,
    ) -> Self {
        Self {
            report_subject: subjects.report(&proxy_id),
            client,
            subjects,
            proxy_id,
            interval,
            active: Vec::new(),
            // Microseconds since the epoch: a restarted proxy with the same
            // id continues above its predecessor's numbers.
            seq: messages::now_ms().saturating_mul(1000),
            last_report: Instant::now(),
            endpoints_revision,
        }
    }

    /// Runs until the signal channel closes.
    pub async fn run(mut self, mut signals: SignalReceiver) {
        let mut report_tick = tokio::time::interval(self.interval);
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut wake_tick = tokio::time::interval(WAKE_REPEAT);
        wake_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = report_tick.tick() => {
                    self.take_enlisted(&signals);
                    self.report().await;
                }
                _ = wake_tick.tick() => {
                    self.take_enlisted(&signals);
                    for index in 0..self.active.len() {
                        if self.active[index].waiting() > 0 {
                            let service = Arc::clone(&self.active[index]);
                            self.wake(&service).await;
                        }
                    }
                }
                signal = signals.rx.recv() => {
                    self.take_enlisted(&signals);
                    match signal {
                        Some(Signal::Wake(service)) => {
                            self.wake(&service).await;
                            self.report_now(&service).await;
                        }
                        Some(Signal::Busy(service)) => self.report_now(&service).await,
                        None => return,
                    }
                }
            }
        }
    }

    /// Adds the services enlisted since the last look to the active set.
    fn take_enlisted(&mut self, signals: &SignalReceiver) {
        let enlisted = std::mem::take(&mut *lock(&signals.enlisted));
        if enlisted.is_empty() {
            return;
        }
        // Idle until now: its next deltas cover one interval, as if it had
        // been reported all along (a long idle gap would dilute the rate).
        let floor = Instant::now().checked_sub(self.interval);
        for service in &enlisted {
            let mut reported = lock(&service.reported);
            if let Some(floor) = floor {
                reported.at = reported.at.max(floor);
            }
        }
        self.active.extend(enlisted);
    }

    async fn wake(&self, service: &Service) {
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

    /// An immediate report of one service, on `<prefix>.load.<service>`.
    async fn report_now(&mut self, service: &Service) {
        self.seq += 1;
        let load = snapshot_load(service, &self.proxy_id, self.seq);
        let subject = self.subjects.load(&load.service);
        self.publish(subject, messages::encode(&load)).await;
    }

    /// The periodic report: every active service, and the heartbeat.
    async fn report(&mut self) {
        self.seq += 1;
        let now = Instant::now();
        let mut services = Vec::new();
        let active = std::mem::take(&mut self.active);
        for service in active {
            let load = snapshot_load(&service, &self.proxy_id, self.seq);
            let quiet =
                load.arrivals == 0 && load.completed == 0 && load.in_flight == 0 && load.held == 0;
            if !quiet {
                services.push(ServiceLoad::from_load(load));
                self.active.push(service);
            } else if !release(&service) {
                self.active.push(service);
            }
        }
        let report = Report {
            v: VERSION,
            proxy: self.proxy_id.clone(),
            seq: self.seq,
            interval_ms: now.duration_since(self.last_report).as_millis() as u64,
            endpoints_revision: self.endpoints_revision.load(Ordering::SeqCst),
            part: 0,
            parts: 1,
            services,
            at_ms: messages::now_ms(),
        };
        self.last_report = now;
        let max_payload = self.client.server_info().max_payload;
        for part in split(report, max_payload) {
            self.publish(self.report_subject.clone(), part).await;
        }
    }

    async fn publish(&self, subject: String, payload: bytes::Bytes) {
        if let Err(err) = self.client.publish(subject, payload).await {
            tracing::debug!(error = %err, "report not published");
        }
    }
}

/// Takes a quiet service out of the active set, unless a request slipped in
/// since `load` was read: then it stays (returns false). The flag is cleared
/// first and the counters read again after, so an arrival either is seen
/// here or sees the cleared flag and enlists the service anew.
fn release(service: &Service) -> bool {
    service.busy.store(false, Ordering::SeqCst);
    let counters = &service.counters;
    let still_quiet = lock(&service.reported).arrivals == counters.arrivals.load(Ordering::SeqCst)
        && counters.in_flight.load(Ordering::SeqCst) == 0
        && service.waiting() == 0;
    if still_quiet {
        return true;
    }
    // Take it back, unless the arrival already did (and enlisted it again:
    // then this entry goes and the enlisted one stays).
    service.busy.swap(true, Ordering::SeqCst)
}

/// Encodes `report`, in as many parts as it takes for each to fit in
/// `max_payload` bytes (the server's limit, 1 MiB by default: about 5,000
/// active services per part).
fn split(mut report: Report, max_payload: usize) -> Vec<bytes::Bytes> {
    let whole = messages::encode(&report);
    if whole.len() <= max_payload || report.services.len() < 2 {
        return vec![whole];
    }
    // Parts of equal count, sized with room for uneven entries.
    let parts = whole
        .len()
        .div_ceil(max_payload / 2)
        .min(report.services.len());
    let per_part = report.services.len().div_ceil(parts);
    let parts = report.services.len().div_ceil(per_part);
    // The services move into the parts; only the header is copied.
    let mut services = std::mem::take(&mut report.services).into_iter();
    let mut chunks = Vec::with_capacity(parts);
    for part in 0..parts {
        let chunk = Report {
            part: part as u32,
            parts: parts as u32,
            services: services.by_ref().take(per_part).collect(),
            proxy: report.proxy.clone(),
            ..report
        };
        chunks.push(messages::encode(&chunk));
    }
    chunks
}

/// Reads one service's counters into a report.
///
/// The endpoint generation is read before the per-endpoint counts; with the
/// balancer's count-then-check order this guarantees a report claiming zero
/// in flight on a draining endpoint is never followed by a new request to it.
fn snapshot_load(service: &Service, proxy: &str, seq: u64) -> Load {
    let endpoints = service.endpoints.load();
    let per_endpoint: BTreeMap<String, u64> = endpoints
        .all
        .iter()
        .map(|e| (e.id.to_string(), e.in_flight.load(Ordering::SeqCst)))
        .collect();
    let counters = &service.counters;
    let arrivals_total = counters.arrivals.load(Ordering::SeqCst);
    let completed_total = counters.completed.load(Ordering::Relaxed);
    let in_flight = counters.in_flight.load(Ordering::SeqCst);
    // Waiting pages count as held: a browser waiting must not see its
    // service scaled back to zero.
    let held = service.waiting() as u64;
    let now = Instant::now();
    let mut reported = lock(&service.reported);
    let load = Load {
        v: VERSION,
        service: service.name.to_string(),
        proxy: proxy.to_string(),
        seq,
        interval_ms: now.duration_since(reported.at).as_millis() as u64,
        arrivals: arrivals_total.saturating_sub(reported.arrivals),
        completed: completed_total.saturating_sub(reported.completed),
        in_flight,
        held,
        per_endpoint,
        endpoints_generation: endpoints.generation,
        at_ms: messages::now_ms(),
    };
    *reported = Reported {
        arrivals: arrivals_total,
        completed: completed_total,
        at: now,
    };
    drop(reported);
    service
        .reported_in_flight
        .store(in_flight + held, Ordering::Relaxed);
    service.surge_signalled.store(false, Ordering::Relaxed);
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Registry;
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

    fn services(names: &[&str]) -> Vec<Arc<Service>> {
        let defaults = Defaults {
            response_timeout: Duration::from_secs(1),
            max_body: None,
        };
        let specs: Vec<ServiceConfig> = names.iter().map(|n| spec(n)).collect();
        let registry = Registry::new(&specs, defaults, Arc::new(ProxyMetrics::new()));
        registry.services().iter().cloned().collect()
    }

    /// The next periodic report, within 20 s.
    async fn next_report(reports: &mut async_nats::Subscriber) -> Report {
        let message = tokio::time::timeout(Duration::from_secs(20), reports.next())
            .await
            .expect("a report within 20 s")
            .expect("subscription open");
        assert_eq!(message.subject.as_str(), "rouse.report.p");
        messages::decode(&message.payload).expect("a report")
    }

    fn names(report: &Report) -> Vec<&str> {
        report.services.iter().map(|s| s.service.as_str()).collect()
    }

    /// Idle services cost nothing: reports are heartbeats until a request
    /// arrives; the busy service is reported at once on its own subject and
    /// then in every report while a request is in flight, and left out of
    /// them again once it is quiet; the idle one never appears.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reports_carry_only_the_active_services() {
        let dir = tempfile::tempdir().expect("dir");
        let nats = rouse_e2e::nats::NatsServer::start_in(dir.path()).await;
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let mut reports = client.subscribe("rouse.report.*").await.expect("subscribe");
        let mut loads = client.subscribe("rouse.load.*").await.expect("subscribe");
        client.flush().await.expect("flush");
        let all = services(&["busy", "idle"]);
        let (busy, idle) = (&all[0], &all[1]);
        let revision = Arc::new(AtomicU64::new(42));
        let reporter = Reporter::new(
            client.clone(),
            Subjects::new("rouse"),
            "p".into(),
            Duration::from_millis(100),
            Arc::clone(&revision),
        );
        let (signals, signal_rx) = Signals::channel();
        tokio::spawn(reporter.run(signal_rx));

        let heartbeat = next_report(&mut reports).await;
        assert!(heartbeat.services.is_empty(), "{heartbeat:?}");
        assert_eq!(heartbeat.endpoints_revision, 42);

        busy.counters.in_flight.store(1, Ordering::SeqCst);
        note_arrival(busy, &signals);
        let message = tokio::time::timeout(Duration::from_secs(20), loads.next())
            .await
            .expect("an immediate load")
            .expect("subscription open");
        assert_eq!(message.subject.as_str(), "rouse.load.busy");
        let load: Load = messages::decode(&message.payload).expect("a load");
        assert_eq!(load.in_flight, 1);
        // A tick can beat the signal (the service is enlisted first): then
        // that report took the arrival, with a lower seq. Once, either way.
        let mut arrivals = load.arrivals;

        // Reported while busy, with seq numbers above the immediate one.
        let mut seen = 0;
        for _ in 0..50 {
            let report = next_report(&mut reports).await;
            assert!(!names(&report).contains(&"idle"), "{report:?}");
            if names(&report) == ["busy"] {
                arrivals += report.services[0].arrivals;
                if report.seq < load.seq {
                    continue;
                }
                assert_eq!(report.services[0].in_flight, 1);
                seen += 1;
                if seen == 3 {
                    break;
                }
            }
        }
        assert_eq!(seen, 3, "the busy service was reported in every report");
        assert_eq!(arrivals, 1, "the arrival was reported once");

        busy.counters.in_flight.store(0, Ordering::SeqCst);
        busy.counters.completed.fetch_add(1, Ordering::SeqCst);
        // The interval that saw it finish still reports it; then it is gone.
        let mut heartbeats = 0;
        for _ in 0..50 {
            let report = next_report(&mut reports).await;
            if report.services.is_empty() {
                heartbeats += 1;
                if heartbeats == 3 {
                    break;
                }
            } else {
                assert_eq!(
                    heartbeats, 0,
                    "reported again after a heartbeat: {report:?}"
                );
            }
        }
        assert_eq!(heartbeats, 3);
        assert!(!busy.busy.load(Ordering::SeqCst), "released");
        assert!(!idle.busy.load(Ordering::SeqCst));

        // Busy again: reported at once again, and in the reports while a
        // request is in flight.
        busy.counters.in_flight.store(1, Ordering::SeqCst);
        note_arrival(busy, &signals);
        let message = tokio::time::timeout(Duration::from_secs(20), loads.next())
            .await
            .expect("an immediate load again")
            .expect("subscription open");
        let again: Load = messages::decode(&message.payload).expect("a load");
        assert_eq!(again.in_flight, 1);
        assert!(again.arrivals <= 1, "{again:?}");
        let mut back = false;
        for _ in 0..50 {
            if names(&next_report(&mut reports).await) == ["busy"] {
                back = true;
                break;
            }
        }
        assert!(back, "a service busy again is reported again");
        busy.counters.in_flight.store(0, Ordering::SeqCst);
    }

    /// A request that slips in between a report's reading of the counters
    /// and the release keeps the service active (or enlists it anew).
    #[test]
    fn a_release_racing_an_arrival_keeps_the_service_reported() {
        let all = services(&["s"]);
        let service = &all[0];
        service.busy.store(true, Ordering::SeqCst);
        let _ = snapshot_load(service, "p", 1);
        assert!(release(service), "quiet: released");
        assert!(!service.busy.load(Ordering::SeqCst));

        service.busy.store(true, Ordering::SeqCst);
        let _ = snapshot_load(service, "p", 2);
        // Counted after the snapshot, while the flag still said busy.
        service.counters.arrivals.fetch_add(1, Ordering::SeqCst);
        assert!(!release(service), "the arrival keeps it");
        assert!(service.busy.load(Ordering::SeqCst));

        let _ = snapshot_load(service, "p", 3);
        service.counters.in_flight.store(1, Ordering::SeqCst);
        assert!(!release(service), "in flight keeps it");
        service.counters.in_flight.store(0, Ordering::SeqCst);
    }

    /// A report too big for one message goes in parts that each fit and
    /// together carry every service once.
    #[test]
    fn a_large_report_is_split_into_parts_that_fit() {
        let entry = |i: usize| ServiceLoad {
            service: format!("service-{i}"),
            interval_ms: 1000,
            arrivals: 1,
            completed: 1,
            in_flight: 0,
            held: 0,
            per_endpoint: BTreeMap::new(),
            endpoints_generation: 3,
        };
        let report = Report {
            v: VERSION,
            proxy: "p".into(),
            seq: 7,
            interval_ms: 1000,
            endpoints_revision: 9,
            part: 0,
            parts: 1,
            services: (0..1000).map(entry).collect(),
            at_ms: 0,
        };
        let whole = messages::encode(&report).len();
        assert_eq!(split(report.clone(), whole).len(), 1);
        let max = 8 * 1024;
        let parts = split(report, max);
        assert!(parts.len() > 1);
        let mut seen = Vec::new();
        for (index, bytes) in parts.iter().enumerate() {
            assert!(bytes.len() <= max, "part {index}: {} bytes", bytes.len());
            let part: Report = messages::decode(bytes).expect("a part");
            assert_eq!(
                (part.part as usize, part.parts as usize),
                (index, parts.len())
            );
            assert_eq!(part.seq, 7);
            assert_eq!(part.is_last_part(), index + 1 == parts.len());
            seen.extend(part.services.into_iter().map(|s| s.service));
        }
        let expected: Vec<String> = (0..1000).map(|i| format!("service-{i}")).collect();
        assert_eq!(seen, expected);
    }
}
