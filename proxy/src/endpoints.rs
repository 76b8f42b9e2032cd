//! Keeps every service's endpoint set in step with the KV bucket (through
//! the [`Registry`], which also keeps the sets of services not defined yet).
//!
//! A session follows a watch of the whole bucket that starts with the
//! current value of every key (one consumer, however many services: no read
//! per service), then every change, in revision order. A session ends, and a
//! new one starts from the current values, whenever the watch fails or NATS
//! reconnects: consumers do not reliably survive a server restart. Until the
//! first session has caught up with the bucket the proxy is not ready.
//!
//! The highest revision the watch has applied is kept in
//! [`EndpointWatcher::revision`]: the reports tell the controller, so a drain
//! knows this proxy routes by the set that marked a replica draining even
//! for a service it has no traffic for (and so does not report).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::kv;
use futures::StreamExt;
use rouse_nats::bus::{self, Bus};
use rouse_nats::messages::{self, EndpointSet, VERSION};

use crate::catalog::Registry;
use crate::metrics::ProxyMetrics;

/// Follows the endpoints bucket for this proxy's services.
pub struct EndpointWatcher {
    bus: Bus,
    registry: Arc<Registry>,
    metrics: Arc<ProxyMetrics>,
    /// Set once every service's current endpoint set has been read.
    pub synced: Arc<AtomicBool>,
    /// The highest bucket revision the watch has applied (in order, so every
    /// set written up to it is in force).
    pub revision: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("watching the endpoints bucket: {0}")]
    Watch(#[from] kv::WatchError),
    #[error("watch stream: {0}")]
    Stream(#[from] kv::WatcherError),
    #[error("the watch replayed nothing within {0:?}; watching again")]
    NotCaughtUp(std::time::Duration),
}

/// How long a new watch may take to replay the bucket before the session
/// starts over. The replay normally takes milliseconds; a watch whose
/// consumer was created as the bucket was first written has been seen (in
/// CI, once) to replay nothing at all, leaving the proxy unready for good.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(10);

impl EndpointWatcher {
    pub fn new(bus: Bus, registry: Arc<Registry>, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            bus,
            registry,
            metrics,
            synced: Arc::new(AtomicBool::new(false)),
            revision: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs sessions for as long as the process lives.
    pub async fn run(self) {
        let mut connects = self.bus.connects.clone();
        let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
        loop {
            if *connects.borrow_and_update() == 0 && connects.changed().await.is_err() {
                return;
            }
            match self.session(&mut connects).await {
                Ok(()) => {
                    tracing::info!("endpoint watch restarting after NATS reconnect");
                    delays.reset();
                }
                Err(err) => {
                    let delay = delays.next().unwrap_or_default();
                    tracing::warn!(error = %err, ?delay, "endpoint watch failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn session(
        &self,
        connects: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<(), SessionError> {
        connects.borrow_and_update();
        let js = bus::watch_context(&self.bus);
        let store = bus::endpoints_bucket(&js, self.bus.replicas).await?;
        let mut revisions: HashMap<String, u64> = HashMap::new();
        let mut watch = store.watch_with_history(">").await?;
        // An empty bucket replays nothing: caught up already.
        let empty = store
            .status()
            .await
            .is_ok_and(|status| status.values() == 0);
        if empty {
            self.synced.store(true, Ordering::SeqCst);
        }
        let catch_up = tokio::time::sleep(CATCH_UP);
        tokio::pin!(catch_up);
        // A replay that is under way, however slow, is left to finish.
        let mut replayed = 0u64;
        loop {
            tokio::select! {
                () = &mut catch_up, if replayed == 0 && !self.synced.load(Ordering::SeqCst) => {
                    return Err(SessionError::NotCaughtUp(CATCH_UP));
                }
                entry = watch.next() => match entry {
                    Some(entry) => {
                        let entry = entry?;
                        replayed += 1;
                        self.apply(&entry, &mut revisions);
                        self.revision.fetch_max(entry.revision, Ordering::SeqCst);
                        if entry.delta == 0 || entry.seen_current {
                            self.synced.store(true, Ordering::SeqCst);
                        }
                    }
                    None => return Ok(()),
                },
                _ = connects.changed() => return Ok(()),
            }
        }
    }

    fn apply(&self, entry: &kv::Entry, revisions: &mut HashMap<String, u64>) {
        let last = revisions.entry(entry.key.clone()).or_insert(0);
        if entry.revision <= *last {
            return;
        }
        *last = entry.revision;
        let set = match entry.operation {
            kv::Operation::Put => match messages::decode::<EndpointSet>(&entry.value) {
                Ok(set) => set,
                Err(err) => {
                    self.metrics.bus_rejected.inc();
                    tracing::warn!(service = %entry.key, error = %err, "dropped malformed endpoint set");
                    return;
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => EndpointSet {
                v: VERSION,
                generation: 0,
                endpoints: Vec::new(),
            },
        };
        let (generation, endpoints) = (set.generation, set.endpoints.len());
        for problem in self.registry.apply_endpoints(&entry.key, set) {
            self.metrics.bus_rejected.inc();
            tracing::warn!(service = %entry.key, error = %problem, "skipped an unusable endpoint");
        }
        tracing::debug!(
            service = %entry.key,
            generation,
            endpoints,
            "endpoint set applied"
        );
    }
}
