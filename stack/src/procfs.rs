//! What `/proc` says about a stack's processes: which are its replicas,
//! how much CPU time and memory they use, and their process trees.
//!
//! Replicas are children of the controller, not of the test, and the
//! controller-restart test kills the controller on purpose. The only handle
//! that survives is what the stack put into the replica env: a unique
//! `ROUSE_E2E_MARKER` per stack ([`unique_marker`]). Scanning
//! `/proc/*/environ` for it tells "no replica leaked or was doubled" and
//! lets the harness kill leftovers. The benchmarks read CPU time
//! (`/proc/<pid>/stat`) and memory (`/proc/<pid>/status`) of the proxies
//! they compare.
//!
//! Linux only; every reader returns `None` (or nothing) when the process is
//! gone or the file cannot be parsed, so callers decide whether that is an
//! error.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// A string unique to this run, used as a stack's replica marker.
pub fn unique_marker() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "stack-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every pid in `/proc`.
fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Pids (sorted) of live, non-zombie processes whose environment contains
/// `ROUSE_E2E_MARKER=<marker>`. Unreadable entries are skipped.
pub fn replica_pids(marker: &str) -> Vec<u32> {
    let needle = format!("{}={marker}", crate::MARKER_ENV);
    let mut pids: Vec<u32> = all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
                && !is_zombie_or_gone(*pid)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Pids of live processes with an argument containing `needle` (e.g. the
/// container shims of one engine, by its exec root).
pub fn pids_with_arg(needle: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            cmdline
                .split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(needle))
                && !is_zombie_or_gone(*pid)
        })
        .collect()
}

/// Whether `/proc/<pid>/stat` says zombie (`Z`) or dead (`X`), or is gone.
fn is_zombie_or_gone(pid: u32) -> bool {
    let state = stat_fields(pid).and_then(|fields| fields.into_iter().next());
    matches!(state.as_deref(), Some("Z") | Some("X") | None)
}

/// SIGKILLs every pid, ignoring those already gone.
pub fn kill_pids(pids: &[u32]) {
    for pid in pids {
        let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
}

/// A `kB` field (`VmRSS`, `VmHWM`, ...) of `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&text, key)
}

/// A `kB` field of a `/proc/<pid>/status` text.
pub fn status_field_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name != key {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Fields of `/proc/<pid>/stat` after the command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Splits a `/proc/<pid>/stat` line into the fields after `(comm)`; the
/// first returned field is the state (field 3 of proc(5)).
pub fn parse_stat(text: &str) -> Option<Vec<String>> {
    // The command name may contain spaces and parentheses: it ends at the
    // last `)`.
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
pub fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        _ => 100,
    }
}

/// utime + stime of one process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let (utime, stime) = user_system_ticks(pid)?;
    Some(utime + stime)
}

/// stime of one process (CPU time spent in the kernel on its behalf), in
/// clock ticks.
pub fn system_ticks(pid: u32) -> Option<u64> {
    Some(user_system_ticks(pid)?.1)
}

fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    user_system_of(&stat_fields(pid)?)
}

/// (utime, stime) from the fields [`parse_stat`] returns.
fn user_system_of(fields: &[String]) -> Option<(u64, u64)> {
    // proc(5): utime is field 14, stime field 15; fields[0] is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// Parent pid of one process.
fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// `root` and all its descendants that are alive now, root first.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in all_pids() {
        if let Some(parent) = ppid(pid) {
            parents.entry(parent).or_default().push(pid);
        }
    }
    let mut tree = vec![root];
    let mut next = 0;
    while next < tree.len() {
        if let Some(children) = parents.get(&tree[next]) {
            tree.extend(children.iter().copied());
        }
        next += 1;
    }
    tree.retain(|&pid| Path::new(&format!("/proc/{pid}")).exists());
    tree
}

/// The processes of a tree that serve traffic: the children when the root
/// is a master with workers (nginx), else the root itself.
pub fn workers(tree: &[u32]) -> &[u32] {
    if tree.len() > 1 {
        &tree[1..]
    } else {
        tree
    }
}

/// Number of running processes whose name is one of `names`.
pub fn count_processes(names: &[&str]) -> usize {
    all_pids()
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .filter(|comm| names.contains(&comm.trim()))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_marked_child_and_not_after_it_exits() {
        let marker = unique_marker();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(crate::MARKER_ENV, &marker)
            .spawn()
            .expect("spawn sleep");
        // Between fork and exec /proc shows the parent's environment: poll.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = replica_pids(&marker);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = replica_pids(&marker);
        }
        assert_eq!(found, vec![child.id()]);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(replica_pids(&marker).is_empty());
    }

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tnginx\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS"), Some(4096));
        assert_eq!(status_field_kib(status, "VmHWM"), Some(5120));
        assert_eq!(status_field_kib(status, "VmSwap"), None);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        let fields = parse_stat(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "1");
        assert_eq!(fields[11], "250");
        assert_eq!(fields[12], "75");
        assert_eq!(user_system_of(&fields), Some((250, 75)));
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(proc_status_kib(me, "VmRSS").unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert_eq!(process_tree(me)[0], me);
    }
}
