//! The waiting page (`hold.browser_page`) on the real server stack, without
//! NATS: endpoint sets and `scaled` events are applied directly, as the KV
//! watcher and the `scaled` follower apply them, and the replica is a raw
//! socket.
//!
//! Proves: a browser's navigation at zero gets the page at once (503,
//! `Retry-After`, `no-store`, the events path in it) while a curl-like
//! client is held and gets the app with `x-rouse-cold-start`; the event
//! stream goes `waking` → `starting` → `ready` and ends, counting as
//! waiting while open; it ends with `timeout` after `hold.timeout`; a warm
//! service forwards browsers to the app; the events path of a service
//! without the page is the app's.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rouse_proxy::{NO_PAGE_HEADER, PAGE_HEADER, WAIT_EVENTS_PATH};

mod common;

use common::{raw_replica, set_endpoints, Harness};

const CONFIG: &str = "\
nats: {url: nats://127.0.0.1:1}
services:
  - name: web
    hosts: [web.localhost]
    backend: {process: {command: [x]}}
    hold: {timeout: 20s, browser_page: true}
  - name: quick
    hosts: [quick.localhost]
    backend: {process: {command: [x]}}
    hold: {timeout: 300ms, browser_page: true}
  - name: plain
    hosts: [plain.localhost]
    backend: {process: {command: [x]}}
";

/// What Chromium sends for a typed URL.
const BROWSER: &[(&str, &str)] = &[
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-dest", "document"),
];

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(
    client: &HttpClient,
    harness: &Harness,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<Incoming> {
    let mut request = Request::get(format!("http://{}{path}", harness.addr)).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).expect("request");
    tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("an answer within 30 s")
        .expect("response")
}

async fn body_text(response: http::Response<Incoming>) -> String {
    let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .expect("the body within 30 s")
        .expect("body");
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

/// Reads the event stream until `want` (an event name) has come, and
/// returns every event name seen; `None` when the stream ended first.
async fn read_until(body: &mut Incoming, seen: &mut Vec<String>, want: &str) -> bool {
    for _ in 0..100 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s");
        let Some(frame) = frame else { return false };
        let frame = frame.expect("frame");
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let text = String::from_utf8_lossy(data);
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("event: ") {
                seen.push(name.to_string());
            }
        }
        if seen.last().map(String::as_str) == Some(want) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn a_browser_at_zero_gets_the_page_at_once_and_curl_is_held() {
    let harness = common::start_proxy(CONFIG).await;
    let client = client();

    let page = get(&client, &harness, "web.localhost", "/", BROWSER).await;
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers[PAGE_HEADER], "true");
    assert!(!headers.contains_key("x-rouse-cold-start"));
    let html = body_text(page).await;
    assert!(html.contains(WAIT_EVENTS_PATH), "{html}");
    assert!(html.contains("web is waking up"), "{html}");
    assert_eq!(
        harness.service.hold.held(),
        0,
        "the page took no hold place"
    );

    let head = tokio::time::timeout(Duration::from_secs(30), {
        let request = Request::head(format!("http://{}/", harness.addr))
            .header("host", "web.localhost")
            .header("accept", "text/html")
            .body(Empty::new())
            .expect("request");
        client.request(request)
    })
    .await
    .expect("HEAD answered")
    .expect("response");
    assert_eq!(head.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(head.headers()[PAGE_HEADER], "true");

    // curl (Accept: */*) and a page's own held poll wait for the app.
    let held = {
        let client = client.clone();
        let addr = harness.addr;
        tokio::spawn(async move {
            let mut out = Vec::new();
            for headers in [
                &[("accept", "*/*")][..],
                &[(NO_PAGE_HEADER, "1"), BROWSER[0]],
            ] {
                let mut request =
                    Request::get(format!("http://{addr}/")).header("host", "web.localhost");
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                let request = request.body(Empty::<Bytes>::new()).expect("request");
                out.push(client.request(request));
            }
            let mut answers = Vec::new();
            for answer in futures::future::join_all(out).await {
                answers.push(answer.expect("response"));
            }
            answers
        })
    };
    rouse_e2e::wait_until("two requests held", Duration::from_secs(10), || async {
        harness.service.hold.held() == 2
    })
    .await;
    let replica = raw_replica(false).await;
    set_endpoints(
        &harness.service,
        1,
        &[replica.authority.as_str().parse().expect("addr")],
    );
    let answers = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("released within 30 s")
        .expect("task");
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["x-rouse-cold-start"], "true");
        assert!(!answer.headers().contains_key(PAGE_HEADER));
        assert_eq!(body_text(answer).await, "ok");
    }

    // Warm: a browser gets the app.
    let warm = get(&client, &harness, "web.localhost", "/", BROWSER).await;
    assert_eq!(warm.status(), StatusCode::OK);
    assert!(!warm.headers().contains_key(PAGE_HEADER));
}

#[tokio::test]
async fn the_event_stream_goes_waking_starting_ready_and_counts_as_waiting() {
    let harness = common::start_proxy(CONFIG).await;
    let client = client();
    let path = format!("{WAIT_EVENTS_PATH}?path=/some/page");
    let events = get(&client, &harness, "web.localhost", &path, &[]).await;
    assert_eq!(events.status(), StatusCode::OK);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    assert_eq!(events.headers()["cache-control"], "no-store");
    let mut body = events.into_body();
    let mut seen = Vec::new();
    assert!(read_until(&mut body, &mut seen, "waking").await, "{seen:?}");
    assert_eq!(
        harness.service.waiting(),
        1,
        "an open stream keeps it wanted"
    );
    assert_eq!(harness.service.hold.held(), 0, "but takes no hold place");

    harness.service.scaled(1);
    assert!(
        read_until(&mut body, &mut seen, "starting").await,
        "{seen:?}"
    );
    let replica = raw_replica(false).await;
    set_endpoints(
        &harness.service,
        1,
        &[replica.authority.as_str().parse().expect("addr")],
    );
    assert!(read_until(&mut body, &mut seen, "ready").await, "{seen:?}");
    assert_eq!(seen, ["waking", "starting", "ready"]);
    assert!(
        !read_until(&mut body, &mut seen, "more").await,
        "the stream ends at ready"
    );
    rouse_e2e::wait_until(
        "the stream counted out",
        Duration::from_secs(10),
        || async { harness.service.waiting() == 0 },
    )
    .await;

    // Already warm: `ready` at once.
    let events = get(&client, &harness, "web.localhost", WAIT_EVENTS_PATH, &[]).await;
    let mut body = events.into_body();
    let mut seen = Vec::new();
    assert!(read_until(&mut body, &mut seen, "ready").await, "{seen:?}");
    assert_eq!(seen, ["ready"]);
}

#[tokio::test]
async fn the_stream_times_out_with_hold_timeout_and_the_path_is_reserved_only_with_the_page() {
    let harness = common::start_proxy(CONFIG).await;
    let client = client();
    let events = get(&client, &harness, "quick.localhost", WAIT_EVENTS_PATH, &[]).await;
    let mut body = events.into_body();
    let mut seen = Vec::new();
    assert!(
        read_until(&mut body, &mut seen, "timeout").await,
        "{seen:?}"
    );
    assert_eq!(seen, ["waking", "timeout"]);
    assert!(
        !read_until(&mut body, &mut seen, "more").await,
        "the stream ends"
    );

    // A service without the page: the path is the app's.
    let plain = &harness.services[2];
    let replica = raw_replica(false).await;
    set_endpoints(
        plain,
        1,
        &[replica.authority.as_str().parse().expect("addr")],
    );
    let app = get(
        &client,
        &harness,
        "plain.localhost",
        WAIT_EVENTS_PATH,
        BROWSER,
    )
    .await;
    assert_eq!(app.status(), StatusCode::OK);
    assert_eq!(body_text(app).await, "ok");
    let heads = replica.heads.lock().expect("heads").clone();
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with(&format!("GET {WAIT_EVENTS_PATH}"))),
        "{heads:?}"
    );
}
