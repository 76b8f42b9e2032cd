//! `proxy.access_log` against a real proxy, controller, NATS and rouse-echo
//! replicas: one line per request with the fields right, the cold start's
//! wait and replica in it, 404s as service `-`, the combined format, and
//! sampling that still logs every 5xx. Every test ends with SIGTERM and
//! reads the log after the proxy has exited: with `flush_interval: 1h`
//! nothing reaches the file before shutdown, so the lines found were
//! written by the shutdown flush (and none was lost to SIGTERM).

use std::path::Path;
use std::time::Duration;

use rouse_e2e::{Cluster, Service};
use serde_json::Value;

const HOST: &str = "logged.localhost";

/// The access log key for a file at `path`.
fn access_log(path: &Path, rest: &str) -> String {
    format!(
        "{{path: {:?}, flush_interval: 1h, {rest}}}",
        path.display().to_string()
    )
}

/// SIGTERMs proxy 0, checks it exits 0, and returns its log's lines.
async fn stop_and_read(cluster: &mut Cluster, log: &Path) -> Vec<String> {
    cluster.proxy_proc(0).sigterm();
    let status = cluster
        .proxy_proc(0)
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(status.code(), Some(0), "proxy exit after SIGTERM: {status}");
    let text = std::fs::read_to_string(log).expect("the access log exists");
    text.lines().map(str::to_owned).collect()
}

/// A cold request, two warm ones (one with a body and a query) and a 404
/// give four JSON lines, in order, each with its fields right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_for_cold_warm_and_unrouted_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let mut cluster = Cluster::builder()
        .service(Service::new("logged", HOST))
        .proxy_key("access_log", &access_log(&log, "format: json"))
        .start()
        .await;

    let cold = cluster.get_ok(HOST, "/").await;
    assert!(cold.cold_start(), "the first request was not held: {cold}");
    let replica = cold
        .header("x-echo-replica")
        .expect("x-echo-replica")
        .to_owned();
    let warm = cluster.get_ok(HOST, "/sleep/1?token=secret").await;
    assert!(!warm.cold_start());
    let posted = rouse_e2e::request(
        &cluster.client,
        reqwest::Method::POST,
        cluster.proxy_addr(0),
        HOST,
        "/upload",
        Some(reqwest::Body::from("twelve bytes")),
    )
    .await
    .expect("POST");
    assert_eq!(posted.status, 200, "{posted}");
    let missing = cluster.get("nobody.localhost", "/nothing").await;
    assert_eq!(missing.status, 404, "{missing}");
    // Written only at shutdown (flush_interval: 1h, far below the buffer).
    let before = std::fs::read_to_string(&log).expect("the log file is created at start");
    assert_eq!(before, "", "lines reached the file before shutdown");

    let lines = stop_and_read(&mut cluster, &log).await;
    assert_eq!(lines.len(), 4, "one line per request: {lines:#?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let [cold_line, warm_line, post_line, missing_line] = &parsed[..] else {
        unreachable!()
    };

    assert_eq!(cold_line["service"], "logged");
    assert_eq!(cold_line["method"], "GET");
    assert_eq!(cold_line["host"], HOST);
    assert_eq!(cold_line["path"], "/");
    assert_eq!(cold_line["status"], 200);
    assert_eq!(cold_line["upstream"], replica.as_str(), "{cold_line}");
    assert_eq!(cold_line["client"], "127.0.0.1");
    assert_eq!(cold_line["protocol"], "HTTP/1.1");
    assert_eq!(cold_line["bytes_sent"], cold.body.len() as u64);
    let waited = cold_line["cold_start_wait_ms"].as_f64().expect("a number");
    let took = cold_line["duration_ms"].as_f64().expect("a number");
    assert!(waited > 0.0, "a cold start with no wait: {cold_line}");
    assert!(took >= waited, "duration below the wait: {cold_line}");
    assert!(cold_line["time"].as_str().is_some_and(|t| t.ends_with('Z')));

    // The query is left out by default.
    assert_eq!(warm_line["path"], "/sleep/1", "{warm_line}");
    assert_eq!(warm_line["cold_start_wait_ms"], 0.0);
    assert_eq!(warm_line["upstream"], replica.as_str());
    assert_eq!(warm_line["bytes_sent"], warm.body.len() as u64);

    assert_eq!(post_line["method"], "POST");
    assert_eq!(post_line["bytes_received"], 12, "{post_line}");
    assert_eq!(post_line["bytes_sent"], posted.body.len() as u64);

    assert_eq!(missing_line["service"], "-", "{missing_line}");
    assert_eq!(missing_line["status"], 404);
    assert_eq!(missing_line["host"], "nobody.localhost");
    assert_eq!(missing_line["upstream"], Value::Null);
}

/// `sample: 0.0` in the combined format: successes and a 404 leave no
/// line, a 504 (the replica slower than `response_timeout`) does, and the
/// line is nginx's combined format followed by rouse's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_and_sampling_keeps_server_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("access.log");
    let mut cluster = Cluster::builder()
        .service(Service::new("logged", HOST).key("response_timeout", "1s"))
        .proxy_key(
            "access_log",
            &access_log(&log, "format: combined, sample: 0.0"),
        )
        .start()
        .await;
    cluster.get_ok(HOST, "/").await;
    cluster.get_ok(HOST, "/").await;
    assert_eq!(cluster.get("nobody.localhost", "/").await.status, 404);
    let slow = cluster.get(HOST, "/sleep/5000").await;
    assert_eq!(slow.status, 504, "{slow}");

    let lines = stop_and_read(&mut cluster, &log).await;
    assert_eq!(lines.len(), 1, "only the 504 is logged: {lines:#?}");
    let line = &lines[0];
    // 127.0.0.1 - - [02/Dec/2026:15:00:00 +0000] "GET /sleep/5000 HTTP/1.1" 504 N "-" "UA" rouse fields
    let (head, rest) = line.split_once(" - - [").expect("remote addr");
    assert_eq!(head, "127.0.0.1", "{line}");
    let (time, rest) = rest.split_once("] \"").expect("time");
    assert!(
        time.ends_with(" +0000") && time.len() == 26,
        "time `{time}` in {line}"
    );
    let (request, rest) = rest.split_once("\" ").expect("request");
    assert_eq!(request, "GET /sleep/5000 HTTP/1.1", "{line}");
    let mut fields = rest.splitn(3, ' ');
    assert_eq!(fields.next(), Some("504"), "{line}");
    let sent: u64 = fields
        .next()
        .and_then(|b| b.parse().ok())
        .expect("bytes sent");
    assert_eq!(sent, slow.body.len() as u64, "{line}");
    let tail = fields.next().expect("referer, agent, rouse fields");
    assert!(tail.starts_with("\"-\" \""), "referer in {line}");
    for field in [
        "service=logged",
        "host=\"logged.localhost\"",
        "upstream=",
        "duration_ms=",
        "cold_start_wait_ms=0.000",
        "bytes_received=0",
    ] {
        assert!(tail.contains(field), "`{field}` missing in {line}");
    }
}
