//! DESIGN.md, "HTTP/1.1 and h2c inbound; Upgrade (WebSocket) passes
//! through": the two inbound protocols besides plain HTTP/1.1.
//!
//! gRPC and other HTTP/2 clients without TLS speak h2c with prior
//! knowledge, and WebSocket apps need the proxy to hand the raw connection
//! over after the 101. Both go through the same service lookup as HTTP/1.1
//! (host from `:authority` for h2c), so both are checked through the proxy.

use rouse_e2e::protocols::WS_ACCEPT;
use rouse_e2e::{h2c_get, upgrade_echo, Cluster, Service};

const HOST: &str = "proto.localhost";

/// h2c inbound: three concurrent streams on one HTTP/2 prior-knowledge
/// connection, host only in `:authority`, to a cold service → all 200
/// "handled by", the backend sees the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let cluster = Cluster::start(vec![Service::new("proto", HOST)]).await;
    let responses = match h2c_get(cluster.proxy_addr(0), HOST, &["/", "/", "/"]).await {
        Ok(responses) => responses,
        Err(e) => cluster.fail(&format!("h2c through the proxy: {e:#}")).await,
    };
    assert_eq!(responses.len(), 3);
    for resp in &responses {
        assert_eq!(resp.status, 200, "h2c response: {resp}");
        assert!(
            resp.text().starts_with("handled by"),
            "h2c response: {resp}"
        );
        assert_eq!(
            resp.header("x-echo-host"),
            Some(HOST),
            "the backend must see the :authority as Host: {resp}"
        );
    }
}

/// Upgrade passthrough: `GET /ws` with `Connection: Upgrade` and `Upgrade:
/// websocket` through the proxy → 101 with the backend's
/// Sec-WebSocket-Accept, and bytes written afterwards come back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let cluster = Cluster::start(vec![Service::new("proto", HOST)]).await;
    cluster.get_ok(HOST, "/").await; // warm, so only the upgrade is under test

    let payload = b"hello through rouse \x00\x01\x02 binary-safe \xff".repeat(50);
    let up = match upgrade_echo(cluster.proxy_addr(0), HOST, "/ws", &payload).await {
        Ok(up) => up,
        Err(e) => {
            cluster
                .fail(&format!("upgrade through the proxy: {e:#}"))
                .await
        }
    };
    assert_eq!(
        up.status(),
        Some(101),
        "upgrade response head:\n{}",
        up.head
    );
    assert_eq!(
        up.header("sec-websocket-accept"),
        Some(WS_ACCEPT),
        "the backend's 101 headers must pass through:\n{}",
        up.head
    );
    assert!(
        up.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "101 without `Upgrade: websocket`:\n{}",
        up.head
    );
    assert_eq!(
        up.echoed.len(),
        payload.len(),
        "bytes echoed on the upgraded connection"
    );
    assert!(up.echoed == payload, "echoed bytes differ from those sent");
}
