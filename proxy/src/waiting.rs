//! The waiting page: what a browser sees of a cold service with
//! `hold.browser_page: true`, instead of a tab that spins for the whole cold
//! start.
//!
//! Stage 3 (`hold`) would hold a request until a replica is ready. For a
//! browser navigating to the service that is a blank tab for seconds, so
//! when [`wants_page`] says the request is a top-level navigation and the
//! service has no ready replica, the handler answers at once with a small
//! self-contained page ([`page`]) and still publishes the wake. The page
//! opens an `EventSource` on [`WAIT_EVENTS_PATH`] (same host; the `path`
//! query names the page's own path, so the stream reaches the very service
//! that answered it, whatever its path routes). [`events`] streams the
//! service's phase (`wake_phase`: `waking`, `starting`, `ready`) and ends
//! with `ready`, on which the page reloads into the app, with `removed`
//! (the service left the catalog; the reload gets the 404), or with
//! `timeout` after `hold.timeout`. Should events fail, the page falls back to one
//! request the proxy holds (`x-rouse-no-page`), and without scripts to a
//! `<meta refresh>`.
//!
//! The page is `503` with `Retry-After`, `Cache-Control: no-store` and
//! `noindex`: a browser renders the body all the same, while a crawler, a
//! cache or a monitor is told the truth (the app is not there yet) and
//! keeps nothing.
//!
//! Neither the page nor its stream takes a place in the hold queue; an open
//! stream counts in `Service::page_watchers`, which reports add to `held`
//! so the controller neither misses nor undoes the wake while a browser
//! waits. Streams of one service are capped at `hold.max_requests`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::report::Signals;
use crate::response_body::ProxyBody;
use crate::route::Routes;
use crate::service::Service;
use crate::strict;
use crate::wake_phase::WakePhase;

pub use rouse_nats::config::WAIT_EVENTS_PATH;

/// A client that must be held as before, browser or not.
pub const NO_PAGE_HEADER: &str = "x-rouse-no-page";

/// Marks the proxy's waiting page (the app's responses never carry it).
pub const PAGE_HEADER: &str = "x-rouse-waiting-page";

/// What the page's `Retry-After` says (seconds): soon, the page itself
/// follows the start.
const RETRY_AFTER: &str = "2";

static TEMPLATE: &str = include_str!("waiting.html");

/// Is `request` a browser's top-level navigation that may get the page?
///
/// GET or HEAD, `Accept` naming `text/html`, no `x-rouse-no-page`, not an
/// XHR (`X-Requested-With`), and, when the browser sends fetch metadata,
/// `Sec-Fetch-Mode: navigate` with `Sec-Fetch-Dest: document`: a script's
/// `fetch`, an iframe or an image must get the app's answer, held.
pub fn wants_page<B>(request: &Request<B>) -> bool {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let headers = request.headers();
    let is = |name: &str, value: &str| {
        headers
            .get(name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
    };
    if headers.contains_key(NO_PAGE_HEADER) || is("x-requested-with", "XMLHttpRequest") {
        return false;
    }
    if headers.contains_key("sec-fetch-mode") && !is("sec-fetch-mode", "navigate") {
        return false;
    }
    if headers.contains_key("sec-fetch-dest") && !is("sec-fetch-dest", "document") {
        return false;
    }
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|accept| accepts_html(accept.as_bytes()))
}

/// `text/html` among the media ranges of one `Accept` value (a `q=0`
/// excludes it).
fn accepts_html(accept: &[u8]) -> bool {
    let Ok(accept) = std::str::from_utf8(accept) else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        media.eq_ignore_ascii_case("text/html")
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// The page of a service named `name`, rendered once at start.
pub fn render(name: &str) -> Bytes {
    let html = html_escape(name);
    // A JSON string is a JS string; `<` escaped so that no name can close
    // the script element.
    let js = serde_json::to_string(name)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('<', "\\u003c");
    // The name goes in last, so that nothing in it is taken for a
    // placeholder.
    Bytes::from(
        TEMPLATE
            .replace("{events_path}", WAIT_EVENTS_PATH)
            .replace("{service}", &html)
            .replace("{service_js}", &js),
    )
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Answers a browser with the waiting page of `service` (which has one)
/// and wakes the service.
pub fn page(service: &Arc<Service>, page: &Bytes, signals: &Signals) -> Response<ProxyBody> {
    // The page request is the wake; the reporter repeats it while the
    // page's stream is open.
    signals.wake(service);
    service.metrics.browser_pages.inc();
    let mut response = Response::new(ProxyBody::text(page.clone()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    headers.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    headers.insert(PAGE_HEADER, HeaderValue::from_static("true"));
    response
}

/// The service whose waiting page asks for events: found by the request's
/// host and the page's path (`?path=`), and only if it has a page.
pub fn events_service<B>(routes: &Routes<Service>, request: &Request<B>) -> Option<Arc<Service>> {
    let path = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("path="))
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let host = strict::authority(request)?;
    routes
        .find(host, path)
        .filter(|service| service.page.load().is_some())
        .cloned()
}

/// The event stream of a waiting page: the service's phase now and at
/// every change, until `ready`, or `timeout` after `hold.timeout`.
pub fn events(service: Arc<Service>, signals: &Signals) -> Response<ProxyBody> {
    let Some(watcher) = Watcher::new(&service) else {
        // Past the cap the page falls back to a held request, which the
        // hold queue bounds.
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        return response;
    };
    if service.is_cold() {
        signals.wake(&service);
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(stream(watcher, service.hold_timeout(), tx));
    let mut response = Response::new(ProxyBody::Events(rx));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells a buffering front proxy (nginx) to pass events as they come.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An open event stream, counted in `page_watchers` while it lives.
struct Watcher {
    service: Arc<Service>,
}

impl Watcher {
    fn new(service: &Arc<Service>) -> Option<Watcher> {
        let cap = service.hold.max();
        let taken = service
            .page_watchers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            });
        taken.ok().map(|_| Watcher {
            service: Arc::clone(service),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.service.page_watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One server-sent event named `name`.
fn event(name: &str) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {name}\n\n"))
}

/// Sends the phase of the watched service as it changes. Ends at `ready`,
/// at the deadline (`timeout`), or when the client has gone (the body, and
/// with it the receiver, dropped).
async fn stream(watcher: Watcher, timeout: Duration, tx: mpsc::Sender<Bytes>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut phases = watcher.service.phase.subscribe();
    // `retry`: how soon the browser reconnects a stream that broke.
    if tx
        .send(Bytes::from_static(b"retry: 1000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    let mut sent = None;
    loop {
        let phase = *phases.borrow_and_update();
        if sent != Some(phase) {
            if tx.send(event(phase.name())).await.is_err() {
                return;
            }
            sent = Some(phase);
        }
        if matches!(phase, WakePhase::Ready | WakePhase::Removed) {
            return;
        }
        tokio::select! {
            changed = phases.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                let _ = tx.send(event("timeout")).await;
                return;
            }
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// What Chromium sends when one types the URL.
    const CHROMIUM: &[(&str, &str)] = &[
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        ),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-site", "none"),
    ];

    #[test]
    fn a_browser_navigation_wants_the_page() {
        assert!(wants_page(&request(Method::GET, CHROMIUM)));
        assert!(wants_page(&request(Method::HEAD, CHROMIUM)));
        // Browsers without fetch metadata: Accept alone decides.
        assert!(wants_page(&request(
            Method::GET,
            &[("accept", "text/html")]
        )));
        assert!(wants_page(&request(
            Method::GET,
            &[
                ("accept", "application/json"),
                ("accept", "TEXT/HTML;q=0.5")
            ]
        )));
    }

    #[test]
    fn other_clients_are_held_as_before() {
        let with = |extra: (&'static str, &'static str)| {
            let mut headers = CHROMIUM.to_vec();
            headers.retain(|(name, _)| *name != extra.0);
            headers.push(extra);
            request(Method::GET, &headers)
        };
        assert!(
            !wants_page(&request(Method::GET, &[])),
            "curl sends no Accept"
        );
        assert!(!wants_page(&request(Method::GET, &[("accept", "*/*")])));
        assert!(!wants_page(&request(
            Method::GET,
            &[("accept", "text/htmlx")]
        )));
        assert!(!wants_page(&request(
            Method::GET,
            &[("accept", "text/html;q=0")]
        )));
        assert!(!wants_page(&request(Method::POST, CHROMIUM)));
        assert!(!wants_page(&with((NO_PAGE_HEADER, "1"))));
        assert!(!wants_page(&with(("x-requested-with", "XMLHttpRequest"))));
        assert!(!wants_page(&with(("sec-fetch-mode", "cors"))));
        assert!(!wants_page(&with(("sec-fetch-dest", "iframe"))));
        assert!(!wants_page(&with(("sec-fetch-dest", "empty"))));
    }

    #[test]
    fn the_page_is_self_contained_and_escapes_the_name() {
        let page = render("a<b>&\"c'</script>");
        let text = std::str::from_utf8(&page).unwrap_or_default();
        assert!(text.contains("a&lt;b&gt;&amp;&quot;c&#39;&lt;/script&gt; is waking up"));
        assert!(
            !text.contains("</script>\""),
            "the name cannot close the script"
        );
        assert!(text.contains(WAIT_EVENTS_PATH));
        assert!(!text.contains("{service"), "every placeholder filled");
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "no external assets"
        );
        assert!(page.len() < 8 * 1024, "a few KB: {}", page.len());
    }

    #[test]
    fn events_are_named_server_sent_events() {
        assert_eq!(
            &event("starting")[..],
            b"event: starting\ndata: starting\n\n"
        );
    }

    /// A page waiting for a service that is removed is told so (and
    /// reloads into the 404) instead of waiting out `hold.timeout`.
    #[tokio::test]
    async fn a_stream_ends_with_removed_when_its_service_is_removed() {
        let spec: rouse_nats::config::ServiceConfig = serde_norway::from_str(
            "name: w\nhosts: [w.test]\nbackend: {process: {command: [x]}}\nhold: {browser_page: true}\n",
        )
        .expect("spec");
        let metrics = crate::metrics::ProxyMetrics::new();
        let service = Arc::new(Service::new(
            &spec,
            Duration::from_secs(1),
            metrics.for_service("w"),
        ));
        let watcher = Watcher::new(&service).expect("room for a stream");
        let (tx, mut rx) = mpsc::channel(4);
        let streaming = tokio::spawn(stream(watcher, Duration::from_secs(300), tx));
        let events = tokio::time::timeout(Duration::from_secs(20), async {
            let mut got = Vec::new();
            got.push(rx.recv().await);
            got.push(rx.recv().await);
            service.retire();
            while let Some(bytes) = rx.recv().await {
                got.push(Some(bytes));
            }
            got
        })
        .await
        .expect("the stream ends long before its 300 s");
        assert_eq!(
            events,
            vec![
                Some(Bytes::from_static(b"retry: 1000\n\n")),
                Some(event("waking")),
                Some(event("removed")),
            ]
        );
        streaming.await.expect("stream task");
        assert_eq!(service.page_watchers.load(Ordering::SeqCst), 0);
    }
}
