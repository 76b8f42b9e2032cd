//! The pooled backend over fake pools: fill order, caps, removal order,
//! failing pools, list failures, and a cluster-like pool's pending pods.

use std::sync::{Arc, Mutex};

use super::*;
use crate::backend::Readiness;

/// What a fake pool does; shared with the test, which changes it.
#[derive(Debug, Default)]
struct Knobs {
    /// Ids running, oldest first.
    running: Vec<String>,
    started: u32,
    fail_start: bool,
    fail_list: bool,
    /// Orders removal candidates by id, highest last (a StatefulSet's way).
    by_id: bool,
    /// Count-based, like a cluster: `ensure` sets a count and `list` shows
    /// only `running`; the rest is pending until `materialise`.
    count: Option<usize>,
    stopped: Vec<String>,
}

struct Fake {
    name: &'static str,
    knobs: Arc<Mutex<Knobs>>,
}

impl Fake {
    fn knobs(&self) -> std::sync::MutexGuard<'_, Knobs> {
        self.knobs.lock().unwrap()
    }
}

fn replica(id: &str) -> Replica {
    Replica {
        id: id.to_string(),
        addr: "127.0.0.1:1".into(),
        health: Health::Running,
        readiness: Readiness::Probe,
    }
}

fn down(what: &str) -> BackendError {
    BackendError::Engine {
        what: what.into(),
        message: "engine down".into(),
    }
}

#[async_trait]
impl Backend for Fake {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn startup_timeout(&self) -> Duration {
        Duration::from_secs(if self.name == "b" { 20 } else { 10 })
    }

    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        let mut k = self.knobs();
        if k.fail_start {
            return Err(down("starting"));
        }
        if k.count.is_some() {
            let wanted = n.max(k.running.len());
            k.count = Some(wanted);
            return Ok(Started {
                replicas: Vec::new(),
                pending: wanted - k.running.len(),
            });
        }
        let mut started = Vec::new();
        while k.running.len() < n {
            k.started += 1;
            let id = format!("{}-{}", self.name, k.started);
            k.running.push(id.clone());
            started.push(replica(&id));
        }
        Ok(Started {
            replicas: started,
            pending: 0,
        })
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        let k = self.knobs();
        if k.fail_list {
            return Err(down("listing"));
        }
        Ok(k.running.iter().map(|id| replica(id)).collect())
    }

    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let mut k = self.knobs();
        k.running.retain(|r| r != id);
        k.stopped.push(id.to_string());
        if let Some(count) = k.count.as_mut() {
            *count -= 1;
        }
        Ok(())
    }

    fn removal_order(&self, ids: &mut [String]) {
        if self.knobs().by_id {
            ids.sort();
        }
    }
}

/// A pooled backend over fakes `a`, `b`, ... with these caps, and each
/// fake's knobs.
fn pooled(caps: &[u32]) -> (PooledBackend, Vec<Arc<Mutex<Knobs>>>) {
    const NAMES: [&str; 3] = ["a", "b", "c"];
    let mut knobs = Vec::new();
    let pools = caps
        .iter()
        .zip(NAMES)
        .map(|(cap, name)| {
            let k = Arc::new(Mutex::new(Knobs::default()));
            knobs.push(Arc::clone(&k));
            Pool {
                name: name.to_string(),
                max_replicas: *cap,
                backend: Box::new(Fake { name, knobs: k }),
            }
        })
        .collect();
    (PooledBackend::new("svc", pools), knobs)
}

fn running(knobs: &Arc<Mutex<Knobs>>) -> usize {
    knobs.lock().unwrap().running.len()
}

fn ids(started: &Started) -> Vec<&str> {
    started.replicas.iter().map(|r| r.id.as_str()).collect()
}

#[tokio::test]
async fn fills_the_first_pool_to_its_cap_then_the_next() {
    let (backend, knobs) = pooled(&[2, 3]);
    assert_eq!(backend.capacity(), Some(5));
    assert_eq!(ids(&backend.ensure(1).await.unwrap()), ["a-1"]);
    assert_eq!(
        ids(&backend.ensure(4).await.unwrap()),
        ["a-2", "b-1", "b-2"]
    );
    // Past both caps: the pools are full, which is not an error.
    assert_eq!(ids(&backend.ensure(9).await.unwrap()), ["b-3"]);
    assert!(backend.ensure(9).await.unwrap().replicas.is_empty());
    assert_eq!((running(&knobs[0]), running(&knobs[1])), (2, 3));
    assert_eq!(backend.pool_of("a-2"), Some(0));
    assert_eq!(backend.pool_of("b-3"), Some(1));
    let pools = backend.pools();
    assert_eq!(pools.len(), 2);
    assert_eq!((pools[1].name.as_str(), pools[1].max_replicas), ("b", 3));
    assert!(pools.iter().all(|p| p.error.is_none()));
}

#[tokio::test]
async fn a_replica_lost_in_the_first_pool_is_replaced_there() {
    let (backend, knobs) = pooled(&[2, 3]);
    backend.ensure(4).await.unwrap();
    knobs[0].lock().unwrap().running.retain(|id| id != "a-1");
    backend.list().await.unwrap();
    assert_eq!(ids(&backend.ensure(4).await.unwrap()), ["a-3"]);
    assert_eq!((running(&knobs[0]), running(&knobs[1])), (2, 2));
}

#[tokio::test]
async fn scale_down_takes_the_last_pools_replicas_first() {
    let (backend, knobs) = pooled(&[2, 2, 3]);
    knobs[2].lock().unwrap().by_id = true;
    backend.ensure(7).await.unwrap();
    // Oldest first as the loop gives them, pools interleaved.
    let mut order: Vec<String> = ["c-2", "a-1", "b-1", "c-3", "a-2", "c-1", "b-2"]
        .map(String::from)
        .to_vec();
    backend.removal_order(&mut order);
    // The loop pops from the end: c's in c's own order, then b's, then a's.
    assert_eq!(order, ["a-1", "a-2", "b-1", "b-2", "c-1", "c-2", "c-3"]);
    // Unknown ids go first.
    let mut with_unknown: Vec<String> = ["x", "a-1", "c-1"].map(String::from).to_vec();
    backend.removal_order(&mut with_unknown);
    assert_eq!(with_unknown, ["a-1", "c-1", "x"]);
}

#[tokio::test]
async fn stop_goes_to_the_pool_that_owns_the_replica() {
    let (backend, knobs) = pooled(&[1, 1]);
    backend.ensure(2).await.unwrap();
    backend.stop("b-1").await.unwrap();
    assert_eq!(knobs[1].lock().unwrap().stopped, ["b-1"]);
    assert!(knobs[0].lock().unwrap().stopped.is_empty());
    // Unknown to every pool: nobody is asked.
    backend.stop("zzz").await.unwrap();
    assert!(knobs[0].lock().unwrap().stopped.is_empty());
    assert_eq!(knobs[1].lock().unwrap().stopped, ["b-1"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_pool_is_skipped_reported_and_retried_later() {
    let (backend, knobs) = pooled(&[1, 2]);
    knobs[0].lock().unwrap().fail_start = true;
    assert_eq!(ids(&backend.ensure(2).await.unwrap()), ["b-1", "b-2"]);
    let error = backend.pools()[0].error.clone().expect("a's error");
    assert!(
        error.contains("pool `a`") && error.contains("engine down"),
        "{error}"
    );
    // While it backs off, its room is not offered, and it is not asked.
    assert_eq!(backend.capacity(), Some(2));
    knobs[0].lock().unwrap().fail_start = false;
    let err = backend.ensure(3).await.expect_err("no room outside a");
    assert!(err.to_string().contains("backing off"), "{err}");
    assert_eq!(running(&knobs[0]), 0);
    // Its next try is due after the backoff: it starts, the error clears.
    tokio::time::advance(RESTART.first + Duration::from_millis(10)).await;
    assert_eq!(backend.capacity(), Some(3));
    assert_eq!(ids(&backend.ensure(3).await.unwrap()), ["a-1"]);
    assert_eq!(backend.pools()[0].error, None);
}

#[tokio::test(start_paused = true)]
async fn failing_again_backs_off_longer() {
    let (backend, knobs) = pooled(&[1, 1]);
    knobs[0].lock().unwrap().fail_start = true;
    backend.ensure(1).await.unwrap();
    tokio::time::advance(RESTART.first + Duration::from_millis(10)).await;
    // Due again; fails again (b is full, so nothing starts: an error).
    assert!(backend.ensure(2).await.is_err());
    tokio::time::advance(RESTART.first + Duration::from_millis(10)).await;
    assert_eq!(backend.capacity(), Some(1), "the second backoff is longer");
    tokio::time::advance(RESTART.first).await;
    assert_eq!(backend.capacity(), Some(2));
}

#[tokio::test]
async fn an_error_only_when_nothing_could_start() {
    let (backend, knobs) = pooled(&[1, 1]);
    for k in &knobs {
        k.lock().unwrap().fail_start = true;
    }
    let err = backend.ensure(1).await.expect_err("nothing can start");
    let message = err.to_string();
    assert!(
        message.contains("pool `a`") && message.contains("pool `b`"),
        "{message}"
    );
    // Nothing needed: no pool is asked, no error.
    let (idle, _) = pooled(&[1]);
    assert!(idle.ensure(0).await.unwrap().replicas.is_empty());
}

#[tokio::test]
async fn a_pool_that_cannot_be_listed_fails_the_list_only_if_it_had_replicas() {
    let (backend, knobs) = pooled(&[1, 2]);
    backend.ensure(1).await.unwrap();
    // b had none: skipped, reported.
    knobs[1].lock().unwrap().fail_list = true;
    let listed = backend.list().await.expect("a's replicas");
    assert_eq!(listed.len(), 1);
    let error = backend.pools()[1].error.clone().expect("b's error");
    assert!(error.contains("engine down"), "{error}");
    knobs[1].lock().unwrap().fail_list = false;
    backend.list().await.unwrap();
    assert_eq!(backend.pools()[1].error, None);
    // a has one: its failure fails the call, naming the pool.
    knobs[0].lock().unwrap().fail_list = true;
    let err = backend.list().await.expect_err("a had replicas");
    assert!(err.to_string().contains("pool `a`"), "{err}");
    // And a is still known to own its replica.
    assert_eq!(backend.pool_of("a-1"), Some(0));
}

#[tokio::test]
async fn a_cluster_pools_pending_pods_count_and_are_cancelled_last_pool_first() {
    let (backend, knobs) = pooled(&[2, 3]);
    knobs[1].lock().unwrap().count = Some(0);
    let started = backend.ensure(4).await.unwrap();
    assert_eq!(ids(&started), ["a-1", "a-2"]);
    assert_eq!(started.pending, 2);
    assert_eq!(knobs[1].lock().unwrap().count, Some(2));
    // Asked again: the pending pods count, nothing more is asked for.
    assert_eq!(backend.ensure(4).await.unwrap().pending, 2);
    assert_eq!(knobs[1].lock().unwrap().count, Some(2));
    // One pod appears: one less pending.
    knobs[1].lock().unwrap().running.push("b-pod-1".into());
    backend.list().await.unwrap();
    assert_eq!(backend.pool_of("b-pod-1"), Some(1));
    assert_eq!(backend.ensure(4).await.unwrap().pending, 1);
    // Fewer wanted: the pending pod is cancelled, the listed ones stay.
    assert_eq!(backend.ensure(3).await.unwrap().pending, 0);
    assert_eq!(knobs[1].lock().unwrap().count, Some(1));
    assert_eq!(running(&knobs[0]), 2);
}

#[tokio::test]
async fn timeouts_and_shutdown_are_per_pool() {
    let (backend, _) = pooled(&[1, 1]);
    backend.ensure(2).await.unwrap();
    assert_eq!(backend.startup_timeout(), Duration::from_secs(20));
    assert_eq!(backend.startup_timeout_of("a-1"), Duration::from_secs(10));
    assert_eq!(backend.startup_timeout_of("b-1"), Duration::from_secs(20));
    assert!(!backend.keeps_replicas_on_shutdown());
    assert!(!backend.keeps_on_shutdown("a-1"));
    assert_eq!(backend.kind(), "pools");
}
