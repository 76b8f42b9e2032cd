//! A service's pods as its EndpointSlices list them.
//!
//! The slices are watched (a kube-runtime reflector), never polled: each
//! change wakes the service's reconcile loop, so a pod turning ready reaches
//! the proxies at once. Reading the replicas is then a pure function of the
//! cached slices, tested without a cluster.
//!
//! A watch that keeps failing (the API server gone) leaves the last state
//! in place, which keeps routing as it was; after [`STALE_AFTER`] of
//! failures, listing is an error, so the operator sees it in `last_error`
//! and `rouse_backend_errors_total`.
//!
//! Conditions, as Kubernetes defines them: `ready` unset means ready;
//! `terminating` pods are left out altogether (the cluster is removing them:
//! no new requests, and nothing for rouse to stop), whatever `serving` says.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use rouse_nats::config::PortRef;
use tokio::sync::Notify;

use crate::backend::{BackendError, Health, Readiness, Replica};

/// The label Kubernetes puts on every slice of a Service.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// How long `list` waits for the first complete list of slices.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// A watch failing without a break this long makes listing an error.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Since when the watch has been failing, and its latest error.
type Failing = Arc<Mutex<Option<(Instant, String)>>>;

/// The cached slices of one Service, kept current by a background watch.
pub struct Slices {
    store: Store<EndpointSlice>,
    service: String,
    failing: Failing,
    watch: tokio::task::JoinHandle<()>,
}

impl Slices {
    /// Starts watching `service`'s slices in `namespace`; `changed` is
    /// notified on every change.
    pub fn watch(client: Client, namespace: &str, service: &str, changed: Arc<Notify>) -> Self {
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("{SERVICE_LABEL}={service}"));
        let (store, writer) = reflector::store();
        let name = service.to_string();
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let failing = Failing::default();
        let watch = tokio::spawn({
            let failing = Arc::clone(&failing);
            async move {
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    let mut state = failing.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        Ok(_) => {
                            *state = None;
                            changed.notify_one();
                        }
                        // The watcher relists and backs off by itself.
                        Err(err) => {
                            tracing::warn!(service = %name, error = %err, "watching EndpointSlices");
                            let since = state.as_ref().map_or_else(crate::reconcile::now, |f| f.0);
                            *state = Some((since, err.to_string()));
                        }
                    }
                }
            }
        });
        Self {
            store,
            service: service.to_string(),
            failing,
            watch,
        }
    }

    /// The pods of the slices, once the first list arrived.
    pub async fn replicas(&self, port: Option<&PortRef>) -> Result<Vec<Replica>, BackendError> {
        if tokio::time::timeout(FIRST_LIST_WAIT, self.store.wait_until_ready())
            .await
            .map_or(true, |r| r.is_err())
        {
            return Err(BackendError::Engine {
                what: format!("listing EndpointSlices of service `{}`", self.service),
                message: "no complete list from the API server yet".into(),
            });
        }
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(message) = stale(failing.as_ref(), crate::reconcile::now()) {
            return Err(BackendError::Engine {
                what: format!("watching EndpointSlices of service `{}`", self.service),
                message,
            });
        }
        Ok(replicas_of(&self.store.state(), port))
    }
}

/// Whether a watch failing since `failing` counts as broken at `now`.
fn stale(failing: Option<&(Instant, String)>, now: Instant) -> Option<String> {
    let (since, error) = failing?;
    let for_how_long = now.saturating_duration_since(*since);
    (for_how_long >= STALE_AFTER).then(|| {
        format!(
            "failing for {}s, serving the last state seen: {error}",
            for_how_long.as_secs()
        )
    })
}

impl Drop for Slices {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Every non-terminating pod endpoint of `slices`, once per pod, by name.
pub fn replicas_of(slices: &[Arc<EndpointSlice>], port: Option<&PortRef>) -> Vec<Replica> {
    let mut pods: BTreeMap<String, Replica> = BTreeMap::new();
    for slice in slices {
        let Some(port) = pick_port(slice.ports.as_deref().unwrap_or_default(), port) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            if conditions.and_then(|c| c.terminating).unwrap_or(false) {
                continue;
            }
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let id = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| address.clone());
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let replica = Replica {
                id: id.clone(),
                addr: socket_addr(address, port),
                health: Health::Running,
                readiness: Readiness::Reported(ready),
            };
            // A pod moving between slices shows twice for a moment: ready wins.
            match pods.get(&id) {
                Some(seen) if seen.readiness == Readiness::Reported(true) => {}
                _ => {
                    pods.insert(id, replica);
                }
            }
        }
    }
    pods.into_values().collect()
}

/// The slice port the proxies connect to: the configured number or name;
/// else, or when nothing matches (a Service port such as 80 in front of the
/// pods' 8080), the slice's only port.
fn pick_port(ports: &[EndpointPort], wanted: Option<&PortRef>) -> Option<u16> {
    let number = |p: &EndpointPort| p.port.and_then(|n| u16::try_from(n).ok());
    let matched = wanted.and_then(|wanted| {
        ports.iter().find(|p| match wanted {
            PortRef::Number(n) => number(p) == Some(*n),
            PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
        })
    });
    match (matched, ports) {
        (Some(port), _) => number(port),
        (None, [only]) => number(only),
        (None, _) => None,
    }
}

fn socket_addr(address: &str, port: u16) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    use super::*;

    fn endpoint(pod: &str, ip: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(ports: &[(&str, i32)], endpoints: Vec<Endpoint>) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some(name.to_string()),
                        port: Some(*port),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    #[test]
    fn a_watch_is_broken_only_after_failing_for_stale_after() {
        let t0 = Instant::now();
        let failing = (t0, "connection refused".to_string());
        assert_eq!(stale(None, t0 + STALE_AFTER * 10), None);
        assert_eq!(stale(Some(&failing), t0 + STALE_AFTER / 2), None);
        let message = stale(Some(&failing), t0 + STALE_AFTER).expect("stale");
        assert!(
            message.contains("connection refused") && message.contains("30s"),
            "{message}"
        );
    }

    #[test]
    fn conditions_decide_readiness_and_terminating_pods_are_left_out() {
        let slices = [slice(
            &[("http", 8080)],
            vec![
                endpoint("a", "10.0.0.1", Some(true), Some(false)),
                endpoint("b", "10.0.0.2", Some(false), None),
                endpoint("c", "10.0.0.3", None, None),
                endpoint("d", "10.0.0.4", Some(false), Some(true)),
            ],
        )];
        let replicas = replicas_of(&slices, None);
        let seen: Vec<(&str, &str, Readiness)> = replicas
            .iter()
            .map(|r| (r.id.as_str(), r.addr.as_str(), r.readiness))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a", "10.0.0.1:8080", Readiness::Reported(true)),
                ("b", "10.0.0.2:8080", Readiness::Reported(false)),
                ("c", "10.0.0.3:8080", Readiness::Reported(true)),
            ]
        );
    }

    #[test]
    fn the_port_is_chosen_by_number_or_name_else_the_only_one() {
        let two = [("http", 8080), ("metrics", 9100)];
        let one = [("http", 8080)];
        let pod = || vec![endpoint("a", "10.0.0.1", Some(true), None)];
        let addr = |ports: &[(&str, i32)], wanted: Option<PortRef>| {
            replicas_of(&[slice(ports, pod())], wanted.as_ref())
                .first()
                .map(|r| r.addr.clone())
        };
        assert_eq!(
            addr(&two, Some(PortRef::Number(9100))).as_deref(),
            Some("10.0.0.1:9100")
        );
        assert_eq!(
            addr(&two, Some(PortRef::Name("http".into()))).as_deref(),
            Some("10.0.0.1:8080")
        );
        // A Service port in front of the pod port: the slice's only port.
        assert_eq!(
            addr(&one, Some(PortRef::Number(80))).as_deref(),
            Some("10.0.0.1:8080")
        );
        // Ambiguous: nothing rather than a guess.
        assert_eq!(addr(&two, None), None);
        assert_eq!(addr(&two, Some(PortRef::Number(80))), None);
    }

    #[test]
    fn a_pod_in_two_slices_counts_once_and_ready_wins_and_ipv6_is_bracketed() {
        let slices = [
            slice(
                &[("http", 80)],
                vec![endpoint("a", "fd00::1", Some(false), None)],
            ),
            slice(
                &[("http", 80)],
                vec![endpoint("a", "fd00::1", Some(true), None)],
            ),
        ];
        let replicas = replicas_of(&slices, None);
        assert_eq!(replicas.len(), 1);
        assert_eq!(replicas[0].addr, "[fd00::1]:80");
        assert_eq!(replicas[0].readiness, Readiness::Reported(true));
    }
}
