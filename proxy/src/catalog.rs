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
//! - a removed service leaves the table at once (new requests get 404); what
//!   it has in flight finishes, and the reporter keeps reporting it until
//!   nothing is left.
//!
//! Endpoint sets are kept for every key of the endpoints bucket, so a
//! service defined after its replicas were published starts with them.
//! SIGHUP re-reads the file's services (`reload_file`); a file that no
//! longer validates is logged and changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

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
        let problems = match state.by_name.get(key) {
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
            let service = match state.by_name.get(&spec.name) {
                Some(existing) => {
                    existing.update(spec, self.defaults);
                    Arc::clone(existing)
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
        for name in state.by_name.keys() {
            if !by_name.contains_key(name) {
                tracing::info!(service = %name, "service removed");
            }
        }
        state.by_name = by_name;
        state.built = true;
        self.routes.store(Arc::new(routes));
        self.services.store(Arc::new(in_order));
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

    #[test]
    fn a_service_defined_after_its_endpoints_starts_with_them() {
        let registry = registry(&[]);
        let set = EndpointSet {
            v: VERSION,
            generation: 7,
            endpoints: vec![WireEndpoint {
                id: "r1".into(),
                addr: "127.0.0.1:9".into(),
                state: EndpointState::Ready,
                pool_rank: None,
            }],
        };
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
}
