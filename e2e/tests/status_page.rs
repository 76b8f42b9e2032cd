//! The controller's status page (`/` on its admin port) in a real headless
//! Chromium: the page draws itself from `/api/v1/services` and
//! `/api/v1/history` with its own script, so only a browser can show that
//! the table, the chart and the event list come out right.
//!
//! The first test also takes the screenshot the README shows: into
//! `$ROUSE_SCREENSHOTS/status-page.png` when set (`ROUSE_SCREENSHOTS=docs`
//! renews docs/status-page.png), else into a temp dir, so a test run leaves
//! the repository as it was. The second closes the API with an admin token:
//! the page asks for it, and takes it from the URL's fragment.

use std::time::Duration;

use rouse_e2e::bins::workspace_root;
use rouse_e2e::browser::Browser;
use rouse_e2e::{Cluster, Service};

const ECHO: &str = "echo.localhost";
const IDLE: &str = "idle.localhost";
const TOKEN: &str = "status-page-secret";
/// How long the page may take to show what the API already says (it
/// refreshes every 5 s).
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

async fn browser(cluster: &Cluster) -> Browser {
    match Browser::start().await {
        Ok(browser) => browser,
        Err(e) => cluster.fail(&format!("{e:#}")).await,
    }
}

/// Waits until `css` contains `text`; fails with the cluster's logs.
async fn expect_text(cluster: &Cluster, browser: &Browser, css: &str, text: &str) -> String {
    match browser.wait_for_text(css, text, PAGE_DEADLINE).await {
        Ok(found) => found,
        Err(e) => cluster.fail(&format!("status page: {e:#}")).await,
    }
}

/// How many series paths the chart of `service` has, with a drawn line.
async fn series(browser: &Browser, service: &str) -> u64 {
    let js = format!(
        "return Array.from(document.querySelectorAll('tr[data-service=\"{service}\"] svg path.series'))\
         .filter(p => (p.getAttribute('d') || '').length > 3).length"
    );
    browser
        .execute(&js)
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Two services, one woken from zero: the table shows both with their
/// desired and ready counts, each chart has its desired and ready series,
/// and the event list has the wake's `0 → 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_services_their_chart_and_the_wake() {
    let cluster =
        Cluster::start(vec![Service::new("echo", ECHO), Service::new("idle", IDLE)]).await;
    let cold = cluster.get_ok(ECHO, "/").await;
    assert!(cold.cold_start(), "{cold}");
    cluster
        .wait_status(
            "echo",
            "ready 1 after the wake",
            Duration::from_secs(30),
            |s| s.ready == 1 && s.desired == 1,
        )
        .await;

    let browser = browser(&cluster).await;
    let page = format!("http://{}/", cluster.controller_admin());
    if let Err(e) = browser.goto(&page).await {
        cluster.fail(&format!("{e:#}")).await;
    }
    expect_text(
        &cluster,
        &browser,
        "tr[data-service=\"echo\"] td.ready",
        "1",
    )
    .await;
    for (service, desired, ready) in [("echo", "1", "1"), ("idle", "0", "0")] {
        let row = format!("tr[data-service=\"{service}\"]");
        expect_text(&cluster, &browser, &row, service).await;
        let shown_desired = browser
            .text(&format!("{row} td.desired"))
            .await
            .ok()
            .flatten();
        let shown_ready = browser
            .text(&format!("{row} td.ready"))
            .await
            .ok()
            .flatten();
        assert_eq!(shown_desired.as_deref(), Some(desired), "{service} desired");
        assert_eq!(shown_ready.as_deref(), Some(ready), "{service} ready");
    }
    for service in ["echo", "idle"] {
        let drawn = rouse_stack::poll(PAGE_DEADLINE, || async {
            (series(&browser, service).await == 2).then_some(())
        })
        .await;
        if drawn.is_none() {
            cluster
                .fail(&format!(
                    "the chart of {service} has no desired and ready series"
                ))
                .await;
        }
    }
    let event = expect_text(&cluster, &browser, "#events li", "0 → 1").await;
    assert!(
        event.contains("echo"),
        "the event names its service: {event}"
    );
    assert!(
        event.contains("wake"),
        "the event gives its reason: {event}"
    );

    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = std::env::var_os("ROUSE_SCREENSHOTS")
        .filter(|d| !d.is_empty())
        .map_or_else(
            || scratch.path().to_path_buf(),
            |d| workspace_root().join(d),
        );
    let shot = dir.join("status-page.png");
    if let Err(e) = browser.screenshot(&shot).await {
        cluster.fail(&format!("{e:#}")).await;
    }
    let _ = browser.close().await;
}

/// With an admin token the page still loads, asks for the token instead of
/// showing services, and shows them when the token comes in the fragment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_token_the_page_asks_for_it_and_takes_it_from_the_fragment() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, TOKEN).unwrap_or_else(|e| panic!("token file: {e}"));
    let cluster = Cluster::builder()
        .service(Service::new("echo", ECHO))
        .controller_key(
            "admin_token_file",
            &format!("{:?}", token_file.display().to_string()),
        )
        .start()
        .await;
    let admin = cluster.controller_admin();
    let browser = browser(&cluster).await;

    if let Err(e) = browser.goto(&format!("http://{admin}/status")).await {
        cluster.fail(&format!("{e:#}")).await;
    }
    expect_text(&cluster, &browser, "#updated", "needs a token").await;
    let form_hidden = browser
        .execute("return document.getElementById('auth').hidden")
        .await
        .ok();
    assert_eq!(
        form_hidden,
        Some(serde_json::json!(false)),
        "the token form shows"
    );
    assert_eq!(
        browser
            .text("tr[data-service=\"echo\"]")
            .await
            .ok()
            .flatten(),
        None,
        "no service without the token"
    );

    if let Err(e) = browser
        .goto(&format!("http://{admin}/#token={TOKEN}"))
        .await
    {
        cluster.fail(&format!("{e:#}")).await;
    }
    expect_text(&cluster, &browser, "tr[data-service=\"echo\"]", "echo").await;
    let url = browser.current_url().await.unwrap_or_default();
    assert!(
        !url.contains(TOKEN),
        "the token is taken out of the URL: {url}"
    );
    let _ = browser.close().await;
}
