//! Acceptance criterion 2: a burst of 500 concurrent requests at zero is
//! held, not dropped, and every request reaches a replica exactly once.
//!
//! The hold queue must absorb the whole burst (hold.max_requests 10000),
//! release it in order once replicas are ready, and never send one request
//! twice (a retry is only allowed before any byte went out). The "exactly
//! once" part is checked on the replicas' own counters: rouse-echo's
//! `/stats` counts requests (readiness probes hit `/healthz`, which it does
//! not count), so the sum over all replicas must equal the number of
//! requests sent through the proxy. The check runs before any scale-down
//! could stop a replica and lose its counter.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use rouse_e2e::{load, request, Cluster, Service};

const HOST: &str = "burst.localhost";
const BURST: usize = 500;

/// Criterion 2: 500 concurrent GET / at zero → exactly 500 answers, all
/// 200, and the replicas together counted exactly 500 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_500_at_zero_all_succeed_exactly_once() {
    let cluster = Cluster::start(vec![Service::new("burst", HOST)
        .max_replicas(4)
        .target_concurrency(10)
        .hold_max_requests(10_000)
        .hold_timeout("60s")
        .scale_to_zero_after("300s")])
    .await;
    assert!(
        cluster.replica_pids().is_empty(),
        "replicas before the burst"
    );

    let addr = cluster.proxy_addr(0);
    let tasks: Vec<_> = (0..BURST)
        .map(|_| {
            let client = cluster.client.clone();
            tokio::spawn(async move { request(&client, Method::GET, addr, HOST, "/", None).await })
        })
        .collect();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut answered = 0;
    for task in futures::future::join_all(tasks).await {
        match task.expect("request task panicked") {
            Ok(resp) => {
                answered += 1;
                *statuses.entry(resp.status).or_default() += 1;
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if answered != BURST || statuses.get(&200) != Some(&BURST) {
        errors.truncate(5);
        cluster
            .fail(&format!(
                "burst: {answered}/{BURST} answered, statuses {statuses:?}, first errors {errors:?}"
            ))
            .await;
    }

    // Exactly once: the replicas' own counters add up to the burst.
    let status = cluster
        .wait_status(
            "burst",
            "lists its replicas",
            Duration::from_secs(30),
            |s| s.ready >= 1 && !s.replicas.is_empty(),
        )
        .await;
    let served = match load::served(&cluster.client, &status).await {
        Ok(served) => served,
        Err(e) => cluster.fail(&format!("{e:#}")).await,
    };
    if !served.is(BURST as u64) {
        cluster
            .fail(&format!(
                "replicas counted between {} and {} requests for {BURST} sent: \
                 (id, state, requests, requests after one more /stats) = {:?}",
                served.low, served.high, served.seen
            ))
            .await;
    }
}
