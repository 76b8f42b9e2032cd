//! The controller's SIGTERM must not depend on NATS: with the server gone,
//! it still stops its replicas (`controller.on_shutdown: stop`, the default)
//! and exits 0 in bounded time. Its last endpoint-set write cannot reach
//! NATS, and must not be waited for forever.

use std::time::Duration;

use rouse_e2e::{Cluster, Service};

const HOST: &str = "gone.localhost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_sigterm_with_nats_down_stops_replicas_and_exits_0() {
    let mut cluster =
        Cluster::start(vec![Service::new("gone", HOST).scale_to_zero_after("300s")]).await;
    cluster.get_ok(HOST, "/").await;
    cluster
        .wait_status("gone", "one ready replica", Duration::from_secs(30), |s| {
            s.ready == 1
        })
        .await;
    assert_eq!(cluster.replica_pids().len(), 1);

    cluster.nats.stop().await;
    let status = cluster.stop_controller(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "controller exit status after SIGTERM with NATS down: {status}"
    );
    cluster
        .wait_until(
            "the replica is stopped",
            Duration::from_secs(10),
            || async { cluster.replica_pids().is_empty() },
        )
        .await;
}
