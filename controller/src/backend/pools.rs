//! Overflow pools (`backend.pools`): one service's replicas spread over
//! several backends in priority order, e.g. local processes first and
//! containers or a cluster for what does not fit.
//!
//! [`PooledBackend`] is a [`Backend`] over one backend per pool, so the
//! reconcile loop drives a pooled service like any other:
//! - `ensure(n)` fills the first pool up to its `max_replicas`, then the
//!   next, counting what each pool runs (and, for a cluster, has asked for)
//!   now. A pool whose start fails is skipped for the rest of the call and
//!   for a backoff ([`RESTART`]), its error kept for the status API; the
//!   call succeeds with what the other pools started, and fails only when
//!   replicas were needed and nothing could start;
//! - `list()` is the union of the pools' lists. A pool that cannot be
//!   listed fails the whole call if it had replicas (the loop then keeps
//!   what it has, as for any backend that is down), and is skipped and
//!   reported if it had none;
//! - `removal_order` puts the last pool's replicas last (the loop removes
//!   from the end), each pool's own order kept among its replicas, so a
//!   scale-down empties the overflow first;
//! - [`Backend::capacity`] is the pools' room, so the loop never asks for
//!   more than they hold.
//!
//! Which pool owns a replica is learnt from the pools' lists and starts;
//! `stop` goes to that pool only (two cluster pools may share a namespace,
//! and a stop of a pod that is not its own would lower its count).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rouse_nats::backoff::RESTART;
use tokio::time::Instant;

use super::{Backend, BackendError, Health, Replica, Started, Usage};

/// One pool: a name, a cap, and the backend that runs its replicas.
pub struct Pool {
    pub name: String,
    pub max_replicas: u32,
    pub backend: Box<dyn Backend>,
}

/// A pool as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    /// `process`, `docker` or `kubernetes`.
    pub backend: &'static str,
    pub max_replicas: u32,
    /// Why the pool last failed to start or list replicas; cleared when it
    /// next does.
    pub error: Option<String>,
}

/// What the pooled backend knows of one pool between calls.
#[derive(Debug, Default)]
struct PoolState {
    /// Replicas of this pool: those it listed last, and those started since.
    ids: HashSet<String>,
    /// Of those, the running ones.
    running: usize,
    /// Replicas its platform will create that its list does not show yet.
    pending: usize,
    start_failures: u32,
    /// No start is tried before this, after a failed one.
    retry_at: Option<Instant>,
    start_error: Option<String>,
    list_error: Option<String>,
}

impl PoolState {
    /// Replicas it runs or will run.
    fn current(&self) -> usize {
        self.running + self.pending
    }

    fn available(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|at| now >= at)
    }

    fn error(&self) -> Option<String> {
        self.list_error.clone().or_else(|| self.start_error.clone())
    }

    /// Replicas it had at its last good list (or started since).
    fn had_replicas(&self) -> bool {
        !self.ids.is_empty() || self.pending > 0
    }

    /// A good list: replicas not seen before were pending ones (a cluster
    /// creates what it was asked for).
    fn listed(&mut self, replicas: &[Replica]) {
        let new = replicas
            .iter()
            .filter(|r| !self.ids.contains(&r.id))
            .count();
        self.pending = self.pending.saturating_sub(new);
        self.ids = replicas.iter().map(|r| r.id.clone()).collect();
        self.running = replicas
            .iter()
            .filter(|r| r.health == Health::Running)
            .count();
        self.list_error = None;
    }

    fn started(&mut self, started: &Started) {
        for replica in &started.replicas {
            if self.ids.insert(replica.id.clone()) {
                self.running += 1;
            }
        }
        self.pending = started.pending;
        self.start_failures = 0;
        self.retry_at = None;
        self.start_error = None;
    }

    fn start_failed(&mut self, err: &BackendError, now: Instant) {
        self.retry_at = Some(now + RESTART.nth(self.start_failures as usize));
        self.start_failures += 1;
        self.start_error = Some(err.to_string());
    }
}

/// The backend of a service with `backend.pools`; see the module docs.
pub struct PooledBackend {
    service: String,
    pools: Vec<Pool>,
    /// One per pool, same order. Never held across an await.
    state: Mutex<Vec<PoolState>>,
}

impl PooledBackend {
    /// `pools` in priority order (the first is filled first).
    pub fn new(service: &str, pools: Vec<Pool>) -> Self {
        let state = pools.iter().map(|_| PoolState::default()).collect();
        Self {
            service: service.to_string(),
            pools,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PoolState>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wrap(pool: &Pool, source: BackendError) -> BackendError {
        BackendError::Pool {
            pool: pool.name.clone(),
            source: Box::new(source),
        }
    }

    /// Replicas all pools run or will run.
    fn total(&self) -> usize {
        self.lock().iter().map(PoolState::current).sum()
    }

    fn pending(&self) -> usize {
        self.lock().iter().map(|s| s.pending).sum()
    }

    /// Lists every pool, keeping each one's result in its state; `Err` as
    /// `list()` defines it, after all pools were asked.
    async fn refresh(&self) -> Result<Vec<Replica>, BackendError> {
        let results = futures::future::join_all(self.pools.iter().map(|p| p.backend.list())).await;
        let mut state = self.lock();
        let mut replicas = Vec::new();
        let mut fatal = None;
        for ((pool, pool_state), result) in self.pools.iter().zip(state.iter_mut()).zip(results) {
            match result {
                Ok(listed) => {
                    if pool_state.list_error.is_some() {
                        tracing::info!(service = %self.service, pool = %pool.name, "pool answers again");
                    }
                    pool_state.listed(&listed);
                    replicas.extend(listed);
                }
                Err(err) => {
                    if pool_state.list_error.is_none() {
                        tracing::warn!(service = %self.service, pool = %pool.name, error = %err, "cannot list the pool's replicas");
                    }
                    pool_state.list_error = Some(err.to_string());
                    if pool_state.had_replicas() {
                        fatal.get_or_insert(Self::wrap(pool, err));
                    }
                }
            }
        }
        match fatal {
            Some(err) => Err(err),
            None => Ok(replicas),
        }
    }

    /// Starts `missing` replicas in the pools with room, in order; returns
    /// what started and why pools with room did not start any.
    async fn fill(&self, mut missing: usize) -> (Vec<Replica>, Vec<String>) {
        let mut replicas = Vec::new();
        let mut reasons = Vec::new();
        for (rank, pool) in self.pools.iter().enumerate() {
            if missing == 0 {
                break;
            }
            let now = Instant::now();
            let (current, available, error) = {
                let state = &self.lock()[rank];
                (
                    state.current(),
                    state.available(now),
                    state.start_error.clone(),
                )
            };
            let room = (pool.max_replicas as usize).saturating_sub(current);
            if room == 0 {
                continue;
            }
            if !available {
                let why = error.unwrap_or_default();
                reasons.push(format!("pool `{}` is backing off after: {why}", pool.name));
                continue;
            }
            let add = missing.min(room);
            match pool.backend.ensure(current + add).await {
                Ok(started) => {
                    missing -= add;
                    self.lock()[rank].started(&started);
                    replicas.extend(started.replicas);
                }
                Err(err) => {
                    tracing::warn!(service = %self.service, pool = %pool.name, error = %err, "pool could not start replicas; trying the next");
                    let err = Self::wrap(pool, err);
                    self.lock()[rank].start_failed(&err, Instant::now());
                    reasons.push(err.to_string());
                }
            }
        }
        (replicas, reasons)
    }

    /// Takes back `excess` replicas not created yet, from the last pool
    /// first. Created ones stay: removing those is a drain and `stop`.
    async fn cancel(&self, mut excess: usize) -> Result<(), BackendError> {
        let mut first_error = None;
        for (rank, pool) in self.pools.iter().enumerate().rev() {
            if excess == 0 {
                break;
            }
            let (current, pending) = {
                let state = &self.lock()[rank];
                (state.current(), state.pending)
            };
            let cancel = excess.min(pending);
            if cancel == 0 {
                continue;
            }
            match pool.backend.ensure(current - cancel).await {
                Ok(started) => {
                    excess -= cancel;
                    self.lock()[rank].pending = started.pending;
                }
                Err(err) => {
                    first_error.get_or_insert(Self::wrap(pool, err));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The rank of each id's pool (`usize::MAX` when unknown), in one lock.
    fn ranks(&self, ids: &[String]) -> Vec<usize> {
        let state = self.lock();
        ids.iter()
            .map(|id| {
                state
                    .iter()
                    .position(|s| s.ids.contains(id))
                    .unwrap_or(usize::MAX)
            })
            .collect()
    }
}

#[async_trait]
impl Backend for PooledBackend {
    fn kind(&self) -> &'static str {
        "pools"
    }

    /// The longest of the pools' (for replicas of no known pool).
    fn startup_timeout(&self) -> Duration {
        self.pools
            .iter()
            .map(|p| p.backend.startup_timeout())
            .max()
            .unwrap_or_default()
    }

    fn startup_timeout_of(&self, id: &str) -> Duration {
        match self.pool_of(id) {
            Some(rank) => self.pools[rank].backend.startup_timeout_of(id),
            None => self.startup_timeout(),
        }
    }

    /// Each pool's cap; a pool backing off after a failed start counts
    /// only what it runs, until its next try is due.
    fn capacity(&self) -> Option<u32> {
        let now = Instant::now();
        let state = self.lock();
        let room = self.pools.iter().zip(state.iter()).map(|(pool, s)| {
            if s.available(now) {
                pool.max_replicas
            } else {
                u32::try_from(s.current()).unwrap_or(u32::MAX)
            }
        });
        Some(room.fold(0u32, u32::saturating_add))
    }

    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        // Counts as of now; a pool that cannot be listed keeps its last.
        let _ = self.refresh().await;
        let current = self.total();
        if n < current {
            self.cancel(current - n).await?;
            return Ok(Started {
                replicas: Vec::new(),
                pending: self.pending(),
            });
        }
        let pending_before = self.pending();
        let (replicas, reasons) = self.fill(n - current).await;
        let pending = self.pending();
        if n > current && replicas.is_empty() && pending <= pending_before && !reasons.is_empty() {
            return Err(BackendError::NoPool {
                reasons: reasons.join("; "),
            });
        }
        Ok(Started { replicas, pending })
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        self.refresh().await
    }

    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let Some(rank) = self.pool_of(id) else {
            tracing::debug!(service = %self.service, replica = %id, "not stopping a replica of no known pool");
            return Ok(());
        };
        let pool = &self.pools[rank];
        pool.backend
            .stop(id)
            .await
            .map_err(|err| Self::wrap(pool, err))
    }

    /// Grouped by pool, the last pool's at the end (removed first), each
    /// group in its pool's own order.
    fn removal_order(&self, ids: &mut [String]) {
        let mut ranked: Vec<(usize, String)> = self
            .ranks(ids)
            .into_iter()
            .zip(ids.iter().cloned())
            .collect();
        // Stable: within a pool, the order the loop gave (oldest first).
        ranked.sort_by_key(|(rank, _)| *rank);
        for (slot, (_, id)) in ids.iter_mut().zip(&ranked) {
            slot.clone_from(id);
        }
        let mut start = 0;
        for group in ranked.chunk_by(|a, b| a.0 == b.0) {
            let end = start + group.len();
            if let Some(pool) = self.pools.get(group[0].0) {
                pool.backend.removal_order(&mut ids[start..end]);
            }
            start = end;
        }
    }

    fn keeps_replicas_on_shutdown(&self) -> bool {
        self.pools
            .iter()
            .all(|p| p.backend.keeps_replicas_on_shutdown())
    }

    fn keeps_on_shutdown(&self, id: &str) -> bool {
        match self.pool_of(id) {
            Some(rank) => self.pools[rank].backend.keeps_on_shutdown(id),
            None => self.keeps_replicas_on_shutdown(),
        }
    }

    fn pools(&self) -> Vec<PoolInfo> {
        let state = self.lock();
        self.pools
            .iter()
            .zip(state.iter())
            .map(|(pool, s)| PoolInfo {
                name: pool.name.clone(),
                backend: pool.backend.kind(),
                max_replicas: pool.max_replicas,
                error: s.error(),
            })
            .collect()
    }

    fn pool_of(&self, id: &str) -> Option<usize> {
        self.lock().iter().position(|s| s.ids.contains(id))
    }

    /// The pools' measurements together; an error only if no pool has any.
    async fn usage(&self) -> Result<Vec<Usage>, BackendError> {
        let results = futures::future::join_all(self.pools.iter().map(|p| p.backend.usage())).await;
        let mut usage = Vec::new();
        let mut first_error = None;
        let mut any = false;
        for (pool, result) in self.pools.iter().zip(results) {
            match result {
                Ok(found) => {
                    any = true;
                    usage.extend(found);
                }
                Err(err) => {
                    first_error.get_or_insert(Self::wrap(pool, err));
                }
            }
        }
        match first_error {
            Some(err) if !any => Err(err),
            _ => Ok(usage),
        }
    }
}

#[cfg(test)]
mod tests;
