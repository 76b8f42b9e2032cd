//! Scaling signals and behaviour end to end, on real replica processes and
//! a real nats-server: `scaling.behavior` policies as the controller's
//! `scaled` events show them, CPU and memory targets from what the
//! backend measures, and queue workers scaled from zero on a JetStream
//! backlog.

use std::time::Duration;

use rouse_e2e::events::{Collected, ScaleEvents};
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
    let events = ScaleEvents::scaled(&cluster.nats.url(), "paced")
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
    let all = events.snapshot();
    // Every scale-down, even one taken back by a later scale-up, keeps the
    // policy: at least 10 s after the one before.
    let downs: Vec<_> = all.iter().filter(|e| e.to < e.from).collect();
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
    for event in &downs {
        assert_eq!(event.from - event.to, 1, "one pod at a time: {all:?}");
    }
    // The last descent, after the last scale-up, goes one event per pod
    // from where it started all the way to zero.
    let last_up = all.iter().rposition(|e| e.to > e.from).unwrap_or(0);
    let descent: Vec<_> = all[last_up + 1..].iter().collect();
    let from = all[last_up].to;
    assert_eq!(descent.len() as u32, from, "one event per pod: {all:?}");
    assert_eq!(descent.last().map(|e| e.to), Some(0), "{all:?}");
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
    let events = ScaleEvents::scaled(&nats_url, "workers")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let done = done_ids(&nats_url, "jobs.done").await;
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
            || async { distinct(&done).len() >= MESSAGES },
        )
        .await;
    let ids = distinct(&done);
    let expected: Vec<u64> = (0..MESSAGES as u64).collect();
    assert_eq!(ids, expected, "exactly the published ids, none lost");
    if let Err(err) = events
        .wait_for("back to zero", Duration::from_secs(60), |e| e.to == 0)
        .await
    {
        cluster.fail(&err.to_string()).await;
    }
    // The meter may sample the stream while the publisher is still at its
    // first few messages (a wake to 1); the backlog must still take the
    // workers to 2 or more before they go back.
    let all = events.snapshot();
    let woke_from_zero = all
        .first()
        .is_some_and(|first| first.from == 0 && first.to >= 1);
    let peak = all.iter().map(|e| e.to).max().unwrap_or(0);
    if !woke_from_zero || peak < 2 {
        cluster
            .fail(&format!(
                "events {all:?}: expected a wake from 0 and at least 2 workers at the peak"
            ))
            .await
    }
    cluster
        .wait_until(
            "no worker process left",
            Duration::from_secs(30),
            || async { cluster.replica_pids().is_empty() },
        )
        .await;
}

/// The decimal ids a queue worker reports on a core subject.
async fn done_ids(nats_url: &str, subject: &str) -> Collected<u64> {
    Collected::subscribe(nats_url, subject, |payload| {
        std::str::from_utf8(payload).ok()?.parse().ok()
    })
    .await
    .unwrap_or_else(|e| panic!("subscribe: {e}"))
}

/// Sorted, without duplicates (a redelivered message counts once).
fn distinct(done: &Collected<u64>) -> Vec<u64> {
    let mut ids = done.snapshot();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The `cpu` signal's current value (percent of `resources.cpus`, averaged
/// over ready replicas) and the ready count, from the status API.
async fn cpu_reading(cluster: &Cluster, service: &str) -> Option<(f64, u64)> {
    let status = cluster.service_status(service).await?;
    let metrics = status.raw.get("metrics")?.as_array()?.clone();
    let cpu = metrics
        .iter()
        .find(|m| m.get("type").and_then(|t| t.as_str()) == Some("cpu"))?;
    Some((cpu.get("current")?.as_f64()?, status.ready))
}

/// `clients` clients, each sending `GET path` then pausing `pause`, until
/// `stop` is set (at most 100,000 requests each): a load whose CPU demand
/// does not depend on how many replicas share it.
fn paced_load(
    cluster: &Cluster,
    host: &'static str,
    path: &'static str,
    clients: usize,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<load::Statuses>> {
    (0..clients)
        .map(|_| {
            let client = cluster.client.clone();
            let addr = cluster.proxy_addr(0);
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut statuses = load::Statuses::new();
                for _ in 0..100_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let status = match rouse_e2e::http::request(
                        &client,
                        reqwest::Method::GET,
                        addr,
                        host,
                        path,
                        None,
                    )
                    .await
                    {
                        Ok(resp) => resp.status,
                        Err(_) => 0,
                    };
                    *statuses.entry(status).or_insert(0) += 1;
                    tokio::time::sleep(pause).await;
                }
                statuses
            })
        })
        .collect()
}

async fn stop_load(
    stop: &std::sync::atomic::AtomicBool,
    workers: Vec<tokio::task::JoinHandle<load::Statuses>>,
) -> load::Statuses {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = load::Statuses::new();
    for worker in futures::future::join_all(workers).await {
        for (status, count) in worker.unwrap_or_default() {
            *total.entry(status).or_insert(0) += count;
        }
    }
    total
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A CPU target of 50% of 0.2 cores: a steady load of about 0.4 cores
/// scales out until the replicas' average is within the tolerance of the
/// target (or below it: counts are whole), holds while the load lasts, and
/// scales back down only once the 15 s stabilization window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_load_scales_out_to_the_target_and_back_after_the_window() {
    const HOST: &str = "burn.localhost";
    let cluster = Cluster::start(vec![Service::new("burn", HOST)
        .min_replicas(1)
        .max_replicas(8)
        .key("resources", "{cpus: 0.2}")
        .scaling("stable_window", "5s")
        .scaling("metrics", "[{type: cpu, target: 50}]")
        .scaling("behavior", "{scale_down: {stabilization_window: 15s}}")])
    .await;
    let events = ScaleEvents::scaled(&cluster.nats.url(), "burn")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    cluster
        .wait_status("burn", "min_replicas up", Duration::from_secs(30), |s| {
            s.ready == 1
        })
        .await;
    // Two clients, each 20 ms of CPU then 80 ms of pause: ~0.4 cores.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = paced_load(
        &cluster,
        HOST,
        "/cpu/20",
        2,
        Duration::from_millis(80),
        std::sync::Arc::clone(&stop),
    );
    // Settled: within the tolerance above the target, and not so far below
    // it that fewer replicas would do (ceil(n * cpu / 50) < n). An overshoot
    // still going down would let a scale-down through in the window's
    // first seconds after the load stops, which is not what is asserted.
    let (cpu, ready) = cluster
        .poll_until(
            "scaled out to a count that holds at the 50% target",
            Duration::from_secs(120),
            || async {
                cpu_reading(&cluster, "burn").await.filter(|(cpu, ready)| {
                    let n = *ready as f64;
                    let holds = *cpu > 50.0 * (n - 1.0) / n;
                    *ready >= 2 && *cpu <= 55.0 && holds
                })
            },
        )
        .await;
    assert!(ready >= 2, "{ready} replicas at {cpu:.0}%");
    let stopped_ms = now_ms();
    let statuses = stop_load(&stop, workers).await;
    assert_eq!(load::failures(&statuses), 0, "{statuses:?}");
    let down = events
        .wait_for(
            "a scale-down after the load",
            Duration::from_secs(120),
            |e| e.to < e.from && e.at_ms >= stopped_ms,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The highest recommendation of the last 15 s holds the count: the
    // load ran until `stopped_ms`, so nothing goes before 15 s after it.
    assert!(
        down.at_ms >= stopped_ms + 14_900,
        "scaled down {} ms after the load stopped: {down:?}",
        down.at_ms - stopped_ms
    );
    cluster
        .wait_status(
            "burn",
            "back to min_replicas",
            Duration::from_secs(120),
            |s| s.desired == 1 && s.ready == 1,
        )
        .await;
}

/// Resident memory of every replica process, in MiB, the largest one.
fn largest_replica_mib(cluster: &Cluster) -> u64 {
    cluster
        .replica_pids()
        .iter()
        .filter_map(|pid| rouse_stack::procfs::proc_status_kib(*pid, "VmRSS"))
        .max()
        .unwrap_or(0)
        / 1024
}

/// A memory target of 50% of 96 MiB, and a load that grows by 16 MiB held
/// requests to 8 at once (about 140 MiB in all, more than one replica's
/// 96 MiB): rouse adds replicas as it grows, and no replica ever gets
/// past 96 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_target_scales_out_before_any_replica_reaches_its_limit() {
    const HOST: &str = "heavy.localhost";
    const LIMIT_MIB: u64 = 96;
    let cluster = Cluster::start(vec![Service::new("heavy", HOST)
        .min_replicas(1)
        .max_replicas(6)
        .key("resources", "{memory: 96MiB}")
        .scaling("metrics", "[{type: memory, target: 50}]")])
    .await;
    cluster
        .wait_status("heavy", "min_replicas up", Duration::from_secs(30), |s| {
            s.ready == 1
        })
        .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    let mut largest = 0;
    // One more client every 3 s, each holding 16 MiB for 2 s per request;
    // the replicas' memory is read every 100 ms meanwhile.
    for _ in 0..8 {
        workers.extend(paced_load(
            &cluster,
            HOST,
            "/mem/16?hold_ms=2000",
            1,
            Duration::from_millis(10),
            std::sync::Arc::clone(&stop),
        ));
        for _ in 0..30 {
            largest = largest.max(largest_replica_mib(&cluster));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ready = cluster
        .service_status("heavy")
        .await
        .map(|s| s.ready)
        .unwrap_or(0);
    let statuses = stop_load(&stop, workers).await;
    assert_eq!(load::failures(&statuses), 0, "{statuses:?}");
    assert!(
        ready >= 3,
        "only {ready} replicas for ~140 MiB at 48 MiB each"
    );
    assert!(
        largest < LIMIT_MIB,
        "a replica reached {largest} MiB (limit {LIMIT_MIB} MiB)"
    );
}
