//! The reconcile loop end to end on a paused tokio clock: a scripted
//! backend, a scripted prober and an in-memory publisher stand in for
//! processes, probes and NATS, so every story below runs in virtual time and
//! checks exactly what the proxies would see.

mod fakes;
mod harness;
mod pools;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_nats::config::ServiceConfig;
use rouse_nats::messages::{Endpoint, EndpointSet, EndpointState, VERSION};
use rouse_nats::Config;

use super::{now, Retire};
use crate::backend::{Health, Readiness};
use harness::Harness;

pub const SERVICE: &str = "echo";

/// A service that scales to zero 5 s after its last request, drains for at
/// most 10 s and replaces replicas not ready within 10 s.
fn service() -> ServiceConfig {
    let yaml = format!(
        "services:
  - name: {SERVICE}
    hosts: [echo.localhost]
    backend: {{process: {{command: [x], startup_timeout: 10s}}}}
    readiness: {{http_get: /healthz, period: 1s}}
    scaling:
      stable_window: 2s
      scale_to_zero_after: 5s
      scale_down_step: 1s
      drain_timeout: 10s
"
    );
    let config = Config::parse(Path::new("test.yaml"), &yaml).expect("test config is valid");
    config.services[0].clone()
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---- the stories ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_wake_at_zero_starts_one_replica_and_publishes_it_once_ready() {
    let mut h = Harness::new();
    h.start();
    h.wake();
    assert!(h.until(secs(5), |h| h.backend.running().len() == 1).await);
    // Started is not ready: the proxies must not see it yet.
    tokio::time::sleep(secs(2)).await;
    assert!(h.endpoints(EndpointState::Ready).is_empty());
    let status = h.status().expect("status written");
    assert_eq!((status.desired, status.ready), (1, 0));
    assert_eq!(status.replicas[0].state, "starting");

    let id = h.backend.running()[0].clone();
    let addr = h.backend.state().replicas[&id].addr.clone();
    h.prober.pass(&addr);
    assert!(
        h.until(secs(1), |h| h.endpoints(EndpointState::Ready)
            == [id.clone()])
            .await
    );
    let set = h.publisher.current().expect("a set");
    assert_eq!(set.endpoints[0].addr, addr);
    assert_eq!(h.publisher.events(), [(0, 1, "wake".to_string())]);
    assert!(
        h.until(secs(1), |h| h.status().is_some_and(|s| s.ready == 1))
            .await
    );
    // One start, not one per pass.
    assert_eq!(h.backend.state().ensure_calls.len(), 1);
    h.stop().await;
}

/// In flight per endpoint as a proxy would report it while 2 → 1: five on
/// each ready replica, `on_draining` on a draining one.
fn split(h: &Harness, on_draining: u64) -> Vec<(String, u64)> {
    let ready = h
        .endpoints(EndpointState::Ready)
        .into_iter()
        .map(|id| (id, 5));
    let draining = h
        .endpoints(EndpointState::Draining)
        .into_iter()
        .map(|id| (id, on_draining));
    ready.chain(draining).collect()
}

#[tokio::test(start_paused = true)]
async fn scale_down_drains_and_stops_only_once_the_proxies_are_done() {
    let mut h = Harness::new();
    h.start();
    h.warm_two().await;

    // Ten in flight need one replica: one of the two is drained, not
    // stopped, while the proxy still has a request on it.
    let one = |h: &Harness| split(h, 1);
    assert!(
        h.reporting_until(secs(30), one, |h| h
            .endpoints(EndpointState::Draining)
            .len()
            == 1)
            .await,
        "one replica is marked draining"
    );
    let draining = h.endpoints(EndpointState::Draining)[0].clone();
    let draining_generation = h.publisher.current().expect("set").generation;
    assert!(
        !h.reporting_until(secs(5), one, |h| !h.backend.state().stopped.is_empty())
            .await,
        "a replica with a request in flight is not stopped"
    );
    assert_eq!(h.backend.running().len(), 2);

    // The proxy reports it done, on the draining generation: stopped.
    let done = |h: &Harness| split(h, 0);
    assert!(
        h.reporting_until(secs(5), done, |h| h.backend.state().stopped
            == [draining.clone()])
            .await
    );
    let set = h.publisher.current().expect("set");
    assert_eq!(set.endpoints.len(), 1, "{set:?}");
    assert_ne!(set.endpoints[0].id, draining);
    assert!(set.generation > draining_generation);
    let events = h.publisher.events();
    assert_eq!(
        events.last().map(|e| (e.0, e.1)),
        Some((2, 1)),
        "{events:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_never_finishes_ends_at_drain_timeout() {
    let mut h = Harness::new();
    h.start();
    h.warm_two().await;
    let stuck = |h: &Harness| split(h, 1);
    assert!(
        h.reporting_until(secs(30), stuck, |h| !h
            .endpoints(EndpointState::Draining)
            .is_empty())
            .await
    );
    let draining_since = now();
    assert!(
        h.reporting_until(secs(30), stuck, |h| !h.backend.state().stopped.is_empty())
            .await,
        "stopped after drain_timeout"
    );
    let waited = now().duration_since(draining_since);
    assert!(
        waited >= secs(9) && waited <= secs(12),
        "drain_timeout is 10s, stopped after {waited:?}"
    );
    h.stop().await;
}

/// A removed service loses no request: its replicas drain like a
/// scale-down to zero (even below `min_replicas`), each stopped only once
/// the proxy has nothing left in flight on it; then the loop ends and the
/// status is gone.
#[tokio::test(start_paused = true)]
async fn a_removed_service_drains_its_replicas_before_stopping_them() {
    let mut h = Harness::new();
    h.spec.scaling.min_replicas = 1;
    h.start();
    h.warm_two().await;
    let both = h.endpoints(EndpointState::Ready);

    h.retire(Retire::Remove);
    let busy = |h: &Harness| split(h, 1);
    assert!(
        h.reporting_until(secs(5), busy, |h| h
            .endpoints(EndpointState::Draining)
            .len()
            == 2)
            .await,
        "both replicas are marked draining: {:?}",
        h.publisher.current()
    );
    assert!(
        !h.reporting_until(secs(5), busy, |h| !h.backend.state().stopped.is_empty())
            .await,
        "a replica with a request in flight is not stopped"
    );
    assert!(!h.ended(), "the loop waits for its drains");
    assert!(h.status().is_some(), "the status shows the drain meanwhile");

    let done = |h: &Harness| split(h, 0);
    assert!(
        h.reporting_until(secs(5), done, |h| h.ended()).await,
        "once drained, the replicas stop and the loop ends"
    );
    let mut stopped = h.backend.state().stopped.clone();
    stopped.sort();
    let mut expected = both.clone();
    expected.sort();
    assert_eq!(stopped, expected);
    assert!(h.backend.running().is_empty());
    assert!(h
        .publisher
        .current()
        .is_some_and(|s| s.endpoints.is_empty()));
    assert!(h.status().is_none(), "a removed service has no status");
    let events = h.publisher.events();
    assert_eq!(
        events.last(),
        Some(&(2, 0, "removed".to_string())),
        "{events:?}"
    );
}

/// Starts the loop, warms one replica, removes the service while the
/// proxy has a request in flight on it, and returns the replica once the
/// proxies see it draining.
async fn removed_with_a_request_in_flight(h: &mut Harness) -> String {
    h.start();
    let id = h.warm().await;
    h.retire(Retire::Remove);
    let busy = |h: &Harness| vec![(h.backend.running()[0].clone(), 1)];
    assert!(
        h.reporting_until(secs(5), busy, |h| h.endpoints(EndpointState::Draining)
            == [id.clone()])
            .await
    );
    id
}

/// A service defined again while its replicas drain gets them back: the
/// draining loop ends without stopping them, for the next loop to adopt.
#[tokio::test(start_paused = true)]
async fn a_service_defined_again_while_draining_keeps_its_replicas() {
    let mut h = Harness::new();
    let id = removed_with_a_request_in_flight(&mut h).await;
    h.retire(Retire::Replace);
    assert!(h.until(secs(5), |h| h.ended()).await, "the loop hands over");
    assert!(h.backend.state().stopped.is_empty(), "nothing was stopped");
    assert_eq!(h.backend.running(), [id.as_str()]);
}

/// Shutdown during a removal's drain does not wait for it: every replica
/// is stopped at once, as the removal would have in the end.
#[tokio::test(start_paused = true)]
async fn shutdown_while_a_removal_drains_stops_every_replica() {
    let mut h = Harness::new();
    let id = removed_with_a_request_in_flight(&mut h).await;
    let backend = Arc::clone(&h.backend);
    h.stop().await;
    assert_eq!(backend.state().stopped, [id]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_backend_is_reported_and_retried_with_backoff() {
    let mut h = Harness::new();
    h.backend.state().broken = true;
    h.start();
    // Held requests wake the service every second until they are served.
    let held = |h: &Harness| {
        h.wake();
        h.backend.state().ensure_calls.len() >= 4
    };
    assert!(h.until(secs(20), held).await);
    let calls: Vec<Instant> = h.backend.state().ensure_calls.iter().map(|c| c.0).collect();
    let gaps: Vec<Duration> = calls
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    // RESTART: 1 s, 2 s, 4 s (each at least; the loop ticks every 500 ms).
    for (gap, least) in gaps.iter().zip([1, 2, 4]) {
        assert!(*gap >= secs(least), "gaps {gaps:?}");
    }
    let status = h.status().expect("status");
    let error = status.last_error.expect("last_error set");
    assert!(error.contains("cannot start `app`"), "{error}");
    assert!(h.backend_errors() >= 4);
    assert!(h.endpoints(EndpointState::Ready).is_empty());

    // Fixed: the next retry starts it, and the error clears once it is ready.
    h.backend.state().broken = false;
    let held = |h: &Harness| {
        h.wake();
        h.backend.running().len() == 1
    };
    assert!(h.until(secs(30), held).await);
    let id = h.backend.running()[0].clone();
    let addr = h.backend.state().replicas[&id].addr.clone();
    h.prober.pass(&addr);
    assert!(
        h.until(secs(5), |h| h
            .status()
            .is_some_and(|s| s.last_error.is_none()))
            .await
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restarted_loop_adopts_what_runs_and_keeps_ready_replicas_ready() {
    let h = Harness::new();
    let ready = h.backend.add(Readiness::Probe);
    let unknown = h.backend.add(Readiness::Probe);
    let dead = h.backend.add(Readiness::Probe);
    h.backend
        .set(&dead.id, |r| r.health = Health::Exited("exit 1".into()));
    // The previous controller had published `ready` at generation 7.
    *h.publisher.set.lock().unwrap_or_else(|p| p.into_inner()) = Some(EndpointSet {
        v: VERSION,
        generation: 7,
        endpoints: vec![Endpoint {
            id: ready.id.clone(),
            addr: ready.addr.clone(),
            state: EndpointState::Ready,
            pool_rank: None,
        }],
    });
    let mut h = h;
    h.start();
    // No probe passes, yet the listed replica stays in rotation, under a
    // newer generation; the unlisted one waits for its probe.
    assert!(
        h.until(secs(1), |h| h
            .publisher
            .current()
            .is_some_and(|s| s.generation > 7))
            .await
    );
    assert_eq!(h.endpoints(EndpointState::Ready), [ready.id.as_str()]);
    assert!(h.backend.state().stopped.contains(&dead.id));
    let status = h.status().expect("status");
    let states: BTreeMap<String, &str> = status
        .replicas
        .iter()
        .map(|r| (r.id.clone(), r.state))
        .collect();
    assert_eq!(states.get(&ready.id), Some(&"ready"));
    assert_eq!(states.get(&unknown.id), Some(&"starting"));
    assert!(!states.contains_key(&dead.id));
    // Nothing new was started: adopted replicas count.
    assert!(h.backend.state().ensure_calls.is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_replica_not_ready_within_the_startup_timeout_is_replaced() {
    let mut h = Harness::new();
    h.start();
    h.wake();
    assert!(h.until(secs(2), |h| h.backend.running().len() == 1).await);
    let first = h.backend.running()[0].clone();
    let asked = now();
    // Requests stay held, so the service still wants one replica.
    let hold = |h: &Harness| {
        h.wake();
        false
    };
    let _ = h.until(secs(1), hold).await;
    let replaced = |h: &Harness| {
        h.wake();
        h.backend.state().stopped.contains(&first) && h.backend.running().len() == 1
    };
    assert!(h.until(secs(30), replaced).await, "replaced");
    assert!(
        now().duration_since(asked) >= secs(10),
        "not before the timeout"
    );
    let error = h.status().and_then(|s| s.last_error).expect("last_error");
    assert!(error.contains("not ready within 10s"), "{error}");
    assert_ne!(h.backend.running()[0], first);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_count_based_backend_is_asked_once_and_its_reported_readiness_is_used() {
    let mut h = Harness::new();
    h.backend.state().by_count = true;
    h.start();
    h.wake();
    assert!(h.until(secs(2), |h| h.backend.state().target == 1).await);
    // The pod has not appeared: asking again would double it.
    let _ = h.until(secs(3), |_| false).await;
    assert_eq!(h.backend.state().ensure_calls.len(), 1);
    assert_eq!(h.status().map(|s| s.desired), Some(1));

    let pod = h.backend.add(Readiness::Reported(false));
    assert!(
        h.until(secs(2), |h| h
            .status()
            .is_some_and(|s| s.replicas.len() == 1))
            .await
    );
    assert!(h.endpoints(EndpointState::Ready).is_empty());
    // Ready by the platform's word, with no probe passing.
    h.backend
        .set(&pod.id, |r| r.readiness = Readiness::Reported(true));
    assert!(
        h.until(secs(2), |h| h.endpoints(EndpointState::Ready)
            == [pod.id.clone()])
            .await
    );
    assert_eq!(h.backend.state().ensure_calls.len(), 1);
    assert_eq!(h.publisher.events(), [(0, 1, "wake".to_string())]);
    // The platform takes it out of rotation: so do the proxies.
    h.backend
        .set(&pod.id, |r| r.readiness = Readiness::Reported(false));
    assert!(
        h.until(secs(2), |h| h.endpoints(EndpointState::Ready).is_empty())
            .await
    );
    let error = h.status().and_then(|s| s.last_error).expect("last_error");
    assert!(error.contains(&pod.id), "{error}");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn requested_replicas_that_never_appear_are_reported_and_asked_for_again() {
    let mut h = Harness::new();
    h.backend.state().by_count = true;
    h.start();
    // Held requests keep the service wanting one replica; none ever appears.
    let held = |h: &Harness| {
        h.wake();
        h.backend.state().ensure_calls.len() >= 2
    };
    assert!(
        h.until(secs(30), held).await,
        "asked again after the timeout"
    );
    let calls = h.backend.state().ensure_calls.clone();
    assert!(
        calls[1].0.duration_since(calls[0].0) >= secs(10),
        "not before startup_timeout: {calls:?}"
    );
    let error = h.status().and_then(|s| s.last_error).expect("last_error");
    assert!(error.contains("did not appear within 10s"), "{error}");
    assert!(h.backend_errors() >= 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn scaling_down_takes_back_requested_replicas_first() {
    let mut h = Harness::new();
    h.backend.state().by_count = true;
    h.start();
    h.wake();
    assert!(h.until(secs(2), |h| h.backend.state().target == 1).await);
    // Nothing held any more and the pod never came: past
    // scale_to_zero_after (and before startup_timeout) the request is
    // withdrawn by lowering the count, with no error.
    assert!(h.until(secs(9), |h| h.backend.state().target == 0).await);
    assert_eq!(h.status().map(|s| s.desired), Some(0));
    assert_eq!(h.status().and_then(|s| s.last_error), None);
    assert!(h.backend.state().stopped.is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn cut_off_from_nats_it_does_not_scale_down_and_retries_the_write() {
    let mut h = Harness::new();
    h.start();
    let id = h.warm().await;
    h.publisher.offline.store(true, Ordering::SeqCst);
    // Far past scale_to_zero_after, with no reports at all.
    let _ = h.until(secs(30), |_| false).await;
    assert_eq!(h.backend.running(), [id.as_str()]);
    assert!(h.backend.state().stopped.is_empty());
    let status = h.status().expect("status");
    assert_eq!((status.desired, status.replicas[0].state), (1, "ready"));
    h.publisher.offline.store(false, Ordering::SeqCst);
    assert!(
        h.until(secs(60), |h| h.backend.state().stopped == [id.clone()])
            .await
    );
    h.stop().await;
}

/// Back on NATS before the proxy, the loop does not take the reports it
/// missed for idleness: no scale-down until the proxy can have reconnected
/// and reported, and none at all once it reports traffic again.
#[tokio::test(start_paused = true)]
async fn back_on_nats_before_the_proxies_it_waits_for_their_reports() {
    let mut h = Harness::new();
    h.start();
    let id = h.warm().await;
    h.publisher.offline.store(true, Ordering::SeqCst);
    let _ = h.until(secs(30), |_| false).await;
    h.publisher.offline.store(false, Ordering::SeqCst);
    // Within RECONNECT's longest delay plus its jitter: no drain begins.
    let drained = h
        .until(secs(3), |h| {
            !h.endpoints(EndpointState::Draining).is_empty()
        })
        .await;
    assert!(!drained, "drained at once, before the proxy could report");
    assert!(h.backend.state().stopped.is_empty(), "scaled down at once");
    // The proxy is back and busy: the replica stays.
    let busy = {
        let id = id.clone();
        move |_: &Harness| vec![(id.clone(), 1)]
    };
    let _ = h.reporting_until(secs(10), busy, |_| false).await;
    assert!(h.backend.state().stopped.is_empty(), "stopped while busy");
    assert_eq!(h.backend.running(), [id.as_str()]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_clears_the_set_and_stops_every_replica() {
    let mut h = Harness::new();
    h.start();
    let id = h.warm().await;
    let publisher = Arc::clone(&h.publisher);
    let backend = Arc::clone(&h.backend);
    h.stop().await;
    assert!(publisher.current().is_some_and(|s| s.endpoints.is_empty()));
    assert_eq!(backend.state().stopped, [id]);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_backend_is_asked_on_a_backoff_and_the_set_keeps_serving() {
    let mut h = Harness::new();
    h.start();
    let id = h.warm().await;
    {
        let mut state = h.backend.state();
        state.unreachable = true;
        state.list_calls = 0;
    }
    // Traffic goes on. 10 s of ticks (every 500 ms) would be 20 lists;
    // RESUBSCRIBE's 250 ms, 500 ms, 1 s, 2 s, 4 s, 5 s asks about 6 times.
    let busy = {
        let id = id.clone();
        move |_: &Harness| vec![(id.clone(), 5)]
    };
    h.reporting_until(secs(10), busy, |_| false).await;
    let calls = h.backend.state().list_calls;
    assert!((4..=8).contains(&calls), "{calls} lists in 10 s");
    assert_eq!(h.endpoints(EndpointState::Ready), [id.as_str()]);
    let error = h.status().and_then(|s| s.last_error).expect("last_error");
    assert!(error.contains("cannot reach the engine"), "{error}");
    assert!(h.backend_errors() >= 4);

    h.backend.state().unreachable = false;
    assert!(
        h.until(secs(10), |h| h
            .status()
            .is_some_and(|s| s.last_error.is_none()))
            .await
    );
    assert_eq!(h.endpoints(EndpointState::Ready), [id.as_str()]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn adoption_waits_for_a_backend_that_cannot_be_listed() {
    let h = Harness::new();
    let ready = h.backend.add(Readiness::Probe);
    let previous = EndpointSet {
        v: VERSION,
        generation: 7,
        endpoints: vec![Endpoint {
            id: ready.id.clone(),
            addr: ready.addr.clone(),
            state: EndpointState::Ready,
            pool_rank: None,
        }],
    };
    *h.publisher.set.lock().unwrap_or_else(|p| p.into_inner()) = Some(previous.clone());
    h.backend.state().unreachable = true;
    let mut h = h;
    h.start();
    // Held requests keep waking it: nothing is started, nothing written.
    tokio::time::sleep(secs(5)).await;
    h.wake();
    tokio::time::sleep(secs(1)).await;
    assert!(h.backend.state().ensure_calls.is_empty());
    assert_eq!(h.publisher.current(), Some(previous));

    h.backend.state().unreachable = false;
    assert!(
        h.until(secs(10), |h| h
            .publisher
            .current()
            .is_some_and(|s| s.generation > 7))
            .await
    );
    assert_eq!(h.endpoints(EndpointState::Ready), [ready.id.as_str()]);
    assert!(h.backend.state().ensure_calls.is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_failed_is_tried_again_until_it_takes() {
    let mut h = Harness::new();
    h.start();
    let id = h.warm().await;
    h.backend.state().stop_fails = true;
    // Idle (the proxy reports nothing in flight): scaled to zero after 5 s,
    // drained, stopped; the stop fails, and is tried again.
    let idle = |_: &Harness| Vec::new();
    assert!(
        h.reporting_until(secs(30), idle, |h| h.backend.state().stop_calls >= 3)
            .await
    );
    // On a backoff, not every pass: 10 s more is a handful of tries.
    let before = h.backend.state().stop_calls;
    h.reporting_until(secs(10), idle, |_| false).await;
    let tries = h.backend.state().stop_calls - before;
    assert!((1..=6).contains(&tries), "{tries} stops in 10 s");
    assert_eq!(h.backend.running(), [id.as_str()]);
    h.backend.state().stop_fails = false;
    assert!(
        h.reporting_until(secs(10), idle, |h| h.backend.running().is_empty())
            .await
    );
    assert_eq!(h.backend.state().stopped, [id]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_replica_nobody_tracks_is_removed() {
    let mut h = Harness::new();
    h.start();
    h.warm().await;
    let dead = h.backend.add(Readiness::Probe);
    h.backend
        .set(&dead.id, |r| r.health = Health::Exited("exit 1".into()));
    assert!(
        h.until(secs(5), |h| h.backend.state().stopped.contains(&dead.id))
            .await
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn under_keda_the_loop_follows_the_pods_and_never_scales() {
    let mut h = Harness::new();
    h.spec.scaling.driver = rouse_nats::config::ScalingDriver::Keda;
    h.backend.state().by_count = true;
    h.start();
    h.wake();
    // KEDA, not rouse, answers the wake: nothing is asked of the backend.
    let _ = h.until(secs(3), |_| false).await;
    assert!(h.backend.state().ensure_calls.is_empty());
    // KEDA's HPA made a pod; it turns ready and reaches the proxies.
    let pod = h.backend.add(Readiness::Reported(false)).id;
    h.backend
        .set(&pod, |r| r.readiness = Readiness::Reported(true));
    assert!(
        h.until(secs(2), |h| h.endpoints(EndpointState::Ready)
            == [pod.clone()])
            .await
    );
    assert_eq!(h.status().map(|s| s.desired), Some(1));
    // Far past scale_to_zero_after with no traffic: still KEDA's call.
    let _ = h.until(secs(30), |_| false).await;
    assert_eq!(
        h.endpoints(EndpointState::Ready),
        std::slice::from_ref(&pod)
    );
    // The HPA removed it: it leaves the set, and rouse stops nothing.
    h.backend.state().replicas.clear();
    assert!(
        h.until(secs(2), |h| h.endpoints(EndpointState::Ready).is_empty())
            .await
    );
    let untouched = {
        let state = h.backend.state();
        state.ensure_calls.is_empty() && state.stop_calls == 0
    };
    assert!(untouched);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_keeps_its_replicas_is_not_stopped_on_shutdown() {
    let mut h = Harness::new();
    h.backend.state().keeps_replicas = true;
    h.start();
    let id = h.warm().await;
    let backend = Arc::clone(&h.backend);
    h.stop().await;
    let state = backend.state();
    assert_eq!(state.stop_calls, 0);
    assert!(state.replicas.contains_key(&id));
}

#[tokio::test(start_paused = true)]
async fn scale_down_drains_the_replica_the_backend_orders_last() {
    let mut h = Harness::new();
    // Like a StatefulSet: the oldest replica is the one the platform removes.
    h.backend.state().remove_oldest = true;
    h.start();
    h.warm_two().await;
    let oldest = h.backend.running()[0].clone();
    // Idle: scale-down to one, then zero; the first drained is the oldest.
    assert!(
        h.until(secs(20), |h| !h.backend.state().stopped.is_empty())
            .await
    );
    assert_eq!(h.backend.state().stopped[0], oldest);
    h.stop().await;
}

/// A service with nothing to look after stops ticking: over an idle
/// virtual hour at zero its backend is listed about once per IDLE_RESYNC
/// (ticks every 500 ms would be 7,200 lists), and a wake still starts a
/// replica at once. Back at zero after the traffic, it goes quiet again.
#[tokio::test(start_paused = true)]
async fn an_idle_loop_skips_its_ticks_but_still_wakes_at_once() {
    let mut h = Harness::new();
    h.start();
    assert!(h.until(secs(5), |h| h.status().is_some()).await);
    h.backend.state().list_calls = 0;
    tokio::time::sleep(secs(3600)).await;
    let calls = h.backend.state().list_calls;
    // 3600 s / 300..450 s between resyncs.
    assert!((8..=12).contains(&calls), "{calls} lists in an idle hour");

    let asked = tokio::time::Instant::now();
    h.wake();
    assert!(h.until(secs(1), |h| h.backend.running().len() == 1).await);
    assert!(asked.elapsed() < secs(1), "the wake was acted on at once");

    // Ready, served, then left alone: back to zero, then quiet again.
    let id = h.backend.running()[0].clone();
    let addr = h.backend.state().replicas[&id].addr.clone();
    h.prober.pass(&addr);
    assert!(
        h.until(secs(5), |h| h.endpoints(EndpointState::Ready)
            == [id.clone()])
            .await
    );
    h.report(3, &[(id.as_str(), 0)]);
    assert!(h.until(secs(120), |h| h.backend.running().is_empty()).await);
    assert!(
        h.until(secs(120), |h| h
            .status()
            .is_some_and(|s| s.replicas.is_empty()))
            .await
    );
    // Let the last report age out of the liveness window first.
    tokio::time::sleep(secs(10)).await;
    h.backend.state().list_calls = 0;
    tokio::time::sleep(secs(300)).await;
    let calls = h.backend.state().list_calls;
    assert!(
        calls <= 2,
        "{calls} lists in 5 idle minutes after scaling to zero"
    );
}

/// On a platform that removes the last replica of its own order whichever
/// one is stopped (a StatefulSet lowered by one drops its highest
/// ordinal), scale-down must not stop a starting replica that is not last:
/// the platform would remove the ready one instead, undrained, under its
/// traffic. The ready one (last in the order) is drained first.
#[tokio::test(start_paused = true)]
async fn a_platform_that_picks_its_victim_gets_that_replica_drained_first() {
    let mut h = Harness::new();
    h.backend.state().remove_oldest = true;
    h.start();
    let first = h.warm().await;
    let busy = {
        let first = first.clone();
        move |_: &Harness| vec![(first.clone(), 20)]
    };
    assert!(
        h.reporting_until(secs(10), busy, |h| h.backend.running().len() == 2)
            .await
    );
    let second = h
        .backend
        .running()
        .into_iter()
        .find(|id| *id != first)
        .expect("a second replica");
    let mut order = vec![first.clone(), second.clone()];
    crate::backend::Backend::removal_order(h.backend.as_ref(), &mut order);
    assert_eq!(order.last(), Some(&first), "the platform removes the first");
    // The load goes before the second passes its probe.
    let quiet = {
        let first = first.clone();
        move |_: &Harness| vec![(first.clone(), 0)]
    };
    let draining_or_stopped = |h: &Harness| {
        !h.endpoints(EndpointState::Draining).is_empty() || !h.backend.state().stopped.is_empty()
    };
    assert!(
        h.reporting_until(secs(120), quiet, draining_or_stopped)
            .await
    );
    assert_eq!(
        h.endpoints(EndpointState::Draining),
        std::slice::from_ref(&first)
    );
    assert!(
        h.backend.state().stopped.is_empty(),
        "a starting replica was stopped before the one the platform removes"
    );
    h.stop().await;
}
