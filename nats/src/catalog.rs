//! The service catalog: service definitions kept in the KV bucket
//! `rouse-services` beside the config file, so services can be added,
//! changed and removed while rouse runs.
//!
//! The config file stays the simple way. `rouse-controller` seeds the bucket
//! with the file's services (`source: file`), and `rouse deploy` writes
//! services of its own (`source: api`). Every proxy and controller merges
//! the bucket with its own file by the same rules ([`merge`]), so they agree
//! on which definition wins:
//! - a service of the process's own file always wins over the bucket;
//! - a definition that fails the file's own checks is rejected;
//! - an `api` definition naming a service of the file is rejected (change
//!   the file instead);
//! - of two definitions routing the same host and path, the older (lower
//!   KV revision) wins and the newer is rejected.
//!
//! Rejections are reported, never fatal. A pin (`rouse scale --pin`) lives
//! in its own bucket `rouse-pins`: it overrides the autoscaler for one
//! service, whatever defines the service.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::bus::Bus;

use crate::config::ServiceConfig;
use crate::messages::VERSION;

/// Who wrote a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Seeded by a controller from its config file.
    File,
    /// Written by `rouse deploy` (or anything else using the bucket).
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Api => "api",
        }
    }
}

/// KV `rouse-services/<name>`: one service definition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub v: u32,
    pub source: Source,
    /// The definition, exactly as a `services[]` entry of the file.
    pub spec: ServiceConfig,
    #[serde(default)]
    pub updated_at_ms: u64,
    /// Who wrote it: a controller id, or `rouse@<host>` for the CLI.
    #[serde(default)]
    pub updated_by: String,
}

impl ServiceRecord {
    /// A record stamped now.
    pub fn new(source: Source, spec: ServiceConfig, by: impl Into<String>) -> Self {
        Self {
            v: VERSION,
            source,
            spec,
            updated_at_ms: now_ms(),
            updated_by: by.into(),
        }
    }
}

/// KV `rouse-pins/<service>`: a replica count the operator fixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub v: u32,
    pub replicas: u32,
    #[serde(default)]
    pub at_ms: u64,
    #[serde(default)]
    pub by: String,
}

impl Pin {
    pub fn new(replicas: u32, by: impl Into<String>) -> Self {
        Self {
            v: VERSION,
            replicas,
            at_ms: now_ms(),
            by: by.into(),
        }
    }
}

/// Why a catalog entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("not a service definition: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported record version {0} (this build speaks {VERSION})")]
    Version(u32),
    #[error("key `{key}` holds service `{name}`: a definition's key is its name")]
    KeyMismatch { key: String, name: String },
}

/// JSON for the bucket.
pub fn encode(record: &ServiceRecord) -> bytes::Bytes {
    // A record is plain data: serialising it cannot fail.
    serde_json::to_vec(record).unwrap_or_default().into()
}

/// A record read from key `key`; its version and name checked.
pub fn decode(key: &str, payload: &[u8]) -> Result<ServiceRecord, CatalogError> {
    let record: ServiceRecord = serde_json::from_slice(payload)?;
    if record.v != VERSION {
        return Err(CatalogError::Version(record.v));
    }
    if record.spec.name != key {
        return Err(CatalogError::KeyMismatch {
            key: key.to_string(),
            name: record.spec.name,
        });
    }
    Ok(record)
}

pub fn encode_pin(pin: &Pin) -> bytes::Bytes {
    serde_json::to_vec(pin).unwrap_or_default().into()
}

pub fn decode_pin(payload: &[u8]) -> Result<Pin, CatalogError> {
    let pin: Pin = serde_json::from_slice(payload)?;
    if pin.v != VERSION {
        return Err(CatalogError::Version(pin.v));
    }
    Ok(pin)
}

/// The file's checks for one service, as `key \`k\`: reason` lines.
pub fn check_service(spec: &ServiceConfig) -> Result<(), Vec<String>> {
    let problems = spec.problems();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems
            .into_iter()
            .map(|(key, reason)| format!("key `{key}`: {reason}"))
            .collect())
    }
}

/// One entry of the bucket as read: its KV revision and what it decoded to.
#[derive(Debug, Clone)]
pub struct Entry {
    pub revision: u64,
    pub record: ServiceRecord,
}

/// A definition the merge left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub reason: String,
}

/// Where a service in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This process's own config file.
    LocalFile,
    /// The bucket, at this revision.
    Bucket { revision: u64, source: Source },
}

/// The services in force: the file's first, in file order, then the
/// bucket's, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub services: Vec<(ServiceConfig, Origin)>,
    pub rejected: Vec<Rejection>,
}

impl Merged {
    pub fn specs(&self) -> impl Iterator<Item = &ServiceConfig> {
        self.services.iter().map(|(spec, _)| spec)
    }
}

/// The services in force for a process whose config file defines `file`,
/// given the bucket's `entries` (by key). See the module doc for the rules.
pub fn merge(file: &[ServiceConfig], entries: &BTreeMap<String, Entry>) -> Merged {
    let mut merged = Merged {
        services: file
            .iter()
            .map(|spec| (spec.clone(), Origin::LocalFile))
            .collect(),
        rejected: Vec::new(),
    };
    let local: HashSet<&str> = file.iter().map(|s| s.name.as_str()).collect();
    // Every host+path in force so far, so each clash check is a lookup.
    let mut routed = RouteIndex::default();
    for spec in file {
        routed.add(spec);
    }
    let mut by_age: Vec<&Entry> = entries.values().collect();
    by_age.sort_by_key(|entry| entry.revision);
    for entry in by_age {
        let spec = &entry.record.spec;
        if local.contains(spec.name.as_str()) {
            if entry.record.source == Source::Api {
                merged.rejected.push(Rejection {
                    name: spec.name.clone(),
                    reason: "the config file defines this service; change it there".into(),
                });
            }
            // A seeded copy of a service this file has: the file's wins.
            continue;
        }
        if let Err(problems) = check_service(spec) {
            merged.rejected.push(Rejection {
                name: spec.name.clone(),
                reason: problems.join("; "),
            });
            continue;
        }
        if let Some(reason) = routed.conflict(spec) {
            merged.rejected.push(Rejection {
                name: spec.name.clone(),
                reason,
            });
            continue;
        }
        routed.add(spec);
        merged.services.push((
            spec.clone(),
            Origin::Bucket {
                revision: entry.revision,
                source: entry.record.source,
            },
        ));
    }
    merged
}

/// The host+path pairs of the services merged so far, and whose they are.
#[derive(Default)]
struct RouteIndex {
    owners: HashMap<(String, String), String>,
}

impl RouteIndex {
    fn add(&mut self, spec: &ServiceConfig) {
        for key in crate::config::route_keys(spec) {
            self.owners.entry(key).or_insert_with(|| spec.name.clone());
        }
    }

    /// The first pair of `spec` another service already routes, as a sentence.
    fn conflict(&self, spec: &ServiceConfig) -> Option<String> {
        spec.hosts.iter().find_map(|host| {
            spec.paths.iter().find_map(|path| {
                let key = crate::config::route_key(host, path);
                let owner = self.owners.get(&key).filter(|owner| **owner != spec.name)?;
                Some(format!(
                    "host `{host}` with path `{path}` is already routed to service `{owner}`"
                ))
            })
        })
    }
}

/// What follows the bucket: told of a whole fresh read, then of each change.
pub trait Sink: Send + Sync {
    /// Every entry, read afresh (at start and after every reconnect).
    fn replace(&self, entries: BTreeMap<String, Entry>);
    /// One key changed; `None`: it was deleted.
    fn change(&self, key: &str, entry: Option<Entry>);
    /// Several keys changed at once (a burst, e.g. a controller seeding
    /// thousands of services): taken in as one change, so the services in
    /// force are merged once per burst, not once per key.
    fn changes(&self, batch: Vec<(String, Option<Entry>)>) {
        for (key, entry) in batch {
            self.change(&key, entry);
        }
    }
    /// An entry that does not decode: count it; it is dropped.
    fn malformed(&self, key: &str, error: &CatalogError);
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("reading the services bucket: {0}")]
    Read(#[from] crate::snapshot::SnapshotError),
    #[error("watch stream: {0}")]
    Stream(#[from] kv::WatcherError),
}

/// Follows the services bucket for as long as the process lives: a fresh
/// read on every (re)connect, then its watch.
pub async fn follow(bus: Bus, sink: Arc<dyn Sink>) {
    crate::bus::each_connection(&bus, "services watch", |mut connects| {
        let (bus, sink) = (bus.clone(), Arc::clone(&sink));
        async move { session(&bus, &*sink, &mut connects).await }
    })
    .await;
}

/// Most changes handed over at once, however long a burst goes on.
const MAX_BURST: usize = 1000;

async fn session(
    bus: &Bus,
    sink: &dyn Sink,
    connects: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), SessionError> {
    let js = crate::bus::watch_context(bus);
    let store = crate::bus::services_bucket(&js, bus.replicas).await?;
    // One consumer reads every entry, then follows the changes.
    let (current, mut watch) = crate::snapshot::read_then_watch(&store).await?;
    let entries = current
        .into_iter()
        .filter_map(|(key, entry)| decode_entry(sink, &entry).map(|decoded| (key, decoded)))
        .collect();
    sink.replace(entries);
    // Changes are handed over in bursts: whatever is pending at once.
    let mut burst = Vec::new();
    loop {
        tokio::select! {
            entry = watch.next() => match entry {
                Some(entry) => {
                    let entry = entry?;
                    let change = match entry.operation {
                        kv::Operation::Put => decode_entry(sink, &entry).map(Some),
                        kv::Operation::Delete | kv::Operation::Purge => Some(None),
                    };
                    if let Some(change) = change {
                        burst.push((entry.key.clone(), change));
                    }
                    if (entry.delta == 0 || burst.len() >= MAX_BURST) && !burst.is_empty() {
                        sink.changes(std::mem::take(&mut burst));
                    }
                }
                None => return Ok(()),
            },
            _ = connects.changed() => return Ok(()),
        }
    }
}

/// A bucket entry as a catalog entry; garbage goes to the sink's count.
fn decode_entry(sink: &dyn Sink, entry: &kv::Entry) -> Option<Entry> {
    match decode(&entry.key, &entry.value) {
        Ok(record) => Some(Entry {
            revision: entry.revision,
            record,
        }),
        Err(err) => {
            tracing::warn!(key = %entry.key, error = %err, "dropped a malformed service definition");
            sink.malformed(&entry.key, &err);
            None
        }
    }
}

/// Whether `entry` should replace what `known` holds for its key.
pub fn is_newer(known: Option<&Entry>, entry: &Entry) -> bool {
    known.is_none_or(|known| known.revision < entry.revision)
}

/// Takes one change of the watch (`None`: the key was deleted) into
/// `entries`; returns whether anything changed. An entry no newer than the
/// one known (a late redelivery) changes nothing.
pub fn apply_change(
    entries: &mut BTreeMap<String, Entry>,
    key: String,
    change: Option<Entry>,
) -> bool {
    match change {
        Some(entry) if is_newer(entries.get(&key), &entry) => {
            entries.insert(key, entry);
            true
        }
        Some(_) => false,
        None => entries.remove(&key).is_some(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ServiceConfig {
        serde_norway::from_str(yaml).expect("spec")
    }

    fn echo(name: &str, host: &str) -> ServiceConfig {
        spec(&format!(
            "name: {name}\nhosts: [{host}]\nbackend: {{process: {{command: [rouse-echo, --port, '{{port}}']}}}}\n"
        ))
    }

    #[test]
    fn a_change_lands_only_when_newer_and_a_delete_only_when_known() {
        let mut entries = BTreeMap::new();
        let (key, second) = entry(2, Source::Api, echo("a", "a.localhost"));
        assert!(apply_change(&mut entries, key.clone(), Some(second)));
        let (_, first) = entry(1, Source::Api, echo("a", "old.localhost"));
        assert!(
            !apply_change(&mut entries, key.clone(), Some(first)),
            "late redelivery"
        );
        assert_eq!(entries[&key].revision, 2);
        assert!(apply_change(&mut entries, key.clone(), None));
        assert!(
            !apply_change(&mut entries, key, None),
            "nothing left to delete"
        );
        assert!(entries.is_empty());
    }

    fn entry(revision: u64, source: Source, spec: ServiceConfig) -> (String, Entry) {
        (
            spec.name.clone(),
            Entry {
                revision,
                record: ServiceRecord::new(source, spec, "test"),
            },
        )
    }

    #[test]
    fn a_record_round_trips_through_json_with_every_default() {
        let original = spec(
            "name: app\nhosts: [app.test, '*.app.test']\npaths: [/, /api]\n\
             backend: {docker: {image: 'rouse:dev', port: 8080}}\n\
             scaling: {min_replicas: 1, max_replicas: 4, scale_to_zero_after: 90s}\n\
             hold: {timeout: 5s, max_requests: 7}\nmax_body: 1MiB\nresponse_timeout: 3s\n",
        );
        let record = ServiceRecord::new(Source::Api, original.clone(), "rouse@test");
        let back = decode("app", &encode(&record)).expect("decodes");
        assert_eq!(back.source, Source::Api);
        assert_eq!(back.updated_by, "rouse@test");
        // Compared as the file's own YAML, so every field counts.
        assert_eq!(
            serde_norway::to_string(&back.spec).expect("yaml"),
            serde_norway::to_string(&original).expect("yaml")
        );
        assert!(check_service(&back.spec).is_ok());
    }

    #[test]
    fn garbage_wrong_versions_and_misnamed_keys_are_errors() {
        assert!(matches!(decode("a", b"{"), Err(CatalogError::Json(_))));
        let mut record = ServiceRecord::new(Source::Api, echo("a", "a.test"), "t");
        record.v = 2;
        assert!(matches!(
            decode("a", &encode(&record)),
            Err(CatalogError::Version(2))
        ));
        record.v = VERSION;
        assert!(matches!(
            decode("b", &encode(&record)),
            Err(CatalogError::KeyMismatch { .. })
        ));
        // Unknown keys in the spec are errors, as in the file.
        let raw = br#"{"v":1,"source":"api","spec":{"name":"a","hostz":["a"],"backend":{}}}"#;
        assert!(matches!(decode("a", raw), Err(CatalogError::Json(_))));
        assert!(decode_pin(b"[]").is_err());
        let pin = Pin::new(3, "t");
        assert_eq!(decode_pin(&encode_pin(&pin)).expect("pin"), pin);
    }

    #[test]
    fn the_file_wins_and_api_definitions_of_file_services_are_rejected() {
        let file = vec![echo("echo", "echo.test")];
        let entries = BTreeMap::from([
            entry(1, Source::File, echo("echo", "old.test")),
            entry(2, Source::Api, echo("other", "other.test")),
        ]);
        let merged = merge(&file, &entries);
        let names: Vec<_> = merged.specs().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["echo", "other"]);
        assert_eq!(merged.services[0].0.hosts, ["echo.test"], "the file's copy");
        assert!(merged.rejected.is_empty());

        let entries = BTreeMap::from([entry(3, Source::Api, echo("echo", "x.test"))]);
        let merged = merge(&file, &entries);
        assert_eq!(merged.services.len(), 1);
        assert_eq!(merged.rejected.len(), 1);
        assert!(merged.rejected[0].reason.contains("config file"));
    }

    #[test]
    fn a_seeded_service_reaches_a_process_whose_file_lacks_it() {
        let entries = BTreeMap::from([entry(1, Source::File, echo("echo", "echo.test"))]);
        let merged = merge(&[], &entries);
        assert_eq!(
            merged.services[0].1,
            Origin::Bucket {
                revision: 1,
                source: Source::File
            }
        );
    }

    #[test]
    fn of_two_definitions_on_one_route_the_older_wins() {
        let entries = BTreeMap::from([
            entry(9, Source::Api, echo("late", "same.test")),
            entry(4, Source::Api, echo("early", "same.test")),
        ]);
        let merged = merge(&[], &entries);
        let names: Vec<_> = merged.specs().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["early"]);
        assert_eq!(merged.rejected[0].name, "late");
        assert!(
            merged.rejected[0]
                .reason
                .contains("already routed to service `early`"),
            "{:?}",
            merged.rejected
        );
        // A file service's route is taken first, whatever the revision.
        let merged = merge(&[echo("file", "same.test")], &entries);
        let names: Vec<_> = merged.specs().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["file"]);
        assert_eq!(merged.rejected.len(), 2);
    }

    #[test]
    fn a_definition_failing_the_files_checks_is_rejected_naming_the_key() {
        let mut bad = echo("bad", "bad.test");
        bad.scaling.max_replicas = 0;
        bad.paths = vec!["nope".into()];
        let entries = BTreeMap::from([entry(1, Source::Api, bad)]);
        let merged = merge(&[], &entries);
        assert!(merged.services.is_empty());
        let reason = &merged.rejected[0].reason;
        assert!(reason.contains("key `paths[0]`"), "{reason}");
    }
}
