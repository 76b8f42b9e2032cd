//! Receives what the proxies publish (`wake`, `load`, and each proxy's
//! periodic `report`) and hands each service's part to its inbox, waking
//! that service's reconcile loop. A report first goes to the shared
//! heartbeat table ([`Proxies`]); then only the services it lists are
//! touched, so the work per report follows the active services, not the
//! configured ones.
//!
//! Anything that does not decode, speaks another version, or names a service
//! this controller does not run is counted in `rouse_bus_rejected_total` and
//! dropped; it never stops the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::{Client, Message};
use futures::StreamExt;
use rouse_nats::messages::{self, DecodeError, Load, Report, Wake};
use rouse_nats::subjects::subject_token;
use rouse_nats::Subjects;
use tokio::sync::{watch, Notify};

use crate::metrics::ControllerMetrics;
use crate::observations::Observations;
use crate::proxies::Proxies;

/// Where a service's reports land.
pub struct Inbox {
    observations: Mutex<Observations>,
    /// Wakes the service's reconcile loop; shared with a backend that
    /// learns of changes on its own (a Kubernetes watch).
    pub wakeup: Arc<Notify>,
    /// Bumped after every delivered message, for any number of watchers
    /// (the KEDA activity streams) besides the reconcile loop.
    changes: watch::Sender<u64>,
    /// `NOT_PINNED`, or the pinned replica count.
    pin: AtomicU64,
}

const NOT_PINNED: u64 = u64::MAX;

impl Inbox {
    /// An inbox with a heartbeat table of its own (tests); a controller's
    /// come from [`Inboxes::open`].
    #[cfg(test)]
    pub fn new(report_interval: Duration) -> Self {
        Self::sharing(Observations::new(report_interval))
    }

    fn sharing(observations: Observations) -> Self {
        Self {
            observations: Mutex::new(observations),
            wakeup: Arc::new(Notify::new()),
            changes: watch::Sender::new(0),
            pin: AtomicU64::new(NOT_PINNED),
        }
    }

    /// The replica count an operator pinned (`rouse scale --pin`), if any.
    pub fn pin(&self) -> Option<u32> {
        match self.pin.load(Ordering::Relaxed) {
            NOT_PINNED => None,
            n => u32::try_from(n).ok(),
        }
    }

    /// Pins (or with `None` unpins) the service and wakes its loop.
    pub fn set_pin(&self, pin: Option<u32>) {
        self.pin
            .store(pin.map_or(NOT_PINNED, u64::from), Ordering::Relaxed);
        self.wakeup.notify_one();
    }

    pub fn observations(&self) -> MutexGuard<'_, Observations> {
        self.observations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says that the observations changed: wakes the reconcile loop and
    /// every watcher.
    pub fn delivered(&self) {
        self.wakeup.notify_one();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sees every later [`Inbox::delivered`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Every service's inbox, by name (services come and go with the catalog),
/// and the proxies' heartbeats they all judge reports by.
pub struct Inboxes {
    by_service: dashmap::DashMap<String, Arc<Inbox>>,
    proxies: Arc<Proxies>,
    report_interval: Duration,
}

impl std::ops::Deref for Inboxes {
    type Target = dashmap::DashMap<String, Arc<Inbox>>;

    fn deref(&self) -> &Self::Target {
        &self.by_service
    }
}

impl Inboxes {
    pub fn new(report_interval: Duration) -> Self {
        Self {
            by_service: dashmap::DashMap::new(),
            proxies: Arc::new(Proxies::new()),
            report_interval,
        }
    }

    /// With an inbox for each of `services` already.
    pub fn with<'a>(
        report_interval: Duration,
        services: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let inboxes = Self::new(report_interval);
        for service in services {
            inboxes.open(service);
        }
        inboxes
    }

    /// The inbox of `service`, made if it has none.
    pub fn open(&self, service: &str) -> Arc<Inbox> {
        if let Some(inbox) = self.by_service.get(service) {
            return Arc::clone(&inbox);
        }
        let inbox = self
            .by_service
            .entry(service.to_string())
            .or_insert_with(|| {
                Arc::new(Inbox::sharing(Observations::sharing(
                    self.report_interval,
                    Arc::clone(&self.proxies),
                )))
            });
        Arc::clone(&inbox)
    }

    /// The proxies' heartbeats.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }
}

/// Subscribes and dispatches until the subscriptions end.
pub async fn run(
    client: Client,
    subjects: Subjects,
    inboxes: Arc<Inboxes>,
    metrics: Arc<ControllerMetrics>,
) -> Result<(), async_nats::SubscribeError> {
    let mut wakes = client.subscribe(subjects.all_wakes()).await?;
    let mut loads = client.subscribe(subjects.all_loads()).await?;
    let mut reports = client.subscribe(subjects.all_reports()).await?;
    let mut sweep = tokio::time::interval(inboxes.report_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut departures_seen = 0;
    loop {
        tokio::select! {
            message = wakes.next() => {
                let Some(message) = message else { return Ok(()) };
                count_rejection(deliver_wake(&subjects, &inboxes, &message), &message, &metrics);
            }
            message = loads.next() => {
                let Some(message) = message else { return Ok(()) };
                count_rejection(deliver_load(&subjects, &inboxes, &message), &message, &metrics);
            }
            message = reports.next() => {
                let Some(message) = message else { return Ok(()) };
                for outcome in deliver_report(&inboxes, &message) {
                    count_rejection(outcome, &message, &metrics);
                }
            }
            _ = sweep.tick() => {
                departures_seen = wake_on_departures(&inboxes, departures_seen);
            }
        }
    }
}

/// Wakes every service when a proxy has gone silent since the last look
/// (`seen` departures then), so that their status stops counting it at
/// once instead of at each idle loop's next resync. Returns the departures
/// now.
pub(crate) fn wake_on_departures(inboxes: &Inboxes, seen: u64) -> u64 {
    let ttl = inboxes.report_interval * crate::observations::LIVE_INTERVALS;
    let departures = inboxes
        .proxies()
        .forget_departed(crate::reconcile::now(), ttl);
    if departures != seen {
        for inbox in inboxes.iter() {
            inbox.delivered();
        }
    }
    departures
}

/// Takes in a proxy's periodic report: its heartbeat, then each listed
/// service's entry. One outcome per problem: a report that does not decode
/// is one rejection; an entry naming a service this controller does not
/// run is one rejection, and the others still land.
pub(crate) fn deliver_report(inboxes: &Inboxes, message: &Message) -> Vec<Result<(), Rejected>> {
    let mut report: Report = match messages::decode(&message.payload) {
        Ok(report) => report,
        Err(err) => return vec![Err(err.into())],
    };
    let subject_proxy = message.subject.as_str().rsplit('.').next().unwrap_or("");
    if subject_token(&report.proxy) != subject_proxy {
        return vec![Err(Rejected::ProxyMismatch {
            subject: subject_proxy.to_string(),
            payload: report.proxy,
        })];
    }
    let now = crate::reconcile::now();
    if inboxes.proxies().heard(&report, now) {
        // A proxy joined: every service's status counts it at once (rare,
        // so touching every inbox here is fine).
        for inbox in inboxes.iter() {
            inbox.delivered();
        }
    }
    let entries = std::mem::take(&mut report.services);
    let mut outcomes = Vec::new();
    for entry in entries {
        let Some(inbox) = inboxes.get(&entry.service).map(|i| Arc::clone(&i)) else {
            outcomes.push(Err(Rejected::UnknownService(entry.service)));
            continue;
        };
        inbox
            .observations()
            .record_load(entry.into_load(&report), now);
        inbox.delivered();
    }
    outcomes
}

/// Hands a `wake` message to its service's inbox.
pub(crate) fn deliver_wake(
    subjects: &Subjects,
    inboxes: &Inboxes,
    message: &Message,
) -> Result<(), Rejected> {
    dispatch::<Wake>(subjects, inboxes, message, |inbox, wake| {
        inbox
            .observations()
            .record_wake(&wake, crate::reconcile::now());
        tracing::info!(service = %wake.service, proxy = %wake.proxy, held = wake.held, "wake");
    })
}

/// Hands a `load` message to its service's inbox.
pub(crate) fn deliver_load(
    subjects: &Subjects,
    inboxes: &Inboxes,
    message: &Message,
) -> Result<(), Rejected> {
    dispatch::<Load>(subjects, inboxes, message, |inbox, load| {
        inbox
            .observations()
            .record_load(load, crate::reconcile::now());
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejected {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("no service `{0}` in this controller's config")]
    UnknownService(String),
    #[error("subject names proxy `{subject}` but the payload says `{payload}`")]
    ProxyMismatch { subject: String, payload: String },
}

trait Addressed {
    fn service(&self) -> &str;
}

impl Addressed for Wake {
    fn service(&self) -> &str {
        &self.service
    }
}

impl Addressed for Load {
    fn service(&self) -> &str {
        &self.service
    }
}

fn dispatch<T>(
    subjects: &Subjects,
    inboxes: &Inboxes,
    message: &Message,
    deliver: impl FnOnce(&Inbox, T),
) -> Result<(), Rejected>
where
    T: serde::de::DeserializeOwned + messages::Versioned + Addressed,
{
    let decoded: T = messages::decode(&message.payload)?;
    let subject_service = subjects.service_of(message.subject.as_str()).unwrap_or("");
    if subject_service != decoded.service() {
        return Err(DecodeError::ServiceMismatch {
            subject: subject_service.to_string(),
            payload: decoded.service().to_string(),
        }
        .into());
    }
    let inbox = inboxes
        .get(decoded.service())
        .ok_or_else(|| Rejected::UnknownService(decoded.service().to_string()))?;
    deliver(&inbox, decoded);
    inbox.delivered();
    Ok(())
}

fn count_rejection(outcome: Result<(), Rejected>, message: &Message, metrics: &ControllerMetrics) {
    if let Err(err) = outcome {
        metrics.bus_rejected.inc();
        tracing::warn!(subject = %message.subject, error = %err, "dropped message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_nats::messages::{ServiceLoad, VERSION};

    fn message(subject: &str, payload: Vec<u8>) -> Message {
        Message {
            subject: subject.into(),
            reply: None,
            length: payload.len(),
            payload: payload.into(),
            headers: None,
            status: None,
            description: None,
        }
    }

    fn entry(service: &str, in_flight: u64) -> ServiceLoad {
        ServiceLoad {
            service: service.into(),
            interval_ms: 1000,
            arrivals: 1,
            completed: 0,
            in_flight,
            held: 0,
            per_endpoint: Default::default(),
            endpoints_generation: 1,
        }
    }

    fn report(proxy: &str, seq: u64, services: Vec<ServiceLoad>) -> Vec<u8> {
        messages::encode(&Report {
            v: VERSION,
            proxy: proxy.into(),
            seq,
            interval_ms: 1000,
            endpoints_revision: 3,
            part: 0,
            parts: 1,
            services,
            at_ms: 0,
        })
        .to_vec()
    }

    /// A report lands in the inboxes it lists and, once its proxy is known,
    /// nowhere else; it records the heartbeat, and an unknown service or a forged proxy name is counted
    /// without losing the rest.
    #[test]
    fn a_report_reaches_only_the_services_it_lists() {
        let inboxes = Inboxes::with(Duration::from_secs(1), ["a", "b"]);
        let b_changes = inboxes.open("b").watch();
        let subject = "rouse.report.web_1";
        let outcomes = deliver_report(
            &inboxes,
            &message(
                subject,
                report("web.1", 10, vec![entry("a", 2), entry("zz", 1)]),
            ),
        );
        assert_eq!(outcomes.len(), 1, "one unknown service");
        assert!(matches!(&outcomes[0], Err(Rejected::UnknownService(s)) if s == "zz"));
        let now = crate::reconcile::now();
        assert_eq!(inboxes.open("a").observations().totals(now).in_flight, 2);
        assert!(
            b_changes.has_changed().expect("open"),
            "a new proxy wakes every service (status counts it)"
        );
        let totals = inboxes.open("b").observations().totals(now);
        assert_eq!(
            (totals.in_flight, totals.proxies),
            (0, 1),
            "b sees the live proxy"
        );
        let seen = inboxes.proxies().get("web.1").expect("heartbeat recorded");
        assert_eq!((seen.complete_seq, seen.endpoints_revision), (10, 3));

        // A known proxy's next report touches only what it lists.
        let mut b_changes = inboxes.open("b").watch();
        b_changes.mark_unchanged();
        let listed = report("web.1", 11, vec![entry("a", 1)]);
        assert!(deliver_report(&inboxes, &message(subject, listed)).is_empty());
        assert!(!b_changes.has_changed().expect("open"), "b was not touched");

        // The next report leaves `a` out: idle there.
        assert!(
            deliver_report(&inboxes, &message(subject, report("web.1", 12, vec![]))).is_empty()
        );
        assert_eq!(inboxes.open("a").observations().totals(now).in_flight, 0);

        let forged = deliver_report(&inboxes, &message(subject, report("other", 13, vec![])));
        assert!(matches!(&forged[..], [Err(Rejected::ProxyMismatch { .. })]));
        let garbage = deliver_report(&inboxes, &message(subject, b"{not json".to_vec()));
        assert!(matches!(&garbage[..], [Err(Rejected::Decode(_))]));
        assert_eq!(inboxes.proxies().get("other"), None);
    }

    /// A proxy that goes silent wakes every service once it drops out of
    /// the liveness window, so that their status stops counting it without
    /// waiting for an idle loop's resync.
    #[tokio::test(start_paused = true)]
    async fn a_proxy_that_leaves_wakes_every_service_once() {
        let inboxes = Inboxes::with(Duration::from_secs(1), ["a", "b"]);
        let subject = "rouse.report.web_1";
        assert!(deliver_report(&inboxes, &message(subject, report("web.1", 1, vec![]))).is_empty());
        let mut b_changes = inboxes.open("b").watch();
        b_changes.mark_unchanged();
        let proxies = |inboxes: &Inboxes| {
            let now = crate::reconcile::now();
            inboxes.open("b").observations().totals(now).proxies
        };
        assert_eq!(proxies(&inboxes), 1);

        // Within the liveness window (3 intervals): nothing to do.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(wake_on_departures(&inboxes, 0), 0);
        assert!(!b_changes.has_changed().expect("open"), "not yet departed");

        tokio::time::advance(Duration::from_secs(2)).await;
        let departures = wake_on_departures(&inboxes, 0);
        assert_eq!(departures, 1);
        assert!(b_changes.has_changed().expect("open"), "b was woken");
        assert_eq!(proxies(&inboxes), 0);

        // Noticed once: the next sweep touches nothing.
        b_changes.mark_unchanged();
        assert_eq!(wake_on_departures(&inboxes, departures), departures);
        assert!(!b_changes.has_changed().expect("open"));
    }
}
