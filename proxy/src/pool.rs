//! Idle HTTP/1.1 connections to replicas, one pool per data thread.
//!
//! A data thread owns its pool, as it owns its listener: a request, its
//! inbound connection and its upstream connection all live on one thread, so
//! the pool's lock is never contended and a connection's task never wakes
//! another thread.
//!
//! hyper-util's pooled client did this job before. Per request it boxes its
//! future, hashes the replica's authority under a lock shared by all threads
//! and spawns a task that waits for the connection to be reusable before
//! putting it back; profiles of the proxy at full load showed those (and the
//! moves of its large future) as the biggest share of rouse's own CPU time.
//! Here a connection goes back to the pool from the response body itself
//! once the replica's response has ended (`Pooled`), and the next request
//! waits for it to be ready only in the rare case it is not yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use http::uri::Authority;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::request_body::OutBody;

/// TCP keep-alive probes on replica connections: a replica host that
/// vanished without a FIN is noticed instead of hanging the pool.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How a pool treats its connections.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// An idle connection unused this long is closed.
    pub idle_timeout: Duration,
    /// Idle connections kept per replica; more are closed when returned.
    pub max_idle_per_endpoint: usize,
}

/// Why no connection could be made. No byte of the request was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    /// A connect shared by several requests (HTTP/2, see `h2pool`).
    #[error(transparent)]
    Shared(std::sync::Arc<ConnectError>),
}

type IdleMap = HashMap<Box<str>, Vec<Idle>, RandomState>;

struct Idle {
    sender: SendRequest<OutBody>,
    since: Instant,
}

/// Idle connections by replica address. Keyed by the address as a string:
/// `Authority` hashes byte by byte (it compares case-insensitively), a
/// measurable cost per request; replica addresses come from the controller
/// in one spelling. Hashed with foldhash rather than SipHash (two lookups per
/// request, 4 % of rouse's own instructions in a callgrind profile): the
/// keys are replica addresses, not client input.
pub struct Pool {
    settings: PoolSettings,
    idle: Mutex<IdleMap>,
}

/// A connection lent to one request. Given back with [`Pooled::release`]
/// once the response has ended; dropped otherwise, which closes it (an
/// HTTP/1.1 connection with an unfinished response cannot be reused).
pub struct Pooled {
    pub sender: SendRequest<OutBody>,
    pub reused: bool,
    authority: Authority,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("authority", &self.authority)
            .field("reused", &self.reused)
            .finish()
    }
}

impl Pooled {
    /// Back to the pool for the next request to this replica.
    ///
    /// Nearly always the connection is ready again at once: the replica's
    /// connection task marks it so in the same poll that ends the response.
    /// It is not when the request is still being sent, e.g. a client still
    /// uploading a body the replica answered early; then it waits apart
    /// (bounded by the idle timeout), so that no other request queues behind
    /// that upload.
    pub fn release(self) {
        let Pooled {
            mut sender,
            authority,
            pool,
            ..
        } = self;
        if sender.is_ready() {
            pool.put(authority, sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let timeout = pool.settings.idle_timeout;
        runtime.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(timeout, sender.ready()).await {
                pool.put(authority, sender);
            }
        });
    }
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            idle: Mutex::new(IdleMap::default()),
        })
    }

    /// A connection to `authority`: the most recently used idle one that is
    /// still open and ready, else a new one.
    pub async fn get(self: &Arc<Self>, authority: &Authority) -> Result<Pooled, ConnectError> {
        while let Some(mut sender) = self.take_idle(authority) {
            // Pooled only when ready; this fails for a connection the
            // replica has closed since.
            if sender.ready().await.is_ok() {
                return Ok(self.lend(sender, authority, true));
            }
        }
        self.connect_new(authority).await
    }

    /// A new connection to `authority`, bypassing the idle ones (for a
    /// request that a reused connection failed to take).
    pub(crate) async fn connect_new(
        self: &Arc<Self>,
        authority: &Authority,
    ) -> Result<Pooled, ConnectError> {
        // Boxed: connecting is the rare case, and its state would otherwise
        // be part of (and copied with) every request's future.
        let sender = Box::pin(self.connect(authority)).await?;
        Ok(self.lend(sender, authority, false))
    }

    /// Idle connections currently kept, over all replicas.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Closes connections idle longer than the idle timeout, and forgets
    /// those the replica closed (a replica that stopped leaves only those).
    pub fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        self.lock().retain(|_, idle| {
            idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
            !idle.is_empty()
        });
    }

    /// Sweeps every `idle_timeout / 2` (at least every second) for as long
    /// as the data thread runs.
    pub(crate) async fn sweep_periodically(self: Arc<Self>) {
        let period = (self.settings.idle_timeout / 2).max(Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    fn lend(
        self: &Arc<Self>,
        sender: SendRequest<OutBody>,
        authority: &Authority,
        reused: bool,
    ) -> Pooled {
        Pooled {
            sender,
            reused,
            authority: authority.clone(),
            pool: Arc::clone(self),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        // The map holds no invariant a panicking holder could break.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_idle(&self, authority: &Authority) -> Option<SendRequest<OutBody>> {
        let mut idle = self.lock();
        let list = idle.get_mut(authority.as_str())?;
        let timeout = self.settings.idle_timeout;
        while let Some(candidate) = list.pop() {
            if !candidate.sender.is_closed() && candidate.since.elapsed() < timeout {
                return Some(candidate.sender);
            }
        }
        None
    }

    fn put(&self, authority: Authority, sender: SendRequest<OutBody>) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        let mut pools = self.lock();
        match pools.get_mut(authority.as_str()) {
            Some(list) if list.len() < self.settings.max_idle_per_endpoint => list.push(idle),
            Some(_) => {}
            None => {
                pools.insert(authority.as_str().into(), vec![idle]);
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<SendRequest<OutBody>, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(authority.as_str()))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))??;
        stream.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(error = %err, "replica connection ended with an error");
            }
        });
        Ok(sender)
    }
}
