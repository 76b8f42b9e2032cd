//! Acceptance criterion 7: the controller is not on the data path, and a
//! restarted controller adopts the replicas it had started.
//!
//! Killing the controller (SIGKILL: no chance to clean up) must not stop
//! warm traffic, since proxies keep routing to the endpoint set they have.
//! The controller started again with the same state dir must find its
//! replicas (pid files) and neither leak them nor start duplicates: the set
//! of replica processes, found by the marker in their env, is unchanged.

use std::time::Duration;

use rouse_e2e::{assert_stays, Cluster, Service};

const HOST: &str = "restart.localhost";

/// Criterion 7: warm service; SIGKILL the controller; 20 warm requests
/// succeed meanwhile; restart it on the same state dir; it reports ready 1
/// with the very same replica processes, and traffic still flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_controller_adopts_replicas_without_leak_or_double() {
    let mut cluster = Cluster::start(vec![Service::new("restart", HOST)
        .scale_to_zero_after("300s")
        .max_replicas(2)])
    .await;

    cluster.get_ok(HOST, "/").await;
    let before = cluster
        .wait_status("restart", "ready 1", Duration::from_secs(30), |s| {
            s.ready == 1 && s.desired == 1
        })
        .await;
    let pids = cluster.replica_pids();
    assert!(!pids.is_empty(), "no replica process found by marker");

    cluster.kill_controller().await;
    for i in 0..20 {
        let resp = cluster.get(HOST, "/").await;
        if resp.status != 200 {
            cluster
                .fail(&format!(
                    "warm request {i} with the controller down: {resp}"
                ))
                .await;
        }
    }
    assert_eq!(
        cluster.replica_pids(),
        pids,
        "replica processes changed while the controller was down"
    );

    cluster.restart_controller().await;
    let after = cluster
        .wait_status(
            "restart",
            "ready 1 after the restart",
            Duration::from_secs(60),
            |s| s.ready == 1,
        )
        .await;
    assert_eq!(
        cluster.replica_pids(),
        pids,
        "the restarted controller must adopt the replicas: no new one, none lost"
    );
    assert_eq!(
        after.addrs(),
        before.addrs(),
        "the adopted replica must keep its address: before {:?}, after {:?}",
        before.raw,
        after.raw
    );
    // Not just at one instant: the set stays the same for a while.
    let marker = cluster.marker.clone();
    assert_stays(
        "the replica process set stays unchanged after adoption",
        Duration::from_secs(3),
        || {
            let same = rouse_e2e::replica_pids(&marker) == pids;
            async move { same }
        },
    )
    .await;

    for i in 0..5 {
        let resp = cluster.get(HOST, "/").await;
        if resp.status != 200 || resp.cold_start() {
            cluster
                .fail(&format!(
                    "warm request {i} after the controller restart: {resp}"
                ))
                .await;
        }
    }
}
