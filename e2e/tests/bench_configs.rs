//! The benchmark scripts generate their own configs; a config change that
//! makes one invalid must fail the tests, not the next person who runs a
//! benchmark (it happened: a stricter panic-window check broke
//! `bench/coldstart` unseen). Each script in its `ROUSE_BENCH_CHECK_CONFIG`
//! mode writes every config it would run and validates it with
//! `rouse-controller --check`, starting nothing and building nothing.

use std::process::Command;

use rouse_e2e::bin;
use rouse_e2e::bins::workspace_root;

fn check_script(script: &str, parts: &[&str]) {
    check_script_with(script, parts, &[]);
}

fn check_script_with(script: &str, parts: &[&str], env: &[(&str, &str)]) {
    let controller = bin("rouse-controller");
    let bin_dir = controller.parent().expect("binary directory");
    let output = Command::new(workspace_root().join("bench").join(script))
        .envs(env.iter().copied())
        .env("ROUSE_BENCH_CHECK_CONFIG", "1")
        .env("ROUSE_BENCH_BIN", bin_dir)
        .output()
        .unwrap_or_else(|err| panic!("running bench/{script}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench/{script} rejected its own config:\n{stdout}\n{stderr}"
    );
    for part in parts {
        let said = format!("the generated {part}config is valid");
        assert!(
            stdout.contains(&said),
            "bench/{script}: no `{said}` in\n{stdout}"
        );
    }
}

#[test]
fn cold_start_benchmark_config_is_valid() {
    check_script("coldstart", &[""]);
}

#[test]
fn cold_start_benchmark_config_on_containers_is_valid() {
    check_script_with(
        "coldstart",
        &[""],
        &[("ROUSE_BENCH_DOCKER_IMAGE", "rouse:dev")],
    );
}

#[test]
fn load_step_benchmark_config_is_valid() {
    check_script("step", &[""]);
}

#[test]
fn comparison_benchmark_configs_are_valid() {
    check_script("run", &["throughput ", "burst ", "footprint "]);
}

#[test]
fn scale_benchmark_configs_are_valid() {
    // Fewer services than the benchmark's 10,000: the same generator, a
    // quicker check.
    check_script_with(
        "scale",
        &["idle ", "baseline ", "held "],
        &[("SCALE_SERVICES", "200")],
    );
}

/// Every example of deploy/examples is a config `--check` accepts, and has
/// the load script and the README that `run.sh` and users rely on.
#[test]
fn every_example_config_is_valid() {
    let examples = workspace_root().join("deploy").join("examples");
    let mut checked = 0;
    let entries = std::fs::read_dir(&examples)
        .unwrap_or_else(|err| panic!("reading {}: {err}", examples.display()));
    for entry in entries.flatten() {
        let dir = entry.path();
        let config = dir.join("rouse.yaml");
        if !config.is_file() {
            continue;
        }
        for needed in ["load.sh", "README.md"] {
            assert!(
                dir.join(needed).is_file(),
                "{} has no {needed}",
                dir.display()
            );
        }
        let output = Command::new(bin("rouse-controller"))
            .arg("--check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap_or_else(|err| panic!("running rouse-controller --check: {err}"));
        assert!(
            output.status.success(),
            "{} is invalid:\n{}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} examples found");
}
