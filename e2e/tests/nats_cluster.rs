//! rouse on a three-node NATS cluster loses a node under load: no request
//! fails, and no scale decision is lost.
//!
//! The stack runs on a routed cluster of three nats-servers with clustered
//! JetStream; the proxy and the controller get all three URLs and
//! `nats.replicas: 3`, so the endpoints bucket, the catalog and the events
//! stream are replicated R3. Steady load wakes one service; then the node
//! leading the events stream is SIGKILLed (it may also serve the controller
//! or the proxy, or lead a bucket: the test says which) and a second
//! service is woken at once, so its scale decision is published while the
//! stream elects a new leader. The load goes on until both sides are
//! connected again, the streams have leaders again and plenty more
//! requests were answered; every answer must be 200. When the load stops
//! both services must scale back to zero with the node still down, and all
//! four decisions must be stored in `ROUSE_EVENTS`, read back from a
//! surviving node: a decision dropped during the election would be missing
//! there. Last, the node comes back and the cluster is whole again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::RawMessageErrorKind;
use rouse_e2e::events::Scaled;
use rouse_e2e::{load, Cluster, Service};

/// Under steady load throughout.
const WARM: &str = "steady";
const WARM_HOST: &str = "steady.localhost";
/// Woken right after the kill.
const COLD: &str = "cold";
const COLD_HOST: &str = "cold.localhost";
const NODES: usize = 3;
/// Answered requests wanted after the kill, before the load stops: at one
/// request every 20 ms, several seconds of it.
const AFTER_KILL: f64 = 150.0;
const EVENTS_STREAM: &str = "ROUSE_EVENTS";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_nats_node_under_load_fails_no_request_and_loses_no_scale_decision() {
    let mut cluster = Cluster::builder()
        .nats_cluster(NODES)
        .service(
            Service::new(WARM, WARM_HOST)
                .scale_to_zero_after("3s")
                .drain_timeout("5s"),
        )
        .service(
            Service::new(COLD, COLD_HOST)
                .scale_to_zero_after("3s")
                .drain_timeout("5s")
                .hold_timeout("60s"),
        )
        .start()
        .await;

    // Where the time goes, for a slow run (nothing is asserted on it).
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());

    // Steady load from the first request: a cold start, then warm ones.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load::sequential_until(cluster.proxy_addr(0), WARM_HOST, "/", stop.clone());
    cluster
        .wait_status(
            WARM,
            "scaled up to 1 ready replica under the load",
            Duration::from_secs(60),
            |s| s.ready >= 1 && s.proxies == 1,
        )
        .await;

    // The victim: the leader of the events stream, so that the next scale
    // decision is published while the stream elects a new one.
    let victim_name = cluster
        .poll_until(
            "ROUSE_EVENTS has a leader",
            Duration::from_secs(30),
            || async { cluster.nats_cluster()?.stream_leader(EVENTS_STREAM).await },
        )
        .await;
    let (victim, roles) = {
        let nats = cluster.nats_cluster().expect("built on a cluster");
        let victim = nats.index_of(&victim_name).expect("a leader is a node");
        let mut roles = vec![format!("leader of {EVENTS_STREAM}")];
        for stream in ["KV_rouse-endpoints", "KV_rouse-services"] {
            if nats.stream_leader(stream).await.as_deref() == Some(victim_name.as_str()) {
                roles.push(format!("leader of {stream}"));
            }
        }
        for client in ["rouse-controller", "rouse-proxy"] {
            if nats.serving(client).await.contains(&victim) {
                roles.push(format!("serving {client}"));
            }
        }
        (victim, roles)
    };
    phase(&format!(
        "killing NATS node {victim} ({victim_name}): {roles:?}"
    ));
    let answered_before = answered(&cluster).await;
    cluster.kill_nats_node(victim).await;

    // A cold start at once: its scale decision meets the election.
    let cold = tokio::spawn({
        let client = cluster.client.clone();
        let proxy = cluster.proxy_addr(0);
        async move {
            rouse_e2e::http::request(&client, reqwest::Method::GET, proxy, COLD_HOST, "/", None)
                .await
        }
    });

    // The load goes on until everything is back on the two nodes left.
    cluster
        .wait_until(
            "the controller and the proxy are connected to surviving nodes",
            Duration::from_secs(60),
            || async {
                let Some(nats) = cluster.nats_cluster() else {
                    return false;
                };
                let controller = nats.serving("rouse-controller").await;
                let proxy = nats.serving("rouse-proxy").await;
                !controller.is_empty() && !proxy.is_empty()
            },
        )
        .await;
    for stream in [EVENTS_STREAM, "KV_rouse-endpoints", "KV_rouse-services"] {
        let leader = cluster
            .poll_until(
                &format!("stream {stream} has a live leader"),
                Duration::from_secs(60),
                || async { cluster.nats_cluster()?.stream_leader(stream).await },
            )
            .await;
        phase(&format!("stream {stream} leader after the kill: {leader}"));
    }
    phase("both sides connected, every stream led");
    let cold = cold.await.expect("the cold request task panicked");
    phase("the cold request was answered");
    match cold {
        Ok(resp) if resp.status == 200 && resp.cold_start() => {}
        Ok(resp) => {
            cluster
                .fail(&format!("cold start during the election: {resp}"))
                .await
        }
        Err(e) => {
            cluster
                .fail(&format!("cold start during the election: {e:#}"))
                .await
        }
    }
    cluster
        .wait_status(
            WARM,
            "the proxy reports to the controller again",
            Duration::from_secs(60),
            |s| s.proxies == 1 && s.ready >= 1,
        )
        .await;
    phase("the proxy reports again");
    cluster
        .wait_until(
            "plenty more requests answered after the kill",
            Duration::from_secs(60),
            || async { answered(&cluster).await >= answered_before + AFTER_KILL },
        )
        .await;
    phase("stopping the load");
    stop.store(true, Ordering::SeqCst);
    let outcome = traffic.await.expect("the load task panicked");
    cluster
        .expect_no_failed_traffic("while a NATS node was killed", outcome)
        .await;

    // Idle now, with the node still down: both back to zero.
    for service in [WARM, COLD] {
        cluster
            .wait_status(
                service,
                "ready 0 and desired 0 after the load stopped, last_scale to 0",
                Duration::from_secs(60),
                |s| {
                    let last_to = s.last_scale.as_ref().and_then(|v| v.get("to")?.as_u64());
                    s.ready == 0 && s.desired == 0 && last_to == Some(0)
                },
            )
            .await;
    }
    cluster
        .wait_until(
            "no replica process is left",
            Duration::from_secs(30),
            || async { cluster.replica_pids().is_empty() },
        )
        .await;

    phase("both services at zero, no replica left");

    // Every decision is stored in the replicated stream.
    let survivor = (victim + 1) % NODES;
    let url = cluster
        .nats_cluster()
        .expect("built on a cluster")
        .url(survivor);
    let client = match async_nats::connect(url.as_str()).await {
        Ok(client) => client,
        Err(e) => cluster.fail(&format!("connect to {url}: {e}")).await,
    };
    let js = async_nats::jetstream::new(client);
    for service in [WARM, COLD] {
        let events = cluster
            .poll_until(
                &format!("ROUSE_EVENTS holds {service}'s scale-up from 0 and scale-down to 0"),
                Duration::from_secs(60),
                || async {
                    let events = stored_events(&js, service).await.ok()?;
                    let up = events.iter().any(|e| e.from == 0 && e.to >= 1);
                    let down = events.iter().any(|e| e.from >= 1 && e.to == 0);
                    (up && down).then_some(events)
                },
            )
            .await;
        phase(&format!("stored scale decisions of {service}: {events:?}"));
    }

    // The killed node comes back and the cluster is whole again.
    if let Err(e) = cluster.restart_nats_node(victim).await {
        cluster
            .fail(&format!("restarting NATS node {victim}: {e:#}"))
            .await;
    }
    phase("the killed node is back");
    cluster
        .poll_until(
            "the cluster agrees on a JetStream meta leader with every node back",
            Duration::from_secs(60),
            || async { cluster.nats_cluster()?.meta_leader().await },
        )
        .await;
}

/// Requests the proxy answered 200 for the service so far.
async fn answered(cluster: &Cluster) -> f64 {
    let Ok(text) = cluster.proxy_metrics(0).await else {
        return 0.0;
    };
    text.lines()
        .filter(|line| {
            line.starts_with("rouse_requests_total{")
                && line.contains(&format!("service=\"{WARM}\""))
                && line.contains("code=\"200\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every `scaled` event of `service` stored in the events stream, read
/// message by message from the stream's leader: no consumer to create,
/// which on a cluster with a node down can take a while to deliver.
async fn stored_events(
    js: &async_nats::jetstream::Context,
    service: &str,
) -> anyhow::Result<Vec<Scaled>> {
    let mut stream = js.get_stream(EVENTS_STREAM).await?;
    let state = stream.info().await?.state.clone();
    let subject = format!("rouse.scaled.{service}");
    let mut events = Vec::new();
    // Bounded: the test stores a handful of events.
    let last = state.last_sequence.min(state.first_sequence + 10_000);
    for sequence in state.first_sequence..=last {
        let message = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            // A gap (a deleted message) is no event.
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => continue,
            Err(err) => return Err(err.into()),
        };
        if message.subject.as_str() == subject {
            events.push(serde_json::from_slice(&message.payload)?);
        }
    }
    Ok(events)
}
