//! The catalog as the CLI reads and writes it: KV `rouse-services` (one
//! record per service, see `rouse_nats::catalog`) and `rouse-pins`.
//!
//! Every write goes through a revision read here: `create` for a name the
//! bucket does not hold, `update`/`delete` expecting the revision that was
//! read, so of two commands racing on one service exactly one wins and the
//! other is told (exit code 3). A record that does not decode is kept apart
//! ([`Found::record`] is `Err`) rather than fatal, as the binaries drop it.

use std::collections::BTreeMap;

use anyhow::Context;
use async_nats::jetstream::kv::{self, Operation};
use futures::TryStreamExt;
use rouse_nats::catalog::{self, Entry, ServiceRecord};

use crate::connect::{Endpoints, Nats};
use crate::exit::{fail, Code, Failure, OrExit, Outcome};

/// Both buckets, opened (and created if missing, as the binaries do).
pub struct Store {
    pub services: kv::Store,
    pub pins: kv::Store,
    pub nats: Nats,
}

/// One key of the services bucket as read.
pub struct Found {
    pub revision: u64,
    /// The record, or why it does not decode.
    pub record: Result<ServiceRecord, String>,
}

impl Store {
    pub async fn open(endpoints: &Endpoints) -> Outcome<Store> {
        let nats = endpoints.nats().await?;
        let budget = crate::retry::budget(nats.timeout);
        let services = crate::retry::idempotent(budget, || {
            rouse_nats::bus::services_bucket(&nats.js, nats.replicas)
        })
        .await
        .or_exit(Code::Unreachable)?;
        let pins = crate::retry::idempotent(budget, || {
            rouse_nats::bus::pins_bucket(&nats.js, nats.replicas)
        })
        .await
        .or_exit(Code::Unreachable)?;
        Ok(Store {
            services,
            pins,
            nats,
        })
    }

    /// Key `name`: `None` when absent or deleted.
    pub async fn get(&self, name: &str) -> Outcome<Option<Found>> {
        let budget = crate::retry::budget(self.nats.timeout);
        let entry = crate::retry::idempotent(budget, || self.services.entry(name))
            .await
            .with_context(|| {
                format!(
                    "cannot read service `{name}` from NATS at {}",
                    self.nats.url
                )
            })
            .or_exit(Code::Unreachable)?;
        Ok(entry.and_then(|entry| match entry.operation {
            Operation::Put => Some(Found {
                revision: entry.revision,
                record: catalog::decode(name, &entry.value).map_err(|e| e.to_string()),
            }),
            Operation::Delete | Operation::Purge => None,
        }))
    }

    /// The entry of `name`, which must exist (else a usage error naming it).
    pub async fn existing(&self, name: &str) -> Outcome<Found> {
        self.get(name).await?.ok_or_else(|| {
            fail(
                Code::Usage,
                format!("no service named `{name}` in the catalog (`rouse routes` lists them)"),
            )
        })
    }

    /// Every record that decodes, by name; the others are named on stderr.
    pub async fn list(&self) -> Outcome<BTreeMap<String, Entry>> {
        let unreachable = |e: anyhow::Error| -> Failure {
            Failure::new(
                Code::Unreachable,
                e.context(format!(
                    "cannot list the services on NATS at {}",
                    self.nats.url
                )),
            )
        };
        let keys: Vec<String> = self
            .services
            .keys()
            .await
            .map_err(|e| unreachable(e.into()))?
            .try_collect()
            .await
            .map_err(|e| unreachable(e.into()))?;
        let mut entries = BTreeMap::new();
        for key in keys {
            let Some(found) = self.get(&key).await? else {
                continue; // deleted between the listing and the read
            };
            match found.record {
                Ok(record) => {
                    entries.insert(
                        key,
                        Entry {
                            revision: found.revision,
                            record,
                        },
                    );
                }
                Err(reason) => eprintln!("rouse: skipped the definition in key `{key}`: {reason}"),
            }
        }
        Ok(entries)
    }

    /// After a refused write: whether key `name` moved on from `revision`
    /// (someone else wrote it: a lost race, exit 3) or not (the failure was
    /// NATS's, exit 1).
    pub async fn write_failed(
        &self,
        name: &str,
        revision: Option<u64>,
        error: anyhow::Error,
    ) -> Failure {
        let now = match self.get(name).await {
            Ok(found) => found.map(|f| f.revision),
            Err(failure) => return failure,
        };
        if now != revision {
            return fail(
                Code::Conflict,
                format!(
                    "service `{name}` was changed by another writer meanwhile \
                     (revision {} → {}); nothing was written, run the command again",
                    revision.map_or("none".into(), |r| r.to_string()),
                    now.map_or("none".into(), |r| r.to_string()),
                ),
            );
        }
        Failure::new(
            Code::Unreachable,
            error.context(format!(
                "cannot write service `{name}` on NATS at {}",
                self.nats.url
            )),
        )
    }
}

/// Who the records name as their writer: `rouse@<host>`.
pub fn writer() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    format!("rouse@{host}")
}
