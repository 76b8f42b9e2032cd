//! Acceptance criterion 10: SIGTERM drains the proxy: it finishes the
//! requests in flight and exits 0 (DESIGN.md, "SIGTERM: stop accepting,
//! finish in-flight requests (bounded), exit 0").
//!
//! A rolling restart of the proxy must not cut requests; this sends SIGTERM
//! while an 8 s request is in flight and checks both the response and the
//! exit code.

use std::time::Duration;

use rouse_e2e::{Cluster, Service};

const HOST: &str = "term.localhost";

/// Criterion 10: SIGTERM with `/sleep/8000` in flight → that request still
/// gets 200, and the proxy exits with code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut cluster = Cluster::start(vec![Service::new("term", HOST)]).await;
    cluster.get_ok(HOST, "/").await;

    let addr = cluster.proxy_addr(0);
    let client = cluster.client.clone();
    let in_flight = tokio::spawn(async move {
        rouse_e2e::request(
            &client,
            reqwest::Method::GET,
            addr,
            HOST,
            "/sleep/8000",
            None,
        )
        .await
    });
    cluster
        .wait_until(
            "the request is in flight",
            Duration::from_secs(10),
            || async {
                cluster.proxy_metric(0, "rouse_in_flight", "term").await == Some(1.0)
                    || cluster
                        .service_status("term")
                        .await
                        .is_some_and(|s| s.in_flight == 1)
            },
        )
        .await;
    assert!(
        !in_flight.is_finished(),
        "the 8 s request finished before SIGTERM"
    );

    cluster.proxy_proc(0).sigterm();
    let resp = match in_flight.await.expect("request task panicked") {
        Ok(resp) => resp,
        Err(e) => {
            cluster
                .fail(&format!("in-flight request cut by SIGTERM: {e:#}"))
                .await
        }
    };
    assert_eq!(resp.status, 200, "in-flight request across SIGTERM: {resp}");

    let status = cluster
        .proxy_proc(0)
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "proxy exit status after SIGTERM: {status}"
    );
}
