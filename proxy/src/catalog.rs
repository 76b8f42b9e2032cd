//! The proxy's services and routes, kept in step with its config file and
//! the catalog bucket (`rouse-services`) while traffic flows.
//!
//! The file's services are there from the start, with or without NATS; the
//! bucket's arrive when it is read and follow its watch. Each change is
//! merged by [`rouse_nats::catalog::merge`] (the same rules as every other
//! proxy and the controller), then applied:
//! - a service keeps its one [`Service`] object for the life of the process:
//!   a changed definition updates its settings in place, so held requests,
//!   in-flight counts and endpoints carry over;
//! - a new route table is built whole and swapped in atomically, so a
//!   request sees either the old table or the new one, and requests to
//!   services the change does not touch never notice it;
//! - a removed service leaves the table at once (new requests get 404, and
//!   so do requests it held); what it has in flight finishes, the reporter
//!   keeps reporting it until nothing is left, and endpoint sets still
//!   reach it, so its replicas drain as they would at zero. Defined again
//!   before then, it is the same object again.
//!
//! Endpoint sets are kept for every key of the endpoints bucket, so a
//! service defined after its replicas were published starts with them.
//! SIGHUP re-reads the file's services (`reload_file`); a file that no
//! longer validates is logged and changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;
use futures::StreamExt;
use rouse_nats::catalog::{self, Entry, Merged, Rejection};
use rouse_nats::config::ServiceConfig;
use rouse_nats::messages::EndpointSet;
use rouse_nats::Config;

use crate::metrics::ProxyMetrics;
use crate::route::Routes;
use crate::service::{ApplyError, Defaults, Service};

/// The services in force and their routes.
pub struct Registry {
    defaults: Defaults,
    metrics: Arc<ProxyMetrics>,
    routes: Arc<ArcSwap<Routes<Service>>>,
    /// In definition order; the reporter and the admin server read it.
    services: ArcSwap<Vec<Arc<Service>>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    file: Vec<ServiceConfig>,
    entries: BTreeMap<String, Entry>,
    by_name: HashMap<String, Arc<Service>>,
    /// Removed services something still holds on to (requests in flight,
    /// the reporter): they keep their endpoint sets, and come back as they
    /// are if defined again.
    retired: HashMap<String, Weak<Service>>,
    /// The latest endpoint set of every key, defined services or not.
    endpoint_sets: HashMap<String, EndpointSet>,
    rejected: Vec<Rejection>,
    /// The first build (the file's services at start) is done: later
    /// additions are news worth a log line.
    built: bool,
}

impl Registry {
    /// The registry of `file`'s services (already validated with the file).
    pub fn new(file: &[ServiceConfig], defaults: Defaults, metrics: Arc<ProxyMetrics>) -> Self {
        let registry = Self {
            defaults,
            metrics,
            routes: Arc::new(ArcSwap::from_pointee(Routes::default())),
            services: ArcSwap::from_pointee(Vec::new()),
            state: Mutex::new(State {
                file: file.to_vec(),
                ..State::default()
            }),
        };
        registry.rebuild(&mut registry.lock());
        registry
    }

    /// The route table the data path reads; swapped whole on every change.
    pub fn routes(&self) -> Arc<ArcSwap<Routes<Service>>> {
        Arc::clone(&self.routes)
    }

    /// The services in force now.
    pub fn services(&self) -> Arc<Vec<Arc<Service>>> {
        self.services.load_full()
    }

    /// The service called `name`, if it is in force.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.lock().by_name.get(name).cloned()
    }

    /// Definitions the last merge left out, and why.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.lock().rejected.clone()
    }

    /// Takes the file's services anew (SIGHUP).
    pub fn set_file(&self, file: Vec<ServiceConfig>) {
        let mut state = self.lock();
        state.file = file;
        self.rebuild(&mut state);
    }

    /// Replaces every bucket entry (a fresh read after a reconnect).
    fn set_entries(&self, entries: BTreeMap<String, Entry>) {
        let mut state = self.lock();
        state.entries = entries;
        self.rebuild(&mut state);
    }

    /// Watched changes of the bucket, rebuilt once for the lot.
    fn apply_changes(&self, batch: Vec<(String, Option<Entry>)>) {
        let mut state = self.lock();
        let mut changed = false;
        for (key, change) in batch {
            changed |= catalog::apply_change(&mut state.entries, key, change);
        }
        if changed {
            self.rebuild(&mut state);
        }
    }

    /// Keeps `set` as `key`'s latest endpoint set and applies it to the
    /// service of that name, if there is one now.
    pub fn apply_endpoints(&self, key: &str, set: EndpointSet) -> Vec<ApplyError> {
        let mut state = self.lock();
        let service = match state.by_name.get(key) {
            Some(service) => Some(Arc::clone(service)),
            None => state.retired.get(key).and_then(Weak::upgrade),
        };
        let problems = match service {
            Some(service) => service.apply(&set),
            None => Vec::new(),
        };
        state.endpoint_sets.insert(key.to_string(), set);
        problems
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Merges file and bucket and puts the outcome in force.
    fn rebuild(&self, state: &mut State) {
        let Merged { services, rejected } = catalog::merge(&state.file, &state.entries);
        for rejection in &rejected {
            if !state.rejected.contains(rejection) {
                tracing::warn!(service = %rejection.name, reason = %rejection.reason, "service definition rejected");
            }
        }
        state.rejected = rejected;
        let mut by_name = HashMap::with_capacity(services.len());
        let mut in_order = Vec::with_capacity(services.len());
        let mut routes = Routes::default();
        for (spec, _) in &services {
            let existing = match state.by_name.get(&spec.name) {
                Some(existing) => Some(Arc::clone(existing)),
                None => Self::revive(state, &spec.name),
            };
            let service = match existing {
                Some(existing) => {
                    existing.update(spec, self.defaults);
                    existing
                }
                None => self.create(spec, state),
            };
            for host in &spec.hosts {
                for path in &spec.paths {
                    routes.insert(host, path, Arc::clone(&service));
                }
            }
            by_name.insert(spec.name.clone(), Arc::clone(&service));
            in_order.push(service);
        }
        for (name, service) in &state.by_name {
            if !by_name.contains_key(name) {
                tracing::info!(service = %name, "service removed");
                service.retire();
                state.retired.insert(name.clone(), Arc::downgrade(service));
            }
        }
        state
            .retired
            .retain(|_, service| service.strong_count() > 0);
        state.by_name = by_name;
        state.built = true;
        self.routes.store(Arc::new(routes));
        self.services.store(Arc::new(in_order));
    }

    /// A removed service defined again while something still holds it.
    fn revive(state: &mut State, name: &str) -> Option<Arc<Service>> {
        let service = state.retired.remove(name)?.upgrade()?;
        service.revive();
        tracing::info!(service = %name, "service defined again before its last request ended");
        Some(service)
    }

    fn create(&self, spec: &ServiceConfig, state: &State) -> Arc<Service> {
        let mut service = Service::new(
            spec,
            self.defaults.response_timeout,
            self.metrics.for_service(&spec.name),
        );
        if self.defaults.max_body.is_some() {
            service = service.with_default_max_body(self.defaults.max_body);
        }
        let service = Arc::new(service);
        if let Some(set) = state.endpoint_sets.get(&spec.name) {
            for problem in service.apply(set) {
                tracing::warn!(service = %spec.name, error = %problem, "skipped an unusable endpoint");
            }
        }
        if state.built {
            tracing::info!(service = %spec.name, hosts = ?spec.hosts, paths = ?spec.paths, "service added");
        }
        service
    }

    /// Re-reads the services of `path` (SIGHUP). A file that does not load
    /// is logged with its problems and changes nothing.
    pub fn reload_file(&self, path: &Path) {
        match Config::load(path) {
            Ok(config) => {
                let count = config.services.len();
                self.set_file(config.services);
                tracing::info!(file = %path.display(), services = count, "config file services reloaded (other settings need a restart)");
            }
            Err(err) => {
                for line in err.to_string().lines() {
                    tracing::error!(problem = %line, "config reload refused; keeping the services in force");
                }
            }
        }
    }
}

impl catalog::Sink for Registry {
    fn replace(&self, entries: BTreeMap<String, Entry>) {
        self.set_entries(entries);
    }

    fn change(&self, key: &str, entry: Option<Entry>) {
        self.apply_changes(vec![(key.to_string(), entry)]);
    }

    fn changes(&self, batch: Vec<(String, Option<Entry>)>) {
        self.apply_changes(batch);
    }

    fn malformed(&self, _key: &str, _error: &catalog::CatalogError) {
        self.metrics.bus_rejected.inc();
    }
}

/// Reloads the file's services on every SIGHUP.
pub async fn reload_on_hangup(registry: Arc<Registry>, path: std::path::PathBuf) {
    let mut hangups = std::pin::pin!(rouse_nats::process::hangups());
    while hangups.next().await.is_some() {
        registry.reload_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rouse_nats::catalog::{ServiceRecord, Sink, Source};
    use rouse_nats::messages::{Endpoint as WireEndpoint, EndpointState, VERSION};

    fn echo(name: &str, host: &str, hold_timeout: &str) -> ServiceConfig {
        serde_norway::from_str(&format!(
            "name: {name}\nhosts: [{host}]\nbackend: {{process: {{command: [x]}}}}\nhold: {{timeout: {hold_timeout}}}\n"
        ))
        .expect("spec")
    }

    fn registry(file: &[ServiceConfig]) -> Registry {
        let defaults = Defaults {
            response_timeout: std::time::Duration::from_secs(1),
            max_body: None,
        };
        Registry::new(file, defaults, Arc::new(ProxyMetrics::new()))
    }

    fn api(revision: u64, spec: ServiceConfig) -> Option<Entry> {
        Some(Entry {
            revision,
            record: ServiceRecord::new(Source::Api, spec, "test"),
        })
    }

    fn routed(registry: &Registry, host: &str) -> Option<String> {
        let routes = registry.routes().load_full();
        routes.find(host, "/").map(|s| s.name().to_string())
    }

    #[test]
    fn a_definition_adds_changes_in_place_and_removes_a_service() {
        let registry = registry(&[echo("file", "file.test", "5s")]);
        assert_eq!(routed(&registry, "file.test").as_deref(), Some("file"));
        assert_eq!(routed(&registry, "new.test"), None);

        registry.change("new", api(3, echo("new", "new.test", "5s")));
        assert_eq!(routed(&registry, "new.test").as_deref(), Some("new"));
        let first = Arc::clone(&registry.services()[1]);

        // A change keeps the object (its queue and counters) and its settings move.
        registry.change("new", api(4, echo("new", "new.test", "9s")));
        let second = Arc::clone(&registry.services()[1]);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.hold_timeout(), std::time::Duration::from_secs(9));
        // An older revision arriving late changes nothing.
        registry.change("new", api(2, echo("new", "new.test", "1s")));
        assert_eq!(second.hold_timeout(), std::time::Duration::from_secs(9));

        registry.change("new", None);
        assert_eq!(routed(&registry, "new.test"), None);
        assert_eq!(routed(&registry, "file.test").as_deref(), Some("file"));
        assert_eq!(registry.services().len(), 1);
    }

    fn one_endpoint(generation: u64, state: EndpointState) -> EndpointSet {
        EndpointSet {
            v: VERSION,
            generation,
            endpoints: vec![WireEndpoint {
                id: "r1".into(),
                addr: "127.0.0.1:9".into(),
                state,
                pool_rank: None,
            }],
        }
    }

    #[test]
    fn a_service_defined_after_its_endpoints_starts_with_them() {
        let registry = registry(&[]);
        let set = one_endpoint(7, EndpointState::Ready);
        assert!(registry.apply_endpoints("late", set).is_empty());
        registry.change("late", api(1, echo("late", "late.test", "5s")));
        let service = Arc::clone(&registry.services()[0]);
        assert!(service.has_ready());
        assert_eq!(service.endpoints.load().generation, 7);
    }

    #[test]
    fn a_rejected_definition_routes_nothing_and_says_why() {
        let registry = registry(&[echo("file", "same.test", "5s")]);
        registry.change("thief", api(1, echo("thief", "same.test", "5s")));
        assert_eq!(routed(&registry, "same.test").as_deref(), Some("file"));
        let rejected = registry.rejected();
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0]
            .reason
            .contains("already routed to service `file`"));
    }

    #[test]
    fn a_reload_that_does_not_validate_keeps_the_services_in_force() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("rouse.yaml");
        let registry = registry(&[echo("a", "a.test", "5s")]);
        std::fs::write(
            &path,
            "services:\n  - name: b\n    hosts: [b.test]\n    backend: {process: {command: [x]}}\n",
        )
        .expect("write");
        registry.reload_file(&path);
        assert_eq!(routed(&registry, "b.test").as_deref(), Some("b"));
        assert_eq!(routed(&registry, "a.test"), None);
        std::fs::write(&path, "services:\n  - name: B!\n").expect("write");
        registry.reload_file(&path);
        assert_eq!(routed(&registry, "b.test").as_deref(), Some("b"));
    }

    /// Holds one request for `service` in a task; the task ends with the
    /// hold's outcome and the status the client would get.
    fn hold_one(service: &Arc<Service>) -> tokio::task::JoinHandle<(&'static str, u16)> {
        let service = Arc::clone(service);
        tokio::spawn(async move {
            let (signals, _reports) = crate::report::Signals::channel();
            let client = std::net::IpAddr::from([127, 0, 0, 1]);
            let mut woke = false;
            let started = std::time::Instant::now();
            match crate::hold::wait_for_endpoint(&service, client, &signals, started, &mut woke)
                .await
            {
                Ok(_) => ("leased", 200),
                Err(err) => (err.hold_outcome(), err.status().as_u16()),
            }
        })
    }

    async fn until_held(service: &Service, count: usize) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while service.hold.held() != count {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{count} held within 20 s");
    }

    /// Removal answers what the service held at once (404) instead of after
    /// its hold timeout, still applies endpoint sets (so a drain's
    /// generation is seen), and a definition before the last holder let go
    /// brings back the same object, holding again.
    #[tokio::test]
    async fn a_removed_service_answers_its_held_requests_and_still_follows_its_endpoints() {
        let registry = registry(&[]);
        registry.change("gone", api(1, echo("gone", "gone.test", "300s")));
        let service = registry.service("gone").expect("defined");
        let held = hold_one(&service);
        until_held(&service, 1).await;

        registry.change("gone", None);
        let answered = tokio::time::timeout(std::time::Duration::from_secs(20), held)
            .await
            .expect("answered long before the 300 s hold timeout")
            .expect("task");
        assert_eq!(answered, ("removed", 404));
        assert_eq!(
            *service.phase.borrow(),
            crate::wake_phase::WakePhase::Removed
        );
        // A request that found the old table is not held either.
        let late = hold_one(&service).await.expect("task");
        assert_eq!(late, ("removed", 404));

        registry.apply_endpoints("gone", one_endpoint(9, EndpointState::Draining));
        assert_eq!(service.endpoints.load().generation, 9);

        registry.change("gone", api(2, echo("gone", "gone.test", "300s")));
        let again = registry.service("gone").expect("defined again");
        assert!(Arc::ptr_eq(&again, &service), "the same object");
        assert_eq!(*again.phase.borrow(), crate::wake_phase::WakePhase::Waking);
        let held = hold_one(&again);
        until_held(&again, 1).await;
        registry.apply_endpoints("gone", one_endpoint(10, EndpointState::Ready));
        let answered = tokio::time::timeout(std::time::Duration::from_secs(20), held)
            .await
            .expect("released by the ready set")
            .expect("task");
        assert_eq!(answered, ("leased", 200));
    }

    /// Once nothing holds a removed service it is forgotten: a definition
    /// then starts afresh.
    #[test]
    fn a_removed_service_nothing_holds_is_forgotten() {
        let registry = registry(&[]);
        registry.change("gone", api(1, echo("gone", "gone.test", "5s")));
        let first = Arc::downgrade(&registry.service("gone").expect("defined"));
        registry.change("gone", None);
        assert!(first.upgrade().is_none(), "nothing keeps it");
        registry.change("gone", api(2, echo("gone", "gone.test", "5s")));
        assert!(!registry.service("gone").expect("defined").is_retired());
        assert!(registry.lock().retired.is_empty());
    }
}
