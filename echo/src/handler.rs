//! Answering one request: routes, the per-process counters and the
//! WebSocket-style upgrade echo. Generic over the request body, so it is
//! tested without a socket.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use sha1::{Digest as _, Sha1};

/// Longest `/sleep/{ms}` or `/cpu/{ms}` accepted (10 minutes).
pub const MAX_DURATION_MS: u64 = 10 * 60 * 1000;
/// Largest `/mem/{mb}` accepted, in MiB.
pub const MAX_MEM_MB: u64 = 4096;

const MIB: usize = 1024 * 1024;
/// Magic GUID of RFC 6455, section 1.3.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");
const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, POST");

/// Request headers reflected back, and the response header each one goes to.
/// `traceparent` lets a test see the trace context a proxy sent.
const REFLECTED: [(HeaderName, HeaderName); 5] = [
    (
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-echo-forwarded-for"),
    ),
    (
        HeaderName::from_static("x-forwarded-host"),
        HeaderName::from_static("x-echo-forwarded-host"),
    ),
    (
        HeaderName::from_static("x-forwarded-proto"),
        HeaderName::from_static("x-echo-forwarded-proto"),
    ),
    (header::HOST, HeaderName::from_static("x-echo-host")),
    (
        HeaderName::from_static("traceparent"),
        HeaderName::from_static("x-echo-traceparent"),
    ),
];

/// Names the replica on every response, so a test can tell which replica
/// answered any request (not only `GET /`) and check each one's count.
const REPLICA: HeaderName = HeaderName::from_static("x-echo-replica");

/// Shared state of one `rouse-echo` process.
#[derive(Debug)]
pub struct Echo {
    id: String,
    /// `handled by <id>`, built once and cloned for every `GET /`.
    greeting: Bytes,
    /// The id as a header value; `None` if the id is not a valid one.
    replica: Option<HeaderValue>,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// Queue messages processed and acked (see the `worker` module).
    processed: AtomicU64,
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a Stats);

impl Stats {
    fn enter(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Echo {
    pub fn new(id: impl Into<String>) -> Self {
        let id = id.into();
        let greeting = Bytes::from(format!("handled by {id}"));
        let replica = HeaderValue::from_str(&id).ok();
        Self {
            id,
            greeting,
            replica,
            stats: Stats::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Counts one queue message as processed (its ack confirmed).
    pub fn count_processed(&self) {
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
    }

    /// The `/stats` document.
    pub fn stats_json(&self) -> serde_json::Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        serde_json::json!({
            "id": self.id,
            "requests": load(&self.stats.requests),
            "in_flight": load(&self.stats.in_flight),
            "peak_in_flight": load(&self.stats.peak_in_flight),
            "processed": load(&self.stats.processed),
        })
    }
}

/// Response body: either a small fixed body or the streamed request body.
pub type EchoBody<B> = Either<Full<Bytes>, B>;

/// What a request asks for, decided from its method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Hello,
    Health,
    Stats,
    WebSocket,
    Sleep(u64),
    Cpu(u64),
    Mem(u64),
    EchoBody,
    BadParam(String),
    NotFound,
    MethodNotAllowed,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Self {
        if method == Method::POST {
            return Self::EchoBody;
        }
        let route = Self::for_path(path);
        let readable = method == Method::GET || method == Method::HEAD;
        match route {
            Self::NotFound | Self::BadParam(_) => route,
            _ if readable => route,
            _ => Self::MethodNotAllowed,
        }
    }

    fn for_path(path: &str) -> Self {
        match path {
            "/" => return Self::Hello,
            "/healthz" => return Self::Health,
            "/stats" => return Self::Stats,
            "/ws" => return Self::WebSocket,
            _ => {}
        }
        let Some((name, raw)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Self::NotFound;
        };
        let (make, max, what): (fn(u64) -> Self, _, _) = match name {
            "sleep" => (Self::Sleep, MAX_DURATION_MS, "milliseconds"),
            "cpu" => (Self::Cpu, MAX_DURATION_MS, "milliseconds"),
            "mem" => (Self::Mem, MAX_MEM_MB, "MiB"),
            _ => return Self::NotFound,
        };
        match parse_param(raw, max) {
            Some(value) => make(value),
            None => Self::BadParam(format!(
                "bad /{name} parameter {raw:?}: expected a whole number of {what} from 0 to {max}\n"
            )),
        }
    }

    /// `/stats` and `/healthz` are not counted, so polling them does not
    /// disturb the numbers being observed.
    fn counted(&self) -> bool {
        !matches!(self, Self::Health | Self::Stats)
    }
}

/// Parses a path parameter: ASCII digits only, at most `max`.
fn parse_param(raw: &str, max: u64) -> Option<u64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok().filter(|value| *value <= max)
}

/// Answers one request. Generic over the request body so it can be tested
/// without a socket; `POST` bodies are streamed back, never buffered.
pub async fn handle<B>(echo: &Echo, req: Request<B>) -> Response<EchoBody<B>> {
    let (mut parts, body) = req.into_parts();
    let route = Route::parse(&parts.method, parts.uri.path());
    let _in_flight = route.counted().then(|| echo.stats.enter());
    let reflected = reflected_headers(&parts);
    let version = version_value(parts.version);
    let mut response = respond(echo, route, &mut parts, body).await;
    if let Some(replica) = &echo.replica {
        response.headers_mut().insert(REPLICA, replica.clone());
    }
    for (name, value) in reflected {
        if let Some(value) = value {
            response.headers_mut().insert(name, value);
        }
    }
    response.headers_mut().insert(X_ECHO_VERSION, version);
    response
}

/// `x-echo-version`: the HTTP version the request arrived in, so a test can
/// tell which one a proxy spoke to the replica.
const X_ECHO_VERSION: HeaderName = HeaderName::from_static("x-echo-version");

fn version_value(version: http::Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    })
}

async fn respond<B>(
    echo: &Echo,
    route: Route,
    parts: &mut Parts,
    body: B,
) -> Response<EchoBody<B>> {
    match route {
        Route::Hello => text(StatusCode::OK, echo.greeting.clone()),
        Route::Health => text(StatusCode::OK, "ok"),
        Route::Stats => json(StatusCode::OK, &echo.stats_json()),
        Route::WebSocket => websocket(parts),
        Route::Sleep(ms) => sleep(ms).await,
        Route::Cpu(ms) => cpu(ms).await,
        Route::Mem(mb) => mem(mb, hold_ms(parts.uri.query())).await,
        Route::EchoBody => echo_body(&parts.headers, body),
        Route::BadParam(message) => text(StatusCode::BAD_REQUEST, message),
        Route::NotFound => text(StatusCode::NOT_FOUND, "not found\n"),
        Route::MethodNotAllowed => method_not_allowed(),
    }
}

/// The values of the [`REFLECTED`] headers, keyed by their response name.
/// Over HTTP/2 the host is the `:authority`, which hyper keeps in the URI.
fn reflected_headers(parts: &Parts) -> [(HeaderName, Option<HeaderValue>); 5] {
    REFLECTED.map(|(from, to)| {
        let mut value = parts.headers.get(&from).cloned();
        if value.is_none() && from == header::HOST {
            value = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        }
        (to, value)
    })
}

fn text<B>(status: StatusCode, body: impl Into<Bytes>) -> Response<EchoBody<B>> {
    fixed(status, TEXT_PLAIN, body.into())
}

fn json<B>(status: StatusCode, value: &serde_json::Value) -> Response<EchoBody<B>> {
    fixed(status, APPLICATION_JSON, Bytes::from(value.to_string()))
}

fn fixed<B>(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<EchoBody<B>> {
    let mut response = Response::new(Either::Left(Full::new(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    response
}

fn method_not_allowed<B>() -> Response<EchoBody<B>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, ALLOWED_METHODS);
    response
}

async fn sleep<B>(ms: u64) -> Response<EchoBody<B>> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, format!("slept {ms}ms"))
}

async fn cpu<B>(ms: u64) -> Response<EchoBody<B>> {
    let budget = Duration::from_millis(ms);
    match tokio::task::spawn_blocking(move || burn_cpu(budget)).await {
        Ok(()) => text(StatusCode::OK, format!("burned {ms}ms of cpu")),
        Err(err) => internal_error(&err),
    }
}

/// Spins on this thread until `budget` has elapsed.
fn burn_cpu(budget: Duration) {
    let start = Instant::now();
    while start.elapsed() < budget {
        std::hint::spin_loop();
    }
}

/// `?hold_ms=N` of `/mem/{mb}`: how long the memory stays allocated before
/// the answer (0 when absent or not a number up to [`MAX_DURATION_MS`]).
fn hold_ms(query: Option<&str>) -> u64 {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "hold_ms")
        .and_then(|(_, value)| parse_param(&value, MAX_DURATION_MS))
        .unwrap_or(0)
}

/// Allocates and touches `mb` MiB, keeps it `hold_ms`, then answers (and
/// frees it): a memory-heavy request whose footprint lasts while it is in
/// flight, as a real one's would.
async fn mem<B>(mb: u64, hold_ms: u64) -> Response<EchoBody<B>> {
    match tokio::task::spawn_blocking(move || allocate_and_touch(mb)).await {
        Ok(Some(held)) => {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
            drop(held);
            text(StatusCode::OK, format!("allocated {mb}MiB"))
        }
        Ok(None) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not allocate {mb}MiB\n"),
        ),
        Err(err) => internal_error(&err),
    }
}

/// Allocates `mb` MiB and writes every byte, so the pages are really
/// resident (a zero fill could be turned into a lazily mapped `calloc`).
/// `None` when the allocation fails, instead of aborting the process.
fn allocate_and_touch(mb: u64) -> Option<Vec<u8>> {
    let len = usize::try_from(mb).ok()?.checked_mul(MIB)?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).ok()?;
    buf.resize(len, 0xA5);
    Some(std::hint::black_box(buf))
}

fn internal_error<B>(err: &dyn std::error::Error) -> Response<EchoBody<B>> {
    tracing::warn!(%err, "worker task failed");
    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
}

/// Streams the request body back as the response body, keeping its
/// content type.
fn echo_body<B>(headers: &HeaderMap, body: B) -> Response<EchoBody<B>> {
    let mut response = Response::new(Either::Right(body));
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
}

/// Accepts a WebSocket-style upgrade and echoes raw bytes on the upgraded
/// connection (no WebSocket framing: it only has to prove that upgrades
/// pass through the proxy).
fn websocket<B>(parts: &mut Parts) -> Response<EchoBody<B>> {
    if !is_websocket_upgrade(&parts.headers) {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "/ws expects `Connection: upgrade` and `Upgrade: websocket`\n",
        );
        response.headers_mut().insert(header::UPGRADE, WEBSOCKET);
        return response;
    }
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return text(
            StatusCode::BAD_REQUEST,
            "this connection cannot be upgraded (HTTP/1.1 only)\n",
        );
    };
    tokio::spawn(echo_upgraded(on_upgrade));

    let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, WEBSOCKET);
    headers.insert(header::CONNECTION, UPGRADE);
    if let Some(accept) = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|key| HeaderValue::from_str(&websocket_accept(key.as_bytes())).ok())
    {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket")
}

/// Whether a comma-separated header contains `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455, 4.2.2).
pub fn websocket_accept(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

async fn echo_upgraded(on_upgrade: OnUpgrade) {
    match on_upgrade.await {
        Ok(upgraded) => {
            if let Err(err) = echo_bytes(upgraded).await {
                tracing::debug!(%err, "upgraded connection ended with an error");
            }
        }
        Err(err) => tracing::debug!(%err, "upgrade failed"),
    }
}

async fn echo_bytes(upgraded: Upgraded) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
    tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn get(path: &str) -> Route {
        Route::parse(&Method::GET, path)
    }

    #[test]
    fn routes_by_path() {
        assert_eq!(get("/"), Route::Hello);
        assert_eq!(get("/healthz"), Route::Health);
        assert_eq!(get("/stats"), Route::Stats);
        assert_eq!(get("/ws"), Route::WebSocket);
        assert_eq!(get("/sleep/250"), Route::Sleep(250));
        assert_eq!(get("/cpu/0"), Route::Cpu(0));
        assert_eq!(get("/mem/16"), Route::Mem(16));
        assert_eq!(get("/nope"), Route::NotFound);
        assert_eq!(get("/nope/1"), Route::NotFound);
        assert_eq!(get("/sleep"), Route::NotFound);
    }

    #[test]
    fn rejects_bad_parameters() {
        for path in [
            "/sleep/abc",
            "/sleep/",
            "/sleep/-1",
            "/sleep/+1",
            "/sleep/1/2",
            "/cpu/1.5",
            "/sleep/99999999999999999999999",
            "/sleep/600001",
            "/mem/4097",
        ] {
            assert!(matches!(get(path), Route::BadParam(_)), "{path}");
        }
    }

    #[test]
    fn post_echoes_anywhere_and_other_methods_are_refused() {
        assert_eq!(Route::parse(&Method::POST, "/x/y"), Route::EchoBody);
        assert_eq!(Route::parse(&Method::HEAD, "/"), Route::Hello);
        assert_eq!(Route::parse(&Method::PUT, "/"), Route::MethodNotAllowed);
        assert_eq!(Route::parse(&Method::PUT, "/nope"), Route::NotFound);
    }

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_tokens_are_case_insensitive_lists() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&headers));
    }

    #[test]
    fn allocates_and_touches() {
        let buf = allocate_and_touch(1).expect("1 MiB");
        assert_eq!(buf.len(), MIB);
        assert!(buf.iter().all(|b| *b == 0xA5));
    }

    async fn body_of(response: Response<EchoBody<Full<Bytes>>>) -> Bytes {
        match response.into_body().collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => panic!("body: {err}"),
        }
    }

    fn request(method: Method, path: &str) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(b"payload")));
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().expect("test uri");
        req
    }

    #[tokio::test]
    async fn handles_requests_and_counts_them() {
        let echo = Echo::new("unit");
        let hello = handle(&echo, request(Method::GET, "/")).await;
        assert_eq!(hello.status(), StatusCode::OK);
        assert_eq!(hello.headers()["x-echo-replica"], "unit");
        assert_eq!(body_of(hello).await, "handled by unit");

        let mut post = request(Method::POST, "/anything");
        post.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
        post.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        post.headers_mut()
            .insert("traceparent", HeaderValue::from_static(traceparent));
        let echoed = handle(&echo, post).await;
        assert_eq!(echoed.headers()["x-echo-traceparent"], traceparent);
        assert_eq!(echoed.headers()[header::CONTENT_TYPE], "a/b");
        assert_eq!(echoed.headers()["x-echo-forwarded-for"], "10.0.0.1");
        assert!(!echoed.headers().contains_key("x-echo-forwarded-proto"));
        assert_eq!(body_of(echoed).await, "payload");

        let bad = handle(&echo, request(Method::GET, "/sleep/abc")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let missing = handle(&echo, request(Method::GET, "/missing")).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        handle(&echo, request(Method::GET, "/healthz")).await;

        let stats = echo.stats_json();
        assert_eq!(stats["id"], "unit");
        assert_eq!(stats["requests"], 4);
        assert_eq!(stats["in_flight"], 0);
        assert_eq!(stats["peak_in_flight"], 1);
        assert_eq!(stats["processed"], 0);
        echo.count_processed();
        assert_eq!(echo.stats_json()["processed"], 1);
    }

    #[test]
    fn mem_holds_only_when_asked_to() {
        assert_eq!(hold_ms(None), 0);
        assert_eq!(hold_ms(Some("hold_ms=250")), 250);
        assert_eq!(hold_ms(Some("x=1&hold_ms=7")), 7);
        assert_eq!(hold_ms(Some("hold_ms=-1")), 0);
        assert_eq!(hold_ms(Some("hold_ms=99999999999")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn mem_keeps_its_memory_for_the_hold() {
        let echo = Echo::new("unit");
        let started = tokio::time::Instant::now();
        let resp = handle(&echo, request(Method::GET, "/mem/1?hold_ms=300")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
