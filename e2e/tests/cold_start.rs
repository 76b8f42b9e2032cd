//! Acceptance criterion 1: a request to a service at zero wakes it and is
//! answered, marked as a cold start; the next one is served warm.
//!
//! This is rouse's whole reason to exist, so it also checks what a backend
//! sees of the forwarded request: the original Host and an X-Forwarded-For
//! naming the client (rouse-echo echoes request headers back as `x-echo-*`).

use std::time::Duration;

use rouse_e2e::{Cluster, Service};

const HOST: &str = "echo.localhost";

/// Criterion 1: cold request → 200 "handled by …" with
/// `x-rouse-cold-start: true`, Host preserved, X-Forwarded-For appended;
/// the following request is warm (no cold-start header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_wakes_the_service_and_the_next_is_warm() {
    let cluster = Cluster::start(vec![Service::new("echo", HOST)]).await;
    assert!(
        cluster.replica_pids().is_empty(),
        "a service with min_replicas 0 must not run a replica before any request"
    );

    let cold = cluster.get_ok(HOST, "/").await;
    assert!(
        cold.text().starts_with("handled by"),
        "cold response body: {cold}"
    );
    assert!(
        cold.cold_start(),
        "cold response lacks x-rouse-cold-start: true: {cold}"
    );
    assert_eq!(
        cold.header("x-echo-host"),
        Some(HOST),
        "the backend must see the client's Host: {cold}"
    );
    let xff = cold.header("x-echo-forwarded-for").unwrap_or_default();
    assert!(
        xff.contains("127.0.0.1"),
        "the backend must see X-Forwarded-For with the client address, got {xff:?}: {cold}"
    );

    let warm = cluster.get_ok(HOST, "/").await;
    assert!(
        warm.text().starts_with("handled by"),
        "warm response: {warm}"
    );
    assert!(
        warm.header("x-rouse-cold-start").is_none(),
        "a request to a ready service must not be marked cold: {warm}"
    );

    let status = cluster
        .wait_status(
            "echo",
            "ready 1 after the wake",
            Duration::from_secs(30),
            |s| s.ready == 1,
        )
        .await;
    assert_eq!(status.desired, 1, "status: {:?}", status.raw);
    assert!(
        !cluster.replica_pids().is_empty(),
        "no replica process found by marker"
    );
}
