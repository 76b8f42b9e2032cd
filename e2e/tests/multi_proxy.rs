//! Acceptance criterion 6: several proxies share one controller, and the
//! controller sums their load.
//!
//! Scaling decisions must see the whole fleet's concurrency, not the last
//! proxy that reported: 3 long requests through proxy A and 2 through proxy
//! B must show up as `in_flight: 5` from `proxies: 2`.

use std::sync::Arc;
use std::time::Duration;

use rouse_e2e::{Cluster, Service};

const HOST: &str = "multi.localhost";
/// Long enough for several 200 ms load reports to land while in flight.
const SLEEP_PATH: &str = "/sleep/6000";

/// Criterion 6: both proxies serve (200), and 3 + 2 concurrent long
/// requests appear in the controller as in_flight 5 from 2 proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_sums_the_load_of_two_proxies() {
    let cluster = Arc::new(
        Cluster::builder()
            .proxies(2)
            .service(Service::new("multi", HOST).max_replicas(2))
            .start()
            .await,
    );
    assert_ne!(cluster.proxy_addr(0), cluster.proxy_addr(1));

    for i in 0..2 {
        let resp = cluster.get_via(i, HOST, "/").await;
        assert_eq!(resp.status, 200, "through proxy {i}: {resp}");
        assert!(
            resp.text().starts_with("handled by"),
            "through proxy {i}: {resp}"
        );
    }
    cluster
        .wait_status("multi", "ready 1", Duration::from_secs(30), |s| {
            s.ready >= 1
        })
        .await;

    let long: Vec<_> = [0, 0, 0, 1, 1]
        .into_iter()
        .map(|proxy| {
            let cluster = cluster.clone();
            tokio::spawn(async move { (proxy, cluster.try_get_via(proxy, HOST, SLEEP_PATH).await) })
        })
        .collect();

    cluster
        .wait_status(
            "multi",
            "in_flight 5 summed over proxies 2 (while the long requests run)",
            Duration::from_secs(20),
            |s| s.in_flight == 5 && s.proxies == 2,
        )
        .await;

    for task in long {
        let (proxy, result) = task.await.expect("request task panicked");
        match result {
            Ok(resp) if resp.status == 200 => {}
            Ok(resp) => {
                cluster
                    .fail(&format!("long request via proxy {proxy}: {resp}"))
                    .await
            }
            Err(e) => {
                cluster
                    .fail(&format!("long request via proxy {proxy}: {e:#}"))
                    .await
            }
        }
    }
}
