//! `proxy.access_log`: one line per request, off the request's path.
//!
//! A request takes an [`Entry`] at arrival (its head: a few reference-counted
//! handles, no string copies) and fills in the rest as it goes; when its
//! response body has ended (`observe`), the entry goes into a bounded
//! channel with `try_send`. A full channel drops the line and counts it
//! (`rouse_access_log_dropped_total`): a request never waits for the log.
//! One writer task (`writer`) formats the lines (`format`) into a buffered
//! file and flushes on a timer and at shutdown.
//!
//! Sampling (`sample`) is decided when the entry is complete, so that a
//! response of 500 or more is always logged.

mod format;
mod writer;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};
use prometheus_client::metrics::counter::Counter;
use rouse_nats::config::AccessLogConfig;
use tokio::sync::mpsc;

pub use writer::Writer;

/// What one line says about one request.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived.
    pub time: SystemTime,
    /// `None` for a request that matched no service (logged as `-`).
    pub service: Option<Arc<str>>,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub version: Version,
    pub client: IpAddr,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
    pub status: u16,
    /// From arrival to the response's last byte.
    pub duration: Duration,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Request body bytes read from the client, counted as they stream.
    pub bytes_received: Arc<AtomicU64>,
    /// The replica's id, for a forwarded request.
    pub upstream: Option<Arc<str>>,
    /// Time held for a ready replica; zero when the service was warm.
    pub cold_start_wait: Duration,
}

impl Entry {
    /// The request body bytes counted so far.
    pub fn received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }
}

/// The data path's end of the log, one clone per data thread.
#[derive(Clone)]
pub struct AccessLog {
    lines: mpsc::Sender<Box<Entry>>,
    sample: f64,
    dropped: Counter,
}

impl AccessLog {
    /// The log and the writer task that must run for its lines to be written.
    pub fn new(config: &AccessLogConfig, dropped: Counter) -> std::io::Result<(Self, Writer)> {
        let (lines, queue) = mpsc::channel(config.buffer.max(1));
        let writer = Writer::open(config, queue)?;
        let log = Self {
            lines,
            sample: config.sample,
            dropped,
        };
        Ok((log, writer))
    }

    /// An entry for `request`, arriving now from `client`.
    pub fn begin<B>(&self, request: &Request<B>, client: IpAddr) -> Box<Entry> {
        let headers = request.headers();
        let host = headers.get(header::HOST).cloned().or_else(|| {
            let authority = request.uri().authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        Box::new(Entry {
            time: SystemTime::now(),
            service: None,
            method: request.method().clone(),
            host,
            uri: request.uri().clone(),
            version: request.version(),
            client,
            user_agent: headers.get(header::USER_AGENT).cloned(),
            referer: headers.get(header::REFERER).cloned(),
            status: 0,
            duration: Duration::ZERO,
            bytes_sent: 0,
            bytes_received: Arc::new(AtomicU64::new(0)),
            upstream: None,
            cold_start_wait: Duration::ZERO,
        })
    }

    /// Hands a complete entry to the writer, if it is sampled; never waits.
    pub fn finish(&self, entry: Box<Entry>) {
        if !self.sampled(entry.status) {
            return;
        }
        if self.lines.try_send(entry).is_err() {
            self.dropped.inc();
        }
    }

    /// Errors always; the rest at the `sample` rate (a thread-local RNG: no
    /// shared counter to contend on).
    fn sampled(&self, status: u16) -> bool {
        status >= 500 || self.sample >= 1.0 || (self.sample > 0.0 && fastrand::f64() < self.sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sample: f64, buffer: usize) -> AccessLogConfig {
        let yaml = format!("path: /dev/null\nsample: {sample}\nbuffer: {buffer}\n");
        serde_norway::from_str(&yaml).expect("config")
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let dropped = Counter::default();
        let (log, _writer) = AccessLog::new(&config(1.0, 2), dropped.clone()).expect("log");
        let request = Request::get("/a").body(()).expect("request");
        for _ in 0..5 {
            let mut entry = log.begin(&request, IpAddr::from([127, 0, 0, 1]));
            entry.status = 200;
            log.finish(entry);
        }
        // The writer is not running: two wait in the queue, three dropped.
        assert_eq!(dropped.get(), 3);
    }

    #[tokio::test]
    async fn sample_zero_keeps_only_server_errors() {
        let (log, _writer) = AccessLog::new(&config(0.0, 16), Counter::default()).expect("log");
        assert!(!log.sampled(200));
        assert!(!log.sampled(404));
        assert!(log.sampled(500));
        assert!(log.sampled(503));
    }
}
