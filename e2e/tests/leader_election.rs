//! Controller HA with the NATS KV lease: two controllers on one state dir,
//! one leads; SIGKILL the leader and the standby takes over within the
//! lease's duration, adopting the replicas it finds (pid files) instead of
//! starting new ones, while warm traffic never notices.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use rouse_e2e::catalog::{echo_service_yaml, echo_spec, Catalog};
use rouse_e2e::http::{self, ServiceStatus};
use rouse_e2e::{assert_stays, load, poll_until, Cluster, Service};
use serde_json::json;

const HOST: &str = "ha.localhost";

async fn status_at(admin: SocketAddr, name: &str) -> Option<ServiceStatus> {
    let doc = http::services(admin).await.ok()?;
    ServiceStatus::find(&doc, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_without_doubling_replicas() {
    let mut cluster = Cluster::builder()
        .service(
            Service::new("ha", HOST)
                .scale_to_zero_after("300s")
                .max_replicas(2),
        )
        .controller_key(
            "leader_election",
            "{lease: nats, duration: 4s, retry_period: 500ms}",
        )
        // The leader's replicas are the standby's to adopt, not to stop.
        .controller_key("on_shutdown", "keep")
        .standby_controllers(1)
        .start()
        .await;
    let leader_admin = cluster.controller_admin();
    let (_, standby_admin) = cluster.standby(0);

    assert_eq!(
        http::controller_leader(leader_admin).await,
        Some(1.0),
        "the first controller leads"
    );
    assert_eq!(
        http::controller_leader(standby_admin).await,
        Some(0.0),
        "the second stands by"
    );
    cluster.get_ok(HOST, "/").await;
    cluster
        .wait_status("ha", "ready 1", Duration::from_secs(30), |s| s.ready == 1)
        .await;
    let pids = cluster.replica_pids();
    assert_eq!(pids.len(), 1, "one replica process: {pids:?}");
    // A standby runs no service loop at all.
    let standby_view = http::services(standby_admin).await.expect("standby status");
    assert!(
        ServiceStatus::find(&standby_view, "ha").is_none(),
        "a standby must not report (or run) services: {standby_view}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load::sequential_until(cluster.proxy_addr(0), HOST, "/", Arc::clone(&stop));
    let killed = Instant::now();
    cluster.kill_controller().await;
    poll_until("the standby leads", Duration::from_secs(15), || async {
        (http::controller_leader(standby_admin).await == Some(1.0)).then_some(())
    })
    .await;
    let took_over = killed.elapsed();
    let status = poll_until(
        "the new leader reports the replica ready",
        Duration::from_secs(15),
        || async {
            // Adoption shows the replica ready a pass before the loop has
            // decided its count.
            status_at(standby_admin, "ha")
                .await
                .filter(|s| s.ready == 1 && s.desired == 1)
        },
    )
    .await;
    assert_eq!(status.desired, 1, "{:?}", status.raw);
    assert_eq!(
        cluster.replica_pids(),
        pids,
        "the new leader adopts the replica: none started, none lost"
    );
    let marker = cluster.marker.clone();
    assert_stays(
        "the replica process set stays unchanged under the new leader",
        Duration::from_secs(3),
        || {
            let same = rouse_e2e::replica_pids(&marker) == pids;
            async move { same }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let outcome = traffic.await.expect("traffic task");
    cluster
        .expect_no_failed_traffic(&format!("in the hand-over (took {took_over:?})"), outcome)
        .await;
}

/// A leader and a standby on a 60 s lease, for `name` on `<name>.localhost`
/// kept warm: only a released lease explains a quick take-over.
async fn two_controllers_on_a_long_lease(name: &str) -> Cluster {
    Cluster::builder()
        .service(Service::new(name, &format!("{name}.localhost")).scale_to_zero_after("300s"))
        .controller_key(
            "leader_election",
            "{lease: nats, duration: 60s, retry_period: 500ms}",
        )
        .controller_key("on_shutdown", "keep")
        .standby_controllers(1)
        .start()
        .await
}

/// SIGTERMs the leader, which must exit 0, and waits until the standby at
/// `standby_admin` leads, long before the lease could run out.
async fn stop_the_leader(cluster: &mut Cluster, standby_admin: SocketAddr) {
    let status = cluster.stop_controller(Duration::from_secs(30)).await;
    assert!(status.success(), "the leader exits 0 on SIGTERM: {status}");
    poll_until(
        "the standby leads long before the 60 s lease ran out",
        Duration::from_secs(20),
        || async { (http::controller_leader(standby_admin).await == Some(1.0)).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_at_once() {
    let mut cluster = two_controllers_on_a_long_lease("ha-term").await;
    let (_, standby_admin) = cluster.standby(0);
    assert_eq!(http::controller_leader(standby_admin).await, Some(0.0));
    stop_the_leader(&mut cluster, standby_admin).await;
    // It serves: a cold request is scaled up by the new leader.
    let resp = http::get(cluster.proxy_addr(0), "ha-term.localhost", "/").await;
    assert_eq!(resp.status, 200, "{resp}");
}

/// SIGHUP reaches a standby too: it does not end it, and the services it
/// re-read are the ones it runs once it leads, seeded into the catalog so
/// the proxies learn them (the proxy's own file never has the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reloads_on_sighup_and_runs_what_it_read_once_it_leads() {
    let mut cluster = two_controllers_on_a_long_lease("ha-hup").await;
    let config = cluster.dir().join("controller-1.yaml");
    let original = std::fs::read_to_string(&config).expect("read the standby's config");
    assert!(
        original.ends_with('\n'),
        "services are the file's last section"
    );
    let added = echo_service_yaml("added", "added.localhost", &cluster.marker);
    std::fs::write(&config, format!("{original}{added}")).expect("write the standby's config");
    let (standby, standby_admin) = cluster.standby(0);
    standby.sighup();
    poll_until(
        "the standby reloads its file",
        Duration::from_secs(15),
        || {
            let reloaded = standby.logs().contains("config file services reloaded");
            async move { reloaded.then_some(()) }
        },
    )
    .await;
    assert!(standby.is_running(), "SIGHUP does not end a standby");
    assert_eq!(http::controller_leader(standby_admin).await, Some(0.0));

    stop_the_leader(&mut cluster, standby_admin).await;
    let proxy = cluster.proxy_addr(0);
    let resp = poll_until(
        "the service the standby re-read answers",
        Duration::from_secs(30),
        || async move {
            let resp = http::get(proxy, "added.localhost", "/").await;
            (resp.status == 200).then_some(resp)
        },
    )
    .await;
    assert!(resp.cold_start(), "started by the new leader: {resp}");
}

/// A leader that dies while a removed service drains leaves the drain to
/// the next one (KV `rouse-removals`): the new leader finishes the
/// removal, so the replica is stopped once the request in flight on it is
/// done, instead of running on with no loop to ever stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_a_killed_leader_began_is_finished_by_the_next_leader() {
    const LATE: &str = "late.localhost";
    let mut cluster = Cluster::builder()
        .service(Service::new("steady", "steady.localhost"))
        .controller_key(
            "leader_election",
            "{lease: nats, duration: 4s, retry_period: 500ms}",
        )
        .controller_key("on_shutdown", "keep")
        .standby_controllers(1)
        .start()
        .await;
    let (_, standby_admin) = cluster.standby(0);
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let mut spec = echo_spec("late", LATE, &cluster.marker);
    spec["scaling"]["scale_to_zero_after"] = json!("300s");
    spec["scaling"]["drain_timeout"] = json!("120s");
    catalog.deploy(&spec).await.expect("deploy");
    let proxy = cluster.proxy_addr(0);
    poll_until(
        "the deployed service answers",
        Duration::from_secs(60),
        || async move { (http::get(proxy, LATE, "/").await.status == 200).then_some(()) },
    )
    .await;
    cluster
        .wait_status("late", "ready 1", Duration::from_secs(30), |s| s.ready == 1)
        .await;
    let pids = cluster.replica_pids();
    assert_eq!(pids.len(), 1, "one replica: {pids:?}");
    let client = cluster.client.clone();
    let slow = tokio::spawn(async move {
        http::request(&client, Method::GET, proxy, LATE, "/sleep/8000", None).await
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

    cluster.kill_controller().await;
    poll_until("the standby leads", Duration::from_secs(20), || async {
        (http::controller_leader(standby_admin).await == Some(1.0)).then_some(())
    })
    .await;
    let answer = slow
        .await
        .expect("request task")
        .expect("the request in flight across the hand-over");
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.text(), "slept 8000ms", "{answer}");
    cluster
        .wait_until(
            "the new leader stops the drained replica and forgets the service",
            Duration::from_secs(60),
            || async {
                cluster.replica_pids().is_empty()
                    && status_at(standby_admin, "late").await.is_none()
            },
        )
        .await;
}
