//! Receives what the proxies publish (`wake`, `load`) and hands each message
//! to its service's inbox, waking that service's reconcile loop.
//!
//! Anything that does not decode, speaks another version, or names a service
//! this controller does not run is counted in `rouse_bus_rejected_total` and
//! dropped; it never stops the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::{Client, Message};
use futures::StreamExt;
use rouse_nats::messages::{self, DecodeError, Load, Wake};
use rouse_nats::Subjects;
use tokio::sync::{watch, Notify};

use crate::metrics::ControllerMetrics;
use crate::observations::Observations;

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
    pub fn new(report_interval: Duration) -> Self {
        Self {
            observations: Mutex::new(Observations::new(report_interval)),
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

/// Every service's inbox, by name; services come and go with the catalog.
pub type Inboxes = dashmap::DashMap<String, Arc<Inbox>>;

/// Subscribes and dispatches until both subscriptions end.
pub async fn run(
    client: Client,
    subjects: Subjects,
    inboxes: Arc<Inboxes>,
    metrics: Arc<ControllerMetrics>,
) -> Result<(), async_nats::SubscribeError> {
    let mut wakes = client.subscribe(subjects.all_wakes()).await?;
    let mut loads = client.subscribe(subjects.all_loads()).await?;
    loop {
        tokio::select! {
            Some(message) = wakes.next() => {
                count_rejection(deliver_wake(&subjects, &inboxes, &message), &message, &metrics);
            }
            Some(message) = loads.next() => {
                count_rejection(deliver_load(&subjects, &inboxes, &message), &message, &metrics);
            }
            else => return Ok(()),
        }
    }
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
