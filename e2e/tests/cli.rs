//! The `rouse` command line against a whole deployment (nats-server, the
//! controller, a proxy, rouse-echo replicas): `status` (table, JSON,
//! `--watch`, a closed API, a controller down) and `events` with the
//! controller's own scale events, found through `--config` the way an
//! operator on the controller's machine finds them.

use std::process::Stdio;
use std::time::Duration;

use rouse_e2e::{bin, Cluster, Service};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Longest one command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }
}

/// `rouse --config <the controller's config> ARGS`, with no other knob set.
fn rouse(cluster: &Cluster, args: &[&str]) -> Command {
    let mut command = Command::new(bin("rouse"));
    command
        .arg("--config")
        .arg(cluster.controller_config())
        .args(args)
        .env_remove("ROUSE_NATS_URL")
        .env_remove("ROUSE_CONTROLLER")
        .env_remove("ROUSE_ADMIN_TOKEN")
        .env_remove("ROUSE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn finish(mut command: Command) -> Run {
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

async fn run(cluster: &Cluster, args: &[&str]) -> Run {
    finish(rouse(cluster, args)).await
}

/// The row of `name` in a status table, split on whitespace.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"))
        .split_whitespace()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_service_as_a_table_and_as_json() {
    let cluster = Cluster::start(vec![
        Service::new("warm", "warm.localhost").min_replicas(1),
        Service::new("cold", "cold.localhost"),
    ])
    .await;
    cluster
        // The proxy's first load report can come after the replica is ready.
        .wait_status(
            "warm",
            "one replica ready and the proxy reporting",
            Duration::from_secs(60),
            |s| s.ready == 1 && s.proxies == 1,
        )
        .await;

    let table = run(&cluster, &["status"]).await;
    assert_eq!(table.code, 0, "{table:#?}");
    let header: Vec<&str> = table
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "BACKEND",
            "DESIRED",
            "READY",
            "PINNED",
            "HELD",
            "IN-FLIGHT",
            "RPS",
            "LAST",
            "SCALE"
        ]
    );
    assert_eq!(
        row(&table.stdout, "warm")[..8],
        ["warm", "process", "1", "1", "-", "0", "0", "0.0"]
    );
    assert_eq!(
        row(&table.stdout, "cold")[..8],
        ["cold", "process", "0", "0", "-", "0", "0", "0.0"]
    );
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[1].starts_with("cold") && lines[2].starts_with("warm"),
        "sorted by name: {table:#?}"
    );

    // A proxy counts while its last heartbeat is under 3 report intervals
    // old (600 ms here): a starved machine can miss that between two reads.
    let doc = cluster
        .poll_until(
            "rouse status -o json counts the proxy",
            Duration::from_secs(30),
            || async {
                let doc = run(&cluster, &["status", "warm", "-o", "json"])
                    .await
                    .json();
                (doc["services"][0]["proxies"] == 1).then_some(doc)
            },
        )
        .await;
    let services = doc["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{doc}");
    let warm = &services[0];
    for (key, want) in [("name", "warm"), ("backend", "process")] {
        assert_eq!(warm[key], want, "{doc}");
    }
    for (key, want) in [
        ("desired", 1),
        ("ready", 1),
        ("starting", 0),
        ("held", 0),
        ("in_flight", 0),
        ("proxies", 1),
    ] {
        assert_eq!(warm[key], want, "{key}: {doc}");
    }
    assert_eq!(warm["pinned"], Value::Null);
    assert!(warm["rps"].is_number(), "{doc}");
    assert_eq!(warm["last_scale"]["to"], 1, "{doc}");

    // Traffic shows up as requests per second.
    let rps = cluster
        .poll_until(
            "rouse status reports the warm service's traffic",
            Duration::from_secs(60),
            || async {
                for _ in 0..20 {
                    cluster.get_ok("warm.localhost", "/").await;
                }
                let doc = run(&cluster, &["status", "warm", "-o", "json"])
                    .await
                    .json();
                doc["services"][0]["rps"].as_f64().filter(|rps| *rps > 0.0)
            },
        )
        .await;
    assert!(rps > 0.0);

    let unknown = run(&cluster, &["status", "nope"]).await;
    assert_eq!(unknown.code, 2, "{unknown:#?}");
    assert!(
        unknown
            .stderr
            .contains("the controller has no service named nope (it has: cold, warm)"),
        "{unknown:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_redraws_until_killed_and_events_shows_the_controllers_scale_events() {
    let cluster = Cluster::start(vec![Service::new("cold", "cold.localhost")]).await;

    let mut watch = rouse(&cluster, &["status", "--watch", "--interval", "200ms"])
        .spawn()
        .expect("spawn rouse status --watch");
    let stdout = watch.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();

    // A cold start while the watcher runs: it must show the new state.
    let resp = cluster.get_ok("cold.localhost", "/").await;
    assert!(resp.cold_start(), "{resp}");

    let mut seen = Vec::new();
    let mut redraws = 0;
    let woke = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            redraws += usize::from(line.starts_with("every 200ms at "));
            let woke = line.starts_with("cold") && line.contains("0→1");
            seen.push(line);
            if woke && redraws >= 2 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        woke,
        Ok(true),
        "the watcher showed the wake; it printed {seen:#?}"
    );
    assert!(matches!(watch.try_wait(), Ok(None)), "--watch keeps going");
    let _ = watch.kill().await;

    let events = cluster
        .poll_until(
            "rouse events lists the wake",
            Duration::from_secs(30),
            || async {
                let events = run(&cluster, &["events", "--service", "cold"]).await;
                assert_eq!(events.code, 0, "{events:#?}");
                events
                    .stdout
                    .lines()
                    .skip(1)
                    .map(|l| l.split_whitespace().collect::<Vec<_>>())
                    .find(|fields| fields[1..4] == ["cold", "0", "1"])
                    .map(|fields| fields.join(" "))
            },
        )
        .await;
    assert!(events.contains("cold 0 1"), "{events}");
    let json = run(&cluster, &["events", "--from-start", "-o", "json"]).await;
    let first: Value = serde_json::from_str(json.stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {json:#?}"));
    assert_eq!(
        (
            first["service"].as_str(),
            first["from"].as_u64(),
            first["to"].as_u64()
        ),
        (Some("cold"), Some(0), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sends_the_token_and_a_controller_down_is_exit_1() {
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "cli-secret\n").expect("token file");
    let mut cluster = Cluster::builder()
        .service(Service::new("echo", "echo.localhost"))
        .controller_key(
            "admin_token_file",
            &format!("{:?}", token_file.display().to_string()),
        )
        .start()
        .await;
    let controller = format!("http://{}", cluster.controller_admin());

    // --config names the token file too: nothing else to pass.
    let with_config = run(&cluster, &["status"]).await;
    assert_eq!(with_config.code, 0, "{with_config:#?}");
    assert!(with_config.stdout.contains("echo"), "{with_config:#?}");

    let mut bare = Command::new(bin("rouse"));
    bare.args(["--controller", &controller, "status"])
        .env_remove("ROUSE_CONFIG")
        .env_remove("ROUSE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let refused = finish(bare).await;
    assert_eq!(refused.code, 1, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("401: it asks for a token: set ROUSE_ADMIN_TOKEN or --token-file"),
        "{refused:#?}"
    );

    let mut wrong = Command::new(bin("rouse"));
    wrong
        .args(["--controller", &controller, "status"])
        .env_remove("ROUSE_CONFIG")
        .env("ROUSE_ADMIN_TOKEN", "guess")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let wrong = finish(wrong).await;
    assert_eq!(wrong.code, 1, "{wrong:#?}");
    assert!(
        wrong.stderr.contains("it refused the token given"),
        "{wrong:#?}"
    );

    let mut right = Command::new(bin("rouse"));
    right
        .args(["--controller", &controller, "--token-file"])
        .arg(&token_file)
        .args(["status", "-o", "json"])
        .env_remove("ROUSE_CONFIG")
        .env_remove("ROUSE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let right = finish(right).await;
    assert_eq!(right.code, 0, "{right:#?}");
    assert_eq!(right.json()["services"][0]["name"], "echo");

    cluster.kill_controller().await;
    let down = run(&cluster, &["status"]).await;
    assert_eq!(down.code, 1, "{down:#?}");
    assert!(
        down.stderr
            .contains(&format!("cannot reach the controller at {controller}")),
        "{down:#?}"
    );
    assert!(down.stdout.is_empty(), "{down:#?}");
}

/// `rouse deploy --wait` of a new service while another one serves steady
/// load: the new service is routed and answers, and not one request of the
/// busy service fails while the catalog changes under the proxy and the
/// controller; `rouse remove --wait` takes it away again, as cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_while_another_service_is_under_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const BUSY: &str = "busy.localhost";
    const FRESH: &str = "fresh.localhost";
    let cluster = Cluster::start(vec![Service::new("busy", BUSY)
        .min_replicas(1)
        .max_replicas(2)])
    .await;
    cluster
        .wait_status("busy", "one replica ready", Duration::from_secs(60), |s| {
            s.ready >= 1
        })
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            rouse_e2e::load::sequential_until(
                cluster.proxy_addr(0),
                BUSY,
                "/sleep/5",
                Arc::clone(&stop),
            )
        })
        .collect();
    cluster
        .wait_until(
            "the busy service serves the load",
            Duration::from_secs(30),
            || async {
                cluster
                    .proxy_metric(0, "rouse_requests_total", "busy")
                    .await
                    .is_some_and(|n| n >= 50.0)
            },
        )
        .await;

    let echo = bin("rouse-echo").display().to_string();
    let marker = format!("{}={}", rouse_e2e::MARKER_ENV, cluster.marker);
    let deployed = run(
        &cluster,
        &[
            "deploy",
            "fresh",
            "--host",
            FRESH,
            "--min",
            "1",
            "--max",
            "1",
            "--readiness",
            "/healthz",
            "--env",
            &marker,
            "--wait",
            "--timeout",
            "90s",
            "--command",
            &echo,
            "--port",
            "{port}",
        ],
    )
    .await;
    assert_eq!(deployed.code, 0, "{deployed:#?}");
    assert!(
        deployed
            .stdout
            .starts_with("service fresh created (revision "),
        "{deployed:#?}"
    );
    assert!(
        deployed.stderr.contains("fresh: 1/1 ready"),
        "{deployed:#?}"
    );

    let answer = cluster
        .poll_until(
            "the proxy routes the new service",
            Duration::from_secs(30),
            || async {
                let resp = cluster.try_get_via(0, FRESH, "/").await.ok()?;
                (resp.status == 200).then_some(resp)
            },
        )
        .await;
    assert!(answer.text().starts_with("handled by"), "{answer}");
    let routes = run(&cluster, &["routes"]).await;
    assert_eq!(routes.code, 0, "{routes:#?}");
    assert_eq!(
        row(&routes.stdout, BUSY),
        [BUSY, "/", "busy", "file"],
        "{routes:#?}"
    );
    assert_eq!(
        row(&routes.stdout, FRESH),
        [FRESH, "/", "fresh", "api"],
        "{routes:#?}"
    );

    let removed = run(&cluster, &["remove", "fresh", "--wait", "--timeout", "90s"]).await;
    assert_eq!(removed.code, 0, "{removed:#?}");
    assert!(removed.stderr.contains("fresh: gone"), "{removed:#?}");
    cluster
        .wait_until(
            "the proxy no longer routes the removed service",
            Duration::from_secs(30),
            || async {
                cluster
                    .try_get_via(0, FRESH, "/")
                    .await
                    .is_ok_and(|r| r.status == 404)
            },
        )
        .await;

    stop.store(true, Ordering::SeqCst);
    let (mut failures, mut sent) = (Vec::new(), 0);
    for task in traffic {
        let (failed, count) = task.await.expect("traffic task");
        failures.extend(failed);
        sent += count;
    }
    cluster
        .expect_no_failed_traffic("while a service was deployed and removed", (failures, sent))
        .await;
    eprintln!("busy: {sent} requests while `fresh` was deployed and removed, none failed");
}
