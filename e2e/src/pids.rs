//! Finding replica processes by the marker in their environment.
//!
//! Replicas are children of the controller, not of the test, and the
//! controller-restart test kills the controller on purpose. The only handle
//! that survives is what the test put into the replica env: a unique
//! `ROUSE_E2E_MARKER` per cluster. Scanning `/proc/*/environ` for it tells
//! "no replica leaked or was doubled" and lets the harness kill leftovers.

use std::path::Path;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// Pids (sorted) of live, non-zombie processes whose environment contains
/// `ROUSE_E2E_MARKER=<marker>`. Unreadable entries are skipped.
pub fn replica_pids(marker: &str) -> Vec<u32> {
    let needle = format!("{}={marker}", crate::MARKER_ENV);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let dir = Path::new("/proc").join(pid.to_string());
            let Ok(environ) = std::fs::read(dir.join("environ")) else {
                return false;
            };
            environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
                && !is_zombie_or_gone(&dir)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether `/proc/<pid>/stat` says zombie (`Z`) or dead (`X`), or is gone.
fn is_zombie_or_gone(dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
        return true;
    };
    // "pid (comm) S ...": comm may contain spaces and ')', so take the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return true;
    };
    matches!(
        rest.trim_start().chars().next(),
        Some('Z') | Some('X') | None
    )
}

/// SIGKILLs every pid, ignoring those already gone.
pub fn kill_pids(pids: &[u32]) {
    for pid in pids {
        let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_marked_child_and_not_after_it_exits() {
        let marker = crate::unique_marker();
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
}
