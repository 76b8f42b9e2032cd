//! A bounded lock-free queue from the data threads to one background task
//! that takes its items in batches: the access log's lines and the spans
//! of `proxy.tracing` both leave the request path this way.
//!
//! A push never waits: a full queue hands the item back for the caller to
//! count as dropped. The task is woken only when it has gone idle (a pass
//! found the queue empty), not per item: a wake is a futex call across
//! threads, and one per request cost as much kernel time as the request's
//! own socket work (bench/README.md, "What the access log and tracing
//! cost"). While items keep coming the task pauses between batches instead,
//! so that each pass takes many.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

/// Items on their way to the task, and how it is woken.
pub struct BatchQueue<T> {
    items: ArrayQueue<T>,
    /// Set by the task before it waits for `wake`; the first push after
    /// that clears it and wakes the task, later pushes do not.
    idle: AtomicBool,
    wake: Notify,
}

impl<T> BatchQueue<T> {
    /// Room for `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            items: ArrayQueue::new(capacity.max(1)),
            idle: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Queues `item`, waking the task if it is idle; hands the item back
    /// when the queue is full.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.items.push(item)?;
        if self.idle.load(Ordering::Acquire) && self.idle.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        Ok(())
    }

    pub fn pop(&self) -> Option<T> {
        self.items.pop()
    }

    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// Whether the task is waiting to be woken (for tests).
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }

    /// Waits until an item is queued (at once if one is).
    pub async fn queued(&self) {
        let woken = self.wake.notified();
        tokio::pin!(woken);
        // Registered before `idle` is set: a push in between is not missed.
        woken.as_mut().enable();
        self.idle.store(true, Ordering::Release);
        if !self.items.is_empty() {
            self.idle.store(false, Ordering::Release);
            return;
        }
        woken.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_full_queue_hands_the_item_back() {
        let queue = BatchQueue::new(2);
        assert!(queue.push(1).is_ok());
        assert!(queue.push(2).is_ok());
        assert_eq!(queue.push(3), Err(3));
        assert_eq!(queue.pop(), Some(1));
    }

    /// An idle task is woken by the first push, whichever thread pushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_push_wakes_an_idle_task() {
        let queue = Arc::new(BatchQueue::new(8));
        let waiting = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { queue.queued().await })
        };
        let idle = tokio::time::timeout(Duration::from_secs(20), async {
            while !queue.is_idle() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(idle.is_ok(), "the task went idle");
        assert!(queue.push(7).is_ok());
        let woken = tokio::time::timeout(Duration::from_secs(20), waiting).await;
        assert!(woken.is_ok(), "woken by the push");
        assert!(!queue.is_idle());
        // Something queued: no wait at all.
        tokio::time::timeout(Duration::from_secs(20), queue.queued())
            .await
            .expect("returns at once");
    }
}
