//! What the fault tests need beyond the cluster: load whose every answer
//! is attributed to the replica that gave it, a raw HTTP/1.1 probe that
//! tells a refused connection from a reset one, descriptor counts from
//! `/proc`, and a small tmpfs that is always unmounted again.
//!
//! A fault test has to say exactly what was lost. "Fewer than 1% errors"
//! is not an answer; "the 3 requests in flight on the killed replica, and
//! nothing started after it died" is. So every request of [`Tally`] load
//! is recorded with when it started, how it ended and (from rouse-echo's
//! `x-echo-replica` header) which replica answered, and each surviving
//! replica's own `/stats` count must match what the clients saw from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::request;

/// How one request of the load ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response, with the replica that sent it (`None`: the proxy
    /// answered itself, e.g. a 502).
    Status(u16, Option<String>),
    /// No response: the transport error.
    Error(String),
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Record {
    pub started: Instant,
    pub outcome: Outcome,
}

impl Record {
    /// A request made outside the load (e.g. the one that warmed the
    /// service), so that the replicas' counts include it.
    pub fn of(resp: &crate::Resp) -> Record {
        Record {
            started: Instant::now(),
            outcome: Outcome::Status(
                resp.status,
                resp.header("x-echo-replica").map(str::to_owned),
            ),
        }
    }

    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Status(200, _))
    }
}

/// Load that runs until stopped: `clients` clients, each sending GETs of
/// `path` one after another (at most 10,000 each), every answer recorded.
pub struct Tally {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Tally {
    pub fn start(
        client: &reqwest::Client,
        addr: SocketAddr,
        host: &str,
        path: &str,
        clients: usize,
    ) -> Tally {
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..clients)
            .map(|_| {
                let (client, records, stop) = (client.clone(), records.clone(), stop.clone());
                let (host, path) = (host.to_string(), path.to_string());
                tokio::spawn(async move {
                    for _ in 0..10_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let started = Instant::now();
                        let outcome =
                            match request(&client, Method::GET, addr, &host, &path, None).await {
                                Ok(resp) => Outcome::Status(
                                    resp.status,
                                    resp.header("x-echo-replica").map(str::to_owned),
                                ),
                                Err(e) => Outcome::Error(format!("{e:#}")),
                            };
                        let record = Record { started, outcome };
                        records
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(record);
                    }
                })
            })
            .collect();
        Tally {
            records,
            stop,
            workers,
        }
    }

    /// Answers recorded so far.
    pub fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until `more` answers beyond the current count are recorded
    /// (at most `timeout`); `false` if they were not.
    pub async fn wait_more(&self, more: usize, timeout: Duration) -> bool {
        let want = self.len() + more;
        rouse_stack::poll(
            timeout,
            || async move { (self.len() >= want).then_some(()) },
        )
        .await
        .is_some()
    }

    /// Stops the clients, lets each finish its request, returns everything.
    pub async fn finish(self) -> Vec<Record> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            let _ = worker.await;
        }
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.clone()
    }
}

/// 200s per replica id.
pub fn ok_by_replica(records: &[Record]) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for record in records {
        if let Outcome::Status(200, Some(id)) = &record.outcome {
            *by.entry(id.clone()).or_insert(0) += 1;
        }
    }
    by
}

/// The records that are not a 200.
pub fn failed(records: &[Record]) -> Vec<&Record> {
    records.iter().filter(|r| !r.ok()).collect()
}

/// What a raw probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A status line came back.
    Status(u16),
    /// The connection was refused: nothing listens.
    Refused,
    /// Anything else: a reset after connecting, a timeout, garbage.
    Broken(String),
}

/// One `GET path` with `Host: host` and `Connection: close` on a fresh
/// connection, read to the end; within `timeout` as a whole.
pub async fn probe(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Probe {
    let exchange = async {
        let mut stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
            Err(e) => return Probe::Broken(format!("connect: {e}")),
        };
        let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        if let Err(e) = stream.write_all(head.as_bytes()).await {
            return Probe::Broken(format!("write: {e}"));
        }
        let mut response = Vec::new();
        if let Err(e) = stream.read_to_end(&mut response).await {
            return Probe::Broken(format!("read: {e}"));
        }
        let text = String::from_utf8_lossy(&response);
        match text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
        {
            Some(status) => Probe::Status(status),
            None => Probe::Broken(format!(
                "no status line in {:?}",
                &text[..text.len().min(80)]
            )),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Probe::Broken(format!("no answer within {timeout:?}")))
}

/// Open file descriptors of process `pid` (`None` if it is gone).
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The value of `key` in the environment of process `pid`.
pub fn env_of(pid: u32, key: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    environ.split(|b| *b == 0).find_map(|var| {
        let var = String::from_utf8_lossy(var);
        var.strip_prefix(&prefix).map(str::to_owned)
    })
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns
/// the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted (lazily,
/// so a process still using it cannot keep it) when dropped, even when the
/// test fails. Mounting needs CAP_SYS_ADMIN: root in most CI containers,
/// not in unprivileged ones, hence [`Tmpfs::mount`] returns the reason.
pub struct Tmpfs {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Tmpfs {
    pub fn mount(size_kib: u64) -> Result<Tmpfs, String> {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::Builder::new()
            .prefix("rouse-tmpfs-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let options = format!("size={size_kib}k,mode=0755");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| format!("mount -t tmpfs on {}: {e}", dir.path().display()))?;
        Ok(Tmpfs { dir, mounted: true })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the directory read-only (`true`) for new opens, or writable
    /// again. A read-only bind mount over it, not a remount of the tmpfs:
    /// the kernel refuses (EBUSY) to remount read-only a file system with
    /// files open for writing, and the replicas' logs are.
    pub fn set_read_only(&self, read_only: bool) -> Result<(), String> {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        let dir = self.dir.path();
        if !read_only {
            return umount2(dir, MntFlags::empty()).map_err(|e| {
                format!("unmount the read-only bind mount on {}: {e}", dir.display())
            });
        }
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("bind-mount {} on itself: {e}", dir.display()))?;
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
            let _ = umount2(dir, MntFlags::MNT_DETACH);
            return Err(format!(
                "remount the bind mount on {} read-only: {e}",
                dir.display()
            ));
        }
        Ok(())
    }

    /// Fills the file system with one file until it is full; returns the
    /// file (delete it to free the space).
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let Ok(mut file) = std::fs::File::create(&path) else {
            return path;
        };
        let block = vec![0u8; 4096];
        // Bounded: the file system is small.
        for _ in 0..1_000_000 {
            if file.write_all(&block).and_then(|()| file.flush()).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if self.mounted {
            // The tmpfs, and a read-only bind mount over it if one is left.
            for _ in 0..2 {
                let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
