//! The admin API behind a bearer token: `controller.admin_token_file` closes
//! `/api/...` (401 with `WWW-Authenticate: Bearer` without the token) while
//! `/metrics` and `/healthz` stay open for Prometheus and probes; the data
//! port never serves any admin path, token or not.

use rouse_e2e::{Cluster, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_token_and_the_data_port_never_serves_it() {
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "e2e-secret-token\n").expect("token file");
    let cluster = Cluster::builder()
        .service(Service::new("echo", "echo.localhost"))
        .controller_key(
            "admin_token_file",
            &format!("{:?}", token_file.display().to_string()),
        )
        .start()
        .await;
    let client = reqwest::Client::new();
    let admin = cluster.controller_admin();
    let api = format!("http://{admin}/api/v1/services");

    let refused = client.get(&api).send().await.expect("GET without token");
    assert_eq!(refused.status(), 401);
    let challenge = refused
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge:?}");
    let body = refused.text().await.unwrap_or_default();
    assert!(!body.contains("echo"), "a refusal shows no service: {body}");

    let wrong = client
        .get(&api)
        .bearer_auth("e2e-secret-tokeN")
        .send()
        .await
        .expect("GET with a wrong token");
    assert_eq!(wrong.status(), 401);

    let allowed = client
        .get(&api)
        .bearer_auth("e2e-secret-token")
        .send()
        .await
        .expect("GET with the token");
    assert_eq!(allowed.status(), 200);
    let body = allowed.text().await.expect("body");
    assert!(body.contains("\"echo\""), "{body}");

    for open in ["/metrics", "/healthz"] {
        let resp = client
            .get(format!("http://{admin}{open}"))
            .send()
            .await
            .expect("open path");
        assert_eq!(resp.status(), 200, "{open} stays open");
    }

    // The data port routes admin paths like any other request: by host.
    for path in ["/api/v1/services", "/metrics", "/healthz", "/readyz"] {
        let resp = cluster.get("unknown.localhost", path).await;
        assert_eq!(resp.status, 404, "{path} on the data port: {resp}");
        assert!(!resp.text().contains("rouse_"), "{path}: {resp}");
    }
    assert!(cluster.replica_pids().is_empty(), "nothing was woken");
}
