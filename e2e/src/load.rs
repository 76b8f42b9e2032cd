//! Load the tests send through a proxy, and the replicas' own count of what
//! reached them: a burst of concurrent requests, steady load from a number
//! of clients for a while, and the "exactly once" check on rouse-echo's
//! `/stats`. Every loop is bounded in time and in count.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::http::{request, ServiceStatus};

/// Responses per status code; transport errors count as status 0.
pub type Statuses = BTreeMap<u16, usize>;

/// Requests that were not answered 200.
pub fn failures(statuses: &Statuses) -> usize {
    statuses
        .iter()
        .filter(|(status, _)| **status != 200)
        .map(|(_, count)| count)
        .sum()
}

/// Sends `n` concurrent GETs of `path` to `addr` and counts the answers.
pub async fn burst(
    client: &reqwest::Client,
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
) -> Statuses {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let (host, path) = (host.to_string(), path.to_string());
            tokio::spawn(
                async move { request(&client, Method::GET, addr, &host, &path, None).await },
            )
        })
        .collect();
    let mut statuses = Statuses::new();
    for task in futures::future::join_all(tasks).await {
        let status = match task {
            Ok(Ok(resp)) => resp.status,
            _ => 0,
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    statuses
}

/// `clients` clients each sending GETs of `path` one after the other for
/// `duration` (at most 10,000 each), counted together.
pub async fn steady(
    client: &reqwest::Client,
    addr: SocketAddr,
    host: &str,
    path: &str,
    clients: usize,
    duration: Duration,
) -> Statuses {
    steady_noting_replicas(client, addr, host, path, clients, duration)
        .await
        .0
}

/// [`steady`], and the replicas that answered at least one request 200
/// (rouse-echo's `x-echo-replica`): the ones that served traffic.
pub async fn steady_noting_replicas(
    client: &reqwest::Client,
    addr: SocketAddr,
    host: &str,
    path: &str,
    clients: usize,
    duration: Duration,
) -> (Statuses, BTreeSet<String>) {
    let until = Instant::now() + duration;
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let (host, path) = (host.to_string(), path.to_string());
            tokio::spawn(async move {
                let mut statuses = Statuses::new();
                let mut replicas = BTreeSet::new();
                for _ in 0..10_000 {
                    if Instant::now() >= until {
                        break;
                    }
                    let status = match request(&client, Method::GET, addr, &host, &path, None).await
                    {
                        Ok(resp) => {
                            if let (200, Some(replica)) = (resp.status, resp.header(REPLICA_HEADER))
                            {
                                if !replicas.contains(replica) {
                                    replicas.insert(replica.to_string());
                                }
                            }
                            resp.status
                        }
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_insert(0) += 1;
                }
                (statuses, replicas)
            })
        })
        .collect();
    let mut total = Statuses::new();
    let mut served = BTreeSet::new();
    for worker in futures::future::join_all(workers).await {
        let (statuses, replicas) = worker.unwrap_or_default();
        for (status, count) in statuses {
            *total.entry(status).or_insert(0) += count;
        }
        served.extend(replicas);
    }
    (total, served)
}

/// The header rouse-echo names the answering replica in.
pub const REPLICA_HEADER: &str = "x-echo-replica";

/// `requests` from a replica's `/stats`.
async fn stats_requests(client: &reqwest::Client, addr: &str) -> anyhow::Result<u64> {
    let url = format!("http://{addr}/stats");
    let v: Value = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v.get("requests")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("{url}: no integer `requests` in {v}"))
}

/// What the replicas of `status` counted, as bounds: rouse-echo may count
/// a `/stats` call at its arrival or at its completion.
#[derive(Debug)]
pub struct Served {
    pub low: u64,
    pub high: u64,
    /// (id, state, requests, requests after one more /stats) per replica.
    pub seen: Vec<(String, String, u64, u64)>,
}

impl Served {
    pub fn is(&self, n: u64) -> bool {
        (self.low..=self.high).contains(&n)
    }
}

/// Asks every replica of `status` how many requests reached it (readiness
/// probes hit `/healthz`, which rouse-echo does not count). An error for a
/// ready or draining replica that does not answer.
pub async fn served(client: &reqwest::Client, status: &ServiceStatus) -> anyhow::Result<Served> {
    let mut served = Served {
        low: 0,
        high: 0,
        seen: Vec::new(),
    };
    for replica in &status.replicas {
        let first = stats_requests(client, &replica.addr).await;
        let second = stats_requests(client, &replica.addr).await;
        match (first, second) {
            (Ok(first), Ok(second)) => {
                // If /stats counts itself, the second call sees one more.
                let self_counted = second.checked_sub(first).unwrap_or(u64::MAX);
                anyhow::ensure!(
                    self_counted <= 1,
                    "replica {} got other traffic between two /stats calls: {first} then {second}",
                    replica.addr
                );
                served.low += first - self_counted.min(first);
                served.high += first;
                served
                    .seen
                    .push((replica.id.clone(), replica.state.clone(), first, second));
            }
            (Err(e), _) | (_, Err(e)) => {
                anyhow::ensure!(
                    replica.state != "ready" && replica.state != "draining",
                    "/stats of {} replica {}: {e:#}",
                    replica.state,
                    replica.addr
                );
                served
                    .seen
                    .push((replica.id.clone(), replica.state.clone(), 0, 0));
            }
        }
    }
    Ok(served)
}

/// Warm GETs of `path`, one after another every 20 ms, until `stop` (at
/// most 5,000): the answers that were not 200, and how many were sent.
/// For "traffic never noticed" claims across a hand-over or a restart.
pub fn sequential_until(
    proxy: SocketAddr,
    host: &str,
    path: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    let (host, path) = (host.to_string(), path.to_string());
    tokio::spawn(async move {
        let client = crate::http::client();
        let (mut failures, mut sent) = (Vec::new(), 0);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) && sent < 5_000 {
            sent += 1;
            match request(&client, Method::GET, proxy, &host, &path, None).await {
                Ok(resp) if resp.status == 200 => {}
                Ok(resp) => failures.push(format!("request {sent}: {resp}")),
                Err(err) => failures.push(format!("request {sent}: {err:#}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (failures, sent)
    })
}
