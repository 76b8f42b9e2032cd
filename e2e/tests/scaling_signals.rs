//! Scaling signals and behaviour end to end, on real replica processes and
//! a real nats-server: `scaling.behavior` policies as the controller's
//! `scaled` events show them, CPU and memory targets from what the
//! backend measures, and queue workers scaled from zero on a JetStream
//! backlog.

use std::time::Duration;

use rouse_e2e::events::ScaleEvents;
use rouse_e2e::load;
use rouse_e2e::{Cluster, Service};

/// `scale_down: 1 pod per 10 s`: from 4 replicas, every scale-down event
/// removes exactly one, and consecutive ones are at least 10 s apart, all
/// the way to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_down_policy_of_one_pod_per_10s_is_obeyed() {
    const HOST: &str = "paced.localhost";
    let cluster = Cluster::start(vec![Service::new("paced", HOST)
        .max_replicas(6)
        .target_concurrency(1)
        .scale_to_zero_after("2s")
        .hold_timeout("60s")
        .scaling("stable_window", "4s")
        .scaling(
            "behavior",
            "{scale_down: {policies: [{type: pods, value: 1, period: 10s}]}}",
        )])
    .await;
    let events = ScaleEvents::subscribe(&cluster.nats.url(), "paced")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    // 4 clients back to back on 300 ms requests: about 4 in flight.
    let statuses = load::steady(
        &cluster.client,
        cluster.proxy_addr(0),
        HOST,
        "/sleep/300",
        4,
        Duration::from_secs(8),
    )
    .await;
    if load::failures(&statuses) > 0 {
        cluster.fail(&format!("load failed: {statuses:?}")).await;
    }
    let peak = events
        .snapshot()
        .iter()
        .map(|e| e.to)
        .max()
        .unwrap_or_default();
    if peak < 3 {
        cluster
            .fail(&format!(
                "load reached only {peak} replicas: {:?}",
                events.snapshot()
            ))
            .await;
    }
    if let Err(err) = events
        .wait_for("back to zero", Duration::from_secs(120), |e| e.to == 0)
        .await
    {
        cluster.fail(&err.to_string()).await;
    }
    let downs: Vec<_> = events
        .snapshot()
        .into_iter()
        .filter(|e| e.to < e.from)
        .collect();
    assert_eq!(downs.len() as u32, peak, "one event per pod: {downs:?}");
    for event in &downs {
        assert_eq!(event.from - event.to, 1, "one pod at a time: {downs:?}");
    }
    for pair in downs.windows(2) {
        // The decisions are 10 s apart on the controller's clock; the wall
        // clock read when publishing may differ by a few ms.
        let gap = pair[1].at_ms.saturating_sub(pair[0].at_ms);
        assert!(
            gap >= 9_900,
            "{gap} ms between {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// 1,000 messages published to a stream whose worker service is at zero:
/// workers start on the backlog alone (no HTTP request at all), every
/// message is processed, and the service goes back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_workers_start_from_zero_drain_the_backlog_and_return_to_zero() {
    const MESSAGES: usize = 1000;
    let cluster = Cluster::start(vec![Service::new("workers", "unused")
        .hosts(&[])
        .echo_args(&[
            "--nats-url",
            "{nats_url}",
            "--queue-stream",
            "JOBS",
            "--queue-consumer",
            "workers",
            "--work-ms",
            "30",
            "--done-subject",
            "jobs.done",
        ])
        .max_replicas(5)
        .scale_to_zero_after("3s")
        .scaling(
            "metrics",
            "[{type: queue, stream: JOBS, consumer: workers, target: 100}]",
        )])
    .await;
    let nats_url = cluster.nats.url();
    let events = ScaleEvents::subscribe(&nats_url, "workers")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let done = Done::subscribe(&nats_url, "jobs.done").await;
    let publish = tokio::process::Command::new(rouse_e2e::bins::bin("rouse-echo"))
        .args(["publish", "--nats-url", &nats_url, "--stream", "JOBS"])
        .args(["--subject", "jobs.in", "--consumer", "workers", "--create"])
        .args(["--ack-wait", "5s", "--count", &MESSAGES.to_string()])
        .output()
        .await
        .unwrap_or_else(|e| panic!("rouse-echo publish: {e}"));
    if !publish.status.success() {
        cluster
            .fail(&format!(
                "publish failed: {}",
                String::from_utf8_lossy(&publish.stderr)
            ))
            .await;
    }
    cluster
        .wait_until(
            "every message processed",
            Duration::from_secs(120),
            || async { done.distinct() >= MESSAGES },
        )
        .await;
    let ids = done.ids();
    let expected: Vec<u64> = (0..MESSAGES as u64).collect();
    assert_eq!(ids, expected, "exactly the published ids, none lost");
    if let Err(err) = events
        .wait_for("back to zero", Duration::from_secs(60), |e| e.to == 0)
        .await
    {
        cluster.fail(&err.to_string()).await;
    }
    let woke = events.snapshot().first().cloned();
    match woke {
        Some(first) if first.from == 0 && first.to >= 2 => {}
        other => {
            cluster
                .fail(&format!(
                    "first event {other:?}: expected a wake from 0 to at least 2"
                ))
                .await
        }
    }
    cluster
        .wait_until(
            "no worker process left",
            Duration::from_secs(30),
            || async { cluster.replica_pids().is_empty() },
        )
        .await;
}

/// Message payloads seen on a core subject.
struct Done {
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Done {
    async fn subscribe(nats_url: &str, subject: &str) -> Done {
        let client = async_nats::connect(nats_url)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let mut subscriber = client
            .subscribe(subject.to_string())
            .await
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        client
            .flush()
            .await
            .unwrap_or_else(|e| panic!("flush: {e}"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        let task = tokio::spawn(async move {
            use futures::StreamExt;
            let _client = client;
            while let Some(message) = subscriber.next().await {
                if let Some(id) = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                }
            }
        });
        Done { seen, task }
    }

    /// Sorted, without duplicates (a redelivered message counts once).
    fn ids(&self) -> Vec<u64> {
        let mut ids = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn distinct(&self) -> usize {
        self.ids().len()
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.task.abort();
    }
}
