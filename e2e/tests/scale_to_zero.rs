//! Acceptance criterion 3: an idle service goes back to zero: the
//! controller reports nothing desired and nothing ready, and no replica
//! process is left running.
//!
//! Scale-to-zero is the other half of the promise; the process check (by the
//! marker in the replica env) proves the replica is really stopped, not just
//! forgotten by the controller.

use std::time::Duration;

use rouse_e2e::{Cluster, Service};

const HOST: &str = "idle.localhost";

/// Criterion 3: with `scale_to_zero_after: 2s`, one request and then
/// silence → ready 0, desired 0, no replica process within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_service_scales_to_zero_and_its_process_exits() {
    let cluster = Cluster::start(vec![Service::new("idle", HOST)
        .scale_to_zero_after("2s")
        .drain_timeout("5s")])
    .await;

    let resp = cluster.get_ok(HOST, "/").await;
    assert!(
        resp.cold_start(),
        "first request should have been a cold start: {resp}"
    );
    assert!(
        !cluster.replica_pids().is_empty(),
        "a replica answered, so a process with the marker must exist"
    );

    cluster
        .wait_status(
            "idle",
            "ready 0 and desired 0, last_scale to 0",
            Duration::from_secs(30),
            |s| {
                let last_to = s.last_scale.as_ref().and_then(|v| v.get("to")?.as_u64());
                s.ready == 0 && s.desired == 0 && last_to == Some(0)
            },
        )
        .await;
    cluster
        .wait_until(
            "no replica process is left",
            Duration::from_secs(30),
            || async { cluster.replica_pids().is_empty() },
        )
        .await;

    // And it can wake again.
    let again = cluster.get_ok(HOST, "/").await;
    assert!(
        again.cold_start(),
        "request after scale-to-zero must be a cold start: {again}"
    );
}
