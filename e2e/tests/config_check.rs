//! Acceptance criterion 9: `--check` validates the config and, when it is
//! wrong, exits 2 naming the file, the line and the key (DESIGN.md,
//! "Binaries and flags").
//!
//! An operator with a broken file must be told exactly where to look, by
//! both binaries alike (they read the same file). Each case writes a valid
//! config with the harness, breaks one key in the *second* service (so the
//! first occurrence of a key is not a lucky guess), computes that key's line
//! from the text, and expects `:<line>` or `line <line>` in stderr.
//! `--check` must not need NATS: the config points at a closed port.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rouse_e2e::config::line_of;
use rouse_e2e::{bin, mentions_line, Config, Service};

/// A valid two-service config; NATS is a port where nothing listens.
fn valid_config(dir: &Path) -> Config {
    Config::new("nats://127.0.0.1:1", &dir.join("state"), "config-check")
        .service(Service::new("first", "first.localhost"))
        .service(Service::new("second", "second.localhost"))
}

/// Line (1-based) of the first line starting with `prefix` inside the
/// service called `service`.
fn line_in_service(yaml: &str, service: &str, prefix: &str) -> usize {
    let start = line_of(yaml, &format!("- name: \"{service}\""), 0)
        .unwrap_or_else(|| panic!("service {service} not in\n{yaml}"));
    line_of(yaml, prefix, start)
        .unwrap_or_else(|| panic!("{prefix} not after line {start} in\n{yaml}"))
}

/// Replaces line `line` (1-based) of `yaml` by `new`, keeping its indent.
fn replace_line(yaml: &str, line: usize, new: &str) -> String {
    let mut lines: Vec<String> = yaml.lines().map(str::to_string).collect();
    let old = &lines[line - 1];
    let indent = &old[..old.len() - old.trim_start().len()];
    lines[line - 1] = format!("{indent}{new}");
    lines.join("\n") + "\n"
}

struct CheckRun {
    binary: &'static str,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for CheckRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} --check exited {:?}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.binary, self.code, self.stderr, self.stdout
        )
    }
}

/// Runs `<binary> --config <path> --check` with a 30 s bound.
async fn check(binary: &'static str, path: &Path) -> CheckRun {
    let mut cmd = tokio::process::Command::new(bin(binary));
    cmd.arg("--config")
        .arg(path)
        .arg("--check")
        .env_remove("ROUSE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("{binary} --check did not exit within 30 s (does it start serving?)")
        })
        .unwrap_or_else(|e| panic!("wait for {binary}: {e}"));
    CheckRun {
        binary,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Both binaries reject `yaml` with exit 2, naming the file, one of `lines`
/// and every one of `words`.
async fn expect_rejected(yaml: &str, lines: &[usize], words: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rouse.yaml");
    std::fs::write(&path, yaml).unwrap();
    let shown = path.to_string_lossy().into_owned();
    for binary in ["rouse-proxy", "rouse-controller"] {
        let run = check(binary, &path).await;
        let context = format!("{run}\n--- config ---\n{}", numbered(yaml));
        assert_eq!(run.code, Some(2), "expected exit 2:\n{context}");
        assert!(
            run.stderr.contains(&shown),
            "stderr must name the file {shown}:\n{context}"
        );
        assert!(
            lines.iter().any(|l| mentions_line(&run.stderr, *l)),
            "stderr must name line {lines:?} as `:N` or `line N`:\n{context}"
        );
        for word in words {
            assert!(
                run.stderr.contains(word),
                "stderr must mention `{word}`:\n{context}"
            );
        }
    }
}

fn numbered(yaml: &str) -> String {
    yaml.lines()
        .enumerate()
        .map(|(i, l)| format!("{:3} {l}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Criterion 9a: a misspelt key (`scalling:`, `target_concurency:`) in the
/// second service → exit 2, with file, line and key.
#[tokio::test]
async fn typo_in_a_key_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = valid_config(dir.path()).to_yaml();

    let line = line_in_service(&yaml, "second", "scaling:");
    let broken = replace_line(&yaml, line, "scalling:");
    expect_rejected(&broken, &[line], &["scalling"]).await;

    let line = line_in_service(&yaml, "second", "target_concurrency:");
    let broken = replace_line(&yaml, line, "target_concurency: 10");
    expect_rejected(&broken, &[line], &["target_concurency"]).await;
}

/// Criterion 9b: a duration that is not one (`5x`) → exit 2, naming the
/// line and `scale_to_zero_after`.
#[tokio::test]
async fn bad_duration_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = valid_config(dir.path()).to_yaml();
    let line = line_in_service(&yaml, "second", "scale_to_zero_after:");
    let broken = replace_line(&yaml, line, "scale_to_zero_after: 5x");
    expect_rejected(&broken, &[line], &["scale_to_zero_after"]).await;
}

/// Criterion 9c: two services claiming the same host → exit 2, naming
/// `hosts` and the line of one of the two `hosts` keys.
#[tokio::test]
async fn duplicate_host_names_hosts_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = Config::new(
        "nats://127.0.0.1:1",
        &dir.path().join("state"),
        "config-check",
    )
    .service(Service::new("alpha", "dup.localhost"))
    .service(Service::new("beta", "dup.localhost"))
    .to_yaml();
    let first = line_in_service(&yaml, "alpha", "hosts:");
    let second = line_in_service(&yaml, "beta", "hosts:");
    expect_rejected(&yaml, &[first, second], &["hosts"]).await;
}

/// Criterion 9d: the harness's own config is valid → exit 0 from both.
#[tokio::test]
async fn valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rouse.yaml");
    let yaml = valid_config(dir.path()).to_yaml();
    std::fs::write(&path, &yaml).unwrap();
    for binary in ["rouse-proxy", "rouse-controller"] {
        let run = check(binary, &path).await;
        assert_eq!(
            run.code,
            Some(0),
            "a valid config must pass --check:\n{run}\n--- config ---\n{}",
            numbered(&yaml)
        );
    }
}
