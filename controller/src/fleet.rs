//! The controller's services while it runs: one reconcile loop per service
//! in force, started, replaced and retired as the config file (SIGHUP) and
//! the catalog bucket change.
//!
//! The services in force are the merge of the file and the bucket, by the
//! rules every proxy applies too ([`rouse_nats::catalog::merge`]). Then:
//! - a new service gets an inbox and a loop (its backend built now);
//! - a changed definition ends the old loop without touching its replicas
//!   ([`Retire::Replace`]) and starts a new one, which adopts them the way a
//!   restarted controller does; the inbox (the proxies' reports) carries over;
//! - a removed service's loop drains its replicas and then stops them
//!   ([`Retire::Remove`]): proxies have already dropped its routes, and
//!   finish what they have in flight; a service defined again while its
//!   replicas drain gets them back (the draining loop hands them over as a
//!   changed definition would). The drain is recorded in
//!   [`crate::removals`] while it lasts, and once the catalog is read, a
//!   new leader finishes the ones a previous leader left.
//!
//! The fleet also seeds the bucket with the file's services (`source:
//! file`), and removes seeded entries the file no longer has, so proxies
//! without those services in their own file learn them. Pins (`rouse-pins`)
//! reach each service's inbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use dashmap::DashMap;
use futures::{StreamExt, TryStreamExt};
use rouse_nats::bus::{self, Bus};
use rouse_nats::catalog::{self, CatalogError, Entry, Rejection, ServiceRecord, Source};
use rouse_nats::config::ServiceConfig;
use rouse_nats::Config;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::intake::{Inbox, Inboxes};
use crate::reconcile::{Retire, ServiceLoop, Wiring};
use crate::removals::Removals;

/// What changes the services in force.
#[derive(Debug)]
pub enum Command {
    /// The file's services, read anew (SIGHUP).
    File(Vec<ServiceConfig>),
    /// Every bucket entry, read afresh.
    Replace(BTreeMap<String, Entry>),
    /// One bucket key changed (`None`: deleted).
    Change(String, Option<Box<Entry>>),
}

/// Builds what a loop needs that the fleet does not own: its backend and
/// its wiring. `run` provides it (backends need the controller's clients).
#[async_trait::async_trait]
pub trait Builder: Send {
    async fn backend(
        &mut self,
        spec: &ServiceConfig,
        inbox: &Arc<Inbox>,
    ) -> anyhow::Result<Arc<dyn crate::backend::Backend>>;
    fn wiring(&self, spec: &ServiceConfig) -> Wiring;
}

/// What the fleet's task takes up next.
enum Next {
    Command(Command),
    /// A removal's loop ended.
    Retired(String),
}

struct Running {
    spec: ServiceConfig,
    retire: watch::Sender<Retire>,
    task: JoinHandle<()>,
}

/// A removed service's loop while it drains (see [`Fleet::remove`]).
struct Removal {
    retire: watch::Sender<Retire>,
    /// Ends with the loop, then names the service on `retired_tx`.
    task: JoinHandle<()>,
    /// Its inbox, retired with it unless the service is back by then.
    inbox: Option<Arc<Inbox>>,
}

/// The loops and what they were started from.
pub struct Fleet {
    file: Vec<ServiceConfig>,
    entries: BTreeMap<String, Entry>,
    running: HashMap<String, Running>,
    /// Loops of removed services still draining (see [`Fleet::remove`]).
    removing: HashMap<String, Removal>,
    /// Names of removals whose loop has ended, so that their inboxes are
    /// retired on the fleet's own task, never racing a start.
    retired_tx: mpsc::UnboundedSender<String>,
    retired_rx: Option<mpsc::UnboundedReceiver<String>>,
    inboxes: Arc<Inboxes>,
    pins: Arc<DashMap<String, u32>>,
    builder: Box<dyn Builder>,
    rejected: Vec<Rejection>,
    /// The file's services at start are running: later starts are news.
    started: bool,
    removals: Removals,
    /// The catalog has been read (a [`Command::Replace`]) and the removals
    /// a previous leader left looked at: only then is a service known to
    /// be gone rather than not read yet.
    catalog_read: bool,
    resumed: bool,
}

impl Fleet {
    pub fn new(
        config: &Config,
        inboxes: Arc<Inboxes>,
        pins: Arc<DashMap<String, u32>>,
        builder: Box<dyn Builder>,
        removals: Removals,
    ) -> Self {
        let (retired_tx, retired_rx) = mpsc::unbounded_channel();
        Self {
            file: config.services.clone(),
            entries: BTreeMap::new(),
            running: HashMap::new(),
            removing: HashMap::new(),
            retired_tx,
            retired_rx: Some(retired_rx),
            inboxes,
            pins,
            builder,
            rejected: Vec::new(),
            started: false,
            removals,
            catalog_read: false,
            resumed: false,
        }
    }

    /// Starts the file's services, then follows `commands` until
    /// `shutdown` turns true (the loops see it too and stop their replicas);
    /// then waits for every loop.
    pub async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.apply().await;
        self.started = true;
        let Some(mut retired) = self.retired_rx.take() else {
            return;
        };
        loop {
            // The arms only pick: the shutdown guard must not live across
            // the awaits that follow.
            let next = tokio::select! {
                command = commands.recv() => command.map(Next::Command),
                Some(name) = retired.recv() => Some(Next::Retired(name)),
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let command = match next {
                Some(Next::Command(command)) => command,
                Some(Next::Retired(name)) => {
                    self.retired(&name).await;
                    continue;
                }
                None => break,
            };
            // A burst (thousands of services seeded at once) is merged once.
            let mut changed = self.take(command);
            while let Ok(command) = commands.try_recv() {
                changed |= self.take(command);
            }
            if changed {
                self.apply().await;
            }
            if self.catalog_read && !self.resumed {
                self.resumed = true;
                self.resume_removals().await;
            }
        }
        let loops = self.running.into_values().map(|running| running.task);
        let names: Vec<String> = self.removing.keys().cloned().collect();
        let removals = self.removing.into_values().map(|removal| removal.task);
        futures::future::join_all(loops.chain(removals)).await;
        // Shutdown stopped what the removals had left: nothing to hand on.
        for name in names {
            self.removals.ended(&name).await;
        }
    }

    /// Takes in one command; returns whether anything changed.
    fn take(&mut self, command: Command) -> bool {
        match command {
            Command::File(file) => self.file = file,
            Command::Replace(entries) => {
                self.entries = entries;
                self.catalog_read = true;
            }
            Command::Change(key, change) => {
                return catalog::apply_change(&mut self.entries, key, change.map(|entry| *entry))
            }
        }
        true
    }

    /// Puts the merge of file and bucket in force.
    async fn apply(&mut self) {
        let merged = catalog::merge(&self.file, &self.entries);
        for rejection in &merged.rejected {
            if !self.rejected.contains(rejection) {
                tracing::warn!(service = %rejection.name, reason = %rejection.reason, "service definition rejected");
            }
        }
        self.rejected = merged.rejected.clone();
        let wanted: HashMap<&str, &ServiceConfig> =
            merged.specs().map(|s| (s.name.as_str(), s)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name).await;
        }
        for spec in merged.specs() {
            match self.running.get(&spec.name) {
                Some(running) if same(&running.spec, spec) => {}
                Some(_) => self.replace(spec).await,
                None => self.start(spec).await,
            }
        }
    }

    async fn start(&mut self, spec: &ServiceConfig) {
        // A removal still draining keeps its inbox in the map: it carries
        // over, as for a changed definition.
        let inbox = self.inboxes.open(&spec.name);
        inbox.set_pin(self.pins.get(&spec.name).map(|pin| *pin));
        let backend = match self.builder.backend(spec, &inbox).await {
            Ok(backend) => backend,
            Err(err) => {
                // A removal under way goes on draining: no loop would adopt
                // what it handed over.
                tracing::error!(service = %spec.name, error = format!("{err:#}"), "cannot build the service's backend; it is not run");
                return;
            }
        };
        if let Some(removal) = self.removing.remove(&spec.name) {
            // It hands its replicas over to the loop started below.
            let _ = removal.retire.send(Retire::Replace);
            let _ = removal.task.await;
            self.removals.ended(&spec.name).await;
        }
        let (retire, retired) = watch::channel(Retire::No);
        let wiring = self.builder.wiring(spec);
        let service_loop =
            ServiceLoop::new(spec.clone(), backend, Arc::clone(&inbox), wiring).retired_by(retired);
        if self.started {
            tracing::info!(service = %spec.name, "service added");
        }
        self.running.insert(
            spec.name.clone(),
            Running {
                spec: spec.clone(),
                retire,
                task: tokio::spawn(service_loop.run()),
            },
        );
    }

    async fn replace(&mut self, spec: &ServiceConfig) {
        let Some(old) = self.running.remove(&spec.name) else {
            return;
        };
        tracing::info!(service = %spec.name, "service definition changed");
        let _ = old.retire.send(Retire::Replace);
        // The old loop must be done before the new one adopts its replicas.
        let _ = old.task.await;
        self.start(spec).await;
    }

    /// Tells a removed service's loop to drain and stop its replicas. Its
    /// inbox stays until the loop ends (the drain needs the proxies'
    /// reports), unless the service is defined again first.
    async fn remove(&mut self, name: &str) {
        let Some(Running { spec, retire, task }) = self.running.remove(name) else {
            return;
        };
        tracing::info!(service = %name, "service removed");
        // Recorded before the drain starts, for a leader taking over.
        self.removals.begun(&spec).await;
        let _ = retire.send(Retire::Remove);
        self.track_removal(name, retire, task);
    }

    /// Finishes the removals a previous leader began whose services are
    /// still gone; forgets those defined again (their loop adopted the
    /// replicas).
    async fn resume_removals(&mut self) {
        for spec in self.removals.pending().await {
            if self.running.contains_key(&spec.name) {
                self.removals.ended(&spec.name).await;
            } else if !self.removing.contains_key(&spec.name) {
                self.resume_removal(spec).await;
            }
        }
    }

    async fn resume_removal(&mut self, spec: ServiceConfig) {
        let inbox = self.inboxes.open(&spec.name);
        let backend = match self.builder.backend(&spec, &inbox).await {
            Ok(backend) => backend,
            Err(err) => {
                // The record stays: a later leader may build it.
                tracing::error!(service = %spec.name, error = format!("{err:#}"), "cannot build the backend of a removed service; the replicas its removal left are not stopped");
                self.inboxes
                    .remove_if(&spec.name, |_, current| Arc::ptr_eq(current, &inbox));
                return;
            }
        };
        tracing::info!(service = %spec.name, "finishing the removal a previous leader began");
        // A loop told to remove from the start drains whatever it adopts.
        let (retire, retired) = watch::channel(Retire::Remove);
        let wiring = self.builder.wiring(&spec);
        let service_loop =
            ServiceLoop::new(spec.clone(), backend, inbox, wiring).retired_by(retired);
        let task = tokio::spawn(service_loop.run());
        self.track_removal(&spec.name, retire, task);
    }

    /// Keeps a draining loop among the removals until it ends.
    fn track_removal(&mut self, name: &str, retire: watch::Sender<Retire>, task: JoinHandle<()>) {
        let done = self.retired_tx.clone();
        let owned_name = name.to_string();
        let task = tokio::spawn(async move {
            let _ = task.await;
            let _ = done.send(owned_name);
        });
        let removal = Removal {
            retire,
            task,
            inbox: self.inboxes.get(name).map(|r| Arc::clone(r.value())),
        };
        self.removing.insert(name.to_string(), removal);
    }

    /// A removal's loop has ended: its inbox goes, unless the service was
    /// started again meanwhile (then it is no longer a removal).
    async fn retired(&mut self, name: &str) {
        let Some(removal) = self.removing.remove(name) else {
            return;
        };
        if let Some(inbox) = removal.inbox {
            self.inboxes
                .remove_if(name, |_, current| Arc::ptr_eq(current, &inbox));
        }
        self.removals.ended(name).await;
    }
}

/// Whether two definitions are the same (compared as the file would write them).
fn same(a: &ServiceConfig, b: &ServiceConfig) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Feeds the bucket's changes to the fleet.
pub struct FleetSink(pub mpsc::UnboundedSender<Command>);

impl catalog::Sink for FleetSink {
    fn replace(&self, entries: BTreeMap<String, Entry>) {
        let _ = self.0.send(Command::Replace(entries));
    }

    fn change(&self, key: &str, entry: Option<Entry>) {
        let _ = self
            .0
            .send(Command::Change(key.to_string(), entry.map(Box::new)));
    }

    fn malformed(&self, _key: &str, _error: &CatalogError) {}
}

/// Puts the seeding keeps in flight.
const SEED_IN_FLIGHT: usize = 64;

/// Writes `file`'s services to the bucket as `source: file` where they
/// differ, and deletes seeded entries the file no longer has. Entries
/// written by `rouse deploy` are left alone.
pub async fn seed(store: &kv::Store, file: &[ServiceConfig], by: &str) -> anyhow::Result<usize> {
    // Every record that decodes, read once (one consumer for the lot).
    let (current, _watch) = rouse_nats::snapshot::read_then_watch(store).await?;
    let records: HashMap<String, ServiceRecord> = current
        .into_iter()
        .filter_map(|(key, entry)| {
            let record = catalog::decode(&key, &entry.value).ok()?;
            Some((key, record))
        })
        .collect();
    let mut writes = Vec::new();
    for spec in file {
        match records.get(&spec.name) {
            Some(record) if record.source == Source::File && same(&record.spec, spec) => continue,
            Some(record) if record.source == Source::Api => {
                tracing::warn!(service = %spec.name, "the config file and `rouse deploy` both define this service; the file's wins here, and the bucket keeps the deployed one");
                continue;
            }
            _ => {}
        }
        let record = ServiceRecord::new(Source::File, spec.clone(), by);
        writes.push((spec.name.clone(), catalog::encode(&record)));
    }
    // Many puts in flight at once: thousands of services seed in a moment.
    let written = writes.len();
    let puts: Vec<_> = writes
        .into_iter()
        .map(|(key, value)| {
            let store = store.clone();
            async move { store.put(key, value).await }
        })
        .collect();
    futures::stream::iter(puts)
        .buffer_unordered(SEED_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    let in_file: std::collections::HashSet<&str> = file.iter().map(|s| s.name.as_str()).collect();
    for (key, record) in &records {
        if record.source == Source::File && !in_file.contains(key.as_str()) {
            store.delete(key.as_str()).await?;
            tracing::info!(service = %key, "removed from the catalog: no longer in the config file");
        }
    }
    Ok(written)
}

/// Seeds the bucket now and after every reconnect and every `reseed`
/// (a SIGHUP's new file), retrying while NATS is away.
pub async fn seed_forever(bus: Bus, mut file: watch::Receiver<Vec<ServiceConfig>>, by: String) {
    let mut connects = bus.connects.clone();
    let mut delays = rouse_nats::backoff::RESUBSCRIBE.delays();
    loop {
        if *connects.borrow_and_update() == 0 && connects.changed().await.is_err() {
            return;
        }
        let services = file.borrow_and_update().clone();
        let js = jetstream::new(bus.client.clone());
        let outcome = match bus::services_bucket(&js, bus.replicas).await {
            Ok(store) => seed(&store, &services, &by).await,
            Err(err) => Err(err.into()),
        };
        match outcome {
            Ok(written) => {
                if written > 0 {
                    tracing::info!(
                        written,
                        "seeded the catalog with the config file's services"
                    );
                }
                delays.reset();
                tokio::select! {
                    _ = connects.changed() => {}
                    changed = file.changed() => if changed.is_err() { return },
                }
            }
            Err(err) => {
                let delay = delays.next().unwrap_or_default();
                tracing::warn!(
                    error = format!("{err:#}"),
                    ?delay,
                    "cannot seed the catalog yet"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Follows `rouse-pins` into `pins` and the services' inboxes.
pub async fn follow_pins(bus: Bus, pins: Arc<DashMap<String, u32>>, inboxes: Arc<Inboxes>) {
    bus::each_connection(&bus, "pins watch", |mut connects| {
        let (bus, pins, inboxes) = (bus.clone(), Arc::clone(&pins), Arc::clone(&inboxes));
        async move {
            pin_session(&bus, &pins, &inboxes, &mut connects)
                .await
                .map_err(|err| format!("{err:#}"))
        }
    })
    .await;
}

async fn pin_session(
    bus: &Bus,
    pins: &DashMap<String, u32>,
    inboxes: &Inboxes,
    connects: &mut watch::Receiver<u64>,
) -> anyhow::Result<()> {
    let js = bus::watch_context(bus);
    let store = bus::pins_bucket(&js, bus.replicas).await?;
    // With history: the current value of every key first, then changes.
    let mut watch = store.watch_with_history(">").await?;
    loop {
        tokio::select! {
            entry = watch.next() => match entry {
                Some(entry) => {
                    let entry = entry?;
                    let pin = match entry.operation {
                        kv::Operation::Put => match catalog::decode_pin(&entry.value) {
                            Ok(pin) => Some(pin.replicas),
                            Err(err) => {
                                tracing::warn!(key = %entry.key, error = %err, "dropped a malformed pin");
                                continue;
                            }
                        },
                        kv::Operation::Delete | kv::Operation::Purge => None,
                    };
                    match pin {
                        Some(replicas) => pins.insert(entry.key.clone(), replicas),
                        None => pins.remove(&entry.key).map(|(_, n)| n),
                    };
                    if let Some(inbox) = inboxes.get(&entry.key) {
                        tracing::info!(service = %entry.key, pin = ?pin, "pin changed");
                        inbox.set_pin(pin);
                    }
                }
                None => return Ok(()),
            },
            _ = connects.changed() => return Ok(()),
        }
    }
}
