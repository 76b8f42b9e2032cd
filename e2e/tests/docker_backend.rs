//! The docker backend against a real engine: Debian's dockerd, started
//! loopback-only for each test (`rouse_e2e::docker::DockerEngine`), with
//! the rouse image built offline from this workspace's binaries the way the
//! README says (`scripts/image`). Replicas are rouse-echo containers.
//!
//! What is checked is what a user sees: answers through the proxy, the
//! containers the engine lists (by rouse's labels), and the controller's
//! `/api/v1/services`. Nothing is mocked.

use std::time::{Duration, Instant};

use rouse_e2e::docker::DockerEngine;
use rouse_e2e::load;
use rouse_e2e::{assert_stays, Cluster, Service};

/// The image every test builds into its engine.
const IMAGE: &str = "rouse:dev";

/// A cluster whose controller drives a private engine. Fields drop in
/// order: the cluster (controller, proxies) first, then the engine, which
/// removes every container.
struct Docker {
    cluster: Cluster,
    engine: DockerEngine,
}

impl Docker {
    async fn start(services: Vec<Service>) -> Docker {
        let engine = DockerEngine::start()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self::on(engine, services).await
    }

    /// The cluster on an engine already started (podman's).
    async fn on(engine: DockerEngine, services: Vec<Service>) -> Docker {
        engine
            .build_rouse_image(IMAGE)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let cluster = services
            .into_iter()
            .fold(Cluster::builder(), |b, s| b.service(s))
            .docker_host(&engine.host())
            .start()
            .await;
        Docker { cluster, engine }
    }

    /// The service's running containers, by rouse's label.
    fn running(&self, service: &str) -> Vec<String> {
        self.engine.running(&format!("rouse.service={service}"))
    }

    /// Every container of the service, running or not.
    fn containers(&self, service: &str) -> Vec<String> {
        self.engine.containers(&format!("rouse.service={service}"))
    }

    async fn fail(&self, msg: &str) -> ! {
        let ps = self
            .engine
            .cli_ok(&["ps", "-a", "--no-trunc"])
            .unwrap_or_else(|e| format!("{e:#}"));
        let engine_log = rouse_e2e::tail(&self.engine.logs(), 30);
        self.cluster
            .fail(&format!(
                "{msg}\n=== docker ps -a ===\n{ps}\n=== dockerd (tail) ===\n{engine_log}"
            ))
            .await
    }

    /// The failure path a user sees: a held request answered `503` with a
    /// `Retry-After` (at `hold.timeout`, generously bounded), then the
    /// service's `last_error` saying so (`says` checks it).
    async fn held_request_fails(
        &self,
        service: &str,
        host: &str,
        why: &str,
        says: impl Fn(&str) -> bool,
    ) {
        let started = Instant::now();
        let resp = self.cluster.get(host, "/").await;
        let waited = started.elapsed();
        if resp.status != 503 || resp.header("retry-after").is_none() {
            self.fail(&format!("held request ({why}): {resp}")).await;
        }
        // The hold timeout plus scheduling on a busy machine.
        assert!(
            waited < Duration::from_secs(30),
            "answered after {waited:?}"
        );
        self.cluster
            .wait_status(
                service,
                &format!("last_error: {why}"),
                Duration::from_secs(30),
                |s| s.last_error.as_deref().is_some_and(&says),
            )
            .await;
    }
}

/// A rouse-echo service in containers of the rouse image.
fn echo(name: &str, host: &str) -> Service {
    echo_with(name, host, &[])
}

/// [`echo`] with more (or overriding) `backend.docker` keys.
fn echo_with(name: &str, host: &str, extra: &[(&str, &str)]) -> Service {
    let mut keys: Vec<(&str, &str)> = vec![
        ("image", "\"rouse:dev\""),
        ("command", "[rouse-echo]"),
        ("args", "[--bind, 0.0.0.0, --port, \"8080\"]"),
        ("port", "8080"),
        ("pull", "never"),
        ("stop_timeout", "\"5s\""),
    ];
    for (key, value) in extra {
        keys.retain(|(k, _)| k != key);
        keys.push((key, value));
    }
    Service::new(name, host).docker(&keys)
}

/// Podman's Docker-compatible service is an engine too: a cold request is
/// served by a new container on the host network (each replica on its own
/// port), and scale to zero removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_serves_a_cold_request_and_scales_to_zero() {
    const HOST: &str = "podman.localhost";
    let engine = DockerEngine::start_podman()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let d = Docker::on(
        engine,
        vec![echo_with(
            "podman",
            HOST,
            &[("network", "host"), ("args", "[--port, \"{port}\"]")],
        )
        .scale_to_zero_after("3s")],
    )
    .await;
    let resp = d.cluster.get(HOST, "/").await;
    if resp.status != 200 || !resp.cold_start() || d.running("podman").len() != 1 {
        d.fail(&format!("cold request on podman: {resp}")).await;
    }
    let engine = &d.engine;
    rouse_e2e::wait_until(
        "podman's container is removed after scale_to_zero_after",
        Duration::from_secs(60),
        || {
            let none = engine.containers("rouse.service=podman").is_empty();
            async move { none }
        },
    )
    .await;
}

/// Criterion 1: a request at zero gets 200 from a new container, marked as
/// a cold start; after `scale_to_zero_after` no labelled container is left.
/// Another service on the same engine is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_starts_a_container_and_idle_removes_it() {
    const HOST: &str = "cold.localhost";
    // A second service on the same engine: the services share one list of
    // the controller's containers, and each must see only its own.
    let d = Docker::start(vec![
        echo("cold", HOST).scale_to_zero_after("3s"),
        echo("idle", "idle.localhost"),
    ])
    .await;
    assert!(
        d.containers("cold").is_empty(),
        "containers before any request"
    );

    let resp = d.cluster.get(HOST, "/").await;
    if resp.status != 200 || !resp.cold_start() {
        d.fail(&format!("cold request: {resp}")).await;
    }
    let running = d.running("cold");
    if running.len() != 1 {
        d.fail(&format!("one container expected, found {running:?}"))
            .await;
    }
    // The answer came from that container: rouse-echo names its replica id,
    // which is the container's `rouse.replica` label.
    let replica = d
        .engine
        .cli_ok(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"rouse.replica\"}}",
            &running[0],
        ])
        .unwrap_or_default();
    if replica.trim().is_empty() || !resp.text().contains(replica.trim()) {
        d.fail(&format!(
            "the answer {:?} does not name the container's replica {replica:?}",
            resp.text()
        ))
        .await;
    }

    let idle = d.cluster.service_status("idle").await;
    if !idle.as_ref().is_some_and(|s| s.replicas.is_empty()) || !d.containers("idle").is_empty() {
        d.fail(&format!("the other service took a replica: {idle:?}"))
            .await;
    }
    let engine = &d.engine;
    rouse_e2e::wait_until(
        "no labelled container is left after scale_to_zero_after",
        Duration::from_secs(60),
        || {
            let none = engine.containers("rouse.service=cold").is_empty();
            async move { none }
        },
    )
    .await;
    d.cluster
        .wait_status("cold", "no replica left", Duration::from_secs(30), |s| {
            s.replicas.is_empty() && s.desired == 0
        })
        .await;
}

/// Criterion 2: 500 concurrent requests at zero all get 200, each reaches a
/// container exactly once, and more than one container served them (each
/// takes at most 10 at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_at_zero_is_served_once_each_by_several_containers() {
    const HOST: &str = "burst.localhost";
    const BURST: usize = 500;
    let d = Docker::start(vec![echo_with("burst", HOST, &[("address", "container")])
        .max_replicas(4)
        .target_concurrency(10)
        // One container alone would serve the whole burst of 100 ms sleeps
        // at once; 10 at a time it needs 5 s, and the others come.
        .scaling("container_concurrency", "10")
        .hold_max_requests(10_000)
        .hold_timeout("90s")])
    .await;

    let statuses = load::burst(
        &d.cluster.client,
        d.cluster.proxy_addr(0),
        HOST,
        "/sleep/100",
        BURST,
    )
    .await;
    if statuses.get(&200) != Some(&BURST) {
        d.fail(&format!("burst answers: {statuses:?}")).await;
    }
    let running = d.running("burst");
    if running.len() < 2 || running.len() > 4 {
        d.fail(&format!(
            "2 to 4 containers expected (max_replicas 4), found {running:?}"
        ))
        .await;
    }
    let status = d
        .cluster
        .wait_status(
            "burst",
            "lists its replicas",
            Duration::from_secs(30),
            |s| s.ready >= 2,
        )
        .await;
    match load::served(&d.cluster.client, &status).await {
        Ok(served) if served.is(BURST as u64) => {}
        Ok(served) => {
            d.fail(&format!(
                "the containers counted between {} and {} requests for {BURST}: {:?}",
                served.low, served.high, served.seen
            ))
            .await
        }
        Err(e) => d.fail(&format!("{e:#}")).await,
    }
}

/// Criterion 3: SIGKILL the controller; warm traffic keeps succeeding;
/// the restarted controller adopts the very same containers (none leaked,
/// none doubled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_its_containers() {
    const HOST: &str = "adopt.localhost";
    let mut d = Docker::start(vec![echo("adopt", HOST).max_replicas(2)]).await;
    d.cluster.get_ok(HOST, "/").await;
    d.cluster
        .wait_status("adopt", "ready 1", Duration::from_secs(60), |s| {
            s.ready == 1
        })
        .await;
    let before = d.running("adopt");
    assert_eq!(before.len(), 1, "{before:?}");

    d.cluster.kill_controller().await;
    for i in 0..20 {
        let resp = d.cluster.get(HOST, "/").await;
        if resp.status != 200 {
            d.fail(&format!(
                "warm request {i} with the controller down: {resp}"
            ))
            .await;
        }
    }
    d.cluster.restart_controller().await;
    d.cluster
        .wait_status(
            "adopt",
            "ready 1 after the restart",
            Duration::from_secs(60),
            |s| s.ready == 1,
        )
        .await;
    let engine = &d.engine;
    assert_stays(
        "the adopted container set stays the same",
        Duration::from_secs(3),
        || {
            let same = engine.running("rouse.service=adopt") == before;
            async move { same }
        },
    )
    .await;
    for i in 0..20 {
        let resp = d.cluster.get(HOST, "/").await;
        if resp.status != 200 {
            d.fail(&format!("request {i} after the restart: {resp}"))
                .await;
        }
    }
}

/// Criterion 4: an image that is not there with `pull: never` turns held
/// requests into 503 + Retry-After within `hold.timeout`, and the error
/// names the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_answers_503_and_names_the_image() {
    const HOST: &str = "missing.localhost";
    let d = Docker::start(vec![echo_with(
        "missing",
        HOST,
        &[("image", "\"rouse-missing:nowhere\"")],
    )
    .hold_timeout("4s")])
    .await;
    d.held_request_fails("missing", HOST, "names the image", |e| {
        e.contains("rouse-missing:nowhere") && e.contains("never")
    })
    .await;
    assert!(d.containers("missing").is_empty());
    let metrics = rouse_stack::http_get(
        d.cluster.controller_admin(),
        "/metrics",
        Duration::from_secs(5),
    )
    .await
    .map(|(_, body)| body)
    .unwrap_or_default();
    let errors = rouse_stack::metric_value(&metrics, "rouse_backend_errors_total", "missing");
    assert!(errors.is_some_and(|n| n >= 1.0), "{metrics}");
}

/// A pull that fails (a registry on loopback that is not there: nothing
/// leaves the machine) is a 503 for held requests and a `last_error` that
/// names the image and the pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pull_answers_503_and_names_the_image() {
    const HOST: &str = "pull.localhost";
    let d = Docker::start(vec![echo_with(
        "pull",
        HOST,
        &[
            ("image", "\"127.0.0.1:1/rouse/missing:1\""),
            ("pull", "if_not_present"),
        ],
    )
    .hold_timeout("4s")])
    .await;
    d.held_request_fails("pull", HOST, "names the pull and the image", |e| {
        e.contains("pulling image `127.0.0.1:1/rouse/missing:1`")
    })
    .await;
}

/// A port conflict as users hit it: on the host network the app is told
/// to listen on a port something else holds. The container exits, and
/// `last_error` carries the app's own words about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_conflict_is_reported_with_the_apps_words() {
    const HOST: &str = "conflict.localhost";
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let port = taken.local_addr().expect("local addr").port();
    let args = format!("[--port, \"{port}\"]");
    let d = Docker::start(vec![echo_with(
        "conflict",
        HOST,
        &[("network", "host"), ("args", &args)],
    )
    .hold_timeout("4s")])
    .await;
    d.held_request_fails("conflict", HOST, "says the address is in use", |e| {
        e.contains("exited with code") && e.contains("in use")
    })
    .await;
    drop(taken);
}

/// A container that exits right after its start: held requests get 503,
/// and `last_error` carries its exit code and its last output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_at_start_is_reported_with_its_output() {
    const HOST: &str = "crash.localhost";
    let d = Docker::start(vec![echo_with(
        "crash",
        HOST,
        &[("args", "[--port, not-a-port]")],
    )
    .hold_timeout("4s")])
    .await;
    d.held_request_fails("crash", HOST, "has the exit code and the output", |e| {
        e.contains("exited with code 2") && e.contains("not-a-port")
    })
    .await;
    // Replaced with backoff, and the dead ones removed: never a pile.
    let engine = &d.engine;
    assert_stays(
        "at most two crash containers exist at any time",
        Duration::from_secs(3),
        || {
            let few = engine.containers("rouse.service=crash").len() <= 2;
            async move { few }
        },
    )
    .await;
}

/// The image's HEALTHCHECK counts: a replica the probe finds ready serves,
/// and when the engine's check (here pointed at a path rouse-echo does not
/// have) calls it unhealthy, it leaves rotation and the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_container_by_its_image_healthcheck_leaves_rotation() {
    const HOST: &str = "health.localhost";
    let d = Docker::start(vec![echo("health", HOST).env(
        "ROUSE_HEALTHCHECK_URL",
        "http://127.0.0.1:8080/no-such-path",
    )])
    .await;
    d.cluster.get_ok(HOST, "/").await;
    // The rouse image checks every 10 s, 3 failures make it unhealthy; the
    // controller's own probe (/healthz) passes all along, so only the
    // engine's verdict can take it out.
    d.cluster
        .wait_status(
            "health",
            "the unhealthy replica is out of rotation",
            Duration::from_secs(120),
            |s| {
                s.ready == 0
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("unhealthy"))
            },
        )
        .await;
}

/// Criterion 5: with the engine stopped, warm traffic keeps flowing to the
/// running containers (live-restore keeps them; the proxies reach them by
/// container address), the controller reports the engine down, and it
/// recovers when the engine is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engine_keeps_warm_traffic_flowing_and_recovers() {
    const HOST: &str = "engine.localhost";
    let mut d = Docker::start(vec![echo_with("engine", HOST, &[("address", "container")])]).await;
    d.cluster.get_ok(HOST, "/").await;
    d.cluster
        .wait_status("engine", "ready 1", Duration::from_secs(60), |s| {
            s.ready == 1
        })
        .await;
    let before = d.running("engine");

    d.engine.stop().await;
    for i in 0..30 {
        let resp = d.cluster.get(HOST, "/").await;
        if resp.status != 200 {
            d.fail(&format!("warm request {i} with the engine down: {resp}"))
                .await;
        }
    }
    d.cluster
        .wait_status(
            "engine",
            "reports the engine down",
            Duration::from_secs(30),
            |s| {
                s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("cannot reach the docker engine"))
                    && s.ready == 1
            },
        )
        .await;

    if let Err(e) = d.engine.restart().await {
        d.fail(&format!("{e:#}")).await;
    }
    d.cluster
        .wait_status(
            "engine",
            "recovers once the engine is back",
            Duration::from_secs(60),
            |s| s.last_error.is_none() && s.ready == 1,
        )
        .await;
    let after = d.running("engine");
    if after != before {
        d.fail(&format!(
            "the container set changed over the engine restart: {before:?} → {after:?}"
        ))
        .await;
    }
    d.cluster.get_ok(HOST, "/").await;
}

/// Criterion 7: scale-down under load on containers loses no request: high
/// load scales out, lighter load goes on while containers are drained,
/// stopped and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_under_load_loses_no_request() {
    const HOST: &str = "drain.localhost";
    let d = Docker::start(vec![echo_with("drain", HOST, &[("address", "container")])
        .max_replicas(4)
        .target_concurrency(5)
        .drain_timeout("20s")
        .hold_timeout("60s")
        .scaling("stable_window", "4s")
        .scaling("panic_window", "2s")
        .scaling("scale_down_step", "1s")])
    .await;
    let (client, addr) = (&d.cluster.client, d.cluster.proxy_addr(0));
    let high = load::steady(client, addr, HOST, "/sleep/50", 40, Duration::from_secs(10)).await;
    let peak = d.running("drain").len();
    let low = load::steady(client, addr, HOST, "/sleep/50", 4, Duration::from_secs(20)).await;
    let after = d.running("drain").len();
    let failures = load::failures(&high) + load::failures(&low);
    if failures > 0 || peak < 2 || after >= peak {
        d.fail(&format!(
            "containers at peak {peak}, after {after}; high load {high:?}, low load {low:?}"
        ))
        .await;
    }
}

/// `oom` events the engine recorded since `since` (a `docker events` time).
fn oom_events(engine: &DockerEngine, since: &str) -> Vec<String> {
    engine
        .cli_ok(&[
            "events",
            "--since",
            since,
            "--until",
            "0s",
            "--filter",
            "event=oom",
            "--format",
            "{{.Actor.Attributes.name}}",
        ])
        .map(|out| out.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A memory-heavy service under a container memory limit: each request
/// holds 64 MiB for 300 ms and a replica takes at most 2 at a time in
/// 192 MiB. Load from 8 clients scales it out, every request gets 200 and
/// no container is OOM-killed. The limit is real: one request for more
/// than it kills its container, and the engine says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_heavy_replicas_scale_out_and_stay_within_their_limit() {
    const HOST: &str = "mem.localhost";
    let d = Docker::start(vec![echo_with(
        "mem",
        HOST,
        &[("address", "container"), ("memory", "192MiB")],
    )
    .max_replicas(4)
    .target_concurrency(2)
    .scaling("container_concurrency", "2")
    .hold_timeout("60s")])
    .await;
    // Unix seconds, a second early: the events window starts before the load.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs().saturating_sub(1).to_string())
        .unwrap_or_default();
    let (client, addr) = (&d.cluster.client, d.cluster.proxy_addr(0));
    let statuses = load::steady(
        client,
        addr,
        HOST,
        "/mem/64?hold_ms=300",
        8,
        Duration::from_secs(12),
    )
    .await;
    let peak = d.running("mem").len();
    let ooms = oom_events(&d.engine, &since);
    if load::failures(&statuses) > 0 || peak < 2 || !ooms.is_empty() {
        d.fail(&format!(
            "answers {statuses:?}, containers at the end of the load {peak}, OOM kills {ooms:?}"
        ))
        .await;
    }

    // Negative control: past the limit, the kernel kills the container.
    let resp = d.cluster.get(HOST, "/mem/400").await;
    assert_ne!(
        resp.status, 200,
        "400 MiB fit in a 192 MiB container: {resp}"
    );
    rouse_e2e::wait_until(
        "the engine reports an OOM kill",
        Duration::from_secs(30),
        || {
            let killed = !oom_events(&d.engine, &since).is_empty();
            async move { killed }
        },
    )
    .await;
}
