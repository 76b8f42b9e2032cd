//! The compose demo (`deploy/compose`) works as its comments say, on a
//! private Docker engine: `up` brings NATS, the controller and the proxy up
//! healthy (the image's HEALTHCHECK is `rouse-echo healthcheck` against their
//! admin `/healthz`), a cold request for `echo.localhost` is answered by a
//! container the controller started, and `down -v` leaves nothing on the
//! engine: no container (neither compose's nor the controller's), no network,
//! no volume.
//!
//! Nothing is pulled: the rouse image is built from this workspace's debug
//! binaries (`scripts/image --debug --no-build`), and NATS is a stand-in built
//! from this machine's nats-server (`scripts/nats-image`), passed as
//! `NATS_IMAGE`, as the compose file allows.
//!
//! The compose tool: `$COMPOSE_BIN` (a command, e.g. `docker-compose` or
//! `docker compose`), else `docker compose` when that plugin exists, else
//! `docker-compose` (Debian's docker-compose 1.29).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rouse_e2e::docker::DockerEngine;
use rouse_e2e::{bins, free_port, get, poll_until, tail, wait_until};

const HOST: &str = "echo.localhost";
/// Image names the compose file is given; the private engine has no other.
const ROUSE_IMAGE: &str = "rouse:dev";
const NATS_IMAGE: &str = "rouse-nats:e2e";
/// Any one compose or image-build command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(300);
/// The first HEALTHCHECK runs one interval (10s) after a container starts.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(90);

/// `$COMPOSE_BIN`, else `docker compose` if the plugin answers, else
/// `docker-compose` if it answers; the argv prefix of every compose command.
fn compose_tool() -> anyhow::Result<Vec<String>> {
    if let Some(bin) = std::env::var("COMPOSE_BIN")
        .ok()
        .filter(|b| !b.trim().is_empty())
    {
        return Ok(bin.split_whitespace().map(str::to_string).collect());
    }
    let answers = |argv: &[&str]| {
        std::process::Command::new(argv[0])
            .args(&argv[1..])
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for argv in [&["docker", "compose"][..], &["docker-compose"][..]] {
        if answers(argv) {
            return Ok(argv.iter().map(|s| s.to_string()).collect());
        }
    }
    anyhow::bail!(
        "no compose tool: install docker-compose (apt-get install docker-compose) or the \
         docker compose plugin, or set COMPOSE_BIN"
    )
}

/// One compose project on the private engine; `down -v` when dropped if the
/// test did not get that far, after printing every log when it failed.
struct Project<'a> {
    engine: &'a DockerEngine,
    tool: Vec<String>,
    file: PathBuf,
    name: String,
    port: u16,
    up: bool,
}

impl<'a> Project<'a> {
    fn new(engine: &'a DockerEngine, tool: Vec<String>, port: u16) -> Self {
        Project {
            engine,
            tool,
            file: bins::workspace_root().join("deploy/compose/compose.yaml"),
            name: format!("rouse-e2e-{}", std::process::id()),
            port,
            up: false,
        }
    }

    /// The compose command for `args`, aimed at the private engine, with the
    /// compose file's knobs set and any of the caller's unset.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.name])
            .args(args)
            .env("DOCKER_HOST", self.engine.host())
            .env("DOCKER_SOCK", self.engine.dir().join("docker.sock"))
            .env("ROUSE_PORT", self.port.to_string())
            .env("ROUSE_IMAGE", ROUSE_IMAGE)
            .env("NATS_IMAGE", NATS_IMAGE)
            .env("RUST_LOG", "info")
            .env_remove("ROUSE_BIND")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs compose `args` to the end (bounded); its stdout, or an error
    /// with its output.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let what = format!("{} {}", self.tool.join(" "), args.join(" "));
        let out = tokio::time::timeout(COMMAND_DEADLINE, self.command(args).output())
            .await
            .with_context(|| format!("`{what}` did not finish within {COMMAND_DEADLINE:?}"))?
            .with_context(|| format!("running `{what}`"))?;
        anyhow::ensure!(
            out.status.success(),
            "`{what}` failed ({}):\n{}\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stdout), 30),
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn up(&mut self) {
        self.up = true;
        if let Err(err) = self.run(&["up", "-d"]).await {
            panic!("{err:#}");
        }
    }

    async fn down(&mut self) {
        let result = self.run(&["down", "-v"]).await;
        self.up = false;
        if let Err(err) = result {
            panic!("{err:#}");
        }
    }

    /// The id of compose service `service`'s running container, if any.
    fn container(&self, service: &str) -> Option<String> {
        self.engine
            .running(&format!("com.docker.compose.service={service}"))
            .into_iter()
            .next()
    }

    /// The engine's health status of `service`'s container.
    fn health(&self, service: &str) -> Option<String> {
        let id = self.container(service)?;
        self.engine
            .cli_ok(&["inspect", "--format", "{{.State.Health.Status}}", &id])
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Everything worth reading when the test failed: compose's logs, those
    /// of the controller's containers, the engine's tail.
    fn dump(&self) {
        let logs = std::process::Command::new(&self.tool[0])
            .args(&self.tool[1..])
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.name, "logs", "--no-color", "--tail", "200"])
            .env("DOCKER_HOST", self.engine.host())
            .env("NATS_IMAGE", NATS_IMAGE)
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| format!("cannot run compose logs: {e}"));
        eprintln!("---- compose logs ----\n{logs}");
        for id in self.engine.containers("rouse.service=echo") {
            let logs = self
                .engine
                .cli(&["logs", "--tail", "50", &id])
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            eprintln!("---- echo container {id} ----\n{logs}");
        }
        let ps = self.engine.cli_ok(&["ps", "-a"]).unwrap_or_default();
        eprintln!("---- docker ps -a ----\n{ps}");
        eprintln!("---- dockerd ----\n{}", tail(&self.engine.logs(), 40));
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        if self.up {
            let _ = std::process::Command::new(&self.tool[0])
                .args(&self.tool[1..])
                .arg("-f")
                .arg(&self.file)
                .args(["-p", &self.name, "down", "-v", "--timeout", "5"])
                .env("DOCKER_HOST", self.engine.host())
                .env("NATS_IMAGE", NATS_IMAGE)
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// Builds the NATS stand-in image on `engine`.
fn build_nats_image(engine: &DockerEngine) -> anyhow::Result<()> {
    let script = bins::workspace_root().join("scripts/nats-image");
    let out = std::process::Command::new(&script)
        .args(["--tag", NATS_IMAGE])
        .env("DOCKER_HOST", engine.host())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/nats-image failed ({}):\n{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 30)
    );
    Ok(())
}

/// Issue 9's done-when: `up`, a cold request through the published proxy
/// answered by a controller-made container, `down` leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_up_serves_a_cold_request_and_down_leaves_nothing() {
    let started = Instant::now();
    let tool = compose_tool().unwrap_or_else(|e| panic!("{e:#}"));
    let engine = DockerEngine::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    engine
        .build_rouse_image(ROUSE_IMAGE)
        .unwrap_or_else(|e| panic!("{e:#}"));
    build_nats_image(&engine).unwrap_or_else(|e| panic!("{e:#}"));
    let built = started.elapsed();

    let port = free_port();
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut project = Project::new(&engine, tool, port);
    project.up().await;

    // Both rouse containers turn healthy: their image's HEALTHCHECK
    // (`rouse-echo healthcheck`) reaches their admin /healthz.
    for service in ["rouse-controller", "rouse-proxy"] {
        wait_until(&format!("{service} is healthy"), HEALTHY_DEADLINE, || {
            let healthy = project.health(service).as_deref() == Some("healthy");
            async move { healthy }
        })
        .await;
    }
    assert!(
        engine.containers("rouse.service=echo").is_empty(),
        "echo must be at zero before any request"
    );

    // The proxy answers on the published port: an unknown host is its 404.
    let unknown = get(proxy, "nobody.localhost", "/").await;
    assert_eq!(unknown.status, 404, "{unknown}");

    let cold_started = Instant::now();
    let cold = get(proxy, HOST, "/").await;
    let cold_took = cold_started.elapsed();
    assert_eq!(cold.status, 200, "{cold}");
    assert!(cold.cold_start(), "no x-rouse-cold-start: true: {cold}");
    assert!(
        cold.text().starts_with("handled by echo-"),
        "not answered by a controller-made replica: {cold}"
    );

    // The replica is a container of the controller's, on the `rouse`
    // network, which compose made and the proxy shares.
    let echo = poll_until("one echo container runs", Duration::from_secs(10), || {
        let running = engine.running("rouse.service=echo");
        async move { (running.len() == 1).then(|| running[0].clone()) }
    })
    .await;
    let networks = engine
        .cli_ok(&[
            "inspect",
            "--format",
            "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
            &echo,
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(networks.trim(), "rouse", "the echo container's networks");

    let warm = get(proxy, HOST, "/").await;
    assert_eq!(warm.status, 200, "{warm}");
    assert!(!warm.cold_start(), "a warm request marked cold: {warm}");

    let down_started = Instant::now();
    project.down().await;
    let down_took = down_started.elapsed();

    // Nothing is left: compose removed its containers, network and volume;
    // the controller stopped and removed its own containers before it exited.
    let left = engine
        .cli_ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(left.trim().is_empty(), "containers left after down: {left}");
    let networks = engine
        .cli_ok(&["network", "ls", "--format", "{{.Name}}"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !networks.lines().any(|n| n == "rouse"),
        "network rouse left after down: {networks}"
    );
    let volumes = engine
        .cli_ok(&["volume", "ls", "-q"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        volumes.trim().is_empty(),
        "volumes left after down -v: {volumes}"
    );

    eprintln!(
        "compose test: images built in {built:?}, cold request {cold_took:?}, down {down_took:?}, \
         total {:?}",
        started.elapsed()
    );
}
