//! End-to-end tests of the `rouse-echo` binary: each test spawns the real
//! process on a free port and talks to it over TCP.

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Generous bound for anything that should happen "soon", so a loaded
/// machine slows the tests down instead of failing them.
const DEADLINE: Duration = Duration::from_secs(30);
/// Interval between two checks of a condition being waited on.
const POLL: Duration = Duration::from_millis(20);

/// A running `rouse-echo`, killed when dropped.
struct EchoProcess {
    child: Child,
    port: u16,
}

impl EchoProcess {
    /// Spawns `rouse-echo --port <free port> <args>` and waits until it
    /// accepts connections.
    async fn start(args: &[&str]) -> Self {
        let port = free_port();
        let mut process = Self::spawn(port, &port_args(port, args), &[]);
        process.wait_until_listening().await;
        process
    }

    /// Spawns without waiting; `args` must carry the port if `env` does not.
    fn spawn(port: u16, args: &[String], env: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_rouse-echo"))
            .args(args)
            .env_remove("PORT")
            .env_remove("ROUSE_REPLICA_ID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning rouse-echo");
        Self { child, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"))
    }

    /// Polls the port until it accepts a connection; fails early if the
    /// process exits.
    async fn wait_until_listening(&mut self) {
        let start = Instant::now();
        loop {
            if TcpStream::connect(self.addr()).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("polling rouse-echo") {
                panic!("rouse-echo exited before listening: {status}");
            }
            assert!(
                start.elapsed() < DEADLINE,
                "rouse-echo did not listen within {DEADLINE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signalling rouse-echo");
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_for_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("polling rouse-echo") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "rouse-echo did not exit within {DEADLINE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_args(port: u16, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--port".to_owned(), port.to_string()];
    all.extend(args.iter().map(|arg| (*arg).to_owned()));
    all
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("reserving a port")
        .port()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let exchange = async {
        let response = client.request(req).await.expect("request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("request timed out")
}

async fn get(echo: &EchoProcess, path: &str) -> Reply {
    send(&http1(), get_request(echo, path)).await
}

fn get_request(echo: &EchoProcess, path: &str) -> Request<Full<Bytes>> {
    Request::get(echo.url(path))
        .body(Full::default())
        .expect("request")
}

async fn stats(echo: &EchoProcess) -> serde_json::Value {
    let reply = get(echo, "/stats").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.json()
}

/// Reads from `stream` into `buf` until `buf` contains `needle`.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) {
    let read = async {
        while !contains(buf, needle) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("reading");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("timed out reading");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn root_names_the_replica_from_id_flag_over_http1_and_h2c() {
    let echo = EchoProcess::start(&["--id", "replica-flag"]).await;
    let reply = get(&echo, "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "handled by replica-flag");

    let reply = send(&h2c(), get_request(&echo, "/")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "handled by replica-flag");
}

#[tokio::test]
async fn id_and_port_come_from_the_environment() {
    let port = free_port();
    let port_text = port.to_string();
    let env = [
        ("PORT", port_text.as_str()),
        ("ROUSE_REPLICA_ID", "replica-env"),
    ];
    let mut echo = EchoProcess::spawn(port, &[], &env);
    echo.wait_until_listening().await;
    assert_eq!(get(&echo, "/").await.text(), "handled by replica-env");
    assert_eq!(stats(&echo).await["id"], "replica-env");
}

#[tokio::test]
async fn id_defaults_to_the_pid() {
    let echo = EchoProcess::start(&[]).await;
    let expected = format!("handled by {}", echo.child.id());
    assert_eq!(get(&echo, "/").await.text(), expected);
}

#[tokio::test]
async fn prints_one_listening_line_on_stderr() {
    let mut echo = EchoProcess::start(&["--id", "loud"]).await;
    let stderr = echo.child.stderr.take().expect("piped stderr");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(DEADLINE, line)
        .await
        .expect("timed out reading stderr")
        .expect("reader task")
        .expect("reading stderr");
    assert_eq!(
        line,
        format!("rouse-echo loud listening on {}\n", echo.addr())
    );
}

#[tokio::test]
async fn simple_endpoints() {
    let echo = EchoProcess::start(&[]).await;

    let health = get(&echo, "/healthz").await;
    assert_eq!((health.status, health.text()), (StatusCode::OK, "ok"));

    let start = Instant::now();
    let slept = get(&echo, "/sleep/150").await;
    assert_eq!(
        (slept.status, slept.text()),
        (StatusCode::OK, "slept 150ms")
    );
    assert!(start.elapsed() >= Duration::from_millis(150));

    let start = Instant::now();
    assert_eq!(get(&echo, "/cpu/50").await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(50));

    assert_eq!(get(&echo, "/mem/8").await.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_parameters_unknown_paths_and_methods() {
    let echo = EchoProcess::start(&[]).await;
    for path in ["/sleep/abc", "/cpu/-5", "/mem/lots", "/sleep/"] {
        let reply = get(&echo, path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(reply.text().contains("bad /"), "{path}: {}", reply.text());
    }
    assert_eq!(get(&echo, "/nope").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&echo, "/sleep").await.status, StatusCode::NOT_FOUND);

    let put = Request::put(echo.url("/"))
        .body(Full::default())
        .expect("request");
    let reply = send(&http1(), put).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    // The process survived all of it.
    assert_eq!(get(&echo, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn stats_count_requests_and_peak_concurrency() {
    const CONCURRENT: u64 = 5;
    let echo = EchoProcess::start(&["--id", "counted"]).await;
    let client = http1();
    let sleepers: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let client = client.clone();
            let request = get_request(&echo, "/sleep/3000");
            tokio::spawn(async move { send(&client, request).await.status })
        })
        .collect();

    // Condition, not timing: wait until all of them are in flight at once.
    let start = Instant::now();
    loop {
        let stats = stats(&echo).await;
        if stats["in_flight"] == CONCURRENT {
            assert!(stats["peak_in_flight"].as_u64() >= Some(CONCURRENT));
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never {CONCURRENT} in flight");
        tokio::time::sleep(POLL).await;
    }
    for sleeper in sleepers {
        assert_eq!(sleeper.await.expect("sleeper task"), StatusCode::OK);
    }

    get(&echo, "/healthz").await; // not counted
    let stats = stats(&echo).await;
    assert_eq!(stats["id"], "counted");
    assert_eq!(stats["requests"], CONCURRENT);
    assert_eq!(stats["in_flight"], 0);
    assert!(stats["peak_in_flight"].as_u64() >= Some(CONCURRENT));
}

#[tokio::test]
async fn post_echoes_the_body_and_content_type() {
    let echo = EchoProcess::start(&[]).await;
    let body: Bytes = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for client in [http1(), h2c()] {
        let request = Request::post(echo.url("/any/path"))
            .header("content-type", "application/x-test")
            .body(Full::new(body.clone()))
            .expect("request");
        let reply = send(&client, request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-type"], "application/x-test");
        assert_eq!(reply.body, body);
    }
}

#[tokio::test]
async fn post_echo_is_streamed_not_buffered() {
    let echo = EchoProcess::start(&[]).await;
    let mut stream = TcpStream::connect(echo.addr()).await.expect("connect");
    let head = "POST /stream HTTP/1.1\r\nhost: echo\r\ncontent-type: text/x-test\r\n\
                transfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(b"5\r\nfirst\r\n").await.expect("write");

    // The first chunk comes back while the request body is still open.
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"first").await;
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/x-test"), "{text}");

    stream
        .write_all(b"6\r\nsecond\r\n0\r\n\r\n")
        .await
        .expect("write");
    read_until(&mut stream, &mut buf, b"0\r\n\r\n").await;
    assert!(contains(&buf, b"second"));
}

#[tokio::test]
async fn reflects_forwarding_headers_only_when_present() {
    let echo = EchoProcess::start(&[]).await;
    let request = Request::get(echo.url("/"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-host", "app.example")
        .header("x-forwarded-proto", "https")
        .body(Full::default())
        .expect("request");
    let reply = send(&http1(), request).await;
    assert_eq!(reply.headers["x-echo-forwarded-for"], "203.0.113.7");
    assert_eq!(reply.headers["x-echo-forwarded-host"], "app.example");
    assert_eq!(reply.headers["x-echo-forwarded-proto"], "https");
    assert_eq!(reply.headers["x-echo-host"], echo.addr().to_string());

    let plain = get(&echo, "/").await;
    assert!(!plain.headers.contains_key("x-echo-forwarded-for"));
    assert!(!plain.headers.contains_key("x-echo-forwarded-host"));
    assert!(!plain.headers.contains_key("x-echo-forwarded-proto"));
}

#[tokio::test]
async fn startup_delay_postpones_listening() {
    let delay = Duration::from_secs(2);
    let port = free_port();
    let spawned = Instant::now();
    let mut echo = EchoProcess::spawn(port, &port_args(port, &["--startup-delay", "2s"]), &[]);
    let refused_early = TcpStream::connect(echo.addr()).await.is_err();
    // Only meaningful if that attempt really happened within the delay.
    assert!(refused_early || spawned.elapsed() >= delay);

    echo.wait_until_listening().await;
    assert!(
        spawned.elapsed() >= delay,
        "listening after {:?}, before the {delay:?} delay",
        spawned.elapsed()
    );
    assert_eq!(get(&echo, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mut echo = EchoProcess::start(&[]).await;
    let client = http1();
    let in_flight = tokio::spawn({
        let client = client.clone();
        let request = get_request(&echo, "/sleep/1000");
        async move { send(&client, request).await }
    });
    let start = Instant::now();
    while stats(&echo).await["in_flight"] != 1 {
        assert!(start.elapsed() < DEADLINE, "request never in flight");
        tokio::time::sleep(POLL).await;
    }

    echo.signal(Signal::SIGTERM);
    let reply = in_flight.await.expect("request task");
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "slept 1000ms")
    );
    let status = echo.wait_for_exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn sigint_exits_zero() {
    let mut echo = EchoProcess::start(&[]).await;
    echo.signal(Signal::SIGINT);
    let status = echo.wait_for_exit().await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn ws_upgrade_echoes_raw_bytes() {
    let echo = EchoProcess::start(&[]).await;
    let mut stream = TcpStream::connect(echo.addr()).await.expect("connect");
    let handshake = "GET /ws HTTP/1.1\r\nhost: echo\r\nconnection: Upgrade\r\n\
                     upgrade: websocket\r\nsec-websocket-version: 13\r\n\
                     sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(handshake.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    for message in [&b"hello"[..], b"\x00\x01binary\xff", b"again"] {
        stream.write_all(message).await.expect("write");
        let mut echoed = Vec::new();
        read_until(&mut stream, &mut echoed, message).await;
        assert_eq!(echoed, message);
    }
}

#[tokio::test]
async fn ws_without_upgrade_headers_is_refused() {
    let echo = EchoProcess::start(&[]).await;
    let reply = get(&echo, "/ws").await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(reply.headers["upgrade"], "websocket");
}

/// Runs `rouse-echo healthcheck <args>` with `env` (and neither `PORT` nor
/// `ROUSE_HEALTHCHECK_URL` from this process); returns its exit code,
/// stdout and stderr.
fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rouse-echo"))
        .arg("healthcheck")
        .args(args)
        .env_remove("PORT")
        .env_remove("ROUSE_HEALTHCHECK_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running rouse-echo healthcheck");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn healthcheck_passes_on_2xx_from_the_url_or_its_own_port() {
    let echo = EchoProcess::start(&[]).await;
    let url = echo.url("/healthz");

    let (code, stdout, stderr) = healthcheck(&[], &[("ROUSE_HEALTHCHECK_URL", &url)]);
    assert_eq!(code, Some(0), "stdout {stdout:?} stderr {stderr:?}");
    assert!(stdout.contains("200"), "{stdout:?}");

    let (code, _, stderr) = healthcheck(&["--url", &url], &[]);
    assert_eq!(code, Some(0), "{stderr}");

    // Without a URL it checks rouse-echo's own /healthz on $PORT.
    let port = echo.port.to_string();
    let (code, stdout, stderr) = healthcheck(&[], &[("PORT", &port)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with(&url), "{stdout:?}");
}

#[tokio::test]
async fn healthcheck_fails_with_1_and_a_reason() {
    let echo = EchoProcess::start(&[]).await;

    // Another status.
    let (code, _, stderr) = healthcheck(&["--url", &echo.url("/nope")], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("404"), "{stderr}");

    // Nothing listening.
    let closed = format!("http://127.0.0.1:{}/healthz", free_port());
    let (code, _, stderr) = healthcheck(&["--url", &closed], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("connecting"), "{stderr}");

    // An answer slower than the timeout: it gives up in about that time.
    let start = Instant::now();
    let slow = echo.url("/sleep/20000");
    let (code, _, stderr) = healthcheck(&["--url", &slow, "--timeout", "300ms"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no answer within 300ms"), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );

    // Bad input is 1 as well (Docker reserves 2), never a panic.
    for (args, env) in [
        (vec!["--url", "https://127.0.0.1/healthz"], vec![]),
        (vec!["--url", "not a url"], vec![]),
        (vec![], vec![("PORT", "http")]),
    ] {
        let (code, _, stderr) = healthcheck(&args, &env);
        assert_eq!(code, Some(1), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn serving_still_needs_a_port_and_healthcheck_takes_none() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rouse-echo"))
            .args(args)
            .env_remove("PORT")
            .stdin(Stdio::null())
            .output()
            .expect("running rouse-echo")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));
    // Serving flags and the subcommand do not mix.
    let out = run(&["--port", "1", "healthcheck"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used"));
}
