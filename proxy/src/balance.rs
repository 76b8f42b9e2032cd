//! Stage 4 of the data path: which ready replica gets the request.
//!
//! Power of two choices on in-flight count: two random ready endpoints, the
//! less busy one wins. That needs no shared state beyond the per-endpoint
//! atomics and keeps load even without a global view. A service with
//! overflow pools and `prefer: first` scans for the least busy instead, its
//! ready list in pool order so that ties go to the earlier pool: an idle
//! first pool takes the traffic, later pools only what overflows it. A request counts itself
//! into the endpoint *before* it re-checks the draining flag, which closes the
//! race with a load report that tells the controller the endpoint is idle.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::service::{Endpoint, Service};

/// A request's claim on an endpoint: counted in its in-flight until dropped.
#[derive(Debug)]
pub struct Lease {
    pub endpoint: Arc<Endpoint>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bounds the re-picks when endpoints turn draining under our feet.
const MAX_ATTEMPTS: usize = 4;

/// Leases a ready endpoint of `service`, skipping those in `tried` and, when
/// the service has a per-replica cap, those at it.
pub fn lease(service: &Service, tried: &[Arc<str>]) -> Option<Lease> {
    let cap = service.container_concurrency();
    for _ in 0..MAX_ATTEMPTS {
        let snapshot = service.endpoints.load();
        let endpoint = match (cap, service.prefer_first()) {
            (0, false) => choose(&snapshot.ready, tried)?,
            (0, true) => choose_below(&snapshot.ready, tried, u64::MAX)?,
            (cap, _) => choose_below(&snapshot.ready, tried, cap)?,
        };
        let before = endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
        let lease = Lease {
            endpoint: Arc::clone(endpoint),
        };
        // Count in first, then check: a concurrent lease may have taken the
        // last slot, and a drain may have begun.
        let over_cap = cap > 0 && before >= cap;
        if !over_cap && !lease.endpoint.draining.load(Ordering::SeqCst) {
            return Some(lease);
        }
    }
    None
}

/// The least busy ready endpoint with a free slot under `cap`; of equally
/// busy ones, the first in `ready`.
fn choose_below<'a>(
    ready: &'a [Arc<Endpoint>],
    tried: &[Arc<str>],
    cap: u64,
) -> Option<&'a Arc<Endpoint>> {
    ready
        .iter()
        .filter(|e| !e.draining.load(Ordering::Relaxed) && !tried.iter().any(|t| *t == e.id))
        .map(|e| (e.in_flight.load(Ordering::Relaxed), e))
        .filter(|(in_flight, _)| *in_flight < cap)
        .min_by_key(|(in_flight, _)| *in_flight)
        .map(|(_, e)| e)
}

/// Power of two choices among `ready` minus `tried`.
fn choose<'a>(ready: &'a [Arc<Endpoint>], tried: &[Arc<str>]) -> Option<&'a Arc<Endpoint>> {
    let usable = |e: &&Arc<Endpoint>| {
        !e.draining.load(Ordering::Relaxed) && !tried.iter().any(|t| *t == e.id)
    };
    match ready.len() {
        0 => None,
        1 => ready.first().filter(usable),
        n if tried.is_empty() => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (&ready[a], &ready[b]);
            let pick =
                if eb.in_flight.load(Ordering::Relaxed) < ea.in_flight.load(Ordering::Relaxed) {
                    eb
                } else {
                    ea
                };
            // A draining flag set ahead of its snapshot: fall back to a scan.
            if pick.draining.load(Ordering::Relaxed) {
                return ready
                    .iter()
                    .filter(usable)
                    .min_by_key(|e| e.in_flight.load(Ordering::Relaxed));
            }
            Some(pick)
        }
        _ => ready
            .iter()
            .filter(usable)
            .min_by_key(|e| e.in_flight.load(Ordering::Relaxed)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64};

    fn endpoint(id: &str, in_flight: u64) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            id: id.into(),
            authority: "127.0.0.1:1".parse().expect("authority"),
            in_flight: AtomicU64::new(in_flight),
            draining: AtomicBool::new(false),
            rank: 0,
        })
    }

    /// A service with two pools (`a` first, `b` second) and `prefer`,
    /// whose endpoints `a1`, `a2` (rank 0) and `b1`, `b2` (rank 1) are
    /// listed in an order that is not the pools'.
    fn pooled(prefer: &str) -> Service {
        use rouse_nats::config::ServiceConfig;
        use rouse_nats::messages::{Endpoint as Wire, EndpointSet, EndpointState, VERSION};
        let yaml = format!(
            "name: p\nhosts: [p]\nbackend:\n  prefer: {prefer}\n  pools:\n    \
             - {{name: a, max_replicas: 2, process: {{command: [x]}}}}\n    \
             - {{name: b, max_replicas: 2, process: {{command: [x]}}}}\n"
        );
        let config: ServiceConfig = serde_norway::from_str(&yaml).expect("config");
        let metrics = crate::metrics::ProxyMetrics::new().for_service("test");
        let service = Service::new(&config, std::time::Duration::from_secs(1), metrics);
        let wire = |id: &str, port: u16, rank: u32| Wire {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            state: EndpointState::Ready,
            pool_rank: Some(rank),
        };
        let set = EndpointSet {
            v: VERSION,
            generation: 1,
            endpoints: vec![
                wire("b1", 3, 1),
                wire("a1", 1, 0),
                wire("b2", 4, 1),
                wire("a2", 2, 0),
            ],
        };
        assert!(service.apply(&set).is_empty());
        service
    }

    fn leased_id(service: &Service, held: &mut Vec<Lease>) -> String {
        let lease = lease(service, &[]).expect("a ready endpoint");
        let id = lease.endpoint.id.to_string();
        held.push(lease);
        id
    }

    #[test]
    fn prefer_first_fills_the_first_pool_and_overflows_to_the_next() {
        let service = pooled("first");
        // Idle: always the first pool.
        for _ in 0..50 {
            let id = lease(&service, &[]).expect("some").endpoint.id.to_string();
            assert_eq!(id, "a1");
        }
        let mut held = Vec::new();
        let first: Vec<String> = (0..4).map(|_| leased_id(&service, &mut held)).collect();
        assert_eq!(first, ["a1", "a2", "b1", "b2"]);
        // All equally busy again: the tie goes to the first pool.
        assert_eq!(leased_id(&service, &mut held), "a1");
        // A request ends on b2: it is the least busy now, whatever its pool.
        held.retain(|l| &*l.endpoint.id != "b2");
        assert_eq!(leased_id(&service, &mut held), "b2");
    }

    #[test]
    fn prefer_any_spreads_over_every_pool() {
        let service = pooled("any");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..400 {
            seen.insert(lease(&service, &[]).expect("some").endpoint.id.to_string());
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    #[test]
    fn two_choices_never_pick_the_busiest_of_two() {
        let ready = vec![endpoint("a", 5), endpoint("b", 0)];
        for _ in 0..100 {
            assert_eq!(&*choose(&ready, &[]).expect("some").id, "b");
        }
    }

    #[test]
    fn spreads_over_equal_endpoints() {
        let ready: Vec<_> = (0..4).map(|i| endpoint(&i.to_string(), 0)).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(choose(&ready, &[]).expect("some").id.clone());
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn skips_tried_endpoints() {
        let ready = vec![endpoint("a", 0), endpoint("b", 9)];
        let tried: Vec<Arc<str>> = vec!["a".into()];
        assert_eq!(&*choose(&ready, &tried).expect("some").id, "b");
        let both: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        assert!(choose(&ready, &both).is_none());
        assert!(choose(&ready[..1], &tried).is_none());
    }
}
