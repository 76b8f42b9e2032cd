//! The two body types of the data path.
//!
//! `OutBody` goes to a replica. A request body is never buffered: it streams
//! from the client to the replica. To retry a refused connection on another
//! replica the body must survive the failed attempt, so when a retry is
//! possible the body is lent to the attempt through a shared slot and taken
//! back if the attempt never polled it.
//!
//! `ProxyBody` goes to the client: the replica's streamed response (carrying
//! the request's completion guard, so a request counts as in flight until its
//! last byte) or a small body the proxy wrote itself.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::handler::Completion;
use crate::pool::Pooled;

/// A request body on its way to a replica.
#[derive(Debug)]
pub enum OutBody {
    Streamed(Incoming),
    Lent(Lent),
    /// No body (a request the proxy makes itself).
    Empty,
}

/// A body lent to one forwarding attempt.
#[derive(Debug, Clone)]
pub struct Lent {
    slot: Arc<Mutex<Option<Incoming>>>,
    polled: Arc<AtomicBool>,
}

impl Lent {
    pub fn new(body: Incoming) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            polled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The body back, if the attempt never read from it.
    pub fn reclaim(&self) -> Option<Incoming> {
        if self.polled.load(Ordering::SeqCst) {
            return None;
        }
        self.slot.lock().ok()?.take()
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            OutBody::Streamed(body) => Pin::new(body).poll_frame(cx),
            OutBody::Lent(lent) => {
                lent.polled.store(true, Ordering::SeqCst);
                let Ok(mut slot) = lent.slot.lock() else {
                    return Poll::Ready(None);
                };
                match slot.as_mut() {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
            OutBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Streamed(body) => body.is_end_stream(),
            OutBody::Lent(lent) => lent
                .slot
                .lock()
                .map(|s| s.as_ref().is_none_or(Body::is_end_stream))
                .unwrap_or(true),
            OutBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Streamed(body) => body.size_hint(),
            OutBody::Lent(lent) => lent
                .slot
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(Body::size_hint))
                .unwrap_or_default(),
            OutBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        body: Incoming,
        /// The replica connection the body arrives on: back to the pool
        /// once the body has ended, closed if it is dropped unfinished.
        conn: Option<Pooled>,
        /// Dropped when the body ends or the client goes away.
        completion: Option<Completion>,
    },
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn text(text: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(text.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so a finished
        // response usually ends here rather than in `poll_frame`.
        if let ProxyBody::Upstream {
            body,
            conn,
            completion,
        } = self
        {
            finish_upstream(conn, completion, body.is_end_stream());
        }
    }
}

/// The replica's response is over: its connection goes back to the pool if
/// the body ended (closed otherwise), and the request counts as finished.
/// The connection first: a request waiting for this request's slot may then
/// reuse it.
fn finish_upstream(conn: &mut Option<Pooled>, completion: &mut Option<Completion>, ended: bool) {
    if let Some(conn) = conn.take() {
        if ended {
            conn.release();
        }
    }
    completion.take();
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                conn,
                completion,
            } => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    finish_upstream(conn, completion, true);
                }
                polled
            }
            ProxyBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
