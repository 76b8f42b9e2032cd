//! The lease as a key of the NATS KV bucket `<prefix>-leases`, for
//! controllers without a cluster (processes, Docker). The KV revision is
//! the version: `create` fails if the key exists, `update` if the revision
//! moved, which is all the election needs.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{LeaseError, LeaseStore, Record, Written};

/// The stored form, versioned as every rouse message.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    v: u32,
    holder: String,
    duration_ms: u64,
    transitions: u32,
    /// Wall-clock time of the write, for operators only: the election
    /// never compares clocks.
    renewed_at_ms: u64,
}

pub struct NatsLease {
    kv: kv::Store,
    key: String,
    bucket: String,
}

impl NatsLease {
    pub fn new(kv: kv::Store, bucket: &str, key: &str) -> Self {
        Self {
            kv,
            key: key.into(),
            bucket: bucket.into(),
        }
    }

    fn encode(record: &Record) -> bytes::Bytes {
        let stored = Stored {
            v: rouse_nats::messages::VERSION,
            holder: record.holder.clone(),
            duration_ms: u64::try_from(record.duration.as_millis()).unwrap_or(u64::MAX),
            transitions: record.transitions,
            renewed_at_ms: crate::reconcile::now_us() / 1000,
        };
        // A struct of strings and numbers always serialises.
        serde_json::to_vec(&stored).unwrap_or_default().into()
    }

    fn error(&self, doing: &str, message: impl ToString) -> LeaseError {
        LeaseError {
            what: format!("{doing} lease `{}` in KV bucket {}", self.key, self.bucket),
            message: message.to_string(),
        }
    }
}

#[async_trait]
impl LeaseStore for NatsLease {
    async fn get(&self) -> Result<Option<(Record, String)>, LeaseError> {
        let entry = self
            .kv
            .entry(&self.key)
            .await
            .map_err(|e| self.error("reading", e))?;
        let Some(entry) = entry else { return Ok(None) };
        let version = entry.revision.to_string();
        let record = match entry.operation {
            Operation::Put => match serde_json::from_slice::<Stored>(&entry.value) {
                Ok(stored) => Record {
                    holder: stored.holder,
                    duration: Duration::from_millis(stored.duration_ms),
                    transitions: stored.transitions,
                },
                // Garbage in the key: nobody holds it, take it over.
                Err(err) => {
                    tracing::warn!(error = %err, key = %self.key, "unreadable lease record; taking it over");
                    released()
                }
            },
            Operation::Delete | Operation::Purge => released(),
        };
        Ok(Some((record, version)))
    }

    async fn create(&self, record: &Record) -> Result<Written, LeaseError> {
        match self.kv.create(&self.key, Self::encode(record)).await {
            Ok(revision) => Ok(Written::Done(revision.to_string())),
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => Ok(Written::Conflict),
            Err(err) => Err(self.error("creating", err)),
        }
    }

    async fn update(&self, record: &Record, version: &str) -> Result<Written, LeaseError> {
        let Ok(revision) = version.parse::<u64>() else {
            return Ok(Written::Conflict);
        };
        match self
            .kv
            .update(&self.key, Self::encode(record), revision)
            .await
        {
            Ok(revision) => Ok(Written::Done(revision.to_string())),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
            Err(err) => Err(self.error("renewing", err)),
        }
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.bucket, self.key)
    }
}

fn released() -> Record {
    Record {
        holder: String::new(),
        duration: Duration::ZERO,
        transitions: 0,
    }
}
