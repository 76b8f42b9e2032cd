//! The bounded wait queue of a cold service, which stage 3 (`hold`) waits in.
//!
//! A request that finds no ready replica takes a ticket and waits; the request
//! itself (headers and unread body) stays where it is, so holding costs a
//! oneshot channel, not a buffer. When the KV watcher publishes a ready
//! endpoint set it releases every ticket in arrival order. The queue lock is
//! only taken on this cold path; the warm path never touches it.
//!
//! One client address may hold at most `hold.max_requests_per_client` of
//! the queue's places, so that one client cannot fill it for everyone; its
//! count lives in a map touched only on this cold path.
//!
//! Apart from `hold` because every `Service` owns one: the service state
//! needs the queue, and the hold stage needs the service.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::oneshot;

/// The wait queue of one service.
#[derive(Debug)]
pub struct HoldQueue {
    waiters: Mutex<VecDeque<oneshot::Sender<()>>>,
    held: AtomicUsize,
    /// `hold.max_requests`; changes with the service's definition.
    max: AtomicUsize,
    /// Places taken per client address; an address leaves the map with its
    /// last place.
    per_client: DashMap<IpAddr, usize>,
    max_per_client: AtomicUsize,
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
    /// This client already holds `hold.max_requests_per_client` places.
    ClientFull,
}

/// A place in the queue; leaving (by release, timeout or a client that went
/// away) is counted when the ticket is dropped.
#[derive(Debug)]
pub struct Ticket<'a> {
    queue: &'a HoldQueue,
    client: IpAddr,
    released: oneshot::Receiver<()>,
    /// The first request held since the queue was last empty; it wakes the
    /// controller.
    pub first: bool,
}

/// The ticket was not released within the hold timeout.
#[derive(Debug, PartialEq, Eq)]
pub struct HoldTimeout;

impl HoldQueue {
    pub(crate) fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            waiters: Mutex::new(VecDeque::new()),
            held: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            per_client: DashMap::new(),
            max_per_client: AtomicUsize::new(max_per_client),
        }
    }

    /// The most places in the queue (`hold.max_requests`).
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// The most places one client may hold.
    pub fn max_per_client(&self) -> usize {
        self.max_per_client.load(Ordering::Relaxed)
    }

    /// New limits from a changed definition; requests already held keep
    /// their places.
    pub(crate) fn set_limits(&self, max: usize, max_per_client: usize) {
        self.max.store(max, Ordering::Relaxed);
        self.max_per_client.store(max_per_client, Ordering::Relaxed);
    }

    /// Requests waiting now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Joins the back of the queue unless it is full or `is_ready` turns true
    /// under the queue lock (which the releaser also takes, so no wake-up is
    /// lost).
    pub(crate) fn admit(&self, client: IpAddr, is_ready: impl Fn() -> bool) -> Admission<'_> {
        self.join(client, is_ready, false)
    }

    /// Like [`admit`](Self::admit), but at the front: for a released request
    /// that lost its slot to a newcomer, so it keeps its place in line.
    /// Its client's share is not checked again: the request already had a
    /// place.
    pub(crate) fn readmit(&self, client: IpAddr, is_ready: impl Fn() -> bool) -> Admission<'_> {
        self.join(client, is_ready, true)
    }

    fn join(&self, client: IpAddr, is_ready: impl Fn() -> bool, front: bool) -> Admission<'_> {
        let before = self.held.fetch_add(1, Ordering::SeqCst);
        if before >= self.max.load(Ordering::Relaxed) {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Admission::Full;
        }
        if !self.take_client_place(client, !front) {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Admission::ClientFull;
        }
        let mut waiters = self.lock();
        if is_ready() {
            drop(waiters);
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.leave_client_place(client);
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
            client,
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

    /// Counts a place for `client`, unless `enforce` and it has its share.
    fn take_client_place(&self, client: IpAddr, enforce: bool) -> bool {
        let mut places = self.per_client.entry(client).or_insert(0);
        if enforce && *places >= self.max_per_client() {
            return false;
        }
        *places += 1;
        true
    }

    fn leave_client_place(&self, client: IpAddr) {
        self.per_client.remove_if_mut(&client, |_, places| {
            *places = places.saturating_sub(1);
            *places == 0
        });
    }

    /// Client addresses holding places now.
    pub fn clients(&self) -> usize {
        self.per_client.len()
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
        self.queue.leave_client_place(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const OTHER: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

    impl HoldQueue {
        fn test(max: usize) -> Self {
            Self::new(max, max)
        }
    }

    #[tokio::test]
    async fn holds_until_released_in_order() {
        let queue = HoldQueue::test(10);
        let mut first = match queue.admit(CLIENT, || false) {
            Admission::Held(t) => t,
            other => panic!("{other:?}"),
        };
        let mut second = match queue.admit(CLIENT, || false) {
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
        let queue = HoldQueue::test(10);
        let mut tickets: Vec<_> = (0..3)
            .map(|_| match queue.admit(CLIENT, || false) {
                Admission::Held(t) => t,
                other => panic!("{other:?}"),
            })
            .collect();
        queue.release(1);
        assert_eq!(tickets[0].wait(Duration::from_secs(5)).await, Ok(()));
        // The released request lost its slot: back to the front, ahead of #1.
        let mut again = match queue.readmit(CLIENT, || false) {
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
        let queue = HoldQueue::test(1);
        let _held = queue.admit(CLIENT, || false);
        assert!(matches!(queue.admit(CLIENT, || false), Admission::Full));
        assert_eq!(queue.held(), 1);
    }

    #[tokio::test]
    async fn ready_under_lock_skips_the_queue() {
        let queue = HoldQueue::test(1);
        assert!(matches!(queue.admit(CLIENT, || true), Admission::ReadyNow));
        assert_eq!(queue.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_frees_the_slot_and_sweeps_the_sender() {
        let queue = HoldQueue::test(100);
        for _ in 0..50 {
            let mut ticket = match queue.admit(CLIENT, || false) {
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
        let first = matches!(queue.admit(CLIENT, || false), Admission::Held(ref t) if t.first);
        assert!(first);
    }

    fn held(admission: Admission<'_>) -> Option<Ticket<'_>> {
        match admission {
            Admission::Held(ticket) => Some(ticket),
            _ => None,
        }
    }

    #[tokio::test]
    async fn one_client_gets_its_share_and_others_still_get_in() {
        let queue = HoldQueue::new(10, 2);
        let first = held(queue.admit(CLIENT, || false)).expect("first");
        let second = held(queue.admit(CLIENT, || false)).expect("second");
        assert!(matches!(
            queue.admit(CLIENT, || false),
            Admission::ClientFull
        ));
        assert_eq!(queue.held(), 2, "the refused request took no place");
        let other = held(queue.admit(OTHER, || false)).expect("another client");
        assert_eq!(queue.clients(), 2);
        // A released request going back in line keeps its place even when
        // its client is at its share.
        let again = held(queue.readmit(CLIENT, || false)).expect("readmitted");
        drop((first, again));
        let third = held(queue.admit(CLIENT, || false)).expect("a place came free");
        drop((second, third, other));
        assert_eq!(queue.held(), 0);
        assert_eq!(queue.clients(), 0, "addresses leave with their last place");
    }

    #[tokio::test]
    async fn a_full_or_ready_queue_gives_the_clients_place_back() {
        let queue = HoldQueue::new(1, 1);
        let _held = queue.admit(CLIENT, || false);
        assert!(matches!(queue.admit(OTHER, || false), Admission::Full));
        assert!(
            matches!(queue.admit(OTHER, || false), Admission::Full),
            "not ClientFull"
        );
        let ready = HoldQueue::new(5, 1);
        assert!(matches!(ready.admit(CLIENT, || true), Admission::ReadyNow));
        assert!(matches!(ready.admit(CLIENT, || true), Admission::ReadyNow));
        assert_eq!(ready.clients(), 0);
    }
}
