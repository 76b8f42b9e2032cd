//! HTTP/2 (h2c, prior knowledge) connections to replicas, one pool per data
//! thread.
//!
//! An HTTP/2 connection carries many requests at once, so unlike the
//! HTTP/1.1 pool (`pool`) nothing is lent or given back: each replica has
//! one shared connection per data thread, and a request takes a clone of its
//! `SendRequest` (a few reference counts) under the thread's own,
//! uncontended lock. The replica's `SETTINGS_MAX_CONCURRENT_STREAMS` is
//! honoured by h2 itself: requests beyond it wait for a stream, not for a
//! second connection.
//!
//! Connecting is single-flight: a cold start releases every held request
//! at once, and they must share the one handshake rather than open a
//! connection each. A connect that fails fails every request waiting for it,
//! each of which `forward` then retries on another replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, Shared};
use http::uri::Authority;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::pool::{ConnectError, PoolSettings};
use crate::request_body::OutBody;

/// TCP keep-alive probes, as on HTTP/1.1 replica connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 PINGs on a connection that has streams open: a replica that
/// stopped answering fails its streams instead of hanging them.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

type Connecting = Shared<BoxFuture<'static, Result<SendRequest<OutBody>, Arc<ConnectError>>>>;

enum Slot {
    Ready {
        sender: SendRequest<OutBody>,
        /// Tells this connection from the one that replaces it.
        generation: u64,
        last_used: Instant,
    },
    Connecting {
        connecting: Connecting,
        generation: u64,
    },
}

/// A connection to one replica, shared with the other requests on it.
pub struct H2Conn {
    pub sender: SendRequest<OutBody>,
    /// Whether it was already open (a request it fails to take is then
    /// worth one more try on a new connection).
    pub reused: bool,
    generation: u64,
}

/// One shared connection per replica address (see the module doc).
pub struct H2Pool {
    settings: PoolSettings,
    slots: Mutex<HashMap<Box<str>, Slot>>,
    generations: AtomicU64,
    sweeping: AtomicBool,
}

impl H2Pool {
    pub fn new(settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            slots: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
        })
    }

    /// The open connection to `authority`, or the one being made, or a new
    /// one.
    pub async fn get(self: &Arc<Self>, authority: &Authority) -> Result<H2Conn, ConnectError> {
        self.get_replacing(authority, None).await
    }

    /// Like [`get`](Self::get), but a connection of generation `failed`
    /// (one that just failed to take a request) is replaced, not returned.
    pub async fn replace(
        self: &Arc<Self>,
        authority: &Authority,
        failed: &H2Conn,
    ) -> Result<H2Conn, ConnectError> {
        self.get_replacing(authority, Some(failed.generation)).await
    }

    /// Replica addresses with a connection (open or being made).
    pub fn connection_count(&self) -> usize {
        self.lock().len()
    }

    /// Forgets connections the replica closed and closes those unused for
    /// the idle timeout (requests still on one keep it open until they end).
    pub fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        self.lock().retain(|_, slot| match slot {
            Slot::Ready {
                sender, last_used, ..
            } => !sender.is_closed() && now.duration_since(*last_used) < timeout,
            Slot::Connecting { .. } => true,
        });
    }

    async fn get_replacing(
        self: &Arc<Self>,
        authority: &Authority,
        failed: Option<u64>,
    ) -> Result<H2Conn, ConnectError> {
        let (connecting, generation) = {
            let mut slots = self.lock();
            match slots.get_mut(authority.as_str()) {
                Some(Slot::Ready {
                    sender,
                    generation,
                    last_used,
                }) if !sender.is_closed() && failed != Some(*generation) => {
                    *last_used = Instant::now();
                    return Ok(H2Conn {
                        sender: sender.clone(),
                        reused: true,
                        generation: *generation,
                    });
                }
                Some(Slot::Connecting {
                    connecting,
                    generation,
                }) => (connecting.clone(), *generation),
                _ => {
                    let generation = self.generations.fetch_add(1, Ordering::Relaxed);
                    let connecting = self.start_connect(authority);
                    slots.insert(
                        authority.as_str().into(),
                        Slot::Connecting {
                            connecting: connecting.clone(),
                            generation,
                        },
                    );
                    (connecting, generation)
                }
            }
        };
        // Boxed: connecting is the rare case, and its state would otherwise
        // be part of every request's future.
        let connected = Box::pin(connecting).await;
        self.settle(authority, generation, connected.as_ref().ok());
        match connected {
            Ok(sender) => Ok(H2Conn {
                sender,
                reused: false,
                generation,
            }),
            Err(err) => Err(ConnectError::Shared(err)),
        }
    }

    /// Turns the slot of the connect of `generation` into its outcome: the
    /// connection, or nothing (the next request tries afresh).
    fn settle(
        &self,
        authority: &Authority,
        generation: u64,
        sender: Option<&SendRequest<OutBody>>,
    ) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(authority.as_str()) else {
            return;
        };
        if !matches!(slot, Slot::Connecting { generation: g, .. } if *g == generation) {
            return;
        }
        match sender {
            Some(sender) => {
                *slot = Slot::Ready {
                    sender: sender.clone(),
                    generation,
                    last_used: Instant::now(),
                }
            }
            None => {
                slots.remove(authority.as_str());
            }
        }
    }

    fn start_connect(self: &Arc<Self>, authority: &Authority) -> Connecting {
        self.start_sweeping();
        let authority = authority.clone();
        let timeout = self.settings.connect_timeout;
        async move {
            tokio::time::timeout(timeout, connect(authority))
                .await
                .unwrap_or(Err(ConnectError::Timeout(timeout)))
                .map_err(Arc::new)
        }
        .boxed()
        .shared()
    }

    /// Sweeps every `idle_timeout / 2` (at least every second) from the
    /// first connect on, on the data thread that connected, for as long as
    /// the pool lives.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let period = (self.settings.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Slot>> {
        // The map holds no invariant a panicking holder could break.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn connect(authority: Authority) -> Result<SendRequest<OutBody>, ConnectError> {
    let stream = TcpStream::connect(authority.as_str()).await?;
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "h2 replica connection ended with an error");
        }
    });
    Ok(sender)
}
