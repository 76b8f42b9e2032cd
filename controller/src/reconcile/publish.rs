//! Telling the proxies: the endpoint set in KV and the `scaled` events.
//!
//! [`Publisher`] is the reconcile loop's only way out to NATS, so the loop
//! can be run against an in-memory one in tests. [`Published`] keeps the
//! bookkeeping that makes drains safe: generations only grow (a restarted
//! controller continues from the stored value), and a draining replica
//! counts as seen by the proxies only once its generation was written.

use std::sync::Mutex;
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use async_nats::Client;
use async_trait::async_trait;
use rouse_nats::messages::{self, EndpointSet, Scaled};
use rouse_nats::{bus, Subjects};

use super::error::PublishError;
use super::replicas::Replicas;

/// Where a service loop reads and writes what the proxies see.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// The endpoint set stored for `service`; `Ok(None)` when there is none
    /// (or what is stored does not decode: it is then overwritten).
    async fn read(&self, service: &str) -> Result<Option<EndpointSet>, PublishError>;

    /// Replaces the endpoint set of `service`; returns the bucket revision
    /// it was stored as (proxies report how far they have applied the bucket).
    async fn write(&self, service: &str, set: &EndpointSet) -> Result<u64, PublishError>;

    /// Announces a scale decision; best effort, never waited for.
    fn scaled(&self, event: Scaled);

    /// Whether reports can reach this controller. Cut off, "no reports"
    /// means nothing, so the loop does not scale down.
    fn connected(&self) -> bool;
}

/// The real publisher: KV bucket `rouse-endpoints` and `<prefix>.scaled.*`.
pub struct NatsPublisher {
    client: Client,
    subjects: Subjects,
    /// Opened on first use and dropped after a failed write, so a bucket
    /// that vanished with a NATS restart is looked up again.
    store: Mutex<Option<kv::Store>>,
}

impl NatsPublisher {
    pub fn new(client: Client, subjects: Subjects) -> Self {
        Self {
            client,
            subjects,
            store: Mutex::new(None),
        }
    }

    async fn bucket(&self) -> Result<kv::Store, PublishError> {
        if let Some(store) = self.lock().clone() {
            return Ok(store);
        }
        let js = jetstream::new(self.client.clone());
        let store = bus::endpoints_bucket(&js)
            .await
            .map_err(|err| PublishError {
                what: "opening the endpoints bucket",
                message: err.to_string(),
            })?;
        *self.lock() = Some(store.clone());
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<kv::Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    async fn read(&self, service: &str) -> Result<Option<EndpointSet>, PublishError> {
        let store = self.bucket().await?;
        let entry = store.entry(service).await.map_err(|err| PublishError {
            what: "reading the endpoint set",
            message: err.to_string(),
        })?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| messages::decode::<EndpointSet>(&e.value).ok()))
    }

    async fn write(&self, service: &str, set: &EndpointSet) -> Result<u64, PublishError> {
        let store = self.bucket().await?;
        match store.put(service, messages::encode(set)).await {
            Ok(revision) => Ok(revision),
            Err(err) => {
                *self.lock() = None;
                Err(PublishError {
                    what: "writing the endpoint set",
                    message: err.to_string(),
                })
            }
        }
    }

    fn scaled(&self, event: Scaled) {
        let client = self.client.clone();
        let subject = self.subjects.scaled(&event.service);
        tokio::spawn(async move {
            if let Err(err) = client.publish(subject, messages::encode(&event)).await {
                tracing::debug!(error = %err, "scaled event not published");
            }
        });
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// What has been written, so drains wait for the proxies to see it.
#[derive(Debug)]
pub struct Published {
    /// The stored value has been read, so generations continue it.
    read: bool,
    /// The generation last written, its bucket revision, and when.
    pub generation: u64,
    pub revision: u64,
    pub at: Instant,
}

impl Published {
    pub fn new(now: Instant) -> Self {
        Self {
            read: false,
            generation: 0,
            revision: 0,
            at: now,
        }
    }

    /// The stored set, continuing its generation in `replicas`.
    pub async fn read(
        &mut self,
        service: &str,
        replicas: &mut Replicas,
        publisher: &dyn Publisher,
    ) -> Result<Option<EndpointSet>, PublishError> {
        let set = publisher.read(service).await?;
        self.read = true;
        if let Some(set) = &set {
            replicas.continue_from(set.generation);
        }
        Ok(set)
    }

    /// Writes the set if it changed since the last write (or that failed).
    pub async fn sync(
        &mut self,
        service: &str,
        replicas: &mut Replicas,
        publisher: &dyn Publisher,
        now: Instant,
    ) -> Result<(), PublishError> {
        if !replicas.dirty() {
            return Ok(());
        }
        if !self.read {
            // A drain compares generations, so never write one the proxies
            // have already seen: continue from the stored value.
            self.read(service, replicas, publisher).await?;
            replicas.rebase(1);
        }
        let set = replicas.endpoint_set();
        self.revision = publisher.write(service, &set).await?;
        replicas.written();
        self.generation = set.generation;
        self.at = now;
        tracing::debug!(
            service,
            generation = set.generation,
            endpoints = set.endpoints.len(),
            "endpoint set published"
        );
        Ok(())
    }
}
