//! The request body on its way to a replica (`OutBody`).
//!
//! A request body is never buffered: it streams from the client to the
//! replica, frame by frame, trailers included. To retry a refused connection on another replica (stage 5,
//! `forward`) the body must survive the failed attempt, so when a retry is
//! possible the body is lent to the attempt through a shared slot and taken
//! back if the attempt never polled it.
//!
//! A leaf of the module graph: the connection pool sends this type, and
//! nothing here knows about pools, services or responses.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

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
    pub(crate) fn new(body: Incoming) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            polled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The body back, if the attempt never read from it.
    pub(crate) fn reclaim(&self) -> Option<Incoming> {
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
