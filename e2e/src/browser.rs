//! A real headless Chromium for end-to-end tests, driven over WebDriver.
//!
//! Some behaviour of rouse is only visible to a browser: a page that the
//! proxy serves while a service wakes, an `EventSource` that follows the
//! wake, a `location.reload()` into the app. An HTTP client cannot prove
//! those; a browser can. [`Browser::start`] starts the machine's
//! `chromedriver` on a free 127.0.0.1 port, waits until it answers, and opens
//! one WebDriver session (through `fantoccini`) with a headless Chromium that
//! has its own throw-away profile and no network chatter of its own (no
//! sync, no component updates, no QUIC), so that everything it requests is
//! what the test asked for.
//!
//! Programs: `$CHROMEDRIVER` or `/usr/bin/chromedriver`, `$CHROMIUM` or
//! `/usr/bin/chromium` (Debian's `chromium` and `chromium-driver`, which
//! scripts/test installs). When either is missing, [`Browser::start`] fails
//! with that install hint rather than skipping: a test that needs a browser
//! and silently passes without one proves nothing.
//!
//! The WebDriver endpoint is plain HTTP on loopback, so the session needs no
//! TLS client (fantoccini is built without its TLS features; its rustls
//! feature would add a second rustls crypto provider to the test binaries,
//! which leaves rustls without a default one for the TLS tests).
//!
//! Every wait here is bounded: chromedriver's start-up, the session, and
//! [`Browser::wait_for_text`] (a [`rouse_stack::poll`] of the page).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// What to install when a program is missing.
pub const INSTALL_HINT: &str = "install Debian's `chromium chromium-driver` \
     (apt-get install chromium chromium-driver), or set $CHROMIUM and $CHROMEDRIVER";

/// How long chromedriver may take to answer its `/status`.
const DRIVER_START: Duration = Duration::from_secs(30);

/// The window size: screenshots come out this size (small enough to keep in
/// the repository's docs).
const WINDOW: (u32, u32) = (800, 500);

/// One headless Chromium session and the chromedriver serving it.
///
/// [`Browser::close`] ends the session (Chromium exits with it) and stops
/// chromedriver. chromedriver runs in a process group of its own, which its
/// Chromium joins: dropping a `Browser` without closing (a failed test)
/// kills the whole group, since a killed chromedriver leaves its Chromium
/// running.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    /// Chromium's profile (`--user-data-dir`), removed on drop.
    _profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Browser> {
        Browser::start_with_args(&[]).await
    }

    /// [`Browser::start`] with more Chromium flags, e.g.
    /// `--host-resolver-rules=MAP echo.localhost 127.0.0.1`.
    pub async fn start_with_args(extra: &[&str]) -> anyhow::Result<Browser> {
        let chromium = program("CHROMIUM", "/usr/bin/chromium")?;
        let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let profile = tempfile::Builder::new()
            .prefix("rouse-chromium-")
            .tempdir()
            .context("creating Chromium's profile dir")?;
        let port = rouse_stack::free_port();
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        if let Err(e) = wait_driver(&mut driver, &url).await {
            let _ = driver.kill().await;
            return Err(e);
        }
        let caps = capabilities(&chromium, profile.path(), extra);
        let client = match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
        {
            Ok(client) => client,
            Err(e) => {
                let _ = driver.kill().await;
                return Err(anyhow::anyhow!(
                    "opening a Chromium session through chromedriver at {url}: {e} \
                     (is {} a working Chromium? {INSTALL_HINT})",
                    chromium.display()
                ));
            }
        };
        let browser = Browser {
            client: Some(client),
            driver,
            _profile: profile,
            port,
        };
        browser.fit_viewport().await?;
        Ok(browser)
    }

    fn client(&self) -> anyhow::Result<&Client> {
        self.client
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the browser session is closed"))
    }

    /// Sizes the window so that the page's viewport (what screenshots show)
    /// is [`WINDOW`]: the window's own frame differs between Chromium
    /// versions, so it is measured.
    async fn fit_viewport(&self) -> anyhow::Result<()> {
        let client = self.client()?;
        let frame = client
            .execute(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]",
                Vec::new(),
            )
            .await
            .context("measuring the window frame")?;
        let extra = |i: usize| {
            frame[i]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        client
            .set_window_size(WINDOW.0 + extra(0), WINDOW.1 + extra(1))
            .await
            .context("setting the window size")
    }

    /// The port chromedriver listens on (127.0.0.1).
    pub fn driver_port(&self) -> u16 {
        self.port
    }

    /// Navigates to `url` and returns when the page has loaded (WebDriver's
    /// "normal" page load strategy).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client()?
            .goto(url)
            .await
            .with_context(|| format!("navigating to {url}"))
    }

    /// The text of the first element matching `css`; `None` when there is
    /// none.
    pub async fn text(&self, css: &str) -> anyhow::Result<Option<String>> {
        let client = self.client()?;
        let found = client
            .find_all(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css:?}"))?;
        match found.into_iter().next() {
            Some(element) => Ok(Some(
                element
                    .text()
                    .await
                    .with_context(|| format!("reading the text of {css:?}"))?,
            )),
            None => Ok(None),
        }
    }

    /// Waits until an element matching `css` contains `text`, and returns
    /// its whole text. Errors (with what was there last) after `timeout`.
    /// Navigations in between (a reload) are fine: each round looks anew.
    pub async fn wait_for_text(
        &self,
        css: &str,
        text: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let last = std::sync::Mutex::new(None::<String>);
        let found = rouse_stack::poll(timeout, || async {
            // A page in the middle of a reload has no element or a stale
            // one: that is "not yet", not an error.
            let now = self.text(css).await.ok().flatten();
            let hit = now.as_ref().filter(|t| t.contains(text)).cloned();
            *last.lock().unwrap_or_else(|e| e.into_inner()) = now;
            hit
        })
        .await;
        found.ok_or_else(|| {
            let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
            anyhow::anyhow!(
                "no {css:?} containing {text:?} within {timeout:?}; last text: {last:?}"
            )
        })
    }

    /// The page's URL.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        Ok(self
            .client()?
            .current_url()
            .await
            .context("reading the current URL")?
            .to_string())
    }

    /// Runs `js` (a function body: `return ...` gives the value) in the page.
    pub async fn execute(&self, js: &str) -> anyhow::Result<Value> {
        self.client()?
            .execute(js, Vec::new())
            .await
            .with_context(|| format!("running {js:?} in the page"))
    }

    /// Saves a PNG of the viewport to `path` (its parent dirs are created).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self
            .client()?
            .screenshot()
            .await
            .context("taking a screenshot")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Chromium's profile dir: on the command line of each of its processes.
    pub fn profile_dir(&self) -> &Path {
        self._profile.path()
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = match self.client.take() {
            Some(client) => client.close().await.context("closing the session"),
            None => Ok(()),
        };
        let _ = self.driver.kill().await;
        closed
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid; gone once it was reaped.
        if let Some(pid) = self.driver.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// `$<env>` when set, else `default`; an error with the install hint when
/// the file is not there.
fn program(env: &str, default: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(env)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    anyhow::ensure!(
        path.is_file(),
        "{} not found (${env}); {INSTALL_HINT}",
        path.display()
    );
    Ok(path)
}

/// Waits until chromedriver at `url` says it is ready, or exits.
async fn wait_driver(driver: &mut Child, url: &str) -> anyhow::Result<()> {
    let status_url = format!("{url}/status");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building an HTTP client")?;
    let mut exited = None;
    let ready = rouse_stack::poll(DRIVER_START, || {
        if let Ok(Some(status)) = driver.try_wait() {
            exited = Some(status);
            // Found out: stop waiting (the `Some` below ends the poll).
            return futures::future::Either::Left(async { Some(false) });
        }
        let request = http.get(&status_url).send();
        futures::future::Either::Right(async move {
            let body: Value = request.await.ok()?.json().await.ok()?;
            body["value"]["ready"].as_bool().filter(|r| *r)
        })
    })
    .await;
    if let Some(status) = exited {
        anyhow::bail!("chromedriver exited at start-up ({status}); {INSTALL_HINT}");
    }
    match ready {
        Some(true) => Ok(()),
        _ => anyhow::bail!("chromedriver at {url} not ready within {DRIVER_START:?}"),
    }
}

/// The session's capabilities: headless Chromium at `chromium`, profile in
/// `profile`, nothing on the network but what the test asks for.
fn capabilities(chromium: &Path, profile: &Path, extra: &[&str]) -> serde_json::Map<String, Value> {
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        "--disable-quic".to_string(),
        "--no-first-run".to_string(),
        "--disable-background-networking".to_string(),
        "--disable-component-update".to_string(),
        "--disable-sync".to_string(),
        "--disable-dev-shm-usage".to_string(),
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium.display().to_string(),
            "args": args,
        },
    });
    match caps {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}
