//! Services added, changed and removed while rouse runs: definitions in the
//! NATS KV bucket `rouse-services`, pins in `rouse-pins`, and the config
//! file re-read on SIGHUP. Real nats-server, real rouse-proxy and
//! rouse-controller, real rouse-echo replicas; the buckets are written as a
//! plain NATS client would (`rouse_e2e::catalog`).

use std::time::Duration;

use reqwest::Method;
use rouse_e2e::catalog::{echo_service_yaml, echo_spec, Catalog};
use rouse_e2e::fault::{self, Tally};
use rouse_e2e::{http, Cluster, Resp, Service};
use serde_json::json;
use tokio::task::JoinHandle;

const STEADY: &str = "steady.localhost";
const LATE: &str = "late.localhost";

/// The proxy's `rouse_bus_rejected_total` (it has no labels).
async fn bus_rejected(cluster: &Cluster) -> f64 {
    let text = cluster.proxy_metrics(0).await.expect("proxy metrics");
    text.lines()
        .find_map(|line| line.strip_prefix("rouse_bus_rejected_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("rouse_bus_rejected_total is exported")
}

/// The first 200 from `host` once its service is defined (404 until then).
async fn first_200(cluster: &Cluster, host: &str) -> rouse_e2e::Resp {
    cluster
        .poll_until(
            &format!("{host} answers 200"),
            Duration::from_secs(60),
            || async {
                let resp = cluster.get(host, "/").await;
                (resp.status == 200).then_some(resp)
            },
        )
        .await
}

/// Every answer of a load was a 200 from a replica, and there were enough.
fn assert_nothing_failed(records: &[fault::Record], during: &str) {
    assert!(
        records.len() > 50,
        "too little traffic to judge {during}: {}",
        records.len()
    );
    let failed = fault::failed(records);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed {during}: {:?}",
        failed.len(),
        records.len(),
        &failed[..failed.len().min(5)]
    );
}

/// The done-when of the catalog: a service deployed while another is under
/// load starts from zero and serves, and removing it again stops its
/// replicas; the loaded service loses nothing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deployed_and_removed_under_load_costs_the_others_nothing() {
    let cluster = Cluster::start(vec![Service::new("steady", STEADY)
        .min_replicas(1)
        .target_concurrency(100)])
    .await;
    cluster
        .wait_status("steady", "ready 1", Duration::from_secs(30), |s| {
            s.ready == 1
        })
        .await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let load = Tally::start(&cluster.client, cluster.proxy_addr(0), STEADY, "/", 4);
    assert!(
        load.wait_more(50, Duration::from_secs(30)).await,
        "load started"
    );

    catalog
        .deploy(&echo_spec("late", "late.localhost", &cluster.marker))
        .await
        .expect("deploy");
    let first = first_200(&cluster, "late.localhost").await;
    assert!(first.text().contains("handled by"), "{first}");
    cluster
        .wait_status("late", "ready 1", Duration::from_secs(30), |s| s.ready == 1)
        .await;
    assert!(load.wait_more(50, Duration::from_secs(30)).await);

    catalog.remove("late").await.expect("remove");
    cluster
        .wait_until(
            "the removed service's host is 404 and its status gone",
            Duration::from_secs(30),
            || async {
                cluster.get("late.localhost", "/").await.status == 404
                    && cluster.service_status("late").await.is_none()
            },
        )
        .await;
    cluster
        .wait_until(
            "only the loaded service's replica is left",
            Duration::from_secs(30),
            || async { cluster.replica_pids().len() == 1 },
        )
        .await;
    assert!(load.wait_more(50, Duration::from_secs(30)).await);
    let records = load.finish().await;
    assert_nothing_failed(&records, "while another service was deployed and removed");
    let steady = cluster.service_status("steady").await.expect("steady");
    assert_eq!(steady.ready, 1, "the loaded service kept its replica");
}

/// Definitions that conflict change nothing: one naming a service of the
/// file, one routing a host the file already routes, and bytes that are no
/// definition at all. The file's service keeps serving, the proxy says why
/// it refused each one, and a good definition after them still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_or_broken_definitions_are_refused_and_change_nothing() {
    let cluster = Cluster::start(vec![Service::new("steady", STEADY).min_replicas(1)]).await;
    cluster
        .wait_status("steady", "ready 1", Duration::from_secs(30), |s| {
            s.ready == 1
        })
        .await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let rejected_before = bus_rejected(&cluster).await;

    // The file's own service, redefined through the bucket.
    catalog
        .deploy(&echo_spec("steady", "hijack.localhost", &cluster.marker))
        .await
        .expect("deploy");
    // Another name on the file service's host.
    catalog
        .deploy(&echo_spec("thief", STEADY, &cluster.marker))
        .await
        .expect("deploy");
    catalog
        .put_raw("garbage", b"{not json".to_vec())
        .await
        .expect("put");
    // A good one after them: once it routes, the others have been seen.
    catalog
        .deploy(&echo_spec("fine", "fine.localhost", &cluster.marker))
        .await
        .expect("deploy");
    cluster
        .wait_status(
            "fine",
            "known to the controller",
            Duration::from_secs(30),
            |_| true,
        )
        .await;
    cluster
        .wait_until(
            "the proxy logged both refusals, counted the garbage and routes fine",
            Duration::from_secs(30),
            || async {
                let logs = cluster.proxy_logs(0);
                // The proxy follows the bucket on its own watch: the
                // controller knowing `fine` says nothing of the proxy.
                logs.contains("the config file defines this service")
                    && logs.contains("already routed to service `steady`")
                    && bus_rejected(&cluster).await > rejected_before
                    && cluster.proxy_metric(0, "rouse_held", "fine").await == Some(0.0)
            },
        )
        .await;

    assert_eq!(cluster.get("hijack.localhost", "/").await.status, 404);
    let ok = cluster.get_ok(STEADY, "/").await;
    assert!(
        !ok.cold_start(),
        "the file's service served as before: {ok}"
    );
    assert!(cluster.service_status("thief").await.is_none());
    // The good one, and nothing of the rest, runs: woken by a request.
    let fine = cluster.get_ok("fine.localhost", "/").await;
    assert!(fine.cold_start(), "{fine}");
    let steady = cluster.service_status("steady").await.expect("steady");
    assert_eq!(steady.ready, 1);
}

/// SIGHUP re-reads the file's services in both binaries: a service added
/// to the file starts serving, a file that no longer validates changes
/// nothing, and a service taken out of the file is removed. The controller
/// also mirrors the file into the bucket (`source: file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_services_of_the_file() {
    let mut cluster = Cluster::start(vec![Service::new("steady", STEADY).min_replicas(1)]).await;
    cluster
        .wait_status("steady", "ready 1", Duration::from_secs(30), |s| {
            s.ready == 1
        })
        .await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let seeded = cluster
        .poll_until(
            "the controller seeded the bucket",
            Duration::from_secs(30),
            || async { catalog.record("steady").await.ok().flatten() },
        )
        .await;
    assert_eq!(seeded["source"], "file", "{seeded}");

    let files = vec![
        cluster.controller_config().to_path_buf(),
        cluster.proxies[0].config_path.clone(),
    ];
    let originals: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("read config"))
        .collect();
    let added = echo_service_yaml("added", "added.localhost", &cluster.marker);
    for (file, original) in files.iter().zip(&originals) {
        assert!(
            original.ends_with('\n'),
            "services are the file's last section"
        );
        std::fs::write(file, format!("{original}{added}")).expect("write config");
    }
    cluster.controller_proc().sighup();
    cluster.proxy_proc(0).sighup();
    let resp = first_200(&cluster, "added.localhost").await;
    assert!(resp.cold_start(), "{resp}");
    let mirrored = cluster
        .poll_until(
            "the added service is mirrored",
            Duration::from_secs(30),
            || async { catalog.record("added").await.ok().flatten() },
        )
        .await;
    assert_eq!(mirrored["source"], "file");

    // A broken file: logged, and nothing changes.
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        std::fs::write(file, text.replace("name: added", "name: Added!")).expect("write");
    }
    cluster.controller_proc().sighup();
    cluster.proxy_proc(0).sighup();
    cluster
        .wait_until(
            "both logged the refusal",
            Duration::from_secs(30),
            || async {
                cluster.controller_logs().contains("config reload refused")
                    && cluster.proxy_logs(0).contains("config reload refused")
            },
        )
        .await;
    assert_eq!(cluster.get("added.localhost", "/").await.status, 200);

    // Back to the original file: the added service goes.
    for (file, original) in files.iter().zip(&originals) {
        std::fs::write(file, original).expect("write");
    }
    cluster.controller_proc().sighup();
    cluster.proxy_proc(0).sighup();
    cluster
        .wait_until(
            "the service taken out of the file is gone everywhere",
            Duration::from_secs(30),
            || async {
                cluster.get("added.localhost", "/").await.status == 404
                    && cluster.service_status("added").await.is_none()
                    && catalog.record("added").await.ok().flatten().is_none()
                    && cluster.replica_pids().len() == 1
            },
        )
        .await;
    assert!(!cluster.get_ok(STEADY, "/").await.cold_start());
}

/// A pin fixes the replica count whatever the traffic: pinned to 2 with no
/// request at all, 2 replicas run and the status says pinned; unpinned, the
/// idle service goes back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_holds_the_count_and_unpinning_hands_it_back() {
    let cluster = Cluster::start(vec![Service::new("pinned", "pinned.localhost")
        .max_replicas(3)
        .scale_to_zero_after("2s")])
    .await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    catalog.pin("pinned", 2).await.expect("pin");
    let status = cluster
        .wait_status(
            "pinned",
            "2 ready while pinned",
            Duration::from_secs(60),
            |s| s.ready == 2,
        )
        .await;
    assert_eq!(status.raw["pinned"], 2, "{}", status.raw);
    assert_eq!(
        status
            .last_scale
            .as_ref()
            .and_then(|e| e["reason"].as_str()),
        Some("pinned"),
        "{:?}",
        status.last_scale
    );
    // Idle well past scale_to_zero_after, still 2.
    rouse_e2e::assert_stays(
        "2 replicas while pinned",
        Duration::from_secs(4),
        || async {
            cluster
                .service_status("pinned")
                .await
                .is_some_and(|s| s.ready == 2)
        },
    )
    .await;
    catalog.unpin("pinned").await.expect("unpin");
    let status = cluster
        .wait_status("pinned", "back to zero", Duration::from_secs(60), |s| {
            s.ready == 0 && s.desired == 0
        })
        .await;
    assert!(status.raw.get("pinned").is_none(), "{}", status.raw);
}

/// A stack where `late` (kept warm, draining for up to a minute) was
/// removed while a 10 s request was in flight on its one replica; returns
/// once the controller shows that replica draining, with the stack, the
/// catalog, the request and the replica's pid.
struct Removed {
    cluster: Cluster,
    catalog: Catalog,
    slow: JoinHandle<anyhow::Result<Resp>>,
    pids: Vec<u32>,
}

async fn removed_with_a_slow_request_in_flight() -> Removed {
    let cluster = Cluster::start(vec![Service::new("steady", STEADY)]).await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let mut spec = echo_spec("late", LATE, &cluster.marker);
    spec["scaling"]["scale_to_zero_after"] = json!("300s");
    spec["scaling"]["drain_timeout"] = json!("60s");
    catalog.deploy(&spec).await.expect("deploy");
    first_200(&cluster, LATE).await;
    cluster
        .wait_status("late", "ready 1", Duration::from_secs(30), |s| s.ready == 1)
        .await;
    let pids = cluster.replica_pids();
    assert_eq!(pids.len(), 1, "one replica: {pids:?}");
    let (client, addr) = (cluster.client.clone(), cluster.proxy_addr(0));
    let slow = tokio::spawn(async move {
        http::request(&client, Method::GET, addr, LATE, "/sleep/10000", None).await
    });
    cluster
        .wait_until(
            "the slow request is in flight at the proxy",
            Duration::from_secs(30),
            || async { cluster.proxy_metric(0, "rouse_in_flight", "late").await == Some(1.0) },
        )
        .await;
    catalog.remove("late").await.expect("remove");
    cluster
        .wait_status(
            "late",
            "its replica draining",
            Duration::from_secs(30),
            |s| s.replicas.iter().any(|r| r.state == "draining"),
        )
        .await;
    Removed {
        cluster,
        catalog,
        slow,
        pids,
    }
}

/// Removing a service loses nothing it has in flight: new requests get 404
/// at once, while its replica drains (the proxy finishes the request it
/// has on it) and is stopped only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_service_finishes_its_requests_in_flight_before_its_replica_stops() {
    let Removed {
        cluster,
        slow,
        pids,
        ..
    } = removed_with_a_slow_request_in_flight().await;
    assert_eq!(
        cluster.get(LATE, "/").await.status,
        404,
        "a removed service takes no new request"
    );
    assert_eq!(
        cluster.replica_pids(),
        pids,
        "the replica runs while it drains"
    );
    let answer = slow.await.expect("request task");
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            cluster
                .fail(&format!("the request in flight failed: {e:#}"))
                .await
        }
    };
    assert_eq!(
        answer.status, 200,
        "the request in flight finished: {answer}"
    );
    assert_eq!(
        answer.text(),
        "slept 10000ms",
        "answered by the replica: {answer}"
    );
    cluster
        .wait_until(
            "the drained replica is stopped and the status gone",
            Duration::from_secs(30),
            || async {
                cluster.replica_pids().is_empty() && cluster.service_status("late").await.is_none()
            },
        )
        .await;
}

/// A service defined again while its replica drains gets that replica
/// back: no new process, no cold start, and the request in flight
/// finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_defined_again_while_it_drains_keeps_its_replica() {
    let Removed {
        cluster,
        catalog,
        slow,
        pids,
    } = removed_with_a_slow_request_in_flight().await;
    let mut spec = echo_spec("late", LATE, &cluster.marker);
    spec["scaling"]["scale_to_zero_after"] = json!("300s");
    catalog.deploy(&spec).await.expect("deploy again");
    // Held, if at all, only while the new loop takes the replica over.
    let again = first_200(&cluster, LATE).await;
    cluster
        .wait_status("late", "ready 1 again", Duration::from_secs(30), |s| {
            s.ready == 1 && s.replicas.iter().all(|r| r.state == "ready")
        })
        .await;
    assert_eq!(cluster.replica_pids(), pids, "the same replica process");
    let answer = slow
        .await
        .expect("request task")
        .expect("the request in flight");
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        again.header("x-echo-replica"),
        answer.header("x-echo-replica"),
        "the service defined again is served by the replica that drained"
    );
}

/// A request held for a service that is removed before a replica is ready
/// gets the 404 of an unknown service at once, not a 503 after its hold
/// timeout; the replica that was starting is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_for_a_removed_service_is_answered_404_at_once() {
    let cluster = Cluster::start(vec![Service::new("steady", STEADY)]).await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let mut spec = echo_spec("late", LATE, &cluster.marker);
    if let Some(command) = spec["backend"]["process"]["command"].as_array_mut() {
        command.extend([json!("--startup-delay"), json!("600s")]);
    }
    spec["hold"]["timeout"] = json!("600s");
    catalog.deploy(&spec).await.expect("deploy");
    cluster
        .wait_until(
            "the proxy routes the new service",
            Duration::from_secs(30),
            || async { cluster.proxy_metric(0, "rouse_held", "late").await == Some(0.0) },
        )
        .await;
    let (client, addr) = (cluster.client.clone(), cluster.proxy_addr(0));
    let held =
        tokio::spawn(
            async move { http::request(&client, Method::GET, addr, LATE, "/", None).await },
        );
    cluster
        .wait_until("the request is held", Duration::from_secs(30), || async {
            cluster.proxy_metric(0, "rouse_held", "late").await == Some(1.0)
        })
        .await;
    catalog.remove("late").await.expect("remove");

    let answer = match tokio::time::timeout(Duration::from_secs(60), held).await {
        Ok(answer) => answer.expect("request task").expect("an answer"),
        Err(_) => {
            cluster
                .fail("the held request was still waiting 60 s after the removal")
                .await
        }
    };
    assert_eq!(answer.status, 404, "{answer}");
    assert!(
        answer.text().contains("service late was removed"),
        "{answer}"
    );
    cluster
        .wait_until(
            "the starting replica is stopped and the status gone",
            Duration::from_secs(60),
            || async {
                cluster.replica_pids().is_empty() && cluster.service_status("late").await.is_none()
            },
        )
        .await;
}
