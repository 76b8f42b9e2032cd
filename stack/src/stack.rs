//! A whole rouse deployment: nats-server, one controller, N proxies, all on
//! 127.0.0.1, with their config files, logs and the controller's state dir
//! in one directory (a fresh temporary one unless told otherwise).
//!
//! Why one struct owns everything: a failure anywhere is explained by the
//! logs of all processes together (the proxy held, did the controller get
//! the wake, did the replica start?), so a start-up that fails says so with
//! the tails of all logs ([`Stack::dump_logs`]). Dropping a `Stack` kills
//! the controller, the proxies and every replica carrying the stack's
//! marker, so nothing is left behind; [`Stack::shutdown`] stops them
//! gracefully first, the way an operator would.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::Context as _;

use crate::bins::Bins;
use crate::config::{Config, Service};
use crate::nats::NatsServer;
use crate::proc::{read_lossy, Proc};

/// Deadline for processes to become healthy/ready.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Log lines per process in failure messages.
const LOG_TAIL_LINES: usize = 80;

/// What to start.
#[derive(Debug, Clone)]
pub struct StackBuilder {
    proxies: usize,
    /// The config every process gets; its NATS URL, state dir and marker
    /// are filled in at start.
    config: Config,
    /// Fixed addresses asked for, checked to be free before the start.
    fixed: Vec<SocketAddr>,
    nats_port: Option<u16>,
    dir: Option<PathBuf>,
    keep: bool,
    /// Added to the controller's environment (e.g. `DOCKER_HOST`).
    controller_env: BTreeMap<String, String>,
    /// Controllers started after the first, each with its own admin port
    /// and the same state dir (with `controller.leader_election`, standbys).
    standbys: usize,
    /// The controller's state dir, when not `<dir>/controller-state`.
    state_dir: Option<PathBuf>,
    /// How long each process gets to become healthy or ready.
    startup_deadline: Duration,
    /// Nodes of the NATS cluster to run on (see `nats_cluster`); one
    /// server when `None`.
    pub(crate) nats_cluster: Option<usize>,
    /// `proxy:` keys of one proxy only: `(proxy index, key, YAML value)`.
    proxy_extra_for: Vec<(usize, String, String)>,
}

impl Default for StackBuilder {
    fn default() -> Self {
        StackBuilder {
            proxies: 1,
            config: Config::new("", Path::new(""), ""),
            fixed: Vec::new(),
            nats_port: None,
            dir: None,
            keep: false,
            controller_env: BTreeMap::new(),
            standbys: 0,
            state_dir: None,
            startup_deadline: STARTUP_DEADLINE,
            nats_cluster: None,
            proxy_extra_for: Vec::new(),
        }
    }
}

impl StackBuilder {
    /// Number of proxies (each with its own listen and admin port).
    pub fn proxies(mut self, n: usize) -> Self {
        assert!(n >= 1, "a stack needs at least one proxy");
        self.proxies = n;
        self
    }

    pub fn service(mut self, service: Service) -> Self {
        self.config.services.push(service);
        self
    }

    /// `proxy.report_interval` (default 200ms).
    pub fn report_interval(mut self, d: &str) -> Self {
        self.config.report_interval = d.to_string();
        self
    }

    /// `proxy.worker_threads` (default: not set, one per core).
    pub fn worker_threads(mut self, n: u32) -> Self {
        self.config.worker_threads = Some(n);
        self
    }

    /// Where the first proxy listens for clients (default: a free port).
    pub fn proxy_listen(mut self, addr: SocketAddr) -> Self {
        self.config.proxy_listen = addr;
        self.fixed.push(addr);
        self
    }

    /// `controller.state_dir` (default: `controller-state` in the stack's
    /// dir), e.g. a small file system a fault test fills up.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// The first proxy's admin address (default: a free port).
    pub fn proxy_admin(mut self, addr: SocketAddr) -> Self {
        self.config.proxy_admin = addr;
        self.fixed.push(addr);
        self
    }

    /// The controller's admin address (default: a free port).
    pub fn controller_admin(mut self, addr: SocketAddr) -> Self {
        self.config.controller_admin = addr;
        self.fixed.push(addr);
        self
    }

    /// Serve KEDA's external scaler API (`controller.keda_listen`) on a
    /// free port; [`Stack::keda_addr`] says which.
    pub fn keda(mut self) -> Self {
        self.config.keda_listen = Some(crate::free_addr());
        self
    }

    /// nats-server's client port (default: a free port).
    pub fn nats_port(mut self, port: u16) -> Self {
        self.nats_port = Some(port);
        self.fixed.push(SocketAddr::from(([127, 0, 0, 1], port)));
        self
    }

    /// Where rouse-controller, rouse-proxy and rouse-echo come from
    /// (default: this workspace's debug build).
    pub fn bins(mut self, bins: Bins) -> Self {
        self.config.bins = bins;
        self
    }

    /// Configs, logs and state go into `dir` (created if needed) instead of
    /// a fresh temporary directory that is removed afterwards.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Keep the temporary directory after the stack is gone (and say where).
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Sets `key=value` in the controller's environment (e.g. `DOCKER_HOST`).
    pub fn controller_env(mut self, key: &str, value: &str) -> Self {
        self.controller_env
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Services given as YAML `services:` items (see `Config::raw_services`;
    /// `{marker}` in them becomes the stack's replica marker).
    pub fn raw_services(mut self, yaml: &str) -> Self {
        self.config.raw_services.push_str(yaml);
        self
    }

    /// A `proxy:` key (value in YAML, e.g. `tls`), the same for every proxy
    /// (so a fixed listen address in it suits a one-proxy stack only).
    pub fn proxy_key(mut self, key: &str, value: &str) -> Self {
        self.config
            .proxy_extra
            .push((key.to_string(), value.to_string()));
        self
    }

    /// A `proxy:` key (value in YAML) for proxy `i` alone, after the keys
    /// every proxy gets: e.g. one proxy with an access log beside one
    /// without.
    pub fn proxy_key_for(mut self, i: usize, key: &str, value: &str) -> Self {
        self.proxy_extra_for
            .push((i, key.to_string(), value.to_string()));
        self
    }

    /// A `controller:` key (value in YAML), e.g. `leader_election`.
    pub fn controller_key(mut self, key: &str, value: &str) -> Self {
        self.config
            .controller_extra
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Starts `n` more controllers after the first (see the field).
    pub fn standby_controllers(mut self, n: usize) -> Self {
        self.standbys = n;
        self
    }

    /// How long each process gets to become healthy or ready (default
    /// [`STARTUP_DEADLINE`]): a proxy with 10,000 services takes longer
    /// than one with three.
    pub fn startup_deadline(mut self, deadline: Duration) -> Self {
        self.startup_deadline = deadline;
        self
    }

    /// Writes the config into a temporary directory and validates it with
    /// `rouse-controller --check`, starting nothing.
    pub fn check(&self) -> anyhow::Result<()> {
        self.check_one(&self.config)?;
        for i in 0..self.proxies {
            if let Some(config) = self.with_own_keys(&self.config, i) {
                self.check_one(&config)
                    .with_context(|| format!("the config of proxy {i}"))?;
            }
        }
        Ok(())
    }

    /// `base` plus the keys of proxy `i` alone, if it has any.
    fn with_own_keys(&self, base: &Config, i: usize) -> Option<Config> {
        let own: Vec<(String, String)> = self
            .proxy_extra_for
            .iter()
            .filter(|(of, _, _)| *of == i)
            .map(|(_, key, value)| (key.clone(), value.clone()))
            .collect();
        if own.is_empty() {
            return None;
        }
        let mut config = base.clone();
        config.proxy_extra.extend(own);
        Some(config)
    }

    fn check_one(&self, config: &Config) -> anyhow::Result<()> {
        let dir = tempfile::Builder::new()
            .prefix("rouse-check-")
            .tempdir()
            .context("create a temp dir")?;
        let mut config = config.clone();
        config.nats_url = format!("nats://127.0.0.1:{}", self.nats_port.unwrap_or(4222));
        config.state_dir = dir.path().join("state");
        config.marker = "check".to_string();
        let path = dir.path().join("rouse.yaml");
        config.write(&path);
        let controller = config.bins.path("rouse-controller");
        let out = Command::new(&controller)
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .with_context(|| format!("running {} --check", controller.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "the generated config does not validate ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            config.to_yaml()
        );
        Ok(())
    }

    /// Starts nats-server, the controller and the proxies, and waits until
    /// the controller's `/healthz` and every proxy's `/readyz` answer 200.
    /// On failure the error carries the tails of all logs.
    pub async fn start(self) -> anyhow::Result<Stack> {
        for addr in &self.fixed {
            crate::ensure_free(*addr)?;
        }
        let (temp, dir) = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("rouse-stack-")
                    .tempdir()
                    .context("create a temp dir")?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let marker = crate::procfs::unique_marker();
        let mut base = self.config.clone();
        let (nats, nats_cluster) = crate::nats_cluster::start_for_stack(
            &dir,
            self.nats_port,
            self.nats_cluster,
            &mut base,
        )
        .await?;
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.join("controller-state"));
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("create {}", state_dir.display()))?;

        base.state_dir = state_dir.clone();
        base.marker = marker.clone();
        let controller_config = dir.join("controller.yaml");
        base.write(&controller_config);
        let mut proxy_configs = Vec::new();
        for i in 0..self.proxies {
            let mut cfg = self.with_own_keys(&base, i).unwrap_or_else(|| base.clone());
            if i > 0 {
                cfg.proxy_listen = crate::free_addr();
                cfg.proxy_admin = crate::free_addr();
            }
            let path = dir.join(format!("proxy-{i}.yaml"));
            cfg.write(&path);
            proxy_configs.push((cfg, path));
        }

        let controller = Proc::try_spawn(
            "rouse-controller",
            &base.bins.path("rouse-controller"),
            &config_args(&controller_config),
            &self.controller_env,
            &dir.join("controller.log"),
        )?;
        let mut stack = Stack {
            marker,
            nats,
            nats_cluster,
            proxies: Vec::new(),
            controller,
            controller_admin: base.controller_admin,
            keda_listen: base.keda_listen,
            controller_config,
            state_dir,
            dir,
            temp,
            keep: self.keep,
            standbys: Vec::new(),
            startup_deadline: self.startup_deadline,
        };
        stack.wait_controller_healthy().await?;
        if self.standbys > 0 {
            // `/healthz` answers before the lease is taken; a standby
            // started now could win the race and "the first controller
            // leads" would be luck.
            stack.wait_controller_leading().await?;
        }
        for i in 0..self.standbys {
            let mut cfg = base.clone();
            cfg.controller_admin = crate::free_addr();
            let path = stack.dir.join(format!("controller-{}.yaml", i + 1));
            cfg.write(&path);
            let proc = Proc::try_spawn(
                &format!("rouse-controller-{}", i + 1),
                &base.bins.path("rouse-controller"),
                &config_args(&path),
                &self.controller_env,
                &stack.dir.join(format!("controller-{}.log", i + 1)),
            )?;
            stack.standbys.push((proc, cfg.controller_admin));
            let waited = crate::wait_http_ok(
                cfg.controller_admin,
                "/healthz",
                stack.startup_deadline,
                stack.standbys.last_mut().map(|(proc, _)| proc),
            )
            .await;
            waited.map_err(|e| anyhow::anyhow!("{e:#}\n{}", stack.dump_logs()))?;
        }

        let proxy_bin = base.bins.path("rouse-proxy");
        for (i, (cfg, path)) in proxy_configs.into_iter().enumerate() {
            let proc = Proc::try_spawn(
                &format!("rouse-proxy-{i}"),
                &proxy_bin,
                &config_args(&path),
                &BTreeMap::new(),
                &stack.dir.join(format!("proxy-{i}.log")),
            )?;
            stack.proxies.push(ProxyNode {
                listen: cfg.proxy_listen,
                admin: cfg.proxy_admin,
                config_path: path,
                proc,
            });
        }
        for i in 0..stack.proxies.len() {
            let url = (stack.proxies[i].admin, "/readyz");
            stack.wait_http_ok(Some(i), url).await?;
        }
        Ok(stack)
    }
}

/// `rouse_controller_leader` in a controller's `/metrics` page (1 leading,
/// 0 standing by).
pub fn leader_gauge(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("rouse_controller_leader "))
        .and_then(|v| v.trim().parse().ok())
}

fn config_args(path: &Path) -> Vec<OsString> {
    vec![OsString::from("--config"), path.as_os_str().to_owned()]
}

/// One proxy of a stack.
pub struct ProxyNode {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub proc: Proc,
}

/// A running deployment; see the module docs.
pub struct Stack {
    /// The value of `ROUSE_E2E_MARKER` in every replica of this stack.
    pub marker: String,
    pub nats: NatsServer,
    /// The other nodes, when the stack runs on a NATS cluster.
    pub(crate) nats_cluster: Option<crate::nats_cluster::NatsCluster>,
    pub proxies: Vec<ProxyNode>,
    controller: Proc,
    controller_admin: SocketAddr,
    keda_listen: Option<SocketAddr>,
    controller_config: PathBuf,
    state_dir: PathBuf,
    dir: PathBuf,
    /// The temporary directory behind `dir`, removed on drop unless `keep`.
    temp: Option<tempfile::TempDir>,
    keep: bool,
    /// The controllers after the first, with their admin addresses.
    standbys: Vec<(Proc, SocketAddr)>,
    /// How long each process gets to become healthy or ready.
    startup_deadline: Duration,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The directory holding configs, logs and the state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Where the controller serves KEDA's API, if the stack was built with
    /// [`StackBuilder::keda`].
    pub fn keda_addr(&self) -> Option<SocketAddr> {
        self.keda_listen
    }

    /// Client address of proxy `i`.
    pub fn proxy_addr(&self, i: usize) -> SocketAddr {
        self.proxies[i].listen
    }

    pub fn controller_proc(&mut self) -> &mut Proc {
        &mut self.controller
    }

    /// Controller `i` after the first (see
    /// [`StackBuilder::standby_controllers`]) and its admin address.
    pub fn standby(&mut self, i: usize) -> (&mut Proc, SocketAddr) {
        let (proc, admin) = &mut self.standbys[i];
        (proc, *admin)
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

    /// Pids of this stack's replicas (see [`crate::procfs::replica_pids`]).
    pub fn replica_pids(&self) -> Vec<u32> {
        crate::procfs::replica_pids(&self.marker)
    }

    /// Whether the controller and every proxy are still running.
    pub fn is_running(&mut self) -> bool {
        self.controller.is_running() && self.proxies.iter_mut().all(|p| p.proc.is_running())
    }

    /// The tails of every log of this stack, for failure messages.
    pub fn dump_logs(&self) -> String {
        let mut out = String::new();
        let mut section = |title: &str, text: &str, lines: usize| {
            out.push_str(&format!("\n=== {title} (last {lines} lines) ===\n"));
            out.push_str(&crate::tail(text, lines));
            out.push('\n');
        };
        section("nats-server", &self.nats.logs(), 30);
        for (name, logs) in self.nats_peer_logs() {
            section(&name, &logs, 30);
        }
        section(
            &format!("rouse-controller {}", self.controller.log_path().display()),
            &self.controller.logs(),
            LOG_TAIL_LINES,
        );
        for (proc, _) in &self.standbys {
            section(
                &format!("standby controller {}", proc.log_path().display()),
                &proc.logs(),
                LOG_TAIL_LINES,
            );
        }
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

    /// Copies every log of the stack (its own and the replicas') into `to`.
    pub fn copy_logs(&self, to: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
        let mut logs = find_logs(&self.dir, 0, 100);
        logs.extend(find_logs(&self.state_dir, 3, 100));
        for log in logs {
            let name = log.file_name().unwrap_or_default();
            std::fs::copy(&log, to.join(name))
                .with_context(|| format!("copy {} to {}", log.display(), to.display()))?;
        }
        Ok(())
    }

    // ----- process control -----

    async fn wait_controller_healthy(&mut self) -> anyhow::Result<()> {
        self.wait_http_ok(None, (self.controller_admin, "/healthz"))
            .await
    }

    /// Polls the controller's `/metrics` until `rouse_controller_leader` is
    /// 1, failing early if it exits; the error carries all logs.
    async fn wait_controller_leading(&mut self) -> anyhow::Result<()> {
        let admin = self.controller_admin;
        let controller = &mut self.controller;
        let outcome = crate::poll(self.startup_deadline, || {
            let exited = controller.try_exit();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                let page = crate::http_get(admin, "/metrics", Duration::from_secs(5)).await;
                let (code, text) = page.ok()?;
                (code == 200 && leader_gauge(&text) == Some(1.0)).then_some(Ok(()))
            }
        })
        .await;
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(status)) => anyhow::bail!(
                "rouse-controller exited ({status}) before it led\n{}",
                self.dump_logs()
            ),
            None => anyhow::bail!(
                "rouse-controller did not take the lease within {:?}\n{}",
                self.startup_deadline,
                self.dump_logs()
            ),
        }
    }

    /// Polls `GET addr/path` until 200, failing early if the process (proxy
    /// `i`, or the controller for `None`) exits; the error carries all logs.
    async fn wait_http_ok(
        &mut self,
        proxy: Option<usize>,
        (addr, path): (SocketAddr, &str),
    ) -> anyhow::Result<()> {
        let proc = match proxy {
            Some(i) => &mut self.proxies[i].proc,
            None => &mut self.controller,
        };
        let waited = crate::wait_http_ok(addr, path, self.startup_deadline, Some(proc)).await;
        waited.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.dump_logs()))
    }

    /// SIGKILLs the controller and waits for it to be gone. Its replicas are
    /// not its process group's business: they keep running.
    pub async fn kill_controller(&mut self) {
        self.controller.sigkill();
        self.controller.wait_exit(Duration::from_secs(30)).await;
    }

    /// SIGTERMs the controller and returns its exit status.
    pub async fn stop_controller(&mut self, timeout: Duration) -> ExitStatus {
        self.controller.sigterm();
        self.controller.wait_exit(timeout).await
    }

    /// Starts the controller again with the same config and state dir, and
    /// waits for `/healthz`.
    pub async fn restart_controller(&mut self) -> anyhow::Result<()> {
        self.controller.restart();
        self.wait_controller_healthy().await
    }

    /// Stops everything in the order an operator would, each with `grace`
    /// before SIGKILL: the proxies, then the controller (on SIGTERM it takes
    /// its replicas out of KV and stops them, so NATS must still be up),
    /// then nats-server.
    pub async fn shutdown(&mut self, grace: Duration) {
        for proxy in &mut self.proxies {
            proxy.proc.terminate(grace).await;
        }
        self.controller.terminate(grace).await;
        self.nats.proc_mut().terminate(grace).await;
        self.terminate_nats_peers(grace).await;
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for p in &mut self.proxies {
            p.proc.kill_now();
        }
        self.controller.kill_now();
        for (proc, _) in &mut self.standbys {
            proc.kill_now();
        }
        // The replicas were the controller's children; kill them by marker.
        for _ in 0..200 {
            let pids = self.replica_pids();
            if pids.is_empty() {
                break;
            }
            crate::procfs::kill_pids(&pids);
            std::thread::sleep(Duration::from_millis(25));
        }
        if self.keep {
            if let Some(dir) = self.temp.take() {
                eprintln!("rouse-stack: keeping {}", dir.keep().display());
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
