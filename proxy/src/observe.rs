//! What the proxy tells about a request once its response has ended: the
//! access log line (`access_log`) and the request's trace (`trace`).
//!
//! Both are off by default, and then a request carries nothing: the
//! handler's `Observation` is `None` and the response body is passed
//! through untouched. When either is on, the handler starts an observation
//! at arrival, fills it in at each stage, and seals it into the response
//! body ([`ObservedBody`]), which counts the bytes sent and finishes the
//! observation when the body ends or is dropped: duration and bytes cover
//! the whole response, not just its headers.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};

use crate::access_log::{AccessLog, Entry};
use crate::response_body::ProxyBody;
use crate::trace::{RequestTrace, Tracing};

/// The observers of one data thread (each thread has its own, so the
/// per-request reference count is never shared between threads).
#[derive(Default, Clone)]
pub struct Observers {
    pub access_log: Option<AccessLog>,
    pub tracing: Option<Tracing>,
}

/// One request's observation while it is under way.
pub struct Observation {
    observers: Arc<Observers>,
    started: Instant,
    status: u16,
    entry: Option<Box<Entry>>,
    trace: Option<RequestTrace>,
}

impl Observation {
    /// Starts observing `request`, or `None` when nothing observes.
    pub fn begin<B>(
        observers: &Arc<Observers>,
        request: &Request<B>,
        client: IpAddr,
        started: Instant,
    ) -> Option<Box<Self>> {
        if observers.access_log.is_none() && observers.tracing.is_none() {
            return None;
        }
        let entry = observers
            .access_log
            .as_ref()
            .map(|log| log.begin(request, client));
        let trace = observers.tracing.as_ref().map(|t| t.begin(request));
        Some(Box::new(Self {
            observers: Arc::clone(observers),
            started,
            status: 0,
            entry,
            trace,
        }))
    }

    /// The request routed to `service`.
    pub fn service(&mut self, service: &Arc<str>) {
        if let Some(entry) = &mut self.entry {
            entry.service = Some(Arc::clone(service));
        }
        if let Some(trace) = &mut self.trace {
            trace.service(service);
        }
    }

    /// The request was held `waited` before it got a replica.
    pub fn held(&mut self, waited: Duration, outcome: &'static str, woke: bool) {
        if let Some(entry) = &mut self.entry {
            entry.cold_start_wait = waited;
        }
        if let (Some(trace), Some(tracing)) = (&mut self.trace, &self.observers.tracing) {
            trace.held(tracing, waited, outcome, woke);
        }
    }

    /// The counter of request body bytes, for the body to add to as it
    /// streams; `None` when no access log wants it.
    pub fn received(&self) -> Option<Arc<AtomicU64>> {
        Some(Arc::clone(&self.entry.as_ref()?.bytes_received))
    }

    /// The request goes to `replica` with these headers: they get the
    /// trace's `traceparent`. The log names this replica unless the
    /// response comes from another (a retry after a refused connection).
    pub fn forward(&mut self, replica: &Arc<str>, headers: &mut http::HeaderMap) {
        if let Some(entry) = &mut self.entry {
            entry.upstream = Some(Arc::clone(replica));
        }
        if let (Some(trace), Some(tracing)) = (&mut self.trace, &self.observers.tracing) {
            trace.forward(tracing, replica, headers);
        }
    }

    /// The replica's response headers (or its failure) are in.
    pub fn forwarded(&mut self, status: u16, replica: Option<&str>) {
        if let Some(trace) = &mut self.trace {
            trace.forwarded(status, replica);
        }
    }

    /// The response is known: from here the body carries the observation.
    pub fn seal(mut self: Box<Self>, response: Response<ProxyBody>) -> Response<ObservedBody> {
        let status = response.status().as_u16();
        self.status = status;
        if let Some(entry) = &mut self.entry {
            entry.status = status;
            if let Some(upstream) = response.body().upstream() {
                entry.upstream = Some(Arc::clone(upstream));
            }
        }
        response.map(|body| ObservedBody {
            body,
            sent: 0,
            observation: Some(self),
        })
    }

    /// The response has ended (or the client went away) after `sent`
    /// body bytes.
    fn finish(&mut self, sent: u64) {
        let duration = self.started.elapsed();
        if let Some(trace) = self.trace.take() {
            trace.finish(self.status);
        }
        if let (Some(mut entry), Some(log)) = (self.entry.take(), &self.observers.access_log) {
            entry.duration = duration;
            entry.bytes_sent = sent;
            log.finish(entry);
        }
    }
}

/// A response without observation (nothing observes).
pub fn unobserved(response: Response<ProxyBody>) -> Response<ObservedBody> {
    response.map(|body| ObservedBody {
        body,
        sent: 0,
        observation: None,
    })
}

/// The response body as the client gets it: the proxy's, counted.
#[derive(Debug)]
pub struct ObservedBody {
    body: ProxyBody,
    sent: u64,
    observation: Option<Box<Observation>>,
}

impl std::fmt::Debug for Observation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observation")
            .field("started", &self.started)
            .finish()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(mut observation) = self.observation.take() {
            observation.finish(self.sent);
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if this.observation.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.sent += data.len() as u64;
                    }
                }
                Poll::Ready(None) => {
                    if let Some(mut observation) = this.observation.take() {
                        observation.finish(this.sent);
                    }
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
