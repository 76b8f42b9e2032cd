//! Telling the proxies: the endpoint set in KV and the `scaled` events.
//!
//! [`Publisher`] is the reconcile loop's only way out to NATS, so the loop
//! can be run against an in-memory one in tests. [`Published`] keeps the
//! bookkeeping that makes drains safe: generations only grow (a restarted
//! controller continues from the stored value), and a draining replica
//! counts as seen by the proxies only once its generation was written.
//!
//! A `scaled` event is published through JetStream and retried until the
//! events stream acknowledges it: on a NATS cluster a plain publish during a
//! stream leader election can be lost without a word, and a scale decision
//! must not vanish because one node went down. Events leave in decision
//! order, one at a time, from one queue; each carries a message id, so a
//! retry after a lost acknowledgement is stored once. (A core subscriber
//! may then see it twice.)

use std::sync::Mutex;
use std::time::Instant;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, kv};
use async_nats::Client;
use async_trait::async_trait;
use rouse_nats::messages::{self, EndpointSet, Scaled};
use rouse_nats::{bus, Subjects};
use tokio::sync::mpsc;

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
    /// `nats.replicas`, should the bucket have to be created.
    replicas: usize,
    /// Opened on first use and dropped after a failed write, so a bucket
    /// that vanished with a NATS restart is looked up again.
    store: Mutex<Option<kv::Store>>,
    /// To the task that stores `scaled` events (see the module doc).
    events: mpsc::Sender<Scaled>,
}

/// `scaled` events waiting to be stored; more are dropped (with a warning)
/// rather than ever holding up a service loop.
const EVENT_QUEUE: usize = 1024;

/// Tries per `scaled` event: with the RESUBSCRIBE delays and JetStream's
/// 5 s acknowledgement timeout, about a minute and a half, well past a
/// stream leader election.
const EVENT_ATTEMPTS: usize = 12;

impl NatsPublisher {
    /// Needs a tokio runtime: it starts the task that stores events.
    pub fn new(client: Client, subjects: Subjects, replicas: usize) -> Self {
        let (events, queue) = mpsc::channel(EVENT_QUEUE);
        tokio::spawn(store_events(
            jetstream::new(client.clone()),
            subjects,
            replicas,
            queue,
        ));
        Self {
            client,
            replicas,
            store: Mutex::new(None),
            events,
        }
    }

    async fn bucket(&self) -> Result<kv::Store, PublishError> {
        if let Some(store) = self.lock().clone() {
            return Ok(store);
        }
        let js = jetstream::new(self.client.clone());
        let store = bus::endpoints_bucket(&js, self.replicas)
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
        if let Err(err) = self.events.try_send(event) {
            tracing::warn!(error = %err, "scaled event dropped: the event queue is full");
        }
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Stores the queued events one after the other, in order.
async fn store_events(
    js: jetstream::Context,
    subjects: Subjects,
    replicas: usize,
    mut queue: mpsc::Receiver<Scaled>,
) {
    while let Some(event) = queue.recv().await {
        store_event(&js, &subjects, replicas, &event).await;
    }
}

/// Publishes `event` until the events stream acknowledges it, at most
/// [`EVENT_ATTEMPTS`] times.
async fn store_event(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
    event: &Scaled,
) {
    let subject = subjects.scaled(&event.service);
    let payload = messages::encode(event);
    // Unique per decision: the stream drops a retry it already holds.
    let id = format!(
        "{}:{}:{}:{}",
        event.service, event.from, event.to, event.at_ms
    );
    let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
    for attempt in 1..=EVENT_ATTEMPTS {
        let message = PublishMessage::build()
            .payload(payload.clone())
            .message_id(id.as_str());
        let outcome = match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.map(drop),
            Err(err) => Err(err),
        };
        let err = match outcome {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(service = %event.service, attempt, "scaled event stored after retrying");
                }
                return;
            }
            Err(err) => err,
        };
        if err.kind() == PublishErrorKind::MaxPayloadExceeded {
            tracing::warn!(service = %event.service, error = %err, "scaled event too large to store");
            return;
        }
        if err.kind() == PublishErrorKind::StreamNotFound {
            // NATS was away when the controller started, or lost its
            // store: the stream is set up here, as at start.
            if let Err(err) = bus::events_stream(js, subjects.prefix(), replicas).await {
                tracing::debug!(error = %err, "cannot set up the events stream yet");
            }
        }
        let delay = delays.next().unwrap_or_default();
        tracing::debug!(
            service = %event.service,
            attempt,
            error = %err,
            ?delay,
            "scaled event not acknowledged; retrying"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::warn!(
        service = %event.service,
        from = event.from,
        to = event.to,
        "scaled event not stored in the events stream after {EVENT_ATTEMPTS} attempts"
    );
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
