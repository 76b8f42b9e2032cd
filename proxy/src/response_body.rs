//! The response body on its way to the client (`ProxyBody`).
//!
//! Either the replica's streamed response, a small body the proxy wrote
//! itself (an error, see `error`; the waiting page, see `waiting`), or a
//! waiting page's event stream. The streamed kind carries the request's
//! `Completion` and its replica connection: a request counts as in flight
//! until its last byte, and the connection goes back to the pool only once
//! the replica's response has ended. Frames pass as they come, trailers
//! included (a gRPC status lives in them).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::completion::Completion;
use crate::pool::Pooled;

/// A response body on its way to the client.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        body: Incoming,
        /// The replica connection the body arrives on: back to the pool
        /// once the body has ended, closed if it is dropped unfinished.
        /// `None` over HTTP/2, whose connection stays shared (`h2pool`).
        conn: Option<Pooled>,
        /// Dropped when the body ends or the client goes away.
        completion: Option<Completion>,
    },
    Local(Option<Bytes>),
    /// A waiting page's event stream (`waiting`): events as the task
    /// following the service's phase sends them; ends when it stops.
    Events(tokio::sync::mpsc::Receiver<Bytes>),
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
            ProxyBody::Events(events) => {
                events.poll_recv(cx).map(|e| e.map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(bytes) => bytes.is_none(),
            ProxyBody::Events(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Events(_) => SizeHint::default(),
        }
    }
}
