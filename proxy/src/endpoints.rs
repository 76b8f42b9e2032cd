//! Keeps every service's endpoint set in step with the KV bucket (through
//! the [`Registry`], which also keeps the sets of services not defined yet).
//!
//! A session reads the current value of each service and then follows a
//! watch of the whole bucket. Both paths can deliver the same revision, so
//! updates are applied in KV revision order per key. A session ends, and a new
//! one starts from fresh reads, whenever the watch fails or NATS reconnects:
//! consumers do not reliably survive a server restart, and a fresh read is
//! cheap. Until the first session has read every key the proxy is not ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
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
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error("reading the endpoints bucket: {0}")]
    Read(#[from] kv::EntryError),
    #[error("watching the endpoints bucket: {0}")]
    Watch(#[from] kv::WatchError),
    #[error("watch stream: {0}")]
    Stream(#[from] kv::WatcherError),
}

impl EndpointWatcher {
    pub fn new(bus: Bus, registry: Arc<Registry>, metrics: Arc<ProxyMetrics>) -> Self {
        Self {
            bus,
            registry,
            metrics,
            synced: Arc::new(AtomicBool::new(false)),
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
        let js = jetstream::new(self.bus.client.clone());
        let store = bus::endpoints_bucket(&js).await?;
        let mut revisions: HashMap<String, u64> = HashMap::new();
        let mut watch = store.watch_with_history(">").await?;
        for service in self.registry.services().iter() {
            if let Some(entry) = store.entry(service.name()).await? {
                self.apply(&entry, &mut revisions);
            }
        }
        self.synced.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(entry) => self.apply(&entry?, &mut revisions),
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
