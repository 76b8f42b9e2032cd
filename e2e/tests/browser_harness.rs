//! Self-check of the headless-Chromium harness (`rouse_e2e::browser`)
//! against a page served by the test itself: no rouse binary involved, so a
//! broken browser set-up fails here, by name, and not as a failure of the
//! waiting page's test.

use std::time::Duration;

use rouse_e2e::browser::Browser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A page whose text changes after a moment (scripts run, waits poll).
const PAGE: &str = "<!doctype html><title>t</title><p id=s>first</p>\
<script>setTimeout(function(){document.getElementById('s').textContent='second'},300)</script>";

/// Serves [`PAGE`] to every connection, one request each.
async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // One read is enough for a browser's GET on loopback; what is
            // left unread does not matter, the connection closes.
            let _ = stream.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_loads_a_page_runs_its_script_and_takes_a_screenshot() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve(listener));

    let browser = Browser::start().await.unwrap();
    let url = format!("http://127.0.0.1:{port}/page");
    browser.goto(&url).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap(), url);
    let text = browser
        .wait_for_text("#s", "second", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(text, "second");
    assert_eq!(browser.text("#none").await.unwrap(), None);
    let title = browser.execute("return document.title").await.unwrap();
    assert_eq!(title, serde_json::json!("t"));
    let viewport = browser
        .execute("return [window.innerWidth, window.innerHeight]")
        .await
        .unwrap();
    assert_eq!(viewport, serde_json::json!([800, 500]));

    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("shots/page.png");
    browser.screenshot(&png).await.unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    let missing = browser
        .wait_for_text("#s", "never", Duration::from_millis(500))
        .await;
    assert!(missing.is_err());
    browser.close().await.unwrap();
    server.abort();
}

/// A test that fails holds its `Browser` until it unwinds: dropping it
/// unclosed must take Chromium down too, not only chromedriver (killed,
/// chromedriver leaves its Chromium running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_dropped_unclosed_leaves_no_chromium_behind() {
    let browser = Browser::start().await.expect("browser");
    browser.goto("about:blank").await.expect("goto");
    let profile = browser.profile_dir().to_string_lossy().into_owned();
    let running = rouse_stack::procfs::pids_with_arg(&profile);
    assert!(
        !running.is_empty(),
        "Chromium runs with its profile {profile}"
    );
    drop(browser);
    let gone = rouse_stack::poll(Duration::from_secs(20), || {
        let profile = profile.clone();
        async move {
            rouse_stack::procfs::pids_with_arg(&profile)
                .is_empty()
                .then_some(())
        }
    })
    .await;
    assert!(
        gone.is_some(),
        "Chromium outlived its dropped Browser: {:?}",
        rouse_stack::procfs::pids_with_arg(&profile)
    );
}
