//! The loop over a pooled backend (two fake pools): it asks for no more
//! than the pools hold, publishes each endpoint's pool rank, shows the
//! pools in its status, and drains the last pool first.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rouse_nats::messages::EndpointState;

use super::fakes::FakeBackend;
use super::harness::Harness;
use super::secs;
use crate::backend::{Backend, BackendError, Pool, PooledBackend, Replica, Started};

/// A harness whose loop runs on pools `a` (cap 1) and `b` (cap 2).
fn pooled() -> (Harness, Arc<FakeBackend>, Arc<FakeBackend>) {
    let a = Arc::new(FakeBackend::default());
    let b = Arc::new(FakeBackend::default());
    a.state().prefix = Some("echo-a");
    b.state().prefix = Some("echo-b");
    b.state().subnet = 1;
    let pool = |name: &str, max_replicas, fake: &Arc<FakeBackend>| Pool {
        name: name.into(),
        max_replicas,
        backend: Box::new(Shared(Arc::clone(fake))),
    };
    let backend = PooledBackend::new("echo", vec![pool("a", 1, &a), pool("b", 2, &b)]);
    let mut h = Harness::new();
    h.run_on = Some(Arc::new(backend));
    (h, a, b)
}

/// A fake the test keeps a handle on, as a pool's backend.
struct Shared(Arc<FakeBackend>);

#[async_trait]
impl Backend for Shared {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn startup_timeout(&self) -> Duration {
        self.0.startup_timeout()
    }

    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        self.0.ensure(n).await
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        self.0.list().await
    }

    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        self.0.stop(id).await
    }
}

fn pass_all(h: &Harness, fakes: &[&Arc<FakeBackend>]) {
    for fake in fakes {
        for replica in fake.state().replicas.values() {
            h.prober.pass(&replica.addr);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pooled_service_overflows_ranks_its_endpoints_and_drains_the_last_pool_first() {
    let (mut h, a, b) = pooled();
    h.start();
    h.wake();
    assert!(h.until(secs(5), |_| a.running().len() == 1).await);
    pass_all(&h, &[&a]);
    let first = a.running()[0].clone();
    assert!(
        h.until(secs(5), |h| h.endpoints(EndpointState::Ready)
            == [first.clone()])
            .await
    );
    // Load for ten replicas: the pools hold three.
    let busy = first.clone();
    let load = move |_: &Harness| vec![(busy.clone(), 100)];
    assert!(
        h.reporting_until(secs(10), load, |_| b.running().len() == 2)
            .await
    );
    pass_all(&h, &[&a, &b]);
    assert!(
        h.until(secs(5), |h| h.endpoints(EndpointState::Ready).len() == 3)
            .await
    );
    let status = h.status().expect("status");
    assert_eq!(status.desired, 3, "capped by the pools");
    assert_eq!(status.backend, "pools");
    let pools: Vec<_> = status
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.replicas, p.ready))
        .collect();
    assert_eq!(pools, [("a", 1, 1), ("b", 2, 2)]);
    assert!(status
        .replicas
        .iter()
        .all(|r| r.pool.as_deref() == Some(&r.id[5..6])));
    let set = h.publisher.current().expect("set");
    for endpoint in &set.endpoints {
        let rank = u32::from(endpoint.id.starts_with("echo-b"));
        assert_eq!(endpoint.pool_rank, Some(rank), "{endpoint:?}");
    }
    // Idle: b's replicas leave first, a's stays ready meanwhile.
    let idle = |_: &Harness| Vec::new();
    assert!(
        h.reporting_until(secs(30), idle, |h| {
            let ready = h.endpoints(EndpointState::Ready);
            assert!(
                ready.contains(&first),
                "a's replica left before b's: {ready:?}"
            );
            b.running().is_empty()
        })
        .await
    );
    assert_eq!(b.state().stopped.len(), 2);
    assert!(a.state().stopped.is_empty());
    h.stop().await;
}
