//! Where the binaries of a stack live: prebuilt in a directory (the
//! benchmarks: next to themselves in `target/release`), or this workspace's
//! debug build, built once per test run.
//!
//! `rouse-e2e` depends on no other workspace crate, so `cargo test -p
//! rouse-e2e` would not rebuild `rouse-proxy` & co. and could silently test a
//! stale binary. So the first call to [`bin`] in a test process runs
//! `cargo build --bins --workspace` (a no-op when everything is fresh).
//! `ROUSE_E2E_NO_BUILD=1` skips that (CI that built beforehand); then the
//! build only runs when a binary is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where a stack's binaries (`rouse-controller`, `rouse-proxy`, `rouse-echo`)
/// come from.
#[derive(Debug, Clone, Default)]
pub enum Bins {
    /// This workspace's debug build, built if needed (see [`bin`]).
    #[default]
    Workspace,
    /// Prebuilt binaries in this directory.
    Dir(PathBuf),
}

impl Bins {
    /// The directory of the running executable: where cargo put the
    /// binaries built with it.
    pub fn beside_current_exe() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", exe.display()))?;
        Ok(Bins::Dir(dir.to_path_buf()))
    }

    /// Path of the binary `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        match self {
            Bins::Workspace => bin(name),
            Bins::Dir(dir) => dir.join(name),
        }
    }
}

/// The workspace root: the parent of this crate's manifest dir.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the rouse-stack crate has a parent dir")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` (relative paths taken from the workspace root) or
/// `<workspace root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// What the one build of this process printed, if it failed.
static BUILD: OnceLock<Result<(), String>> = OnceLock::new();

fn build_once() -> &'static Result<(), String> {
    BUILD.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        eprintln!("rouse-stack: running `{cargo} build --bins --workspace`");
        let out = Command::new(&cargo)
            .args(["build", "--bins", "--workspace"])
            .current_dir(workspace_root())
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`cargo build --bins --workspace` failed ({}):\n{}",
                out.status,
                crate::tail(&String::from_utf8_lossy(&out.stderr), 60)
            )),
            Err(e) => Err(format!("could not run `{cargo}`: {e}")),
        }
    })
}

/// Path of the workspace binary `name` (e.g. `rouse-proxy`), built if needed.
///
/// Panics with the build's error output when the binary still does not exist.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    let skip_build = std::env::var_os("ROUSE_E2E_NO_BUILD").is_some_and(|v| v != "0");
    if skip_build && path.exists() {
        return path;
    }
    let built = build_once();
    if path.exists() {
        if let Err(e) = built {
            eprintln!("rouse-stack: WARNING: build failed, using the existing {name}: {e}");
        }
        return path;
    }
    match built {
        Ok(()) => panic!(
            "binary {} is missing even after a successful `cargo build --bins --workspace`",
            path.display()
        ),
        Err(e) => panic!(
            "binary {} is missing and the build failed: {e}",
            path.display()
        ),
    }
}

/// A program of the machine the tests need (`nats-server`, `dockerd`,
/// `podman`): `$<env>` when set, else the first `name` on `PATH`, else in
/// `/usr/sbin` or `/usr/bin`. The error says how to get it (`install`).
pub fn system_program(name: &str, env: &str, install: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.exists(),
            "{env}={} does not exist; {install}",
            path.display()
        );
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} not found on PATH nor in {env}: {install}"))
}
