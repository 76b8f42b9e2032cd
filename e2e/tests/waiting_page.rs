//! The waiting page (`hold.browser_page`, issue 13) in a real headless
//! Chromium, against real rouse-proxy, rouse-controller, nats-server and
//! rouse-echo replicas (`--startup-delay 2s`, so the page is visible).
//!
//! Proves: a browser's navigation to a service at zero gets the page at
//! once (well within the hold: the browser's own navigation timing), the
//! page follows the wake (`waking`, and with the controller down it stays
//! there; `starting` once the controller starts a replica) and reloads into
//! the app's own response; the page is counted in
//! `rouse_browser_pages_total`; a curl-like client at zero is held and gets
//! the app with `x-rouse-cold-start`, as without the page; a page whose
//! service does not start within `hold.timeout` says so and offers a retry.
//!
//! `ROUSE_SCREENSHOTS=DIR` saves a screenshot of each state in DIR (the
//! README's are made this way, into docs/waiting-page/).

use std::path::PathBuf;
use std::time::Duration;

use rouse_e2e::browser::Browser;
use rouse_e2e::{Cluster, Service};
use serde_json::Value;

const HOST: &str = "wait.localhost";
const HELD_HOST: &str = "held.localhost";
const LATE_HOST: &str = "late.localhost";

/// Navigation start → first byte of the page, in the browser's own clock.
/// Generous on purpose (a shared 2-core machine runs Chromium and the
/// stack): what it tells apart is the page at once from a request held
/// for its 60 s `hold.timeout` (the controller is down meanwhile). The
/// figure itself is printed.
const PAGE_WITHIN_MS: f64 = 1500.0;

fn service(name: &str, host: &str) -> Service {
    Service::new(name, host)
        .echo_args(&["--startup-delay", "2s"])
        .hold_key("browser_page", "true")
        .hold_timeout("60s")
        .max_replicas(1)
}

/// Saves a screenshot as DIR/NAME.png when `ROUSE_SCREENSHOTS=DIR` is set.
async fn shot(browser: &Browser, name: &str) {
    let Some(dir) = std::env::var_os("ROUSE_SCREENSHOTS").filter(|d| !d.is_empty()) else {
        return;
    };
    let path = PathBuf::from(dir).join(format!("{name}.png"));
    browser.screenshot(&path).await.unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// The current document's navigation timing entry.
async fn navigation(browser: &Browser) -> Value {
    browser
        .execute(
            "const n = performance.getEntriesByType('navigation')[0]; \
             return {type: n.type, status: n.responseStatus, \
                     first_byte_ms: n.responseStart - n.fetchStart, \
                     connect_ms: n.connectEnd - n.fetchStart, \
                     answer_ms: n.responseStart - n.requestStart};",
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_the_waiting_page_at_once_then_the_app_and_curl_is_held() {
    let mut cluster = Cluster::start(vec![
        service("wait", HOST),
        service("held", HELD_HOST),
        service("late", LATE_HOST).hold_timeout("2s"),
    ])
    .await;

    // curl-like (reqwest sends `Accept: */*`): held, then the app.
    let held = cluster.get_ok(HELD_HOST, "/").await;
    assert_eq!(held.header("x-rouse-cold-start"), Some("true"), "{held}");
    assert_eq!(held.header("x-rouse-waiting-page"), None, "{held}");
    assert!(held.text().starts_with("handled by"), "{held}");

    // With no controller nobody starts a replica: the page shows `waking`
    // for as long as this test wants, whatever the machine's speed.
    cluster.kill_controller().await;
    let port = cluster.proxy_addr(0).port();
    let rule = format!("--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP {LATE_HOST} 127.0.0.1");
    let browser = Browser::start_with_args(&[&rule]).await.unwrap();

    // Nothing starts `late` (2 s hold.timeout): the page gives up and
    // offers to try again.
    browser
        .goto(&format!("http://{LATE_HOST}:{port}/"))
        .await
        .unwrap();
    browser
        .wait_for_text("#phase", "timeout", Duration::from_secs(30))
        .await
        .unwrap();
    browser
        .wait_for_text("#retry", "Try again", Duration::from_secs(5))
        .await
        .unwrap();
    browser
        .wait_for_text("h1", "late did not start in time", Duration::from_secs(5))
        .await
        .unwrap();
    shot(&browser, "timeout").await;

    let url = format!("http://{HOST}:{port}/");
    browser.goto(&url).await.unwrap();

    let page = navigation(&browser).await;
    assert_eq!(page["status"], 503, "{page}");
    let first_byte = page["first_byte_ms"].as_f64().unwrap_or(f64::MAX);
    eprintln!("waiting page: first byte {first_byte:.1} ms after navigation start ({page})");
    assert!(
        first_byte < PAGE_WITHIN_MS,
        "the page came {first_byte} ms after navigation start"
    );
    browser
        .wait_for_text("#phase", "waking", Duration::from_secs(10))
        .await
        .unwrap();
    browser
        .wait_for_text("h1", "wait is waking up", Duration::from_secs(10))
        .await
        .unwrap();
    shot(&browser, "waking").await;
    let pages = cluster
        .proxy_metric(0, "rouse_browser_pages_total", "wait")
        .await;
    assert_eq!(pages, Some(1.0));

    // The controller back: the page's open stream keeps repeating the wake,
    // the controller starts a replica (`scaled`), the page says `starting`
    // for the replica's 2 s start-up, then reloads into the app.
    cluster.restart_controller().await;
    // Phase and history read in one call: `starting` lasts only the
    // replica's start-up, after which the page reloads into the app.
    let phases = rouse_e2e::poll_until(
        "the page says starting",
        Duration::from_secs(60),
        || async {
            let seen = browser
                .execute(
                    "const p = document.getElementById('phase'); \
                     return p ? [p.textContent, window.rousePhases] : null;",
                )
                .await
                .ok()?;
            (seen[0] == "starting").then(|| seen[1].clone())
        },
    )
    .await;
    assert_eq!(phases, serde_json::json!(["waking", "starting"]));
    shot(&browser, "starting").await;

    let app = browser
        .wait_for_text("body", "handled by", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(app.starts_with("handled by"), "{app}");
    shot(&browser, "app").await;
    assert_eq!(browser.current_url().await.unwrap(), url);
    let reloaded = navigation(&browser).await;
    assert_eq!(reloaded["type"], "reload", "{reloaded}");
    assert_eq!(reloaded["status"], 200, "{reloaded}");
    let pages = cluster
        .proxy_metric(0, "rouse_browser_pages_total", "wait")
        .await;
    assert_eq!(
        pages,
        Some(1.0),
        "the warm reload got the app, not the page"
    );

    browser.close().await.unwrap();
}
