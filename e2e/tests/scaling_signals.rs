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
            .fail(&format!("load reached only {peak} replicas: {:?}", events.snapshot()))
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
        assert!(gap >= 9_900, "{gap} ms between {:?} and {:?}", pair[0], pair[1]);
    }
}
