//! The request body on its way to a replica (`OutBody`).
//!
//! A body streams from the client to the replica, frame by frame, trailers
//! included, with two exceptions that
//! keep bad bodies from reaching a replica:
//! - a chunked HTTP/1 body is read ahead up to `proxy.limits.body_buffer`
//!   before the request is forwarded ([`read_ahead`]), as nginx buffers
//!   bodies: one that is malformed or over `max_body` within that much gets
//!   400 or 413 with nothing forwarded. Only what the client sends without
//!   pausing is waited for, so a streamed upload is not held up. HTTP/2
//!   bodies are not read ahead: a gRPC stream may wait for the replica's
//!   answer before sending more.
//! - every body is counted against `max_body` as it streams
//!   ([`ClientBody`]); one that grows past it, or that the client breaks off,
//!   fails with a [`BodyError`] that `forward` answers as 413 or 400.
//!
//! To retry a refused connection on another replica (stage 5, `forward`)
//! the body must survive the failed attempt, so when a retry is possible
//! the body is lent to the attempt through a shared slot and taken back if
//! the attempt never polled it.
//!
//! A leaf of the module graph: the connection pool sends this type, and
//! nothing here knows about pools, services or responses.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Why a request body could not be passed on. It is the client's doing,
/// so the client gets a 4xx, not a 502.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Malformed framing (a bad chunk size) or a client that went away.
    #[error("the request body was malformed or cut off: {0}")]
    Client(hyper::Error),
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

impl BodyError {
    /// The `BodyError` that made `err` (a failed exchange with a replica)
    /// fail, if it was the body's fault.
    pub fn cause_of<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e BodyError> {
        let mut cause = Some(err);
        while let Some(err) = cause {
            if let Some(found) = err.downcast_ref::<BodyError>() {
                return Some(found);
            }
            cause = err.source();
        }
        None
    }
}

/// The client's body: what was read ahead, then the rest as it arrives,
/// counted against the service's limit.
#[derive(Debug)]
pub struct ClientBody {
    ahead: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
    received: u64,
    limit: u64,
    /// The access log's count of the bytes received, when it wants one.
    tally: Option<Arc<AtomicU64>>,
}

impl ClientBody {
    /// `body`, allowed at most `limit` bytes (`u64::MAX`: no limit).
    pub fn new(body: Incoming, limit: u64) -> Self {
        Self {
            ahead: VecDeque::new(),
            rest: Some(body),
            received: 0,
            limit,
            tally: None,
        }
    }

    /// The same body, adding the bytes it receives to `tally` too.
    pub fn tallied(mut self, tally: Option<Arc<AtomicU64>>) -> Self {
        self.tally = tally;
        self
    }

    fn count(&mut self, frame: &Frame<Bytes>) -> Result<(), BodyError> {
        if let Some(data) = frame.data_ref() {
            self.received += data.len() as u64;
            if let Some(tally) = &self.tally {
                tally.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            if self.received > self.limit {
                self.rest = None;
                return Err(BodyError::TooLarge { limit: self.limit });
            }
        }
        Ok(())
    }

    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(rest) = self.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(self.count(&frame).map(|()| frame))),
            Poll::Ready(Some(Err(err))) => {
                self.rest = None;
                Poll::Ready(Some(Err(BodyError::Client(err))))
            }
            Poll::Ready(None) => {
                self.rest = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.ahead.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => self.poll_rest(cx),
        }
    }

    fn ended(&self) -> bool {
        self.ahead.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn hint(&self) -> SizeHint {
        let ahead: u64 = self
            .ahead
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        // A body read whole goes out with a Content-Length, unless it ends
        // in trailers, which only chunked framing carries.
        let trailers = self.ahead.iter().any(Frame::is_trailers);
        match &self.rest {
            None if !trailers => SizeHint::with_exact(ahead),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(ahead);
                hint
            }
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + ahead);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
        }
    }
}

/// Whether a body of this length should be read ahead before forwarding:
/// one of unknown length on HTTP/1 (chunked), with a buffer to read into.
pub fn wants_read_ahead(body: &Incoming, version: http::Version, buffer: u64) -> bool {
    buffer > 0
        && version < http::Version::HTTP_2
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
}

/// Longest the client may pause between frames of a body being read ahead,
/// and longest the whole read-ahead may take: a body sent at once is read
/// whole; one that trickles (a client streaming an upload and reading the
/// answer as it goes) streams on from where it paused.
const READ_AHEAD_PAUSE: Duration = Duration::from_millis(100);
const READ_AHEAD_MAX: Duration = Duration::from_secs(1);

/// Reads `body` until it ends, `buffer` bytes have arrived or the client
/// pauses. A malformed or oversized body read that far fails here, before
/// anything was forwarded.
pub async fn read_ahead(mut body: ClientBody, buffer: u64) -> Result<ClientBody, BodyError> {
    let deadline = tokio::time::Instant::now() + READ_AHEAD_MAX;
    while body.received < buffer {
        let Some(rest) = body.rest.as_mut() else {
            break;
        };
        let wait = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .min(READ_AHEAD_PAUSE);
        let Ok(next) = tokio::time::timeout(wait, rest.frame()).await else {
            break;
        };
        match next {
            Some(Ok(frame)) => {
                body.count(&frame)?;
                body.ahead.push_back(frame);
            }
            Some(Err(err)) => return Err(BodyError::Client(err)),
            None => body.rest = None,
        }
    }
    Ok(body)
}

/// A request body on its way to a replica.
#[derive(Debug)]
pub enum OutBody {
    Streamed(ClientBody),
    Lent(Lent),
    /// No body (a request the proxy makes itself).
    Empty,
}

/// A body lent to one forwarding attempt.
#[derive(Debug, Clone)]
pub struct Lent {
    slot: Arc<Mutex<Option<ClientBody>>>,
    polled: Arc<AtomicBool>,
}

impl Lent {
    pub(crate) fn new(body: ClientBody) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(body))),
            polled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The body back, if the attempt never read from it.
    pub(crate) fn reclaim(&self) -> Option<ClientBody> {
        if self.polled.load(Ordering::SeqCst) {
            return None;
        }
        self.slot.lock().ok()?.take()
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            OutBody::Streamed(body) => body.poll_next(cx),
            OutBody::Lent(lent) => {
                lent.polled.store(true, Ordering::SeqCst);
                let Ok(mut slot) = lent.slot.lock() else {
                    return Poll::Ready(None);
                };
                match slot.as_mut() {
                    Some(body) => body.poll_next(cx),
                    None => Poll::Ready(None),
                }
            }
            OutBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Streamed(body) => body.ended(),
            OutBody::Lent(lent) => lent
                .slot
                .lock()
                .map(|s| s.as_ref().is_none_or(ClientBody::ended))
                .unwrap_or(true),
            OutBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Streamed(body) => body.hint(),
            OutBody::Lent(lent) => lent
                .slot
                .lock()
                .ok()
                .and_then(|s| s.as_ref().map(ClientBody::hint))
                .unwrap_or_default(),
            OutBody::Empty => SizeHint::with_exact(0),
        }
    }
}
