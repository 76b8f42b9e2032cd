//! The services KEDA can ask about, kept in step with the services in force:
//! the config file's and the catalog bucket's (`rouse-services`), merged by
//! the rules every proxy and the fleet apply ([`catalog::merge`]).
//!
//! It follows the bucket itself, rather than the fleet, because standbys
//! serve KEDA too and run no fleet. Each service in force gets its inbox
//! opened here (the same one the fleet opens on a leader), so reports reach
//! it on a standby as well. A name that leaves the merge is `NOT_FOUND` at
//! once; its inbox is the fleet's to retire (a drain still reads it). On a
//! standby nobody does: an inbox of a service removed since the standby
//! started stays, empty.
//!
//! The map is swapped whole on each change (a burst of changes is merged
//! once), so a call reads it without a lock; a target whose settings and
//! inbox did not change is kept as it was, so open streams go on with it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rouse_nats::catalog::{self, CatalogError, Entry};
use rouse_nats::config::ServiceConfig;

use super::Target;
use crate::intake::Inboxes;

/// The targets by service name.
#[derive(Default)]
pub struct Targets(ArcSwap<HashMap<String, Arc<Target>>>);

impl Targets {
    /// The target for service `name`, if it is in force.
    pub(super) fn get(&self, name: &str) -> Option<Arc<Target>> {
        self.0.load().get(name).cloned()
    }

    /// Puts `specs` in force, each with its inbox (opened if need be).
    fn set<'a>(&self, specs: impl Iterator<Item = &'a ServiceConfig>, inboxes: &Inboxes) {
        let old = self.0.load();
        let targets = specs
            .map(|spec| {
                let inbox = inboxes.open(&spec.name);
                let target = Target {
                    inbox,
                    target_concurrency: spec.scaling.target_concurrency,
                    target_rps: spec.scaling.target_rps,
                    scale_to_zero_after: spec.scaling.scale_to_zero_after,
                };
                let target = match old.get(&spec.name) {
                    Some(kept) if kept.same_as(&target) => Arc::clone(kept),
                    _ => Arc::new(target),
                };
                (spec.name.clone(), target)
            })
            .collect();
        self.0.store(Arc::new(targets));
    }
}

/// The file's services and the bucket's entries, merged into [`Targets`]
/// on every change; a [`catalog::Sink`] for [`catalog::follow`].
pub struct KedaCatalog {
    state: Mutex<State>,
    targets: Arc<Targets>,
    inboxes: Arc<Inboxes>,
}

#[derive(Default)]
struct State {
    file: Vec<ServiceConfig>,
    entries: BTreeMap<String, Entry>,
}

impl KedaCatalog {
    /// Starts with the file's services alone (the bucket comes when read).
    pub fn new(file: Vec<ServiceConfig>, inboxes: Arc<Inboxes>) -> Self {
        let catalog = Self {
            state: Mutex::new(State {
                file,
                entries: BTreeMap::new(),
            }),
            targets: Arc::default(),
            inboxes,
        };
        catalog.refresh(&catalog.lock());
        catalog
    }

    pub fn targets(&self) -> Arc<Targets> {
        Arc::clone(&self.targets)
    }

    /// The file's services, read anew (SIGHUP).
    pub fn set_file(&self, file: Vec<ServiceConfig>) {
        let mut state = self.lock();
        state.file = file;
        self.refresh(&state);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh(&self, state: &State) {
        let merged = catalog::merge(&state.file, &state.entries);
        self.targets.set(merged.specs(), &self.inboxes);
    }
}

impl catalog::Sink for KedaCatalog {
    fn replace(&self, entries: BTreeMap<String, Entry>) {
        let mut state = self.lock();
        state.entries = entries;
        self.refresh(&state);
    }

    fn change(&self, key: &str, entry: Option<Entry>) {
        self.changes(vec![(key.to_string(), entry)]);
    }

    fn changes(&self, batch: Vec<(String, Option<Entry>)>) {
        let mut state = self.lock();
        let mut changed = false;
        for (key, change) in batch {
            changed |= catalog::apply_change(&mut state.entries, key, change);
        }
        if changed {
            self.refresh(&state);
        }
    }

    /// The fleet, following the same bucket on a leader, counts these;
    /// counting here too would count each twice.
    fn malformed(&self, _key: &str, _error: &CatalogError) {}
}
