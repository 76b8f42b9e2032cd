//! Steady traffic at a share of the services, for the active part.
//!
//! One task per active service, each with its own keep-alive HTTP/1.1
//! connection to one of the proxies (service i goes to proxy i mod P, so
//! every proxy carries some), sending `GET /` at a fixed rate. A failed
//! request counts and the connection is made again at the next tick. The
//! tasks run until [`Traffic::stop`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use rouse_bench::client;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// Time one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const AGENT: &str = "rouse-scale";

/// Counters shared by every task.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Services that have been answered 200 at least once.
    pub services_answered: AtomicU64,
}

/// The running traffic.
pub(super) struct Traffic {
    tasks: JoinSet<()>,
    pub counts: Arc<Counts>,
}

impl Traffic {
    /// Starts one task per `(host, proxy)` pair at `rate` requests per
    /// second each.
    pub fn start(targets: Vec<(String, SocketAddr)>, rate: u32) -> Traffic {
        let counts = Arc::new(Counts::default());
        let period = Duration::from_secs(1) / rate.max(1);
        let mut tasks = JoinSet::new();
        for (i, (host, proxy)) in targets.into_iter().enumerate() {
            let counts = Arc::clone(&counts);
            // Spread the tasks' first ticks over one period, so that the
            // requests do not all leave at the same instant.
            let offset = period.mul_f64((i % 97) as f64 / 97.0);
            tasks.spawn(async move {
                tokio::time::sleep(offset).await;
                one_service(host, proxy, period, &counts).await;
            });
        }
        Traffic { tasks, counts }
    }

    pub fn ok(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }

    pub fn services_answered(&self) -> u64 {
        self.counts.services_answered.load(Ordering::Relaxed)
    }

    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn one_service(host: String, proxy: SocketAddr, period: Duration, counts: &Counts) {
    let mut tick = tokio::time::interval(period);
    // A slow answer (the cold start) is not made up for with a burst.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sender = None;
    let mut answered = false;
    loop {
        tick.tick().await;
        let ok = tokio::time::timeout(REQUEST_TIMEOUT, request(&mut sender, &host, proxy))
            .await
            .unwrap_or(false);
        if ok {
            counts.ok.fetch_add(1, Ordering::Relaxed);
            if !answered {
                answered = true;
                counts.services_answered.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            sender = None;
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// One `GET /` on the kept connection (made first if there is none):
/// whether it was answered 200 with its whole body.
async fn request(sender: &mut Option<Sender>, host: &str, proxy: SocketAddr) -> bool {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let Ok((new, connection)) = client::connect(proxy).await else {
            return false;
        };
        tokio::spawn(connection);
        *sender = Some(new);
    }
    let Some(s) = sender.as_mut() else {
        return false;
    };
    if s.ready().await.is_err() {
        return false;
    }
    let Ok(request) = client::get(host, "/", AGENT) else {
        return false;
    };
    let Ok(response) = s.send_request(request).await else {
        return false;
    };
    let ok = response.status() == http::StatusCode::OK;
    ok && response.into_body().collect().await.is_ok()
}
