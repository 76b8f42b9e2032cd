//! Reading a whole KV bucket with one consumer instead of one request per
//! key, then following it.
//!
//! A watch "with history" starts with the latest value of every key and
//! goes on with every change, so a process with 10,000 services reads them
//! in one stream (a few milliseconds) rather than 10,000 round trips. The
//! first part ends where the consumer has nothing pending; an empty bucket
//! replays nothing, so its message count is looked at first.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use futures::StreamExt;

/// Why a bucket could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("watching the bucket: {0}")]
    Watch(#[from] kv::WatchError),
    #[error("watch stream: {0}")]
    Stream(#[from] kv::WatcherError),
    #[error("the watch ended before the bucket was read")]
    Ended,
    #[error("the bucket's watch went silent before it was read")]
    Silent,
}

/// Longest wait for the next replayed entry (a bucket emptied between its
/// info and the watch replays nothing).
const SILENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Every key's latest entry (deletions left out), and the watch that goes
/// on from there with every later change.
pub async fn read_then_watch(
    store: &kv::Store,
) -> Result<(BTreeMap<String, kv::Entry>, kv::Watch), SnapshotError> {
    let mut watch = store.watch_with_history(">").await?;
    let mut entries = BTreeMap::new();
    // The info the store was opened with: an empty bucket has nothing to
    // replay. Anything written since comes through the watch.
    if store
        .status()
        .await
        .is_ok_and(|status| status.values() == 0)
    {
        return Ok((entries, watch));
    }
    loop {
        let next = tokio::time::timeout(SILENCE, watch.next()).await;
        let entry = next
            .map_err(|_| SnapshotError::Silent)?
            .ok_or(SnapshotError::Ended)??;
        let last = entry.delta == 0 || entry.seen_current;
        match entry.operation {
            kv::Operation::Put => {
                entries.insert(entry.key.clone(), entry);
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                entries.remove(&entry.key);
            }
        }
        if last {
            return Ok((entries, watch));
        }
    }
}
