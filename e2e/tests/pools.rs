//! Overflow pools (`backend.pools`) against real nats-server, real
//! rouse-echo processes and, for the last test, a real Docker engine:
//! load fills the first pool to its cap and overflows into the next, a
//! scale-down empties the last pool first, and a pool that cannot start
//! is reported while the others serve. Everything is read the way a user
//! reads it: answers through the proxy, the controller's
//! `/api/v1/services` (`pools`, each replica's `pool`) and `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_e2e::docker::DockerEngine;
use rouse_e2e::load::{self, Statuses};
use rouse_e2e::{Cluster, ServiceStatus, POLL_INTERVAL};
use serde_json::Value;
use tokio::task::JoinHandle;

const SERVICE: &str = "pools";
const HOST: &str = "pools.localhost";

/// One pool as `/api/v1/services` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
struct PoolView {
    backend: String,
    replicas: u64,
    ready: u64,
    error: Option<String>,
}

/// Pool `name` of the service's status, if listed.
fn pool(status: &ServiceStatus, name: &str) -> Option<PoolView> {
    let found = status
        .raw
        .get("pools")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?;
    Some(PoolView {
        backend: found.get("backend")?.as_str()?.to_string(),
        replicas: found.get("replicas")?.as_u64()?,
        ready: found.get("ready")?.as_u64()?,
        error: found.get("error").and_then(Value::as_str).map(String::from),
    })
}

/// Ready replicas of pool `name`, 0 when it is not listed.
fn ready_in(status: &ServiceStatus, name: &str) -> u64 {
    pool(status, name).map_or(0, |p| p.ready)
}

/// The `pool` of each listed replica, by id.
fn replica_pools(status: &ServiceStatus) -> Vec<(String, Option<String>)> {
    let replicas = status.raw.get("replicas").and_then(Value::as_array);
    replicas
        .into_iter()
        .flatten()
        .map(|r| {
            let field = |key: &str| r.get(key).and_then(Value::as_str).map(String::from);
            (field("id").unwrap_or_default(), field("pool"))
        })
        .collect()
}

/// A process pool running rouse-echo (or `command`), marked for cleanup.
fn process_pool(name: &str, max: u32, command: Option<&str>) -> String {
    let echo = rouse_e2e::bin("rouse-echo");
    let argv = match command {
        Some(program) => format!("[{program:?}]"),
        None => format!(
            "[{:?}, \"--port\", \"{{port}}\"]",
            echo.display().to_string()
        ),
    };
    format!(
        "        - name: {name}
          max_replicas: {max}
          process:
            command: {argv}
            env: {{ROUSE_E2E_MARKER: \"{{marker}}\"}}
"
    )
}

/// A docker pool of rouse-echo containers of the test image.
fn docker_pool(name: &str, max: u32) -> String {
    format!(
        "        - name: {name}
          max_replicas: {max}
          docker:
            image: \"rouse:dev\"
            command: [rouse-echo]
            args: [--bind, 0.0.0.0, --port, \"8080\"]
            port: 8080
            pull: never
            stop_timeout: \"5s\"
"
    )
}

/// The service: these pools, `prefer: first`, one request per replica,
/// short windows so scale-down comes within seconds (never to zero).
fn service_yaml(pools: &[String]) -> String {
    format!(
        "  - name: {SERVICE}
    hosts: [{HOST}]
    backend:
      prefer: first
      pools:
{}    readiness: {{http_get: /healthz}}
    scaling:
      min_replicas: 0
      max_replicas: 10
      target_concurrency: 1
      stable_window: \"3s\"
      panic_window: \"1s\"
      scale_down_step: \"1s\"
      scale_to_zero_after: \"300s\"
      drain_timeout: \"10s\"
    hold:
      timeout: \"60s\"
      max_requests: 1000
",
        pools.concat()
    )
}

/// `clients` clients sending `path` one after the other until stopped
/// (each at most 10,000 requests).
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Statuses>>,
}

impl Load {
    fn start(cluster: &Cluster, path: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..clients)
            .map(|_| {
                let (client, addr) = (cluster.client.clone(), cluster.proxy_addr(0));
                let (stop, path) = (Arc::clone(&stop), path.to_string());
                tokio::spawn(async move {
                    let mut statuses = Statuses::new();
                    for _ in 0..10_000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let resp = rouse_e2e::request(
                            &client,
                            reqwest::Method::GET,
                            addr,
                            HOST,
                            &path,
                            None,
                        )
                        .await;
                        let status = resp.map_or(0, |r| r.status);
                        *statuses.entry(status).or_insert(0) += 1;
                    }
                    statuses
                })
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the clients (each finishes its request) and counts the answers.
    async fn stop(self) -> Statuses {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Statuses::new();
        for worker in futures::future::join_all(self.workers).await {
            for (status, count) in worker.unwrap_or_default() {
                *total.entry(status).or_insert(0) += count;
            }
        }
        total
    }
}

/// Fails unless the service ran `a` replicas in pool `a` and `b` in pool
/// `b`, each replica naming its pool.
async fn expect_split(cluster: &Cluster, status: &ServiceStatus, a: u64, b: u64) {
    let pools = replica_pools(status);
    let named = |name: &str| {
        pools
            .iter()
            .filter(|(_, pool)| pool.as_deref() == Some(name))
            .count() as u64
    };
    let a_view = pool(status, "a").unwrap_or_default();
    let b_view = pool(status, "b").unwrap_or_default();
    if (a_view.replicas, b_view.replicas) != (a, b) || named("a") != a || named("b") != b {
        cluster
            .fail(&format!(
                "expected {a} replicas in pool a and {b} in pool b: {a_view:?}, {b_view:?}, {pools:?}"
            ))
            .await;
    }
}

/// Watches the scale-down after the load: fails if pool `a` loses a ready
/// replica while pool `b` still has one; returns once `b` is empty, with
/// what `a` still has.
async fn watch_drain_order(cluster: &Cluster, a_full: u64, limit: Duration) -> PoolView {
    let started = Instant::now();
    let mut seen = Vec::new();
    let rounds = limit.as_millis() / POLL_INTERVAL.as_millis().max(1) + 1;
    for _ in 0..rounds {
        if started.elapsed() > limit {
            break;
        }
        if let Some(status) = cluster.service_status(SERVICE).await {
            let (a, b) = (ready_in(&status, "a"), ready_in(&status, "b"));
            let b_view = pool(&status, "b").unwrap_or_default();
            if seen.last() != Some(&(a, b, b_view.replicas)) {
                seen.push((a, b, b_view.replicas));
            }
            if b > 0 && a < a_full {
                cluster
                    .fail(&format!(
                        "pool a lost a replica while pool b still had {b} ready; (a ready, b ready, b replicas) over time: {seen:?}"
                    ))
                    .await;
            }
            if b_view.replicas == 0 && b == 0 {
                return pool(&status, "a").unwrap_or_default();
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    cluster
        .fail(&format!(
            "pool b was not emptied within {limit:?}; (a ready, b ready, b replicas) over time: {seen:?}"
        ))
        .await
}

/// The controller's `/metrics` text.
async fn controller_metrics(cluster: &Cluster) -> String {
    let url = format!("http://{}/metrics", cluster.controller_admin());
    match cluster.client.get(&url).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Pool a (2) fills first, pool b (3) takes the overflow of 4 concurrent
/// slow requests; when the load stops, b is emptied while a still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_overflows_into_the_next_pool_which_drains_first() {
    let yaml = service_yaml(&[process_pool("a", 2, None), process_pool("b", 3, None)]);
    let cluster = Cluster::builder().raw_services(&yaml).start().await;
    let load = Load::start(&cluster, "/sleep/400", 4);
    let status = cluster
        .wait_status(
            SERVICE,
            "2 ready in pool a, 2 in pool b",
            Duration::from_secs(90),
            |s| ready_in(s, "a") == 2 && ready_in(s, "b") == 2,
        )
        .await;
    expect_split(&cluster, &status, 2, 2).await;
    let b = pool(&status, "b").unwrap_or_default();
    assert_eq!((b.backend.as_str(), b.error), ("process", None));
    cluster
        .wait_until(
            "rouse_controller_pool_replicas shows both pools",
            Duration::from_secs(10),
            || async {
                let text = controller_metrics(&cluster).await;
                ["a", "b"].iter().all(|p| {
                    text.contains(&format!(
                        "rouse_controller_pool_replicas{{service=\"{SERVICE}\",pool=\"{p}\"}} 2"
                    ))
                })
            },
        )
        .await;
    let statuses = load.stop().await;
    if load::failures(&statuses) > 0 {
        cluster
            .fail(&format!("requests failed: {statuses:?}"))
            .await;
    }
    let a = watch_drain_order(&cluster, 2, Duration::from_secs(60)).await;
    assert!(a.ready >= 1, "pool a still serves once b is empty: {a:?}");
}

/// Pool b's command does not exist: its error is reported, pool a's two
/// replicas serve the whole load, and b is tried again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_start_is_reported_and_the_others_serve() {
    let yaml = service_yaml(&[
        process_pool("a", 2, None),
        process_pool("b", 3, Some("/nonexistent/rouse-pool-b")),
    ]);
    let cluster = Cluster::builder().raw_services(&yaml).start().await;
    let load = Load::start(&cluster, "/sleep/300", 4);
    let status = cluster
        .wait_status(
            SERVICE,
            "a full, b's error shown",
            Duration::from_secs(90),
            |s| {
                ready_in(s, "a") == 2
                    && pool(s, "b")
                        .and_then(|b| b.error)
                        .is_some_and(|e| e.contains("/nonexistent/rouse-pool-b"))
            },
        )
        .await;
    expect_split(&cluster, &status, 2, 0).await;
    // Tried again after its backoff (each try logs its failure).
    cluster
        .wait_until("pool b is tried again", Duration::from_secs(60), || async {
            let logs = cluster.controller_logs();
            logs.matches("pool could not start replicas").count() >= 2
        })
        .await;
    let statuses = load.stop().await;
    let served = statuses.get(&200).copied().unwrap_or(0);
    if load::failures(&statuses) > 0 || served < 8 {
        cluster
            .fail(&format!("pool a should serve every request: {statuses:?}"))
            .await;
    }
    let status = cluster.service_status(SERVICE).await.unwrap_or_default();
    expect_split(&cluster, &status, 2, 0).await;
}

/// A different backend as the overflow: one local process first, then
/// containers on a private Docker engine (labelled with their pool); the
/// containers go first when the load stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_take_the_overflow_of_a_process_pool() {
    let engine = DockerEngine::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    engine
        .build_rouse_image("rouse:dev")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let yaml = service_yaml(&[process_pool("a", 1, None), docker_pool("b", 2)]);
    let cluster = Cluster::builder()
        .raw_services(&yaml)
        .docker_host(&engine.host())
        .start()
        .await;
    let load = Load::start(&cluster, "/sleep/400", 3);
    let status = cluster
        .wait_status(
            SERVICE,
            "1 ready process, 2 ready containers",
            Duration::from_secs(120),
            |s| ready_in(s, "a") == 1 && ready_in(s, "b") == 2,
        )
        .await;
    expect_split(&cluster, &status, 1, 2).await;
    assert_eq!(pool(&status, "b").unwrap_or_default().backend, "docker");
    let in_b = engine.running("rouse.pool=b");
    if in_b.len() != 2 {
        cluster
            .fail(&format!(
                "two running containers of pool b expected: {in_b:?}"
            ))
            .await;
    }
    let statuses = load.stop().await;
    if load::failures(&statuses) > 0 {
        cluster
            .fail(&format!("requests failed: {statuses:?}"))
            .await;
    }
    let a = watch_drain_order(&cluster, 1, Duration::from_secs(90)).await;
    assert_eq!(a.ready, 1, "the process still serves: {a:?}");
    rouse_e2e::wait_until(
        "pool b's containers are removed",
        Duration::from_secs(60),
        || {
            let none = engine.containers("rouse.pool=b").is_empty();
            async move { none }
        },
    )
    .await;
}
