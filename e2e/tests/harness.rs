//! Self-checks of the harness that need no rouse binary: a broken harness
//! would make every other e2e test fail for the wrong reason, so the pieces
//! that can be checked on their own (nats-server lifecycle, the polling
//! helpers' deadlines) are checked here.

use std::time::Duration;

use std::collections::BTreeMap;
use std::ffi::OsString;

use rouse_e2e::protocols::WS_ACCEPT;
use rouse_e2e::{
    bin, free_port, get, h2c_get, poll_until, upgrade_echo, wait_until, NatsServer, Proc,
};

/// The NATS-outage test needs the same server back on the same port and
/// store dir: stop closes the port, start opens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_stops_and_starts_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start_in(dir.path()).await;
    let url = nats.url();
    let port = nats.port();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok());

    nats.stop().await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());

    nats.start().await;
    assert_eq!(nats.url(), url);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok());
    assert!(nats.store_dir().starts_with(dir.path()));
}

/// Waits end at their deadline with a panic that names what was awaited.
#[tokio::test]
#[should_panic(expected = "waiting until the impossible happens")]
async fn wait_until_panics_at_its_deadline() {
    wait_until(
        "the impossible happens",
        Duration::from_millis(200),
        || async { false },
    )
    .await;
}

/// A probe that hangs is cut off at the deadline instead of hanging the test.
#[tokio::test]
#[should_panic(expected = "timed out after")]
async fn a_hanging_probe_is_bounded() {
    let _: () = poll_until(
        "a hanging probe answers",
        Duration::from_millis(200),
        || async { std::future::pending::<Option<()>>().await },
    )
    .await;
}

/// A condition that turns true ends the wait early.
#[tokio::test]
async fn wait_until_returns_once_true() {
    let start = std::time::Instant::now();
    let mut n = 0;
    wait_until("the third poll", Duration::from_secs(10), || {
        n += 1;
        let done = n >= 3;
        async move { done }
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// The protocol clients used against the proxy work against rouse-echo
/// itself, so a failing proxy test points at the proxy, not at the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_work_against_rouse_echo_directly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args: Vec<OsString> = ["--port".into(), port.to_string().into()].to_vec();
    let mut echo = Proc::spawn(
        "rouse-echo",
        &bin("rouse-echo"),
        &args,
        &BTreeMap::new(),
        &dir.path().join("echo.log"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = rouse_e2e::http::client();
    wait_until(
        "rouse-echo answers /healthz",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        },
    )
    .await;

    let resp = get(addr, "direct.localhost", "/").await;
    assert_eq!(resp.status, 200, "{resp}");
    assert!(resp.text().starts_with("handled by"), "{resp}");
    assert_eq!(
        resp.header("x-echo-host"),
        Some("direct.localhost"),
        "{resp}"
    );

    let h2 = h2c_get(addr, "direct.localhost", &["/", "/healthz"])
        .await
        .unwrap();
    assert_eq!(
        h2.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200]
    );

    let payload = b"ping \x00\xff pong".repeat(100);
    let up = upgrade_echo(addr, "direct.localhost", "/ws", &payload)
        .await
        .unwrap();
    assert_eq!(up.status(), Some(101), "{}", up.head);
    assert_eq!(
        up.header("Sec-WebSocket-Accept"),
        Some(WS_ACCEPT),
        "{}",
        up.head
    );
    assert!(up.echoed == payload, "echoed {} bytes", up.echoed.len());

    echo.sigterm();
    let status = echo.wait_exit(Duration::from_secs(30)).await;
    assert!(echo.logs().len() < 1_000_000);
    assert_eq!(status.code(), Some(0), "rouse-echo exit after SIGTERM");
}
