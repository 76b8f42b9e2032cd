//! Process footprint from `/proc`: resident memory, CPU time, process trees,
//! and the idle-footprint measurement of `bench/run footprint`.
//!
//! Linux only; every reader returns `None` when the process is gone or the
//! file cannot be parsed, so callers decide whether that is an error.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

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
pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// `root` and all its descendants that are alive now, root first.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = ppid(pid) {
                parents.entry(parent).or_default().push(pid);
            }
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

/// Idle footprint of a rouse stack with many services configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Footprint {
    /// Services in the configuration (all at zero replicas).
    pub services: u32,
    /// Seconds between start-up and the reading.
    pub settle_s: f64,
    pub proxy_rss_kib: u64,
    pub proxy_hwm_kib: u64,
    pub controller_rss_kib: u64,
    pub controller_hwm_kib: u64,
    /// nats-server, for reference (not rouse's).
    pub nats_rss_kib: Option<u64>,
}

impl Footprint {
    /// Reads the footprint of running processes.
    pub fn read(
        services: u32,
        settle_s: f64,
        proxy: u32,
        controller: u32,
        nats: Option<u32>,
    ) -> anyhow::Result<Self> {
        let read = |pid: u32, key: &str, what: &str| {
            proc_status_kib(pid, key)
                .ok_or_else(|| anyhow::anyhow!("cannot read {key} of the {what} (pid {pid})"))
        };
        Ok(Self {
            services,
            settle_s,
            proxy_rss_kib: read(proxy, "VmRSS", "proxy")?,
            proxy_hwm_kib: read(proxy, "VmHWM", "proxy")?,
            controller_rss_kib: read(controller, "VmRSS", "controller")?,
            controller_hwm_kib: read(controller, "VmHWM", "controller")?,
            nats_rss_kib: nats.and_then(|pid| proc_status_kib(pid, "VmRSS")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
