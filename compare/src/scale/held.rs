//! Many held requests over few connections: the held part's h2c client.
//!
//! `requests` streams are opened over `ceil(requests / streams)` HTTP/2
//! prior-knowledge (h2c) connections to one proxy, all at a service whose
//! replica is slow to start, so that they are all held at once. While they
//! are out, the proxy's `rouse_held` gauge and resident set are sampled;
//! memory per held request = (largest RSS while ≥ 99 % of the most held
//! were held − RSS before) ÷ most held.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_stack::procfs::proc_status_kib;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::burst::scrape_held;

/// How often the gauge and the RSS are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What to send, and where to look.
pub(super) struct HeldArgs {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub proxy_pid: u32,
    pub service: String,
    pub host: String,
    pub requests: u32,
    pub streams_per_connection: u32,
    pub timeout: Duration,
}

/// Outcome of the held part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeldReport {
    pub requests: u32,
    pub connections: u32,
    pub ok: u32,
    /// Status codes and error kinds (`connect`, `stream`, `body`,
    /// `timeout`), with their counts.
    pub outcomes: BTreeMap<String, u32>,
    /// From the start until every connection was open and every stream
    /// handed to its connection.
    pub all_sent_ms: f64,
    pub first_answer_ms: Option<f64>,
    pub last_answer_ms: Option<f64>,
    pub max_held: u64,
    pub rss_before_kib: u64,
    pub rss_held_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_per_held_bytes: Option<f64>,
}

type Outcome = (String, Option<Duration>);

pub(super) async fn run(args: HeldArgs) -> anyhow::Result<HeldReport> {
    let rss_before_kib = proc_status_kib(args.proxy_pid, "VmRSS")
        .with_context(|| format!("cannot read /proc/{}/status", args.proxy_pid))?;
    scrape_held(args.admin, &args.service)
        .await
        .context("reading rouse_held before the burst")?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + args.timeout;
    let per = args.streams_per_connection.max(1);
    let connections = args.requests.div_ceil(per);
    let uri: http::Uri = format!("http://{}/", args.host)
        .parse()
        .with_context(|| format!("host {} does not make a URI", args.host))?;

    let (stop_sampler, stopped) = tokio::sync::oneshot::channel();
    let sampler = tokio::spawn(sample(
        args.admin,
        args.service.clone(),
        args.proxy_pid,
        stopped,
    ));
    let mut streams: JoinSet<Outcome> = JoinSet::new();
    let mut left = args.requests;
    for _ in 0..connections {
        let n = left.min(per);
        left -= n;
        let sender = match connect(args.proxy).await {
            Ok(sender) => Some(sender),
            Err(err) => {
                eprintln!("rouse-scale: h2c connection failed: {err:#}");
                None
            }
        };
        for _ in 0..n {
            let mut sender = sender.clone();
            let uri = uri.clone();
            streams.spawn(until(deadline, async move {
                let Some(sender) = sender.as_mut() else {
                    return ("connect".to_owned(), None);
                };
                one_stream(sender, uri, start).await
            }));
        }
    }
    let all_sent_ms = ms(start.elapsed());

    let mut outcomes = BTreeMap::new();
    let (mut first, mut last) = (None::<Duration>, None::<Duration>);
    while let Some(joined) = streams.join_next().await {
        let (kind, done) = joined.unwrap_or_else(|_| ("timeout".to_owned(), None));
        *outcomes.entry(kind).or_insert(0u32) += 1;
        if let Some(done) = done {
            first = Some(first.map_or(done, |f| f.min(done)));
            last = Some(last.map_or(done, |l| l.max(done)));
        }
    }
    let _ = stop_sampler.send(());
    let samples = sampler.await.unwrap_or_default();
    let max_held = samples.iter().filter_map(|s| s.0).max().unwrap_or(0);
    let rss_held_kib = samples
        .iter()
        .filter(|(held, _)| held.is_some_and(|h| max_held > 0 && h * 100 >= max_held * 99))
        .filter_map(|s| s.1)
        .max();
    let rss_per_held_bytes = rss_held_kib
        .filter(|_| max_held > 0)
        .map(|held| held.saturating_sub(rss_before_kib) as f64 * 1024.0 / max_held as f64);
    Ok(HeldReport {
        requests: args.requests,
        connections,
        ok: outcomes.get("200").copied().unwrap_or(0),
        outcomes,
        all_sent_ms,
        first_answer_ms: first.map(ms),
        last_answer_ms: last.map(ms),
        max_held,
        rss_before_kib,
        rss_held_kib,
        rss_peak_kib: proc_status_kib(args.proxy_pid, "VmHWM"),
        rss_per_held_bytes,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

type Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn connect(proxy: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to {proxy}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("h2c handshake with {proxy}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn one_stream(sender: &mut Sender, uri: http::Uri, start: Instant) -> Outcome {
    let Ok(request) = http::Request::get(uri).body(Empty::new()) else {
        return ("request".to_owned(), None);
    };
    if sender.ready().await.is_err() {
        return ("stream".to_owned(), None);
    }
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(_) => return ("stream".to_owned(), None),
    };
    let status = response.status().as_u16().to_string();
    match response.into_body().collect().await {
        Ok(_) => (status, Some(start.elapsed())),
        Err(_) => ("body".to_owned(), None),
    }
}

/// `(rouse_held, VmRSS KiB)` every [`SAMPLE_EVERY`] until `stop`.
async fn sample(
    admin: SocketAddr,
    service: String,
    pid: u32,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<(Option<u64>, Option<u64>)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = &mut stop => return samples,
            _ = tick.tick() => {}
        }
        let held = scrape_held(admin, &service).await.ok();
        samples.push((held, proc_status_kib(pid, "VmRSS")));
    }
}

/// `task`, or a `timeout` outcome at `deadline`.
async fn until(
    deadline: tokio::time::Instant,
    task: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    tokio::time::timeout_at(deadline, task)
        .await
        .unwrap_or_else(|_| ("timeout".to_owned(), None))
}
