//! A whole rouse deployment for one test: a [`Stack`] (nats-server, one
//! controller, N proxies on fresh ports, see `rouse-stack`) plus what a test
//! needs around it: a client, and waits and requests that panic with a
//! clear message, the controller's last status and the tails of all logs.
//!
//! A `Cluster` derefs to its [`Stack`], so `cluster.nats`, `cluster.marker`,
//! `cluster.proxies` and the process controls are the stack's. Dropping a
//! `Cluster` during a panic prints the logs (unless a failure message
//! already did), then the stack kills everything it started.
//!
//! Clusters in one test binary run one at a time: the machine has 2 cores,
//! and cold-start timing under contention would make tests flaky rather than
//! faster. `ROUSE_E2E_PARALLEL=<n>` allows n at once.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
pub use rouse_stack::{ProxyNode, STARTUP_DEADLINE};
use rouse_stack::{Service, Stack, StackBuilder};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::http::{self, Resp, ServiceStatus};

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
#[derive(Debug, Clone, Default)]
pub struct ClusterBuilder {
    stack: StackBuilder,
}

impl ClusterBuilder {
    /// Number of proxies (each with its own listen and admin port).
    pub fn proxies(mut self, n: usize) -> Self {
        self.stack = self.stack.proxies(n);
        self
    }

    pub fn service(mut self, service: Service) -> Self {
        self.stack = self.stack.service(service);
        self
    }

    pub fn report_interval(mut self, d: &str) -> Self {
        self.stack = self.stack.report_interval(d);
        self
    }

    /// The controller's state dir instead of a fresh one (see
    /// `StackBuilder::state_dir`).
    pub fn state_dir(mut self, dir: &std::path::Path) -> Self {
        self.stack = self.stack.state_dir(dir);
        self
    }

    /// `proxy.worker_threads`.
    pub fn worker_threads(mut self, n: u32) -> Self {
        self.stack = self.stack.worker_threads(n);
        self
    }

    /// Services given as YAML `services:` items.
    pub fn raw_services(mut self, yaml: &str) -> Self {
        self.stack = self.stack.raw_services(yaml);
        self
    }

    /// A `controller:` key (value in YAML).
    pub fn controller_key(mut self, key: &str, value: &str) -> Self {
        self.stack = self.stack.controller_key(key, value);
        self
    }

    /// A `proxy:` key (value in YAML, e.g. `tls`), the same for every proxy
    /// (so a fixed listen address in it suits a one-proxy stack only).
    pub fn proxy_key(mut self, key: &str, value: &str) -> Self {
        self.stack = self.stack.proxy_key(key, value);
        self
    }

    /// `n` more controllers (standbys under leader election).
    pub fn standby_controllers(mut self, n: usize) -> Self {
        self.stack = self.stack.standby_controllers(n);
        self
    }

    /// An environment variable of every controller (e.g. `KUBECONFIG`).
    pub fn controller_env(mut self, key: &str, value: &str) -> Self {
        self.stack = self.stack.controller_env(key, value);
        self
    }

    /// The controller serves KEDA's external scaler API on a free port
    /// (`cluster.keda_addr()`).
    pub fn keda(mut self) -> Self {
        self.stack = self.stack.keda();
        self
    }

    /// Runs on a routed cluster of `nodes` nats-servers with clustered
    /// JetStream (see `rouse_stack::NatsCluster`): `nats.url` lists them
    /// all, `nats.replicas` is 3 (fewer for a smaller cluster).
    pub fn nats_cluster(mut self, nodes: usize) -> Self {
        self.stack = self.stack.nats_cluster(nodes);
        self
    }

    /// The controller drives the Docker engine at `host` (`DOCKER_HOST`).
    pub fn docker_host(mut self, host: &str) -> Self {
        self.stack = self.stack.controller_env("DOCKER_HOST", host);
        self
    }

    /// Starts nats-server, the controller and the proxies, and waits until
    /// the controller's `/healthz` and every proxy's `/readyz` answer 200.
    pub async fn start(self) -> Cluster {
        let slot = slots()
            .acquire()
            .await
            .expect("cluster semaphore is never closed");
        let keep = std::env::var_os("ROUSE_E2E_KEEP").is_some();
        let stack = self
            .stack
            .keep(keep)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Cluster {
            stack,
            client: http::client(),
            logs_dumped: AtomicBool::new(false),
            _slot: slot,
        }
    }
}

/// A running deployment; see the module docs.
pub struct Cluster {
    /// Dropped first: everything is stopped before the slot is released.
    stack: Stack,
    /// A client made on the test's runtime; clone it freely.
    pub client: reqwest::Client,
    logs_dumped: AtomicBool,
    _slot: SemaphorePermit<'static>,
}

impl Deref for Cluster {
    type Target = Stack;

    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }
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
        http::services_with(&self.client, self.controller_admin()).await
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

    /// Judges what [`crate::load::sequential_until`] returned: enough
    /// requests to judge, and none failed; else fails with `during` and the
    /// first failures.
    pub async fn expect_no_failed_traffic(
        &self,
        during: &str,
        (failures, sent): (Vec<String>, usize),
    ) {
        assert!(sent > 10, "too little traffic to judge: {sent}");
        if !failures.is_empty() {
            self.fail(&format!(
                "{} of {sent} warm requests failed {during}: {:?}",
                failures.len(),
                &failures[..failures.len().min(5)]
            ))
            .await;
        }
    }

    /// Polls `condition` until true; on timeout panics with `desc`, the last
    /// controller status and the tails of all logs.
    pub async fn wait_until<F, Fut>(&self, desc: &str, timeout: Duration, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let res = rouse_stack::poll(timeout, || {
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
        match rouse_stack::poll(timeout, probe).await {
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

    /// Starts the controller again with the same config and state dir, and
    /// waits for `/healthz`.
    pub async fn restart_controller(&mut self) {
        if let Err(e) = self.stack.restart_controller().await {
            // The error ends with the log tails `fail` prints anyway.
            let e = format!("{e:#}");
            self.fail(e.lines().next().unwrap_or_default()).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_dumped.load(Ordering::SeqCst) {
            eprintln!("rouse-e2e: test failed; cluster logs:{}", self.dump_logs());
        }
    }
}
