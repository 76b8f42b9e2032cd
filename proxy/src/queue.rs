//! The bounded wait queue of a cold service, which stage 3 (`hold`) waits in.
//!
//! A request that finds no ready replica takes a ticket and waits; the request
//! itself (headers and unread body) stays where it is, so holding costs a
//! oneshot channel, not a buffer. When the KV watcher publishes a ready
//! endpoint set it releases every ticket in arrival order. The queue lock is
//! only taken on this cold path; the warm path never touches it.
//!
//! Apart from `hold` because every `Service` owns one: the service state
//! needs the queue, and the hold stage needs the service.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// The wait queue of one service.
#[derive(Debug)]
pub struct HoldQueue {
    waiters: Mutex<VecDeque<oneshot::Sender<()>>>,
    held: AtomicUsize,
    max: usize,
}

/// The outcome of asking to be held.
#[derive(Debug)]
pub enum Admission<'a> {
    /// Wait on the ticket.
    Held(Ticket<'a>),
    /// Replicas became ready meanwhile: go on without waiting.
    ReadyNow,
    /// `hold.max_requests` are already waiting.
    Full,
}

/// A place in the queue; leaving (by release, timeout or a client that went
/// away) is counted when the ticket is dropped.
#[derive(Debug)]
pub struct Ticket<'a> {
    queue: &'a HoldQueue,
    released: oneshot::Receiver<()>,
    /// The first request held since the queue was last empty; it wakes the
    /// controller.
    pub first: bool,
}

/// The ticket was not released within the hold timeout.
#[derive(Debug, PartialEq, Eq)]
pub struct HoldTimeout;

impl HoldQueue {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            waiters: Mutex::new(VecDeque::new()),
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Requests waiting now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Joins the back of the queue unless it is full or `is_ready` turns true
    /// under the queue lock (which the releaser also takes, so no wake-up is
    /// lost).
    pub(crate) fn admit(&self, is_ready: impl Fn() -> bool) -> Admission<'_> {
        self.join(is_ready, false)
    }

    /// Like [`admit`](Self::admit), but at the front: for a released request
    /// that lost its slot to a newcomer, so it keeps its place in line.
    pub(crate) fn readmit(&self, is_ready: impl Fn() -> bool) -> Admission<'_> {
        self.join(is_ready, true)
    }

    fn join(&self, is_ready: impl Fn() -> bool, front: bool) -> Admission<'_> {
        let before = self.held.fetch_add(1, Ordering::SeqCst);
        if before >= self.max {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Admission::Full;
        }
        let mut waiters = self.lock();
        if is_ready() {
            drop(waiters);
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Admission::ReadyNow;
        }
        // Tickets dropped by timeout leave closed senders behind; sweep them
        // when they outnumber live ones so the queue stays bounded.
        if waiters.len() > 2 * before + 16 {
            waiters.retain(|tx| !tx.is_closed());
        }
        let (tx, rx) = oneshot::channel();
        if front {
            waiters.push_front(tx);
        } else {
            waiters.push_back(tx);
        }
        Admission::Held(Ticket {
            queue: self,
            released: rx,
            first: before == 0,
        })
    }

    /// Releases up to `n` waiting requests, oldest first (skipping those
    /// whose requester already gave up).
    pub(crate) fn release(&self, n: usize) {
        let mut woken = 0;
        let mut waiters = self.lock();
        while woken < n {
            let Some(tx) = waiters.pop_front() else { break };
            if tx.send(()).is_ok() {
                woken += 1;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<oneshot::Sender<()>>> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Ticket<'_> {
    /// Waits for release, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<(), HoldTimeout> {
        match tokio::time::timeout(timeout, &mut self.released).await {
            Ok(_) => Ok(()),
            Err(_) => Err(HoldTimeout),
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.held.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_until_released_in_order() {
        let queue = HoldQueue::new(10);
        let mut first = match queue.admit(|| false) {
            Admission::Held(t) => t,
            other => panic!("{other:?}"),
        };
        let mut second = match queue.admit(|| false) {
            Admission::Held(t) => t,
            other => panic!("{other:?}"),
        };
        assert!(first.first && !second.first);
        assert_eq!(queue.held(), 2);
        queue.release(usize::MAX);
        assert_eq!(first.wait(Duration::from_secs(5)).await, Ok(()));
        assert_eq!(second.wait(Duration::from_secs(5)).await, Ok(()));
        drop((first, second));
        assert_eq!(queue.held(), 0);
    }

    #[tokio::test]
    async fn release_n_wakes_the_oldest_and_readmit_keeps_the_place() {
        let queue = HoldQueue::new(10);
        let mut tickets: Vec<_> = (0..3)
            .map(|_| match queue.admit(|| false) {
                Admission::Held(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        queue.release(1);
        assert_eq!(tickets[0].wait(Duration::from_secs(5)).await, Ok(()));
        // The released request lost its slot: back to the front, ahead of #1.
        let mut again = match queue.readmit(|| false) {
            Admission::Held(t) => t,
            other => panic!("{other:?}"),
        };
        queue.release(1);
        assert_eq!(again.wait(Duration::from_secs(5)).await, Ok(()));
        assert_eq!(
            tickets[1].wait(Duration::from_millis(50)).await,
            Err(HoldTimeout),
            "only one was released"
        );
        drop(tickets.remove(0));
        drop(again);
        assert_eq!(queue.held(), 2);
    }

    #[tokio::test]
    async fn full_queue_rejects_at_once() {
        let queue = HoldQueue::new(1);
        let _held = queue.admit(|| false);
        assert!(matches!(queue.admit(|| false), Admission::Full));
        assert_eq!(queue.held(), 1);
    }

    #[tokio::test]
    async fn ready_under_lock_skips_the_queue() {
        let queue = HoldQueue::new(1);
        assert!(matches!(queue.admit(|| true), Admission::ReadyNow));
        assert_eq!(queue.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_frees_the_slot_and_sweeps_the_sender() {
        let queue = HoldQueue::new(100);
        for _ in 0..50 {
            let mut ticket = match queue.admit(|| false) {
                Admission::Held(t) => t,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                ticket.wait(Duration::from_millis(10)).await,
                Err(HoldTimeout)
            );
        }
        assert_eq!(queue.held(), 0);
        assert!(queue.lock().len() <= 17, "closed senders were swept");
        // A new holder after timeouts is again "first" and wakes the controller.
        let first = matches!(queue.admit(|| false), Admission::Held(ref t) if t.first);
        assert!(first);
    }
}
