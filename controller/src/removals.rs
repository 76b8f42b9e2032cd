//! Removals under way, kept where the next leader finds them.
//!
//! A removed service's loop drains its replicas for up to `drain_timeout`
//! (see [`crate::fleet`]). Its definition has left the catalog by then, so
//! a controller that took the lease over mid-drain would know nothing of
//! those replicas and leave them running for good. The leader therefore
//! writes the definition it drains to KV `rouse-removals` (key: the
//! service) before the drain starts, and deletes it when the drain ends,
//! however it ends: drained, timed out, the service defined again, or
//! shutdown (which stops the replicas). A lost lease exits at once
//! (`run`), leaving its entries; so does a crash. A leader, once it has
//! read the catalog, finishes every removal it finds there whose service is
//! still gone (its backend adopts the replicas as after a restart).
//!
//! Every call is bounded and only logs on failure: with NATS away a
//! removal still drains, it just cannot be handed over.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use prometheus_client::metrics::counter::Counter;
use rouse_nats::bus;
use rouse_nats::config::ServiceConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

/// What one key of `rouse-removals` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovalRecord {
    pub v: u32,
    /// The definition whose replicas drain, as it was in force.
    pub spec: ServiceConfig,
    /// When the removal began (ms since the epoch), and by which controller.
    #[serde(default)]
    pub since_ms: u64,
    #[serde(default)]
    pub by: String,
}

/// Why an entry of the bucket was not a removal to finish.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a removal record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown record version {0}")]
    Version(u32),
    #[error("key {key} holds the definition of {name}")]
    KeyMismatch { key: String, name: String },
}

impl RemovalRecord {
    pub fn new(spec: &ServiceConfig, by: &str) -> Self {
        Self {
            v: rouse_nats::messages::VERSION,
            spec: spec.clone(),
            since_ms: rouse_nats::messages::now_ms(),
            by: by.to_string(),
        }
    }

    pub fn encode(&self) -> bytes::Bytes {
        // Plain data: serialising it cannot fail.
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// The record under `key`, its version and name checked.
    pub fn decode(key: &str, payload: &[u8]) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(payload)?;
        if record.v != rouse_nats::messages::VERSION {
            return Err(RecordError::Version(record.v));
        }
        if record.spec.name != key {
            return Err(RecordError::KeyMismatch {
                key: key.to_string(),
                name: record.spec.name,
            });
        }
        Ok(record)
    }
}

/// Longest any one call waits on NATS.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// The leader's handle on `rouse-removals`; the bucket is opened (created)
/// on first use, so a controller that starts without NATS still runs.
pub struct Removals {
    js: jetstream::Context,
    replicas: usize,
    by: String,
    /// `rouse_bus_rejected`: entries that are no removal record.
    rejected: Counter,
    store: OnceCell<kv::Store>,
}

impl Removals {
    pub fn new(
        js: jetstream::Context,
        replicas: usize,
        by: impl Into<String>,
        rejected: Counter,
    ) -> Self {
        Self {
            js,
            replicas,
            by: by.into(),
            rejected,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Option<&kv::Store> {
        let opened = tokio::time::timeout(
            CALL_LIMIT,
            self.store
                .get_or_try_init(|| bus::removals_bucket(&self.js, self.replicas)),
        )
        .await;
        match opened {
            Ok(Ok(store)) => Some(store),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot open the removals bucket");
                None
            }
            Err(_) => {
                tracing::warn!("opening the removals bucket timed out");
                None
            }
        }
    }

    /// Records that `spec`'s replicas are about to drain.
    pub async fn begun(&self, spec: &ServiceConfig) {
        let Some(store) = self.store().await else {
            return;
        };
        let record = RemovalRecord::new(spec, &self.by).encode();
        match tokio::time::timeout(CALL_LIMIT, store.put(spec.name.as_str(), record)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(service = %spec.name, error = %err, "cannot record the removal; a leader taking over would not finish it")
            }
            Err(_) => {
                tracing::warn!(service = %spec.name, "recording the removal timed out; a leader taking over would not finish it")
            }
        }
    }

    /// The removal of `name` is over (or no longer a removal).
    pub async fn ended(&self, name: &str) {
        let Some(store) = self.store().await else {
            return;
        };
        match tokio::time::timeout(CALL_LIMIT, store.delete(name)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(service = %name, error = %err, "cannot clear the finished removal")
            }
            Err(_) => tracing::warn!(service = %name, "clearing the finished removal timed out"),
        }
    }

    /// Every removal left to finish. Entries that are no removal record
    /// are logged, counted in `rejected` and deleted.
    pub async fn pending(&self) -> Vec<ServiceConfig> {
        let Some(store) = self.store().await else {
            return Vec::new();
        };
        // One consumer for the lot; the watch it leaves is not needed.
        let read =
            tokio::time::timeout(CALL_LIMIT, rouse_nats::snapshot::read_then_watch(store)).await;
        let entries = match read {
            Ok(Ok((entries, _watch))) => entries,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the removals bucket; removals a previous leader began are not finished");
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!("reading the removals bucket timed out; removals a previous leader began are not finished");
                return Vec::new();
            }
        };
        let mut specs = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            match RemovalRecord::decode(&key, &entry.value) {
                Ok(record) => specs.push(record.spec),
                Err(err) => {
                    self.rejected.inc();
                    tracing::warn!(key = %key, error = %err, "dropped an entry of the removals bucket");
                    self.ended(&key).await;
                }
            }
        }
        specs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ServiceConfig {
        serde_norway::from_str(&format!(
            "name: {name}\nhosts: [{name}.test]\nbackend: {{process: {{command: [x]}}}}\n"
        ))
        .expect("spec")
    }

    #[test]
    fn a_record_round_trips_and_a_wrong_one_is_refused() {
        let record = RemovalRecord::new(&spec("gone"), "c1");
        let decoded = RemovalRecord::decode("gone", &record.encode()).expect("decodes");
        assert_eq!(decoded.spec.name, "gone");
        assert_eq!(decoded.by, "c1");
        assert!(decoded.since_ms > 0);

        assert!(matches!(
            RemovalRecord::decode("other", &record.encode()),
            Err(RecordError::KeyMismatch { .. })
        ));
        assert!(matches!(
            RemovalRecord::decode("gone", b"{\"v\": 1}"),
            Err(RecordError::Json(_))
        ));
        let mut future = record.clone();
        future.v = 9;
        assert!(matches!(
            RemovalRecord::decode("gone", &future.encode()),
            Err(RecordError::Version(9))
        ));
    }
}
