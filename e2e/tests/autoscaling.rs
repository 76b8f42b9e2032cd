//! Autoscaling against real nats-server and real replica processes:
//! repeated zero → burst → zero cycles lose nothing, a per-replica
//! concurrency cap is never exceeded, and scale-down under continuous load
//! drains replicas without failing a request.

use std::time::Duration;

use rouse_e2e::load::{self, Statuses};
use rouse_e2e::{Cluster, Service};
use serde_json::Value;

/// Sends `n` concurrent GETs through the first proxy.
async fn burst(cluster: &Cluster, host: &str, path: &str, n: usize) -> Statuses {
    load::burst(&cluster.client, cluster.proxy_addr(0), host, path, n).await
}

/// rouse-echo's own `/stats` of one replica.
async fn replica_stats(cluster: &Cluster, addr: &str) -> Value {
    let url = format!("http://{addr}/stats");
    match cluster.client.get(&url).send().await {
        Ok(resp) => resp.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// 20 cycles of zero → 200 concurrent requests → idle → zero: every response
/// is 200 and the service is back at zero replicas (no process left) each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cycles_of_burst_and_back_to_zero_lose_nothing() {
    const HOST: &str = "cycles.localhost";
    let cluster = Cluster::start(vec![Service::new("cycles", HOST)
        .max_replicas(4)
        .target_concurrency(50)
        .scale_to_zero_after("1s")
        .drain_timeout("10s")
        .hold_timeout("60s")
        .hold_max_requests(10_000)
        .scaling("stable_window", "2s")
        .scaling("panic_window", "1s")])
    .await;
    for cycle in 1..=20 {
        let statuses = burst(&cluster, HOST, "/sleep/20", 200).await;
        if statuses.get(&200) != Some(&200) {
            cluster
                .fail(&format!("cycle {cycle}: statuses {statuses:?}"))
                .await;
        }
        cluster
            .wait_status(
                "cycles",
                &format!("cycle {cycle}: back to zero"),
                Duration::from_secs(60),
                |s| s.ready == 0 && s.desired == 0 && s.replicas.is_empty(),
            )
            .await;
        cluster
            .wait_until(
                &format!("cycle {cycle}: no replica process left"),
                Duration::from_secs(30),
                || async { cluster.replica_pids().is_empty() },
            )
            .await;
    }
}

/// `container_concurrency: 4`, 100 requests of 200 ms sent at zero: all
/// succeed, no replica ever has more than 4 in flight (its own peak counter),
/// and the burst is spread over several replicas as they become ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_concurrency_is_never_exceeded() {
    const HOST: &str = "capped.localhost";
    let cluster = Cluster::start(vec![Service::new("capped", HOST)
        .max_replicas(10)
        .target_concurrency(4)
        .hold_timeout("60s")
        .scale_to_zero_after("300s")
        .scaling("container_concurrency", "4")])
    .await;
    let statuses = burst(&cluster, HOST, "/sleep/200", 100).await;
    if statuses.get(&200) != Some(&100) {
        cluster.fail(&format!("statuses {statuses:?}")).await;
    }
    let status = cluster
        // Every listed replica ready: one still starting (the last wave of
        // the burst) may not listen yet, and has no counters to ask.
        .wait_status(
            "capped",
            "every listed replica ready",
            Duration::from_secs(60),
            |s| s.ready >= 1 && s.replicas.iter().all(|r| r.state == "ready"),
        )
        .await;
    let mut total = 0;
    let mut used = 0;
    for replica in &status.replicas {
        let stats = replica_stats(&cluster, &replica.addr).await;
        let peak = stats.get("peak_in_flight").and_then(Value::as_u64);
        let requests = stats.get("requests").and_then(Value::as_u64).unwrap_or(0);
        match peak {
            Some(peak) if peak <= 4 => {}
            _ => {
                cluster
                    .fail(&format!("replica {} over the cap: {stats}", replica.id))
                    .await
            }
        }
        total += requests;
        used += usize::from(requests > 0);
    }
    assert_eq!(total, 100, "every request reached a replica exactly once");
    assert!(
        used >= 2,
        "the burst was spread over replicas ({used} used)"
    );
}

/// Scale-down under continuous load: high load scales the service up, then
/// lighter load continues while replicas are drained and stopped. Not one
/// request fails, and the service did scale down during the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_under_continuous_load_loses_nothing() {
    const HOST: &str = "drain.localhost";
    let cluster = Cluster::start(vec![Service::new("drain", HOST)
        .max_replicas(4)
        .target_concurrency(5)
        .scale_to_zero_after("300s")
        .drain_timeout("20s")
        .hold_timeout("60s")
        .scaling("stable_window", "4s")
        .scaling("panic_window", "2s")
        .scaling("scale_down_step", "1s")])
    .await;
    let run = |clients: usize, seconds: u64| {
        load::steady(
            &cluster.client,
            cluster.proxy_addr(0),
            HOST,
            "/sleep/50",
            clients,
            Duration::from_secs(seconds),
        )
    };
    let high = run(40, 8).await;
    let peak = cluster
        .service_status("drain")
        .await
        .map(|s| s.desired)
        .unwrap_or(0);
    let low = run(4, 15).await;
    // Read right after the light phase: the scale-down happened under load.
    let after = cluster.service_status("drain").await;
    let scaled_down = after.as_ref().is_some_and(|s| s.desired < peak);
    let failures = load::failures(&high) + load::failures(&low);
    if failures > 0 || peak < 2 || !scaled_down {
        cluster
            .fail(&format!(
                "peak {peak}, after {after:?}; high load {high:?}, low load {low:?}"
            ))
            .await;
    }
    let metrics = cluster.proxy_metrics(0).await.unwrap_or_default();
    assert!(
        !metrics.contains("code=\"502\"") && !metrics.contains("code=\"503\""),
        "the proxy answered errors:\n{metrics}"
    );
}

/// A replica that stops answering (frozen with SIGSTOP) is taken out of
/// rotation after three failed probes: traffic goes only to the healthy one.
/// Thawed, it passes its probe and is routed to again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_leaves_rotation_and_comes_back() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const HOST: &str = "frozen.localhost";
    let cluster = Cluster::start(vec![Service::new("frozen", HOST)
        .min_replicas(2)
        .max_replicas(2)
        .readiness_period("300ms")
        .scale_to_zero_after("300s")
        // A request the frozen replica accepted (the kernel does) fails in
        // seconds rather than a minute; only the wait below may meet one.
        .key("response_timeout", "3s")])
    .await;
    let status = cluster
        .wait_status(
            "frozen",
            "two ready replicas",
            Duration::from_secs(30),
            |s| s.ready == 2,
        )
        .await;
    let victim = status.replicas[0].clone();
    let port = victim
        .addr
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    // The replica process listening on that port, among the marked ones.
    let pid = cluster
        .replica_pids()
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| String::from_utf8_lossy(&env).contains(&format!("PORT={port}\0")))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no process for replica {}", victim.id));
    let pid = Pid::from_raw(pid as i32);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let unready = cluster
        .wait_status(
            "frozen",
            "the frozen replica out of rotation",
            Duration::from_secs(30),
            |s| {
                s.replicas
                    .iter()
                    .any(|r| r.id == victim.id && r.state == "starting")
                    && s.ready == 1
            },
        )
        .await;
    // The controller's status can be ahead of the proxy's KV watch by a
    // moment: wait for the proxy to route around the frozen replica too.
    let in_a_row = std::sync::atomic::AtomicU32::new(0);
    let (in_a_row, victim_id) = (&in_a_row, victim.id.as_str());
    cluster
        .wait_until(
            "the proxy routes 5 requests in a row to the healthy replica",
            Duration::from_secs(60),
            || async {
                let resp = cluster.get(HOST, "/").await;
                if resp.status == 200 && !resp.text().contains(victim_id) {
                    in_a_row.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= 5
                } else {
                    in_a_row.store(0, std::sync::atomic::Ordering::SeqCst);
                    false
                }
            },
        )
        .await;
    for _ in 0..20 {
        let resp = cluster.get_ok(HOST, "/").await;
        assert!(
            !resp.text().contains(&victim.id),
            "a request went to the frozen replica: {resp}; status {unready:?}"
        );
    }
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    cluster
        .wait_status(
            "frozen",
            "both replicas ready again",
            Duration::from_secs(30),
            |s| {
                s.ready == 2
                    && s.replicas
                        .iter()
                        .any(|r| r.id == victim.id && r.state == "ready")
            },
        )
        .await;
}
