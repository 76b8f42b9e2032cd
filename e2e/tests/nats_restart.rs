//! Acceptance criterion 8: a NATS outage does not stop warm traffic, and
//! both proxy and controller reconnect by themselves when it comes back.
//!
//! NATS carries only control traffic (wake, load, endpoints), so the data
//! path must keep serving from the endpoint set it has. After the server
//! returns (same port, same store dir, so the KV bucket survives), each
//! direction is proven to work again: proxy → controller by the controller
//! seeing the proxy's load reports again (`proxies: 1`, then in-flight
//! requests), and the round trip wake → scale → KV endpoints → release by a
//! fresh cold start of a service that was never woken before.

use std::sync::Arc;
use std::time::Duration;

use rouse_e2e::{Cluster, Service};

const WARM: &str = "warm.localhost";
const COLD: &str = "cold.localhost";

/// Criterion 8: stop nats-server; 20 warm requests succeed; start it
/// again; the controller counts the proxy again and sees its load, and a
/// cold start of a second service works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_traffic_survives_a_nats_outage_and_both_sides_reconnect() {
    let mut cluster = Cluster::start(vec![
        Service::new("warm", WARM).scale_to_zero_after("300s"),
        Service::new("cold", COLD).hold_timeout("45s"),
    ])
    .await;

    cluster.get_ok(WARM, "/").await;
    cluster
        .wait_status(
            "warm",
            "ready 1 with the proxy reporting",
            Duration::from_secs(30),
            |s| s.ready == 1 && s.proxies == 1,
        )
        .await;

    cluster.nats.stop().await;
    for i in 0..20 {
        let resp = cluster.get(WARM, "/").await;
        if resp.status != 200 {
            cluster
                .fail(&format!("warm request {i} with NATS down: {resp}"))
                .await;
        }
    }
    cluster.nats.start().await;

    cluster
        .wait_status(
            "warm",
            "proxies 1 again after NATS came back",
            Duration::from_secs(60),
            |s| s.proxies == 1,
        )
        .await;

    // Load reports flow again: two long requests show up as in_flight 2.
    let cluster = Arc::new(cluster);
    let long: Vec<_> = (0..2)
        .map(|_| {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.try_get_via(0, WARM, "/sleep/5000").await })
        })
        .collect();
    cluster
        .wait_status(
            "warm",
            "in_flight 2 reported after the reconnect",
            Duration::from_secs(15),
            |s| s.in_flight == 2,
        )
        .await;
    for (i, task) in long.into_iter().enumerate() {
        match task.await.expect("request task panicked") {
            Ok(resp) if resp.status == 200 => {}
            Ok(resp) => cluster.fail(&format!("long request {i}: {resp}")).await,
            Err(e) => cluster.fail(&format!("long request {i}: {e:#}")).await,
        }
    }

    // The full wake round trip works again.
    assert!(
        cluster
            .service_status("cold")
            .await
            .is_none_or(|s| s.ready == 0),
        "the second service must still be at zero"
    );
    let resp = cluster.get(COLD, "/").await;
    assert_eq!(
        resp.status, 200,
        "cold start after the NATS restart: {resp}"
    );
    assert!(resp.cold_start(), "must be a cold start: {resp}");
}
