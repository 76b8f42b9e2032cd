//! `usage()` through a real `kube::Client` against kubefake, whose
//! metrics.k8s.io is computed from the pods' real `rouse-echo` processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use rouse_kubefake::{FakeCluster, Workload};
use tokio::sync::Notify;

use super::{Cluster, KubernetesBackend};
use crate::backend::process::tests::{holding_64_mib_shows, usage_of, PATIENCE};
use crate::backend::{Backend, BackendError, CpuUsage};

async fn backend(fake: &FakeCluster) -> KubernetesBackend {
    backend_for(fake, "{deployment: web, service: web}").await
}

/// A backend on `fake` for the `backend.kubernetes` settings `spec` (YAML).
pub(super) async fn backend_for(fake: &FakeCluster, spec: &str) -> KubernetesBackend {
    let kubeconfig = Kubeconfig::read_from(fake.kubeconfig()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    let cluster = Cluster {
        client: kube::Client::try_from(config).expect("client"),
    };
    let spec = serde_norway::from_str(spec).expect("spec");
    KubernetesBackend::new(spec, &cluster, Arc::new(Notify::new())).expect("backend")
}

/// A cluster with one ready `rouse-echo` pod of Deployment `web`, the
/// backend on it, and the pod's name and address.
async fn one_pod() -> (FakeCluster, KubernetesBackend, String, std::net::SocketAddr) {
    let fake = FakeCluster::start().await.expect("fake cluster");
    let mut workload = Workload::echo("web");
    workload.replicas = 1;
    fake.add_workload(workload).expect("workload");
    let backend = backend(&fake).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let listed = backend.list().await.unwrap_or_default();
        if let [pod] = listed.as_slice() {
            if pod.readiness == crate::backend::Readiness::Reported(true) {
                let addr = pod.addr.parse().expect("pod address");
                let id = pod.id.clone();
                return (fake, backend, id, addr);
            }
        }
        assert!(Instant::now() < deadline, "no ready pod: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pods_cpu_and_memory_come_from_pod_metrics() {
    let (_fake, backend, pod, addr) = one_pod().await;
    // Keeps the pod busy while the metrics window catches up (bounded:
    // at most 240 burns of 500 ms).
    let burner = tokio::spawn(async move {
        for _ in 0..240 {
            let _ = rouse_stack::http_get(addr, "/cpu/500", PATIENCE).await;
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let usage = loop {
        let usage = usage_of(&backend, &pod).await;
        if matches!(usage.cpu, CpuUsage::Cores(cores) if cores >= 0.3) {
            break usage;
        }
        assert!(Instant::now() < deadline, "never 0.3 cores busy: {usage:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    burner.abort();
    let memory = usage.memory_bytes.expect("memory");
    assert!(memory > 1024 * 1024, "{memory} bytes");
    holding_64_mib_shows(&backend, &pod, addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_metrics_server_says_so() {
    let (fake, backend, _, _) = one_pod().await;
    fake.serve_metrics(false);
    match backend.usage().await {
        Err(BackendError::Unsupported { what, reason }) => {
            assert_eq!(what, "resource usage");
            assert!(reason.contains("metrics-server"), "{reason}");
        }
        other => panic!("usage without metrics.k8s.io: {other:?}"),
    }
    // Other errors stay what they are: a 500 is the API server's, not a
    // missing feature.
    fake.serve_metrics(true);
    fake.fail_next("GET", "/apis/metrics.k8s.io/", 500);
    match backend.usage().await {
        Err(BackendError::Engine { what, .. }) => assert!(what.contains("PodMetrics"), "{what}"),
        other => panic!("usage on a failing API server: {other:?}"),
    }
}
