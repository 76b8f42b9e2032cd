//! `cargo xtask <task> [args]`: one index of every task of the repository.
//!
//! Each task calls the entry point that already exists (a script or a cargo
//! command), from the workspace root, passing the remaining arguments and
//! the environment through; nothing is reimplemented here. `cargo xtask
//! help` lists the tasks.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// A task: its name, what it does (one line), and the commands it runs, in
/// order; the task's extra arguments go to the last one.
struct Task {
    name: &'static str,
    help: &'static str,
    commands: &'static [&'static [&'static str]],
}

const TASKS: &[Task] = &[
    Task {
        name: "demo",
        help: "the local demo: NATS, controller, proxy and an app at zero, a cold request, a burst, back to zero (deploy/local/demo.sh)",
        commands: &[&["deploy/local/demo.sh"]],
    },
    Task {
        name: "test",
        help: "every test: unit tests and the end-to-end suite against a real nats-server, processes and Docker engines (scripts/test)",
        commands: &[&["scripts/test"]],
    },
    Task {
        name: "image",
        help: "the rouse image (proxy, controller, echo on scratch), built offline from this machine's binaries (scripts/image [--debug] [--tag T])",
        commands: &[&["scripts/image"]],
    },
    Task {
        name: "compose",
        help: "docker-compose -f deploy/compose/compose.yaml ARGS: the compose demo (`cargo xtask compose up -d`, `... down -v`; `cargo xtask image` first)",
        commands: &[&["docker-compose", "-f", "deploy/compose/compose.yaml"]],
    },
    Task {
        name: "k8s-check",
        help: "the Kubernetes manifests (deploy/k8s), offline: rendered, validated strictly, pod policy, the rouse config (scripts/k8s-check)",
        commands: &[&["scripts/k8s-check"]],
    },
    Task {
        name: "lint",
        help: "cargo fmt --check and cargo clippy -D warnings over the workspace",
        commands: &[
            &["cargo", "fmt", "--all", "--", "--check"],
            &["cargo", "clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        ],
    },
    Task {
        name: "ci",
        help: "what CI runs on a fresh clone: lint, then every test (.ci/run)",
        commands: &[&[".ci/run"]],
    },
    Task {
        name: "bench-run",
        help: "rouse-proxy vs direct, nginx and HAProxy; a burst at zero; the idle footprint (bench/run [throughput|burst|footprint])",
        commands: &[&["bench/run"]],
    },
    Task {
        name: "bench-scale",
        help: "10,000 services idle and 1 % active behind 3 proxies, 100,000 held requests (bench/scale [idle|active|held])",
        commands: &[&["bench/scale"]],
    },
    Task {
        name: "bench-coldstart",
        help: "cold starts, zero → one request → zero, split into wake, replica start and overhead (bench/coldstart)",
        commands: &[&["bench/coldstart"]],
    },
    Task {
        name: "bench-step",
        help: "a load step to 10× the target: time to the scale decision and the new replicas (bench/step)",
        commands: &[&["bench/step"]],
    },
    Task {
        name: "sim",
        help: "the autoscaling simulation, rouse vs KPA-like vs HPA-like, into bench/results/sim unless --out (cargo run --release -p rouse-sim)",
        commands: &[&["cargo", "run", "--release", "-p", "rouse-sim", "--"]],
    },
];

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "help".to_owned());
    let extra: Vec<String> = args.collect();
    if matches!(name.as_str(), "help" | "-h" | "--help") {
        help();
        return ExitCode::SUCCESS;
    }
    let Some(task) = TASKS.iter().find(|t| t.name == name) else {
        eprintln!("cargo xtask: no task `{name}`\n");
        help();
        return ExitCode::from(2);
    };
    let root = workspace_root();
    for (i, command) in task.commands.iter().enumerate() {
        let last = i + 1 == task.commands.len();
        let mut cmd = Command::new(program(&root, command[0]));
        cmd.args(&command[1..]).current_dir(&root);
        if last {
            cmd.args(&extra);
        }
        match cmd.status() {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!(
                    "cargo xtask {name}: `{}` failed ({status})",
                    command.join(" ")
                );
                return ExitCode::from(status.code().map_or(1, |c| c.clamp(1, 255) as u8));
            }
            Err(err) => {
                eprintln!("cargo xtask {name}: cannot run `{}`: {err}", command[0]);
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn help() {
    println!("cargo xtask <task> [args]: every task of rouse, run from the workspace root\n");
    let width = TASKS.iter().map(|t| t.name.len()).max().unwrap_or(0);
    println!("  {:<width$}  this list", "help");
    for task in TASKS {
        println!("  {:<width$}  {}", task.name, task.help);
    }
}

/// Scripts are paths in the repository; anything else (cargo) is looked up
/// on `PATH`, cargo as the one running this task.
fn program(root: &Path, name: &str) -> PathBuf {
    if name.contains('/') {
        root.join(name)
    } else if name == "cargo" {
        std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
    } else {
        PathBuf::from(name)
    }
}

/// The parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
