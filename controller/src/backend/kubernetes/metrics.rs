//! What a service's pods use, from the resource metrics API
//! (`metrics.k8s.io/v1beta1` PodMetrics, served by metrics-server).
//!
//! One LIST of the namespace's PodMetrics per call, matched to the pods by
//! name: metrics-server answers it from memory, so one call for all pods is
//! cheaper for both sides than a GET per pod. CPU is already a rate there
//! (cores, averaged over the metrics window), memory the working set; both
//! are summed over the pod's containers. A pod the metrics do not cover
//! yet (just started, not scraped) is Unknown, not an error.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde::Deserialize;

use super::quantity;
use crate::backend::{BackendError, CpuUsage, Usage};

/// How long one LIST may take: `usage` is called about once a second.
const METRICS_TIMEOUT: Duration = Duration::from_secs(3);

/// The PodMetrics of one namespace.
pub struct PodMetrics {
    api: Api<DynamicObject>,
    namespace: String,
}

/// What metrics-server reports for one container.
#[derive(Debug, Deserialize)]
struct ContainerMetrics {
    #[serde(default)]
    name: String,
    #[serde(default)]
    usage: BTreeMap<String, Quantity>,
}

impl PodMetrics {
    pub fn new(client: Client, namespace: &str) -> Self {
        let gvk = GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "pods");
        Self {
            api: Api::namespaced_with(client, namespace, &resource),
            namespace: namespace.to_string(),
        }
    }

    /// The usage of each of `pods` (by name), in that order.
    pub async fn usage(&self, pods: Vec<String>) -> Result<Vec<Usage>, BackendError> {
        if pods.is_empty() {
            return Ok(Vec::new());
        }
        let what = || format!("listing PodMetrics in namespace {}", self.namespace);
        let listed = tokio::time::timeout(METRICS_TIMEOUT, self.api.list(&ListParams::default()))
            .await
            .map_err(|_| BackendError::Engine {
                what: what(),
                message: format!("no answer within {METRICS_TIMEOUT:?}"),
            })?
            .map_err(|e| match &e {
                // A LIST of a collection that exists is never a 404: the
                // group itself is not served.
                kube::Error::Api(status) if status.code == 404 => not_served(),
                _ => super::api_error(what(), e),
            })?;
        let by_name: HashMap<&str, &DynamicObject> = listed
            .items
            .iter()
            .filter_map(|m| Some((m.metadata.name.as_deref()?, m)))
            .collect();
        Ok(pods
            .into_iter()
            .map(|pod| match by_name.get(pod.as_str()) {
                Some(metrics) => usage_of(pod, metrics),
                None => Usage {
                    id: pod,
                    cpu: CpuUsage::Unknown,
                    memory_bytes: None,
                },
            })
            .collect())
    }
}

/// The error the status API shows for a cluster without metrics-server.
pub fn not_served() -> BackendError {
    BackendError::Unsupported {
        what: "resource usage",
        reason: "metrics.k8s.io is not served by this cluster: install metrics-server".into(),
    }
}

/// One pod's metrics, summed over its containers; a field any container
/// lacks or reports in a form that does not parse is Unknown for the pod
/// (a part of a sum would read as the whole).
fn usage_of(pod: String, metrics: &DynamicObject) -> Usage {
    let containers: Vec<ContainerMetrics> = metrics
        .data
        .get("containers")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let cpu = sum(&pod, &containers, "cpu", quantity::cores);
    let memory = sum(&pod, &containers, "memory", quantity::bytes);
    Usage {
        id: pod,
        cpu: cpu.map_or(CpuUsage::Unknown, CpuUsage::Cores),
        memory_bytes: memory,
    }
}

fn sum<T: std::iter::Sum<T>>(
    pod: &str,
    containers: &[ContainerMetrics],
    resource: &str,
    parse: fn(&str) -> Result<T, quantity::QuantityError>,
) -> Option<T> {
    if containers.is_empty() {
        return None;
    }
    containers
        .iter()
        .map(|c| {
            let text = &c.usage.get(resource)?.0;
            parse(text)
                .inspect_err(|e| {
                    tracing::debug!(%pod, container = %c.name, %resource, error = %e, "pod metrics")
                })
                .ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_metrics(containers: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "PodMetrics",
            "metadata": {"name": "web-1", "namespace": "default"},
            "timestamp": "2026-01-01T00:00:00Z",
            "window": "15s",
            "containers": containers,
        }))
        .expect("PodMetrics")
    }

    #[test]
    fn containers_are_summed() {
        let metrics = pod_metrics(serde_json::json!([
            {"name": "app", "usage": {"cpu": "250m", "memory": "12Mi"}},
            {"name": "sidecar", "usage": {"cpu": "12345678n", "memory": "1024Ki"}},
        ]));
        let usage = usage_of("web-1".into(), &metrics);
        assert_eq!(usage.id, "web-1");
        let CpuUsage::Cores(cores) = usage.cpu else {
            panic!("{usage:?}")
        };
        assert!((cores - 0.262_345_678).abs() < 1e-9, "{cores}");
        assert_eq!(usage.memory_bytes, Some(13 * 1024 * 1024));
    }

    #[test]
    fn a_missing_or_malformed_value_makes_that_field_unknown() {
        let metrics = pod_metrics(serde_json::json!([
            {"name": "app", "usage": {"cpu": "lots", "memory": "12Mi"}},
            {"name": "sidecar", "usage": {"cpu": "1"}},
        ]));
        let usage = usage_of("web-1".into(), &metrics);
        assert_eq!(usage.cpu, CpuUsage::Unknown);
        assert_eq!(usage.memory_bytes, None);

        for containers in [
            serde_json::json!([]),
            serde_json::json!("not a list"),
            serde_json::json!([{"usage": "not a map"}]),
        ] {
            let usage = usage_of("web-1".into(), &pod_metrics(containers));
            assert_eq!(usage.cpu, CpuUsage::Unknown);
            assert_eq!(usage.memory_bytes, None);
        }
    }
}
