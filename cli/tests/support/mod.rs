//! What the CLI tests share: a private nats-server, the real `rouse`
//! binary run to completion (bounded) or in the background, and direct
//! access to the buckets and the events stream to set up and check what
//! the commands did, as a controller or another writer would see it.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use rouse_nats::catalog::{self, ServiceRecord, Source};
use rouse_nats::config::ServiceConfig;
use rouse_stack::NatsServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[allow(unused_imports)]
pub use rouse_stack::poll;

/// Longest any one command may take in a test.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// A controller URL where nothing listens: commands that only need NATS
/// must not depend on it.
pub const NO_CONTROLLER: &str = "http://127.0.0.1:9";

/// What a finished command left.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics unless the exit code is `code`, showing both streams.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }
}

/// `rouse` with the environment cleared of the knobs it reads, pointed at
/// `nats_url`.
pub fn rouse(nats_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rouse"));
    command
        .args(args)
        .env_remove("ROUSE_CONFIG")
        .env_remove("ROUSE_ADMIN_TOKEN")
        .env("ROUSE_NATS_URL", nats_url)
        .env("ROUSE_CONTROLLER", NO_CONTROLLER)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `command` to its end (at most [`COMMAND_DEADLINE`]).
pub async fn finish(mut command: Command) -> Run {
    let child = command.spawn().expect("spawn rouse");
    let output = tokio::time::timeout(COMMAND_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("rouse did not finish within {COMMAND_DEADLINE:?}"))
        .expect("wait for rouse");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `rouse ARGS` against `nats_url`, run to its end.
pub async fn run(nats_url: &str, args: &[&str]) -> Run {
    finish(rouse(nats_url, args)).await
}

/// A command left running (`--follow`, `--watch`): its stdout line by line.
pub struct Background {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    pub seen: Vec<String>,
}

impl Background {
    pub fn spawn(mut command: Command) -> Background {
        let mut child = command.spawn().expect("spawn rouse");
        let stdout = child.stdout.take().expect("piped stdout");
        Background {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `want` (at most `timeout`); panics
    /// with everything seen otherwise.
    pub async fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Ok(Ok(None)) => panic!("rouse ended; it printed {:#?}", self.seen),
                Ok(Err(e)) => panic!("reading rouse's stdout: {e}"),
                Err(_) => panic!(
                    "no wanted line within {timeout:?}; rouse printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends it (SIGKILL: the tests bound a watcher by killing it).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A private nats-server and a JetStream client of it.
pub struct Nats {
    pub server: NatsServer,
    pub js: jetstream::Context,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Nats {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = NatsServer::start_in(dir.path()).await;
        let client = async_nats::connect(server.url()).await.expect("connect");
        Nats {
            server,
            js: jetstream::new(client),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn services(&self) -> kv::Store {
        rouse_nats::bus::services_bucket(&self.js, 1)
            .await
            .expect("services bucket")
    }

    pub async fn pins(&self) -> kv::Store {
        rouse_nats::bus::pins_bucket(&self.js, 1)
            .await
            .expect("pins bucket")
    }

    /// Writes a record as its writer would (a controller seeding its file:
    /// `Source::File`), returning the revision.
    pub async fn put_record(&self, source: Source, spec: ServiceConfig) -> u64 {
        let name = spec.name.clone();
        let record = ServiceRecord::new(source, spec, "test");
        self.services()
            .await
            .put(&name, catalog::encode(&record))
            .await
            .expect("put record")
    }

    /// The record in key `name`, if any.
    pub async fn record(&self, name: &str) -> Option<(u64, ServiceRecord)> {
        let entry = self.services().await.entry(name).await.expect("entry")?;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let record = catalog::decode(name, &entry.value).expect("decodable record");
        Some((entry.revision, record))
    }
}

/// A process service routed by `host`, as a file would define it.
pub fn echo_spec(name: &str, host: &str) -> ServiceConfig {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "hosts": [host],
        "backend": {"process": {"command": ["rouse-echo", "--port", "{port}"]}}
    }))
    .expect("spec")
}
