//! Kubernetes workloads, scaled through their `/scale` subresource.
//!
//! The cluster owns the pods: rouse sets a replica count and the workload's
//! controller (a ReplicaSet, a StatefulSet, an operator) creates them, so
//! `ensure` only raises `/scale` and reports how many pods are still to
//! come ([`Started::pending`]). Pods are read from the Service's
//! EndpointSlices ([`slices`]), which also carry Kubernetes' own readiness.
//!
//! Scale-down stays lossless: the reconcile loop drains a pod through the
//! endpoint set first, then `stop` marks that pod with the lowest
//! `controller.kubernetes.io/pod-deletion-cost` and lowers `/scale` by one,
//! so the ReplicaSet removes exactly the drained pod. (A StatefulSet ignores
//! deletion cost and removes its highest ordinals, so those are the pods
//! rouse drains, see [`Backend::removal_order`]; its `/scale` goes down
//! past the marked pods at the top of its order, whichever of them stops
//! first.)
//!
//! API calls: a cold start is one GET and one PATCH of `/scale`; a
//! scale-down step is a GET and a PATCH of the pod, then of `/scale`;
//! steady state makes none (the slices are watched). `usage` is one LIST of
//! the namespace's PodMetrics ([`metrics`]; metrics-server must be
//! installed).

mod metrics;
mod quantity;
mod slices;
#[cfg(test)]
mod statefulset_tests;
#[cfg(test)]
mod usage_tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use rouse_nats::config::{KubernetesBackend as Spec, PortRef};
use tokio::sync::{Mutex, Notify};

use super::{Backend, BackendError, Replica, Started, Usage};
use metrics::PodMetrics;
use slices::Slices;

/// The annotation the ReplicaSet controller ranks pods by on scale-down.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// One API client for every kubernetes-backed service.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

impl Cluster {
    /// In-cluster (service account) when run in a pod, else `KUBECONFIG` or
    /// `~/.kube/config`, as kubectl.
    pub async fn from_env() -> Result<Self, kube::Error> {
        Ok(Self {
            client: Client::try_default().await?,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

/// The workload of one service.
pub struct KubernetesBackend {
    spec: Spec,
    target_name: String,
    /// `/scale` of the target, whatever its kind.
    target: Api<DynamicObject>,
    statefulset: bool,
    pods: Api<Pod>,
    slices: Slices,
    metrics: PodMetrics,
    /// `/scale` is read, then written: one change at a time.
    scaling: Mutex<()>,
}

impl KubernetesBackend {
    /// Starts watching the service's EndpointSlices; `changed` is notified
    /// on each change, so readiness reaches the proxies at once.
    pub fn new(spec: Spec, cluster: &Cluster, changed: Arc<Notify>) -> Result<Self, BackendError> {
        let target = spec.scale_target().ok_or_else(|| invalid(&spec))?;
        let api_version = target.api_version().ok_or_else(|| invalid(&spec))?;
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, &target.kind);
        let resource = match &target.plural {
            Some(plural) => ApiResource::from_gvk_with_plural(&gvk, plural),
            None => ApiResource::from_gvk(&gvk),
        };
        let client = cluster.client();
        Ok(Self {
            target: Api::namespaced_with(client.clone(), &spec.namespace, &resource),
            target_name: target.name.clone(),
            statefulset: target.kind == "StatefulSet",
            pods: Api::namespaced(client.clone(), &spec.namespace),
            metrics: PodMetrics::new(client.clone(), &spec.namespace),
            slices: Slices::watch(client, &spec.namespace, &spec.service, changed),
            scaling: Mutex::new(()),
            spec,
        })
    }

    fn port(&self) -> Option<&PortRef> {
        self.spec.port.as_ref()
    }

    fn what(&self, doing: &str) -> String {
        format!(
            "{doing} {}/{} in namespace {}",
            self.target
                .resource_url()
                .rsplit('/')
                .next()
                .unwrap_or("workload"),
            self.target_name,
            self.spec.namespace
        )
    }

    async fn current_scale(&self) -> Result<i32, BackendError> {
        let scale = self
            .target
            .get_scale(&self.target_name)
            .await
            .map_err(|e| api_error(self.what("reading /scale of"), e))?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    async fn set_scale(&self, replicas: i32) -> Result<(), BackendError> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.target
            .patch_scale(
                &self.target_name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| api_error(self.what(&format!("setting /scale to {replicas} on")), e))?;
        tracing::info!(target = %self.target_name, namespace = %self.spec.namespace, replicas, "scaled");
        Ok(())
    }

    /// A StatefulSet removes its highest ordinals and no other pod, so
    /// lowering `/scale` by one per stop would remove the wrong pod when
    /// two drained pods stop in the other order, and the second stop would
    /// then find its pod gone and remove nothing. Instead the count goes
    /// down past every top pod that is marked for removal, already leaving,
    /// or not created yet, and stops at the first that is none of these:
    /// a marked pod below one still serving waits for it.
    async fn shed_marked_tail(&self) -> Result<(), BackendError> {
        let current = self.current_scale().await?;
        let mut keep = current;
        while keep > 0 {
            let name = format!("{}-{}", self.target_name, keep - 1);
            let pod = self
                .pods
                .get_opt(&name)
                .await
                .map_err(|e| api_error(format!("reading pod {name}"), e))?;
            if !pod.as_ref().is_none_or(removable) {
                break;
            }
            keep -= 1;
        }
        if keep < current {
            self.set_scale(keep).await?;
        }
        Ok(())
    }

    async fn listed(&self) -> Result<usize, BackendError> {
        Ok(self.slices.replicas(self.port()).await?.len())
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn startup_timeout(&self) -> Duration {
        self.spec.startup_timeout
    }

    /// Sets `/scale` to `n`; lowered only as far as the pods listed, which
    /// cancels pods not created or not listed yet and never removes one
    /// (that is `stop`'s job, after a drain).
    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        let _one_at_a_time = self.scaling.lock().await;
        let current = self.current_scale().await?;
        let listed = self.listed().await?;
        let wanted = scale_for(n, current, listed);
        if wanted != current {
            self.set_scale(wanted).await?;
        }
        Ok(Started {
            replicas: Vec::new(),
            pending: usize::try_from(wanted).unwrap_or(0).saturating_sub(listed),
        })
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        self.slices.replicas(self.port()).await
    }

    /// Marks the pod as the one to remove, then lowers `/scale` by one (a
    /// StatefulSet's: past the marked pods at its top, see
    /// `shed_marked_tail`). A pod already gone or terminating is not marked
    /// or counted again.
    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let _one_at_a_time = self.scaling.lock().await;
        let what = || format!("pod {id} in namespace {}", self.spec.namespace);
        let pod = self
            .pods
            .get_opt(id)
            .await
            .map_err(|e| api_error(format!("reading {}", what()), e))?;
        let leaving = pod
            .as_ref()
            .is_none_or(|pod| pod.metadata.deletion_timestamp.is_some());
        if !leaving {
            let mark = serde_json::json!({
                "metadata": { "annotations": { DELETION_COST: i32::MIN.to_string() } }
            });
            self.pods
                .patch(id, &PatchParams::default(), &Patch::Merge(&mark))
                .await
                .map_err(|e| api_error(format!("marking {} for removal", what()), e))?;
        }
        if self.statefulset {
            // Even for a pod already leaving: it may be the one that held
            // back marked pods below it.
            return self.shed_marked_tail().await;
        }
        if leaving {
            return Ok(());
        }
        let current = self.current_scale().await?;
        if current > 0 {
            self.set_scale(current - 1).await?;
        }
        Ok(())
    }

    fn removal_order(&self, ids: &mut [String]) {
        if self.statefulset {
            ids.sort_by_key(|id| ordinal(id));
        }
    }

    fn picks_its_victim(&self) -> bool {
        self.statefulset
    }

    fn keeps_replicas_on_shutdown(&self) -> bool {
        true
    }

    /// The PodMetrics of the pods `list()` shows.
    async fn usage(&self) -> Result<Vec<Usage>, BackendError> {
        let pods = self.slices.replicas(self.port()).await?;
        self.metrics
            .usage(pods.into_iter().map(|r| r.id).collect())
            .await
    }
}

/// A pod `stop` marked for removal, or one already terminating.
fn removable(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST))
            .is_some_and(|cost| cost.parse() == Ok(i32::MIN))
}

/// The count `ensure(n)` sets: `n`, but never below the pods listed.
fn scale_for(n: usize, current: i32, listed: usize) -> i32 {
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    if n >= current {
        n
    } else {
        n.max(i32::try_from(listed).unwrap_or(i32::MAX))
    }
}

/// A StatefulSet pod's ordinal: `web-3` → 3.
fn ordinal(pod: &str) -> Option<u64> {
    pod.rsplit_once('-')?.1.parse().ok()
}

fn invalid(spec: &Spec) -> BackendError {
    BackendError::Engine {
        what: format!("service {} in namespace {}", spec.service, spec.namespace),
        message: "the kubernetes backend needs `deployment` or `target` with an api_version".into(),
    }
}

fn api_error(what: String, err: kube::Error) -> BackendError {
    let message = match &err {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    };
    BackendError::Engine { what, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_raises_freely_and_lowers_only_to_the_pods_listed() {
        assert_eq!(scale_for(3, 0, 0), 3);
        assert_eq!(scale_for(3, 3, 1), 3);
        // Two requested pods not listed yet are cancelled.
        assert_eq!(scale_for(1, 3, 1), 1);
        // Listed pods stay: removing one is a drain and `stop`.
        assert_eq!(scale_for(0, 2, 2), 2);
        assert_eq!(scale_for(usize::MAX, 1, 0), i32::MAX);
    }

    #[test]
    fn statefulset_pods_are_ordered_by_ordinal() {
        assert_eq!(ordinal("web-10"), Some(10));
        assert_eq!(ordinal("web"), None);
        let mut ids = vec!["web-10".to_string(), "web-2".into(), "web-0".into()];
        ids.sort_by_key(|id| ordinal(id));
        assert_eq!(ids, ["web-0", "web-2", "web-10"]);
    }
}
