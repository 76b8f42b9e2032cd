//! A private Docker engine for one test: Debian's `dockerd` (with its own
//! containerd) started on a unix socket in a temp dir, loopback-only.
//!
//! `--iptables=false --ip-forward=false --bridge=none`: the engine touches
//! no firewall rule and has no default bridge, so nothing it runs reaches
//! beyond this machine. User networks still work (the controller creates
//! one), each test engine with its own address pool so that engines
//! started side by side never route the same subnet. `--live-restore`
//! keeps containers running while the engine is stopped, which is what the
//! "engine down, warm traffic flows" test needs.
//!
//! [`DockerEngine::start_podman`] starts the other engine that serves the
//! same API: podman's service (`podman system service`), with its own
//! storage in the temp dir and the `runc` runtime.
//!
//! Dropping a [`DockerEngine`] removes every container, stops the engine
//! and kills what is left of its container shims.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Context;

use crate::proc::Proc;

/// How long an engine may take to answer on its socket.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// `dockerd` from `DOCKERD_BIN`, `PATH`, or Debian's place.
pub fn dockerd_bin() -> anyhow::Result<PathBuf> {
    crate::bins::system_program(
        "dockerd",
        "DOCKERD_BIN",
        "install Debian's docker.io (scripts/test does)",
    )
}

/// `podman` from `PODMAN_BIN`, `PATH`, or Debian's place.
pub fn podman_bin() -> anyhow::Result<PathBuf> {
    crate::bins::system_program(
        "podman",
        "PODMAN_BIN",
        "install Debian's podman (scripts/test does)",
    )
}

/// A running private engine.
pub struct DockerEngine {
    proc: Proc,
    socket: PathBuf,
    /// Its temp dir (data root, exec root, socket, log): removed on drop.
    dir: tempfile::TempDir,
    /// `10.N.`: the start of the engine's address pool, whose bridges are
    /// deleted on drop (a killed dockerd leaves them in the kernel, and
    /// enough of them exhaust the pools later engines can take).
    pool_prefix: Option<String>,
}

impl DockerEngine {
    /// Starts an engine and waits until it answers.
    pub async fn start() -> anyhow::Result<DockerEngine> {
        // Short path: the engine's sockets live under it, and a unix socket
        // path may not exceed 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("rdk")
            .tempdir_in("/tmp")
            .context("create the engine's temp dir")?;
        let socket = dir.path().join("docker.sock");
        let pool = address_pool()?;
        let args: Vec<std::ffi::OsString> = vec![
            "--iptables=false".into(),
            "--ip-forward=false".into(),
            "--bridge=none".into(),
            "--live-restore".into(),
            "--default-address-pool".into(),
            format!("base={pool},size=24").into(),
            "--data-root".into(),
            dir.path().join("data").into(),
            "--exec-root".into(),
            dir.path().join("exec").into(),
            "--pidfile".into(),
            dir.path().join("dockerd.pid").into(),
            "-H".into(),
            format!("unix://{}", socket.display()).into(),
        ];
        let proc = Proc::try_spawn(
            "dockerd",
            &dockerd_bin()?,
            &args,
            &Default::default(),
            &dir.path().join("dockerd.log"),
        )?;
        let pool_prefix = pool.split_inclusive('.').take(2).collect::<String>();
        let mut engine = DockerEngine {
            proc,
            socket,
            dir,
            pool_prefix: Some(pool_prefix),
        };
        engine.wait_ready().await?;
        Ok(engine)
    }

    /// Starts podman's Docker-compatible service instead of dockerd. Its
    /// containers get open-file and process limits within this process's
    /// own (podman's defaults are higher than a sandbox may grant).
    pub async fn start_podman() -> anyhow::Result<DockerEngine> {
        let dir = tempfile::Builder::new()
            .prefix("rpm")
            .tempdir_in("/tmp")
            .context("create the engine's temp dir")?;
        let socket = dir.path().join("podman.sock");
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .context("reading RLIMIT_NOFILE")?;
        let nofile = hard.min(65536);
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\n"
            ),
        )
        .context("write containers.conf")?;
        let args: Vec<std::ffi::OsString> = vec![
            "--root".into(),
            dir.path().join("root").into(),
            "--runroot".into(),
            dir.path().join("exec").into(),
            "system".into(),
            "service".into(),
            "--time=0".into(),
            format!("unix://{}", socket.display()).into(),
        ];
        let env = std::collections::BTreeMap::from([(
            "CONTAINERS_CONF".to_string(),
            conf.to_string_lossy().into_owned(),
        )]);
        let proc = Proc::try_spawn(
            "podman",
            &podman_bin()?,
            &args,
            &env,
            &dir.path().join("podman.log"),
        )?;
        let mut engine = DockerEngine {
            proc,
            socket,
            dir,
            pool_prefix: None,
        };
        engine.wait_ready().await?;
        Ok(engine)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let ready = crate::poll(START_DEADLINE, || {
            let answered = self.socket.exists()
                && self
                    .cli(&["version", "--format", "{{.Server.APIVersion}}"])
                    .is_ok_and(|o| o.status.success());
            async move { answered.then_some(()) }
        })
        .await;
        if ready.is_none() {
            anyhow::bail!(
                "the engine did not answer within {START_DEADLINE:?}; its log:\n{}",
                crate::tail(&self.logs(), 40)
            );
        }
        Ok(())
    }

    /// `unix://<socket>`: the `DOCKER_HOST` of this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The engine's own log.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// The temp dir the engine lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `docker` CLI command aimed at this engine.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", self.host());
        cmd
    }

    /// Runs `docker args...` against this engine.
    pub fn cli(&self, args: &[&str]) -> std::io::Result<Output> {
        self.command().args(args).output()
    }

    /// Runs `docker args...` and returns its stdout; an error with its
    /// stderr when it fails.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .cli(args)
            .with_context(|| format!("running docker {}", args.join(" ")))?;
        anyhow::ensure!(
            out.status.success(),
            "docker {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Ids of the containers (running or not) carrying label `key=value`.
    pub fn containers(&self, label: &str) -> Vec<String> {
        self.cli_ok(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
        ])
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
    }

    /// Ids of the running containers carrying label `key=value`.
    pub fn running(&self, label: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .cli_ok(&[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label={label}"),
            ])
            .map(|out| out.lines().map(str::to_string).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Builds the rouse image from this workspace's debug binaries, the
    /// offline way the README gives (`scripts/image --debug --no-build`).
    /// The root filesystem is assembled once per test process (tests run
    /// in parallel threads and share it); each engine then only builds.
    pub fn build_rouse_image(&self, tag: &str) -> anyhow::Result<()> {
        static ROOTFS: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        let mut assembled = ROOTFS.lock().unwrap_or_else(|e| e.into_inner());
        let root = crate::workspace_root();
        let mut cmd = if *assembled {
            let mut cmd = self.command();
            cmd.args(["build", "--target", "prebuilt", "--tag", tag, "."]);
            cmd
        } else {
            for name in ["rouse-proxy", "rouse-controller", "rouse-echo"] {
                crate::bin(name);
            }
            let mut cmd = Command::new(root.join("scripts/image"));
            cmd.args(["--debug", "--no-build", "--tag", tag])
                .env("DOCKER_HOST", self.host());
            cmd
        };
        let out = cmd
            .current_dir(&root)
            .output()
            .context("building the rouse image")?;
        anyhow::ensure!(
            out.status.success(),
            "building the rouse image failed ({}):\n{}\n{}",
            out.status,
            crate::tail(&String::from_utf8_lossy(&out.stdout), 20),
            crate::tail(&String::from_utf8_lossy(&out.stderr), 40)
        );
        *assembled = true;
        Ok(())
    }

    /// Stops the engine (SIGTERM); with live-restore its containers go on.
    pub async fn stop(&mut self) {
        self.proc.terminate(Duration::from_secs(20)).await;
    }

    /// Starts the stopped engine again on the same socket and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.restart();
        self.wait_ready().await
    }

    fn remove_everything(&mut self) {
        if !self.proc.is_running() {
            return;
        }
        if let Ok(ids) = self.cli_ok(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.lines().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = self.cli(&args);
            }
        }
        // Its networks' bridges live in the kernel, beyond the engine.
        let _ = self.cli(&["network", "prune", "-f"]);
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        self.remove_everything();
        self.proc.sigterm();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.proc.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc.kill_now();
        // Shims of containers that outlived the engine (live-restore).
        let exec_root = self.dir.path().join("exec");
        for pid in crate::procfs::pids_with_arg(&exec_root.to_string_lossy()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Mounts the engine leaves (podman's storage, a network namespace
        // of a killed dockerd) would keep the temp dir from being removed.
        unmount_below(self.dir.path());
        if let Some(prefix) = &self.pool_prefix {
            delete_bridges(prefix);
        }
    }
}

/// Deletes the bridge interfaces routing addresses that start with
/// `prefix` (`10.N.`): those of this engine's networks.
fn delete_bridges(prefix: &str) {
    let routes = Command::new("ip")
        .args(["-4", "-o", "route"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in routes.lines().filter(|l| l.starts_with(prefix)) {
        let mut words = line.split_whitespace();
        let device = words.by_ref().skip_while(|w| *w != "dev").nth(1);
        if let Some(device) = device.filter(|d| d.starts_with("br-")) {
            let _ = Command::new("ip").args(["link", "delete", device]).status();
        }
    }
}

/// A /16 for the engine's networks that no route on this machine uses yet,
/// and that no other engine of this process was given.
fn address_pool() -> anyhow::Result<String> {
    static GIVEN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let routes = Command::new("ip")
        .args(["-4", "route"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for _ in 0..200 {
        let second = fastrand::u8(64..250);
        let prefix = format!("10.{second}.");
        if !routes.contains(&prefix) && !given.contains(&second) {
            given.push(second);
            return Ok(format!("10.{second}.0.0/16"));
        }
    }
    anyhow::bail!("no free 10.x.0.0/16 for the engine's networks")
}

/// Detaches every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}
