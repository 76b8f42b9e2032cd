//! The fake's etcd: every object the API serves, as JSON, under one global
//! resourceVersion, with a bounded history of changes for watches.
//!
//! Everything the API shows lives here, also what the kubelet owns (pods,
//! EndpointSlices, workload status), so that GET, LIST and WATCH are one
//! generic code path for every kind and a watch from an old resourceVersion
//! replays exactly the writes a client missed. A real server keeps a window
//! of history too; a watch from before it gets `410 Gone` and the client
//! relists, which [`Store::compact`] lets a test provoke.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;
use tokio::sync::watch;

/// How many changes are kept for watches that resume from an old
/// resourceVersion.
const HISTORY_LIMIT: usize = 10_000;

/// One resource type: group (empty for the core group), version, plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Res {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Res {
    pub fn new(group: &str, version: &str, plural: &str) -> Res {
        Res {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
        }
    }

    /// `apiVersion` of the objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Parses an `apiVersion` (`v1`, `apps/v1`) with a plural.
    pub fn from_api_version(api_version: &str, plural: &str) -> Res {
        match api_version.split_once('/') {
            Some((group, version)) => Res::new(group, version, plural),
            None => Res::new("", api_version, plural),
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches replay it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub res: Res,
    pub namespace: String,
    pub change: Change,
    /// The object after the write (before it, for a delete), carrying `rv`.
    pub object: Value,
    /// The object before the write: a watch with a selector needs it to turn
    /// a modification into ADDED or DELETED when the match changes.
    pub prev: Option<Value>,
}

/// All objects, their history, and the signal that something changed.
pub(crate) struct Store {
    rv: u64,
    objects: BTreeMap<Res, BTreeMap<(String, String), Value>>,
    history: VecDeque<Event>,
    /// Every event with `rv` at or below this is gone from the history.
    compacted_through: u64,
    changed: watch::Sender<u64>,
}

impl Store {
    pub fn new() -> Store {
        Store {
            rv: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted_through: 0,
            changed: watch::Sender::new(0),
        }
    }

    /// A receiver woken on every write (its value is the new global RV).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The current global resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, res: &Res, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(res)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The objects of `res`, of one namespace or (`None`) of all, ordered by
    /// namespace and name like the real server's lists.
    pub fn list(&self, res: &Res, namespace: Option<&str>) -> Vec<&Value> {
        let Some(objects) = self.objects.get(res) else {
            return Vec::new();
        };
        objects
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, v)| v)
            .collect()
    }

    /// Creates or replaces the object: stamps a new resourceVersion (and a
    /// uid and creationTimestamp when it has none), records the event, wakes
    /// watchers. Returns the stored object.
    pub fn put(&mut self, res: &Res, namespace: &str, name: &str, mut object: Value) -> Value {
        let key = (namespace.to_string(), name.to_string());
        let prev = self.objects.get(res).and_then(|m| m.get(&key)).cloned();
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object
            .as_object_mut()
            .map(|o| {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Default::default()))
            })
            .and_then(Value::as_object_mut)
        {
            meta.insert("name".into(), name.into());
            if !namespace.is_empty() {
                meta.insert("namespace".into(), namespace.into());
            }
            meta.insert("resourceVersion".into(), rv.to_string().into());
            // uid and creationTimestamp are immutable: a replace keeps the
            // stored ones whatever the client sent.
            for (field, fresh) in [("uid", new_uid()), ("creationTimestamp", now())] {
                let kept = prev
                    .as_ref()
                    .and_then(|p| p.pointer(&format!("/metadata/{field}")))
                    .cloned();
                match kept {
                    Some(v) => {
                        meta.insert(field.into(), v);
                    }
                    None => {
                        meta.entry(field).or_insert(fresh.into());
                    }
                }
            }
        }
        let change = if prev.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        self.objects
            .entry(res.clone())
            .or_default()
            .insert(key, object.clone());
        self.record(Event {
            rv,
            res: res.clone(),
            namespace: namespace.to_string(),
            change,
            object: object.clone(),
            prev,
        });
        object
    }

    /// [`Store::put`], unless the object is the same as stored apart from
    /// its resourceVersion: the kubelet re-renders status on every tick and
    /// only real changes may bump the RV and wake watchers.
    pub fn put_if_changed(
        &mut self,
        res: &Res,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> bool {
        if let Some(current) = self.get(res, namespace, name) {
            let mut candidate = object.clone();
            if let Some(meta) = candidate
                .as_object_mut()
                .map(|o| {
                    o.entry("metadata")
                        .or_insert_with(|| Value::Object(Default::default()))
                })
                .and_then(Value::as_object_mut)
            {
                for field in [
                    "resourceVersion",
                    "uid",
                    "creationTimestamp",
                    "name",
                    "namespace",
                ] {
                    match current.pointer(&format!("/metadata/{field}")) {
                        Some(v) => meta.insert(field.into(), v.clone()),
                        None => meta.remove(field),
                    };
                }
            }
            if &candidate == current {
                return false;
            }
        }
        self.put(res, namespace, name, object);
        true
    }

    /// Removes the object; the DELETED event carries a new resourceVersion.
    pub fn remove(&mut self, res: &Res, namespace: &str, name: &str) -> Option<Value> {
        let key = (namespace.to_string(), name.to_string());
        let mut object = self.objects.get_mut(res)?.remove(&key)?;
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), rv.to_string().into());
        }
        self.record(Event {
            rv,
            res: res.clone(),
            namespace: namespace.to_string(),
            change: Change::Deleted,
            object: object.clone(),
            prev: None,
        });
        Some(object)
    }

    fn record(&mut self, event: Event) {
        self.history.push_back(event);
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.compacted_through = old.rv;
            }
        }
        self.changed.send_replace(self.rv);
    }

    /// The events after `rv`, oldest first, or `None` when some of them are
    /// no longer kept (the watch must answer 410 Gone).
    pub fn events_after(&self, rv: u64) -> Option<impl Iterator<Item = &Event>> {
        if rv < self.compacted_through {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(self.history.range(start..))
    }

    /// Forgets all history: every watch from a resourceVersion handed out
    /// so far, resuming or still open, gets 410 Gone. The global RV moves
    /// on by one so that a relist hands out one that is valid again.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.compacted_through = self.rv;
        // Wake watchers so that those behind notice at once.
        self.changed.send_replace(self.rv);
    }
}

/// A random RFC 4122 version 4 uid.
pub(crate) fn new_uid() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
            .collect()
    };
    let variant = ['8', '9', 'a', 'b'][fastrand::usize(0..4)];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        hex(8),
        hex(4),
        hex(3),
        hex(3),
        hex(12)
    )
}

/// Now, to the second (API timestamps have no finer resolution).
pub(crate) fn now_ts() -> k8s_openapi::jiff::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// Now as the API writes timestamps (RFC 3339, whole seconds, UTC).
pub(crate) fn now() -> String {
    serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        now_ts(),
    ))
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
    .unwrap_or_default()
}

/// `n` characters of the alphabet the real name generator uses (no vowels,
/// so that no word is spelt by accident; a subset of `[a-z0-9]`).
pub(crate) fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| char::from(ALPHABET[fastrand::usize(0..ALPHABET.len())]))
        .collect()
}

/// A resourceVersion as the store compares them; anything else is a client
/// error.
pub(crate) fn parse_rv(text: &str) -> Option<u64> {
    text.parse().ok()
}

/// `metadata.resourceVersion` of an object, if it has one.
pub(crate) fn rv_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rv_grows_history_replays_and_compaction_expires() {
        let mut store = Store::new();
        let res = Res::new("coordination.k8s.io", "v1", "leases");
        store.put(&res, "default", "a", json!({"spec": {}}));
        let first = store.rv();
        assert!(!store.put_if_changed(&res, "default", "a", json!({"spec": {}})));
        assert_eq!(store.rv(), first);
        store.put(&res, "default", "a", json!({"spec": {"x": 1}}));
        store.remove(&res, "default", "a");
        let events: Vec<_> = store
            .events_after(first)
            .unwrap()
            .map(|e| e.change)
            .collect();
        assert_eq!(events, [Change::Modified, Change::Deleted]);
        store.compact();
        assert!(store.events_after(first).is_none());
        assert_eq!(store.events_after(store.rv()).unwrap().count(), 0);
        assert_eq!(new_uid().len(), 36);
    }
}
