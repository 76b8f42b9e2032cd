//! A whole rouse deployment for one test: nats-server, one controller, N
//! proxies, all on 127.0.0.1 with fresh ports, config files and state dir in
//! one temp dir.
//!
//! Why one struct owns everything: a failure anywhere is explained by the
//! logs of all processes together (the proxy held, did the controller get
//! the wake, did the replica start?), so every wait helper on [`Cluster`]
//! panics with the tails of all logs and the controller's last status, and
//! dropping a `Cluster` during a panic prints them too. Drop also kills the
//! controller, the proxies and every replica carrying the cluster's marker,
//! so no test leaves processes behind.
//!
//! Clusters in one test binary run one at a time: the machine has 2 cores,
//! and cold-start timing under contention would make tests flaky rather than
//! faster. `ROUSE_E2E_PARALLEL=<n>` allows n at once.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::{Config, Service};
use crate::http::{self, Resp, ServiceStatus};
use crate::nats::NatsServer;
use crate::proc::{read_lossy, Proc};

/// Deadline for processes to become healthy/ready.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Log lines per process in failure messages.
const LOG_TAIL_LINES: usize = 80;

fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::env::var("ROUSE_E2E_PARALLEL")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        Semaphore::new(n)
    })
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    proxies: usize,
    services: Vec<Service>,
    report_interval: String,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            proxies: 1,
            services: Vec::new(),
            report_interval: "200ms".to_string(),
        }
    }
}

impl ClusterBuilder {
    /// Number of proxies (each with its own listen and admin port).
    pub fn proxies(mut self, n: usize) -> Self {
        assert!(n >= 1, "a cluster needs at least one proxy");
        self.proxies = n;
        self
    }

    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    pub fn report_interval(mut self, d: &str) -> Self {
        self.report_interval = d.to_string();
        self
    }

    /// Starts nats-server, the controller and the proxies, and waits until
    /// the controller's `/healthz` and every proxy's `/readyz` answer 200.
    pub async fn start(self) -> Cluster {
        let slot = slots()
            .acquire()
            .await
            .expect("cluster semaphore is never closed");
        let dir = tempfile::Builder::new()
            .prefix("rouse-e2e-")
            .tempdir()
            .expect("create temp dir");
        let marker = crate::unique_marker();
        let nats = NatsServer::start_in(dir.path()).await;
        let state_dir = dir.path().join("controller-state");
        std::fs::create_dir_all(&state_dir).expect("create state dir");

        let mut base = Config::new(&nats.url(), &state_dir, &marker);
        base.report_interval = self.report_interval.clone();
        base.services = self.services.clone();

        let controller_config = dir.path().join("controller.yaml");
        base.write(&controller_config);
        let mut proxy_configs = Vec::new();
        for i in 0..self.proxies {
            let mut cfg = base.clone();
            if i > 0 {
                cfg.proxy_listen = crate::free_addr();
                cfg.proxy_admin = crate::free_addr();
            }
            let path = dir.path().join(format!("proxy-{i}.yaml"));
            cfg.write(&path);
            proxy_configs.push((cfg, path));
        }

        let controller = Proc::spawn(
            "rouse-controller",
            &crate::bin("rouse-controller"),
            &config_args(&controller_config),
            &BTreeMap::new(),
            &dir.path().join("controller.log"),
        );
        let mut cluster = Cluster {
            client: http::client(),
            marker,
            nats,
            proxies: Vec::new(),
            controller,
            controller_admin: base.controller_admin,
            controller_config,
            state_dir,
            logs_dumped: AtomicBool::new(false),
            dir: Some(dir),
            _slot: slot,
        };
        cluster.wait_controller_healthy().await;

        let proxy_bin = crate::bin("rouse-proxy");
        for (i, (cfg, path)) in proxy_configs.into_iter().enumerate() {
            let proc = Proc::spawn(
                &format!("rouse-proxy-{i}"),
                &proxy_bin,
                &config_args(&path),
                &BTreeMap::new(),
                &cluster.dir().join(format!("proxy-{i}.log")),
            );
            cluster.proxies.push(ProxyNode {
                listen: cfg.proxy_listen,
                admin: cfg.proxy_admin,
                config_path: path,
                proc,
            });
        }
        for i in 0..cluster.proxies.len() {
            cluster.wait_proxy_ready(i).await;
        }
        cluster
    }
}

fn config_args(path: &Path) -> Vec<OsString> {
    vec![OsString::from("--config"), path.as_os_str().to_owned()]
}

/// One proxy of a cluster.
pub struct ProxyNode {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub proc: Proc,
}

/// A running deployment; see the module docs.
pub struct Cluster {
    /// A client made on the test's runtime; clone it freely.
    pub client: reqwest::Client,
    /// The value of `ROUSE_E2E_MARKER` in every replica of this cluster.
    pub marker: String,
    pub nats: NatsServer,
    pub proxies: Vec<ProxyNode>,
    controller: Proc,
    controller_admin: SocketAddr,
    controller_config: PathBuf,
    state_dir: PathBuf,
    logs_dumped: AtomicBool,
    dir: Option<tempfile::TempDir>,
    _slot: SemaphorePermit<'static>,
}

impl Cluster {
    /// A cluster with one proxy and `services`.
    pub async fn start(services: Vec<Service>) -> Cluster {
        services
            .into_iter()
            .fold(Cluster::builder(), ClusterBuilder::service)
            .start()
            .await
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The temp dir holding configs, logs and the state dir.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("temp dir lives as long as the cluster")
            .path()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn controller_config(&self) -> &Path {
        &self.controller_config
    }

    pub fn controller_admin(&self) -> SocketAddr {
        self.controller_admin
    }

    /// Client address of proxy `i`.
    pub fn proxy_addr(&self, i: usize) -> SocketAddr {
        self.proxies[i].listen
    }

    pub fn controller_proc(&mut self) -> &mut Proc {
        &mut self.controller
    }

    pub fn proxy_proc(&mut self, i: usize) -> &mut Proc {
        &mut self.proxies[i].proc
    }

    pub fn controller_logs(&self) -> String {
        self.controller.logs()
    }

    pub fn proxy_logs(&self, i: usize) -> String {
        self.proxies[i].proc.logs()
    }

    /// Pids of this cluster's replicas (see [`crate::replica_pids`]).
    pub fn replica_pids(&self) -> Vec<u32> {
        crate::replica_pids(&self.marker)
    }

    // ----- HTTP -----

    /// `GET` through proxy `i`; transport errors are returned, not panics.
    pub async fn try_get_via(&self, i: usize, host: &str, path: &str) -> anyhow::Result<Resp> {
        http::request(
            &self.client,
            Method::GET,
            self.proxy_addr(i),
            host,
            path,
            None,
        )
        .await
    }

    /// `GET` through proxy `i`; panics (with all logs) on a transport error.
    pub async fn get_via(&self, i: usize, host: &str, path: &str) -> Resp {
        match self.try_get_via(i, host, path).await {
            Ok(resp) => resp,
            Err(e) => {
                self.fail(&format!("request through proxy {i} failed: {e:#}"))
                    .await
            }
        }
    }

    /// `GET` through proxy 0.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.get_via(0, host, path).await
    }

    /// `GET` through proxy 0 that must answer 200; returns the response.
    pub async fn get_ok(&self, host: &str, path: &str) -> Resp {
        let resp = self.get(host, path).await;
        if resp.status != 200 {
            self.fail(&format!(
                "GET {path} (Host: {host}) expected 200, got {resp}"
            ))
            .await;
        }
        resp
    }

    /// The controller's `GET /api/v1/services`.
    pub async fn services(&self) -> anyhow::Result<Value> {
        http::services_with(&self.client, self.controller_admin).await
    }

    /// The controller's status of service `name`, if it answers and lists it.
    pub async fn service_status(&self, name: &str) -> Option<ServiceStatus> {
        let doc = self.services().await.ok()?;
        ServiceStatus::find(&doc, name)
    }

    /// Proxy `i`'s `/metrics` text.
    pub async fn proxy_metrics(&self, i: usize) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.proxies[i].admin);
        let resp = self.client.get(&url).send().await?;
        anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
        Ok(resp.text().await?)
    }

    /// One sample of proxy `i`'s metric `name` for `service`.
    pub async fn proxy_metric(&self, i: usize, name: &str, service: &str) -> Option<f64> {
        let text = self.proxy_metrics(i).await.ok()?;
        http::metric_value(&text, name, service)
    }

    // ----- waiting -----

    /// Polls `condition` until true; on timeout panics with `desc`, the last
    /// controller status and the tails of all logs.
    pub async fn wait_until<F, Fut>(&self, desc: &str, timeout: Duration, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let res = crate::poll_until_inner(timeout, || {
            let fut = condition();
            async move { fut.await.then_some(()) }
        })
        .await;
        if res.is_none() {
            self.fail(&format!("timed out after {timeout:?} waiting until {desc}"))
                .await;
        }
    }

    /// Polls `probe` until it returns `Some`; like [`Cluster::wait_until`].
    pub async fn poll_until<T, F, Fut>(&self, desc: &str, timeout: Duration, probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match crate::poll_until_inner(timeout, probe).await {
            Some(value) => value,
            None => {
                self.fail(&format!("timed out after {timeout:?} waiting until {desc}"))
                    .await
            }
        }
    }

    /// Waits until the controller's status of `name` satisfies `pred`, and
    /// returns that status.
    pub async fn wait_status<P>(
        &self,
        name: &str,
        desc: &str,
        timeout: Duration,
        pred: P,
    ) -> ServiceStatus
    where
        P: Fn(&ServiceStatus) -> bool,
    {
        let pred = &pred;
        self.poll_until(&format!("service {name}: {desc}"), timeout, || async move {
            self.service_status(name).await.filter(|s| pred(s))
        })
        .await
    }

    /// Panics with `msg`, the controller's last status and all log tails.
    pub async fn fail(&self, msg: &str) -> ! {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.services()).await {
            Ok(Ok(v)) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Ok(Err(e)) => format!("<unavailable: {e:#}>"),
            Err(_) => "<unavailable: timed out>".to_string(),
        };
        self.logs_dumped.store(true, Ordering::SeqCst);
        panic!(
            "{msg}\n\n=== controller /api/v1/services ===\n{status}\n{}",
            self.dump_logs()
        );
    }

    /// The tails of every log of this cluster, for failure messages.
    pub fn dump_logs(&self) -> String {
        let mut out = String::new();
        let mut section = |title: &str, text: &str, lines: usize| {
            out.push_str(&format!("\n=== {title} (last {lines} lines) ===\n"));
            out.push_str(&crate::tail(text, lines));
            out.push('\n');
        };
        section("nats-server", &self.nats.logs(), 30);
        section(
            &format!("rouse-controller {}", self.controller.log_path().display()),
            &self.controller.logs(),
            LOG_TAIL_LINES,
        );
        for (i, p) in self.proxies.iter().enumerate() {
            section(
                &format!("rouse-proxy-{i} {}", p.proc.log_path().display()),
                &p.proc.logs(),
                LOG_TAIL_LINES,
            );
        }
        for log in find_logs(&self.state_dir, 3, 20) {
            section(&format!("{}", log.display()), &read_lossy(&log), 20);
        }
        section("replica pids", &format!("{:?}", self.replica_pids()), 1);
        out
    }

    // ----- process control -----

    async fn wait_controller_healthy(&mut self) {
        let url = format!("http://{}/healthz", self.controller_admin);
        self.wait_http_ok(None, &url).await;
    }

    async fn wait_proxy_ready(&mut self, i: usize) {
        let url = format!("http://{}/readyz", self.proxies[i].admin);
        self.wait_http_ok(Some(i), &url).await;
    }

    /// Polls `url` until 200, failing early if the process (proxy `i`, or
    /// the controller for `None`) exits.
    async fn wait_http_ok(&mut self, proxy: Option<usize>, url: &str) {
        let start = tokio::time::Instant::now();
        let rounds = STARTUP_DEADLINE.as_millis() / crate::POLL_INTERVAL.as_millis() + 2;
        for _ in 0..rounds {
            let proc = match proxy {
                Some(i) => &mut self.proxies[i].proc,
                None => &mut self.controller,
            };
            if let Some(status) = proc.try_exit() {
                let name = proc.name().to_string();
                self.fail(&format!(
                    "{name} exited ({status}) before {url} answered 200"
                ))
                .await;
            }
            let ok = tokio::time::timeout(Duration::from_secs(5), self.client.get(url).send())
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|r| r.status().as_u16() == 200);
            if ok {
                return;
            }
            if start.elapsed() >= STARTUP_DEADLINE {
                break;
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        self.fail(&format!(
            "{url} did not answer 200 within {STARTUP_DEADLINE:?}"
        ))
        .await;
    }

    /// SIGKILLs the controller and waits for it to be gone. Its replicas are
    /// not its process group's business: they keep running.
    pub async fn kill_controller(&mut self) {
        self.controller.sigkill();
        self.controller.wait_exit(Duration::from_secs(30)).await;
    }

    /// SIGTERMs the controller and returns its exit status.
    pub async fn stop_controller(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.controller.sigterm();
        self.controller.wait_exit(timeout).await
    }

    /// Starts the controller again with the same config and state dir, and
    /// waits for `/healthz`.
    pub async fn restart_controller(&mut self) {
        self.controller.restart();
        self.wait_controller_healthy().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_dumped.load(Ordering::SeqCst) {
            eprintln!("rouse-e2e: test failed; cluster logs:{}", self.dump_logs());
        }
        for p in &mut self.proxies {
            p.proc.kill_now();
        }
        self.controller.kill_now();
        // The replicas were the controller's children; kill them by marker.
        for _ in 0..200 {
            let pids = self.replica_pids();
            if pids.is_empty() {
                break;
            }
            crate::kill_pids(&pids);
            std::thread::sleep(Duration::from_millis(25));
        }
        if std::env::var_os("ROUSE_E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("rouse-e2e: keeping {}", dir.keep().display());
            }
        }
    }
}

/// Up to `max` files ending in `.log` under `dir`, `depth` levels deep.
fn find_logs(dir: &Path, depth: usize, max: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut visited = 0;
    while let Some((d, level)) = stack.pop() {
        visited += 1;
        if visited > 200 || found.len() >= max {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                if level < depth {
                    stack.push((path, level + 1));
                }
            } else if path.extension().is_some_and(|e| e == "log") && found.len() < max {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
