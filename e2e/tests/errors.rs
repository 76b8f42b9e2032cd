//! Acceptance criterion 5: the proxy's error answers (DESIGN.md, "HTTP
//! behaviour of the proxy") and the controller's error reporting.
//!
//! Failures must be fast, explicit and explained: an unknown host is a 404
//! that names the host; a service that cannot start answers 503 with
//! Retry-After once the hold times out, while the controller shows why in
//! `/api/v1/services` and its log; a full wait queue rejects at once instead
//! of queueing without bound.

use std::time::Duration;

use rouse_e2e::{Cluster, Service};

/// Criterion 5a: no service matches the host → 404 whose body names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_naming_the_host() {
    let cluster = Cluster::start(vec![Service::new("echo", "echo.localhost")]).await;
    let host = "nobody-serves-this.localhost";
    let resp = cluster.get(host, "/some/path").await;
    assert_eq!(resp.status, 404, "unknown host: {resp}");
    assert!(
        resp.text().contains(host),
        "the 404 body must name the host {host}: {resp}"
    );
    assert!(
        cluster.replica_pids().is_empty(),
        "an unmatched request must not start any replica"
    );
}

/// Criterion 5b: the backend command does not exist → the held request gets
/// 503 + Retry-After after `hold.timeout`, the controller reports a
/// `last_error` for the service, and its log names the service and the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_gives_503_and_a_reported_error() {
    let service = "broken-backend";
    let host = "broken.localhost";
    let cluster = Cluster::start(vec![Service::new(service, host)
        .command(&["/nonexistent/binary-xyz"])
        .hold_timeout("2s")])
    .await;

    let resp = cluster.get(host, "/").await;
    assert_eq!(
        resp.status, 503,
        "request to a service that cannot start: {resp}"
    );
    assert!(
        resp.header("retry-after").is_some(),
        "503 after a hold timeout must carry Retry-After: {resp}"
    );

    let status = cluster
        .wait_status(
            service,
            "shows a last_error",
            Duration::from_secs(30),
            |s| s.last_error.as_deref().is_some_and(|e| !e.is_empty()),
        )
        .await;
    assert_eq!(status.ready, 0, "nothing can be ready: {:?}", status.raw);

    cluster
        .wait_until(
            "the controller log has a line naming the service and an error",
            Duration::from_secs(30),
            || async {
                cluster.controller_logs().lines().any(|line| {
                    let lower = line.to_ascii_lowercase();
                    line.contains(service)
                        && ["error", "fail", "no such file", "not found"]
                            .iter()
                            .any(|w| lower.contains(w))
                })
            },
        )
        .await;
}

/// Criterion 5c: with `hold.max_requests: 2` and two requests already held
/// (replicas take 10 s to start), a third is rejected with 503 +
/// Retry-After at once, i.e. while the first two are still held; the two
/// held ones are then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_wait_queue_rejects_at_once() {
    let service = "slow";
    let host = "slow.localhost";
    let cluster = Cluster::start(vec![Service::new(service, host)
        .echo_args(&["--startup-delay", "10s"])
        .hold_max_requests(2)
        .hold_timeout("60s")])
    .await;
    let cluster = std::sync::Arc::new(cluster);

    let held: Vec<_> = (0..2)
        .map(|_| {
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.try_get_via(0, host, "/").await })
        })
        .collect();

    // Both are held: the proxy's gauge (or the controller's sum) says 2.
    cluster
        .wait_until("two requests are held", Duration::from_secs(30), || async {
            let from_proxy = cluster.proxy_metric(0, "rouse_held", service).await;
            if from_proxy == Some(2.0) {
                return true;
            }
            cluster
                .service_status(service)
                .await
                .is_some_and(|s| s.held == 2)
        })
        .await;
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the held requests were answered before the replica could be ready"
    );

    let third = cluster.get(host, "/").await;
    assert_eq!(
        third.status, 503,
        "third request with a full queue: {third}"
    );
    assert!(
        third.header("retry-after").is_some(),
        "a queue-full 503 must carry Retry-After: {third}"
    );
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the queue-full 503 must come at once, before the held requests are answered"
    );

    for (i, h) in held.into_iter().enumerate() {
        match h.await.expect("held request task panicked") {
            Ok(resp) if resp.status == 200 => {
                assert!(
                    resp.cold_start(),
                    "held request {i} not marked cold: {resp}"
                )
            }
            Ok(resp) => cluster.fail(&format!("held request {i}: {resp}")).await,
            Err(e) => cluster.fail(&format!("held request {i}: {e:#}")).await,
        }
    }
}
