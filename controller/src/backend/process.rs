//! The embedded default backend: replicas are local processes.
//!
//! Each replica gets a free port (`{port}` in its argv, `PORT` in its env),
//! its own process group (so a stop reaches helpers it spawned, and a Ctrl-C
//! meant for the controller does not kill it mid-request), and a pid file in
//! the state dir. A controller that crashes leaves its replicas serving; the
//! next one adopts every replica whose pid file still names the same live
//! process (pid *and* start time, so a reused pid is never mistaken for a
//! replica) and forgets the rest. Nothing is leaked and nothing is doubled.
//!
//! Usage is read from `/proc` in one pass per call: CPU time and resident
//! memory summed over every process of each replica's group, so a replica
//! that is a shell with workers counts its workers.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rouse_nats::config::ProcessBackend as ProcessConfig;
use serde::{Deserialize, Serialize};

use super::{
    free_port, Backend, BackendError, CpuUsage, Health, Readiness, Replica, Started, Usage,
};

/// What survives a controller restart, one file per replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PidFile {
    id: String,
    pid: i32,
    port: u16,
    /// Kernel start time of the process (clock ticks since boot).
    start_ticks: u64,
}

#[derive(Debug)]
struct Running {
    file: PidFile,
    /// Set by the reaper task of a child we spawned; adopted processes are
    /// checked through /proc instead.
    exit: Option<Arc<Mutex<Option<String>>>>,
}

/// Local processes of one service (or of one of its pools).
pub struct ProcessBackend {
    service: String,
    /// Replica ids start with it: the service's name, or `<service>-<pool>`.
    prefix: String,
    config: ProcessConfig,
    dir: PathBuf,
    replicas: Mutex<HashMap<String, Running>>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |source| BackendError::Io { what, source }
}

impl ProcessBackend {
    /// Opens the state dir of `service` and adopts the replicas it lists.
    pub fn new(
        service: &str,
        config: ProcessConfig,
        state_dir: &Path,
    ) -> Result<Self, BackendError> {
        let dir = state_dir.join("process").join(service);
        Self::open(service, service.to_string(), config, dir)
    }

    /// The processes of pool `pool` of `service`: pid files of their own
    /// (under the service's dir) and ids `<service>-<pool>-…`, so two
    /// pools never adopt or stop each other's replicas.
    pub fn for_pool(
        service: &str,
        pool: &str,
        config: ProcessConfig,
        state_dir: &Path,
    ) -> Result<Self, BackendError> {
        let dir = state_dir
            .join("process")
            .join(service)
            .join("pools")
            .join(pool);
        Self::open(service, format!("{service}-{pool}"), config, dir)
    }

    fn open(
        service: &str,
        prefix: String,
        config: ProcessConfig,
        dir: PathBuf,
    ) -> Result<Self, BackendError> {
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let backend = Self {
            service: service.to_string(),
            prefix,
            config,
            dir,
            replicas: Mutex::new(HashMap::new()),
        };
        backend.adopt()?;
        Ok(backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn adopt(&self) -> Result<(), BackendError> {
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pid") {
                continue;
            }
            let file: Option<PidFile> = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            match file {
                Some(file) if start_ticks(file.pid) == Some(file.start_ticks) => {
                    tracing::info!(service = %self.service, replica = %file.id, pid = file.pid, "adopted running replica");
                    self.lock()
                        .insert(file.id.clone(), Running { file, exit: None });
                }
                _ => {
                    tracing::info!(service = %self.service, file = %path.display(), "forgetting replica whose process is gone");
                    let _ = fs::remove_file(&path);
                    let _ = fs::remove_file(path.with_extension("log"));
                }
            }
        }
        Ok(())
    }

    fn pid_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pid"))
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    async fn spawn(&self) -> Result<Replica, BackendError> {
        let port = free_port().map_err(io("finding a free port"))?;
        let id = format!("{}-{:08x}", self.prefix, fastrand::u32(..));
        let argv: Vec<String> = self
            .config
            .command
            .iter()
            .map(|arg| arg.replace("{port}", &port.to_string()))
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(BackendError::Spawn {
                command: String::new(),
                source: std::io::Error::other("empty command"),
            });
        };
        let log_path = self.log_path(&id);
        let log =
            fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io("duplicating the log file"))?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .envs(&self.config.env)
            .env("PORT", port.to_string())
            .env("ROUSE_REPLICA_ID", &id)
            .env("ROUSE_SERVICE", &self.service)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(dir) = &self.config.working_dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|source| {
            let _ = fs::remove_file(&log_path);
            BackendError::Spawn {
                command: argv.join(" "),
                source,
            }
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let file = PidFile {
            id: id.clone(),
            pid,
            port,
            start_ticks: start_ticks(pid).unwrap_or(0),
        };
        let json = serde_json::to_vec(&file).unwrap_or_default();
        let pid_path = self.pid_path(&id);
        if let Err(source) = fs::write(&pid_path, json) {
            // Without a pid file a restarted controller could not find it:
            // better not to run it at all. Nothing of it is left behind.
            let _ = child.start_kill();
            let _ = fs::remove_file(&pid_path);
            let _ = fs::remove_file(&log_path);
            return Err(BackendError::Io {
                what: format!("writing the pid file {}", pid_path.display()),
                source,
            });
        }
        let exit = Arc::new(Mutex::new(None));
        let reaped = Arc::clone(&exit);
        let log_for_reaper = log_path.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let reason = match status {
                Ok(status) => format!("exited with {status}"),
                Err(err) => format!("wait failed: {err}"),
            };
            let reason = with_log_tail(reason, &log_for_reaper);
            *reaped.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        });
        tracing::info!(service = %self.service, replica = %id, pid, port, "started replica");
        self.lock().insert(
            id.clone(),
            Running {
                file,
                exit: Some(exit),
            },
        );
        Ok(Replica {
            id,
            addr: format!("127.0.0.1:{port}"),
            health: Health::Running,
            readiness: Readiness::Probe,
        })
    }

    fn health(running: &Running) -> Health {
        match &running.exit {
            Some(exit) => match &*exit.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(reason) => Health::Exited(reason.clone()),
                None => Health::Running,
            },
            None => {
                if start_ticks(running.file.pid) == Some(running.file.start_ticks) {
                    Health::Running
                } else {
                    Health::Exited("process is gone".into())
                }
            }
        }
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn startup_timeout(&self) -> Duration {
        self.config.startup_timeout
    }

    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        let running = self
            .lock()
            .values()
            .filter(|r| Self::health(r) == Health::Running)
            .count();
        let mut started = Vec::new();
        for _ in running..n {
            match self.spawn().await {
                Ok(replica) => started.push(replica),
                // Report what did start; the next call fails at once and
                // surfaces the error.
                Err(err) if !started.is_empty() => {
                    tracing::warn!(service = %self.service, error = %err, started = started.len(), "start failed part way");
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(Started {
            replicas: started,
            pending: 0,
        })
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        Ok(self
            .lock()
            .values()
            .map(|r| Replica {
                id: r.file.id.clone(),
                addr: format!("127.0.0.1:{}", r.file.port),
                health: Self::health(r),
                readiness: Readiness::Probe,
            })
            .collect())
    }

    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let Some(running) = self.lock().remove(id) else {
            return Ok(());
        };
        let group = Pid::from_raw(running.file.pid);
        if Self::health(&running) == Health::Running && running.file.pid > 0 {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + self.config.grace_period;
            while Self::health(&running) == Health::Running && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if Self::health(&running) == Health::Running {
                tracing::warn!(service = %self.service, replica = %id, "replica ignored SIGTERM; sending SIGKILL");
                let _ = killpg(group, Signal::SIGKILL);
            }
        }
        tracing::info!(service = %self.service, replica = %id, "stopped replica");
        let _ = fs::remove_file(self.pid_path(id));
        let _ = fs::remove_file(self.log_path(id));
        Ok(())
    }

    async fn usage(&self) -> Result<Vec<Usage>, BackendError> {
        let running: Vec<(String, i32)> = self
            .lock()
            .values()
            .filter(|r| r.file.pid > 0 && Self::health(r) == Health::Running)
            .map(|r| (r.file.id.clone(), r.file.pid))
            .collect();
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let groups: HashSet<i32> = running.iter().map(|(_, pid)| *pid).collect();
        // Reading /proc is blocking file I/O: off the async workers.
        let totals = tokio::task::spawn_blocking(move || group_usage(&groups))
            .await
            .map_err(proc_error)?
            .map_err(proc_error)?;
        let ticks_per_second = procfs::ticks_per_second();
        let page_size = procfs::page_size();
        Ok(running
            .into_iter()
            .map(|(id, pid)| match totals.get(&pid) {
                Some(group) => Usage {
                    id,
                    cpu: CpuUsage::Total(ticks_to_duration(group.ticks, ticks_per_second)),
                    memory_bytes: Some(group.rss_pages.saturating_mul(page_size)),
                },
                // The group was gone by the time /proc was read.
                None => Usage {
                    id,
                    cpu: CpuUsage::Unknown,
                    memory_bytes: None,
                },
            })
            .collect())
    }
}

fn proc_error(err: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::Io {
        what: "reading /proc".into(),
        source: std::io::Error::other(err),
    }
}

/// What the processes of one process group use, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct GroupUsage {
    /// utime + stime of each member, plus the times of the children it
    /// reaped, in clock ticks.
    ticks: u64,
    /// Resident set of each member, in pages (pages shared by two members
    /// count twice, as in `ps`).
    rss_pages: u64,
}

/// One pass over /proc: the usage of each group in `groups` that has a
/// process. A process that exits while it is read is skipped.
fn group_usage(groups: &HashSet<i32>) -> procfs::ProcResult<HashMap<i32, GroupUsage>> {
    let mut totals: HashMap<i32, GroupUsage> = HashMap::new();
    for process in procfs::process::all_processes()? {
        let Ok(stat) = process.and_then(|p| p.stat()) else {
            continue;
        };
        if !groups.contains(&stat.pgrp) {
            continue;
        }
        let group = totals.entry(stat.pgrp).or_default();
        // The reaped children's times (cutime, cstime) keep the counter
        // from dropping when a worker of the replica exits.
        let children = u64::try_from(stat.cutime.saturating_add(stat.cstime)).unwrap_or(0);
        group.ticks = group
            .ticks
            .saturating_add(stat.utime)
            .saturating_add(stat.stime)
            .saturating_add(children);
        group.rss_pages = group.rss_pages.saturating_add(stat.rss);
    }
    Ok(totals)
}

/// `ticks` of /proc's clock (`ticks_per_second`, usually 100) as a duration.
fn ticks_to_duration(ticks: u64, ticks_per_second: u64) -> Duration {
    let per_second = ticks_per_second.max(1);
    let whole = Duration::from_secs(ticks / per_second);
    let rest = (ticks % per_second).saturating_mul(1_000_000_000) / per_second;
    whole + Duration::from_nanos(rest)
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks.
/// `None` when there is no such process or it is a zombie.
fn start_ticks(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Appends the last lines the replica wrote, which usually say why it died.
fn with_log_tail(reason: String, log: &Path) -> String {
    let Ok(text) = fs::read_to_string(log) else {
        return reason;
    };
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        return reason;
    }
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    format!("{reason}; last output: {}", tail.join(" | "))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Stops every replica the backend knows, so a test leaves none behind.
    async fn stop_all(backend: &ProcessBackend) {
        let ids: Vec<String> = backend.lock().keys().cloned().collect();
        for id in ids {
            backend.stop(&id).await.expect("stop");
        }
    }

    #[test]
    fn reads_our_own_start_time() {
        let me = std::process::id() as i32;
        assert!(start_ticks(me).is_some());
        assert_eq!(start_ticks(0), None);
        assert_eq!(start_ticks(i32::MAX), None);
    }

    fn config(command: &[&str]) -> ProcessConfig {
        ProcessConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: Default::default(),
            working_dir: None,
            grace_period: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(5),
        }
    }

    async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn starts_adopts_and_stops_real_processes() {
        let dir = std::env::temp_dir().join(format!("rouse-process-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let backend = ProcessBackend::new("svc", config(&["sleep", "600"]), &dir).expect("backend");
        let started = backend.ensure(2).await.expect("ensure").replicas;
        assert_eq!(started.len(), 2);
        assert!(backend
            .ensure(2)
            .await
            .expect("ensure again")
            .replicas
            .is_empty());

        // A second backend on the same state dir (a restarted controller) adopts both.
        let adopted = ProcessBackend::new("svc", config(&["sleep", "600"]), &dir).expect("adopt");
        let mut ids: Vec<_> = adopted
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        let mut expected: Vec<_> = started.iter().map(|r| r.id.clone()).collect();
        expected.sort();
        assert_eq!(ids, expected);

        let pid = adopted.lock()[&started[0].id].file.pid;
        adopted.stop(&started[0].id).await.expect("stop");
        // The reaper in the first backend sees the exit of its child.
        wait_for("the stopped replica to exit", || start_ticks(pid).is_none()).await;
        assert!(!backend.pid_path(&started[0].id).exists());
        stop_all(&adopted).await;
        assert!(adopted.list().await.expect("list").is_empty());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn clock_ticks_become_durations() {
        assert_eq!(ticks_to_duration(0, 100), Duration::ZERO);
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1, 3), Duration::from_nanos(333_333_333));
        // A clock rate of 0 from a broken sysconf does not divide by zero.
        assert_eq!(ticks_to_duration(7, 0), Duration::from_secs(7));
        assert!(ticks_to_duration(u64::MAX, 100) > Duration::from_secs(u64::MAX / 101));
    }

    /// A state dir of its own for one test, removed on drop (after the
    /// backend, whose replicas [`Replicas`] stops).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("rouse-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Kills every replica's process group on drop, so a failed assertion
    /// leaves no `rouse-echo` behind.
    struct Replicas<'a>(&'a ProcessBackend);

    impl Drop for Replicas<'_> {
        fn drop(&mut self) {
            for running in self.0.lock().values() {
                if running.file.pid > 0 {
                    let _ = killpg(Pid::from_raw(running.file.pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// How long anything that waits on a real process may take on a
    /// loaded machine.
    pub(in crate::backend) const PATIENCE: Duration = Duration::from_secs(60);
    pub(in crate::backend) const MIB: u64 = 1024 * 1024;

    /// This workspace's `rouse-echo` (built if missing).
    pub(in crate::backend) fn echo_bin() -> String {
        rouse_stack::bin("rouse-echo").display().to_string()
    }

    /// Starts one replica and waits until it answers `/healthz`.
    pub(in crate::backend) async fn start_ready(
        backend: &dyn Backend,
    ) -> (String, std::net::SocketAddr) {
        let replica = backend
            .ensure(1)
            .await
            .expect("ensure")
            .replicas
            .pop()
            .expect("one replica started");
        let addr: std::net::SocketAddr = replica.addr.parse().expect("replica address");
        rouse_stack::wait_http_ok(addr, "/healthz", PATIENCE, None)
            .await
            .expect("the replica answers");
        (replica.id, addr)
    }

    pub(in crate::backend) async fn usage_of(backend: &dyn Backend, id: &str) -> Usage {
        let all = backend.usage().await.expect("usage");
        all.into_iter()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("no usage for {id}"))
    }

    async fn cpu_total(backend: &dyn Backend, id: &str) -> Duration {
        match usage_of(backend, id).await.cpu {
            CpuUsage::Total(total) => total,
            other => panic!("no CPU total for {id}: {other:?}"),
        }
    }

    /// Burns CPU in the replica (`/cpu/800`) until its CPU total grew by
    /// `at_least`, at most 20 times: `/cpu` spins for wall-clock time, so on
    /// a busy machine one burn may get less than its 800 ms of CPU.
    pub(in crate::backend) async fn burn_until_grown(
        backend: &dyn Backend,
        id: &str,
        addr: std::net::SocketAddr,
        at_least: Duration,
    ) -> Duration {
        let before = cpu_total(backend, id).await;
        for _ in 0..20 {
            let (status, body) = rouse_stack::http_get(addr, "/cpu/800", PATIENCE)
                .await
                .expect("GET /cpu/800");
            assert_eq!(status, 200, "{body}");
            let now = cpu_total(backend, id).await;
            assert!(
                now >= before,
                "the CPU total went back: {before:?} -> {now:?}"
            );
            if now - before >= at_least {
                return now - before;
            }
        }
        panic!("20 burns of 800 ms did not add {at_least:?} of CPU to {id}");
    }

    /// Polls the replica's memory until `done` says so, within [`PATIENCE`].
    pub(in crate::backend) async fn wait_for_memory(
        backend: &dyn Backend,
        id: &str,
        done: impl Fn(u64) -> bool,
    ) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let bytes = usage_of(backend, id).await.memory_bytes.unwrap_or(0);
            if done(bytes) {
                return bytes;
            }
            assert!(
                Instant::now() < deadline,
                "memory of {id} never got there: {bytes} bytes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/mem/64` held for a while shows as at least 64 MiB more than idle,
    /// and most of it is gone again once the request is answered.
    pub(in crate::backend) async fn holding_64_mib_shows(
        backend: &dyn Backend,
        id: &str,
        addr: std::net::SocketAddr,
    ) {
        let idle = usage_of(backend, id).await.memory_bytes.expect("memory");
        assert!(idle > 0, "idle rouse-echo uses no memory?");
        // Allocator and page-table slack aside, all of the 64 MiB is touched.
        let want = idle + 62 * MIB;
        let hold = tokio::spawn(rouse_stack::http_get(
            addr,
            "/mem/64?hold_ms=10000",
            PATIENCE,
        ));
        let held = wait_for_memory(backend, id, |bytes| bytes >= want).await;
        assert!(held >= 64 * MIB, "{held} bytes held");
        let (status, body) = hold.await.expect("join").expect("GET /mem");
        assert_eq!(status, 200, "{body}");
        // 64 MiB is beyond malloc's mmap threshold: freed, it leaves at once.
        wait_for_memory(backend, id, |bytes| bytes < held - 32 * MIB).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_counts_a_replicas_cpu_and_memory() {
        let dir = TempDir::new("process-usage");
        let bin = echo_bin();
        let config = config(&[&bin, "--bind", "127.0.0.1", "--port", "{port}"]);
        let backend = ProcessBackend::new("use", config, &dir.0).expect("backend");
        let _stop = Replicas(&backend);
        let (id, addr) = start_ready(&backend).await;

        let grown = burn_until_grown(&backend, &id, addr, Duration::from_millis(500)).await;
        assert!(grown >= Duration::from_millis(500), "{grown:?}");
        holding_64_mib_shows(&backend, &id, addr).await;

        stop_all(&backend).await;
        assert!(backend.usage().await.expect("usage").is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_sums_the_whole_process_group() {
        let dir = TempDir::new("process-group-usage");
        let script = format!("{} --bind 127.0.0.1 --port {{port}} & wait", echo_bin());
        let config = config(&["sh", "-c", &script]);
        let backend = ProcessBackend::new("grp", config, &dir.0).expect("backend");
        let _stop = Replicas(&backend);
        let (id, addr) = start_ready(&backend).await;
        let shell = backend.lock()[&id].file.pid;

        burn_until_grown(&backend, &id, addr, Duration::from_millis(500)).await;
        // The shell only waits: the CPU counted is its child's.
        let stat = procfs::process::Process::new(shell)
            .and_then(|p| p.stat())
            .expect("the shell's stat");
        let own = ticks_to_duration(stat.utime + stat.stime, procfs::ticks_per_second());
        assert!(
            own < Duration::from_millis(200),
            "the shell itself used {own:?}"
        );
        let memory = usage_of(&backend, &id).await.memory_bytes.expect("memory");
        let shell_only = stat.rss * procfs::page_size();
        assert!(
            memory > shell_only,
            "{memory} bytes, the shell alone {shell_only}"
        );
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_an_error() {
        let dir = std::env::temp_dir().join(format!("rouse-process-bad-{}", std::process::id()));
        let backend = ProcessBackend::new("bad", config(&["/nonexistent/binary-xyz"]), &dir)
            .expect("backend");
        let err = backend.ensure(1).await.expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/binary-xyz"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_exiting_replica_reports_why() {
        let dir = std::env::temp_dir().join(format!("rouse-process-exit-{}", std::process::id()));
        let backend = ProcessBackend::new("ex", config(&["sh", "-c", "echo boom; exit 3"]), &dir)
            .expect("backend");
        backend.ensure(1).await.expect("ensure");
        let mut reason = String::new();
        wait_for("the replica to exit", || {
            let list = futures::executor::block_on(backend.list()).unwrap_or_default();
            match list.first().map(|r| r.health.clone()) {
                Some(Health::Exited(why)) => {
                    reason = why;
                    true
                }
                _ => false,
            }
        })
        .await;
        assert!(reason.contains("3"), "{reason}");
        assert!(reason.contains("boom"), "{reason}");
        stop_all(&backend).await;
        let _ = fs::remove_dir_all(&dir);
    }
}
