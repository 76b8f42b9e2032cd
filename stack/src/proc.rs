//! A child process under test, with its output kept in a log file.
//!
//! When a test or a benchmark fails, the logs of the proxy and the controller
//! are almost always what explains it, so every child writes stdout and
//! stderr to one file in the stack's dir, and [`Proc::logs`] reads it back
//! for failure messages. A `Proc` is killed on drop so that a failure never
//! leaves a proxy or controller running.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Env vars that would make a child send its local traffic through a proxy.
const PROXY_ENV: [&str; 8] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// A spawned child with its log file.
pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: BTreeMap<String, String>,
    log: PathBuf,
    child: Option<Child>,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `program args` with `env` added, appending stdout and stderr to
    /// `log`. `RUST_LOG` defaults to `info` unless the caller's env sets it.
    /// Panics when it cannot be started; see [`Proc::try_spawn`].
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &BTreeMap<String, String>,
        log: &Path,
    ) -> Proc {
        Self::try_spawn(name, program, args, env, log).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Proc::spawn`], failing instead of panicking.
    pub fn try_spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &BTreeMap<String, String>,
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let mut proc = Proc {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env.clone(),
            log: log.to_path_buf(),
            child: None,
            exit: None,
        };
        proc.try_restart()?;
        Ok(proc)
    }

    /// Starts the same command again (after it exited or was killed),
    /// appending to the same log file.
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn try_restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none() || self.exit.is_some(),
            "{} is still running; stop it before restarting it",
            self.name
        );
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open log {}", self.log.display()))?;
        let err = out.try_clone().context("clone log file handle")?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for key in PROXY_ENV {
            cmd.env_remove(key);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(&self.env);
        let child = cmd.spawn().with_context(|| {
            format!("could not start {} ({})", self.name, self.program.display())
        })?;
        self.child = Some(child);
        self.exit = None;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the current child.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("process was started")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process (and its earlier runs) wrote so far.
    pub fn logs(&self) -> String {
        read_lossy(&self.log)
    }

    /// Sends SIGTERM (a no-op if it already exited).
    pub fn sigterm(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGKILL (a no-op if it already exited).
    pub fn sigkill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// Sends SIGHUP (both rouse binaries reload their services on it).
    pub fn sighup(&mut self) {
        self.signal(Signal::SIGHUP);
    }

    fn signal(&mut self, sig: Signal) {
        if self.try_exit().is_some() {
            return;
        }
        let pid = Pid::from_raw(self.pid() as i32);
        if let Err(e) = signal::kill(pid, sig) {
            eprintln!("rouse-stack: kill({pid}, {sig}) for {}: {e}", self.name);
        }
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                self.exit
            }
            Ok(None) => None,
            Err(e) => panic!("waitpid on {}: {e}", self.name),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Waits for the process to exit, polling; panics with the tail of its
    /// log when `timeout` passes first.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        let max_rounds = timeout.as_millis() / crate::POLL_INTERVAL.as_millis() + 2;
        for _ in 0..max_rounds {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if start.elapsed() >= timeout {
                break;
            }
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        panic!(
            "{} did not exit within {timeout:?}; last log lines:\n{}",
            self.name,
            crate::tail(&self.logs(), 40)
        );
    }

    /// SIGTERM, then SIGKILL when it has not exited within `grace`; never
    /// panics. The exit status, if it could be reaped.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.sigterm();
        let exited = crate::poll(grace, || {
            let exit = self.try_exit();
            async move { exit }
        })
        .await;
        exited.or_else(|| self.kill_now())
    }

    /// SIGKILL and reap, synchronously; used on drop and for hard kills.
    pub fn kill_now(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit() {
            return Some(status);
        }
        let child = self.child.as_mut()?;
        let _ = child.kill();
        match child.wait() {
            Ok(status) => {
                self.exit = Some(status);
                Some(status)
            }
            Err(_) => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A file's content as text, or a note why it could not be read.
pub fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
