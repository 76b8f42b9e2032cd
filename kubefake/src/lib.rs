//! A fake Kubernetes API server that speaks real HTTP, and a small kubelet
//! that runs real processes as pods, for testing rouse's Kubernetes backend
//! on a machine where no API server can run.
//!
//! Tests drive it with a real `kube::Client` built from the kubeconfig
//! [`FakeCluster::start`] writes, so every request is what kube-rs really
//! sends and every response must be one kube-rs accepts. Each pod is a real
//! process (e.g. `rouse-echo`) on its own loopback IP (127.0.0.2 and up,
//! all on `lo`), so a backend under test reaches and drains real replicas.
//!
//! # What is served
//!
//! Objects are JSON in one store with one global, growing resourceVersion;
//! lists carry it in `metadata.resourceVersion` and are never paginated
//! (`limit` is accepted and ignored, `continue` stays empty).
//!
//! | path | verbs |
//! |---|---|
//! | `/apis/apps/v1/namespaces/{ns}/{deployments,statefulsets}` | LIST, WATCH |
//! | `.../{deployments,statefulsets}/{name}` | GET; PATCH/PUT take `spec.replicas`, labels, annotations |
//! | `.../{name}/scale` | GET, PATCH (merge, strategic, JSON patch, apply as merge), PUT (409 on a stale resourceVersion) |
//! | `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices[/{name}]` | LIST, WATCH, GET |
//! | `/api/v1/namespaces/{ns}/pods[/{name}]` | LIST, WATCH, GET; PATCH/PUT of labels and annotations; DELETE (graceful) |
//! | `/api/v1/namespaces/{ns}/services[/{name}]` | LIST, WATCH, GET |
//! | `/apis/coordination.k8s.io/v1/namespaces/{ns}/leases[/{name}]` | POST, GET, PUT, PATCH, DELETE, LIST, WATCH |
//! | `/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods[/{name}]` | LIST, GET: PodMetrics from the pods' real processes (see `metrics`); 404 after [`FakeCluster::serve_metrics`]`(false)` |
//! | objects of [`FakeCluster::put_object`], namespaced or cluster-wide | as leases, plus `/status` |
//! | scalable custom kinds ([`Kind::Custom`]) | as Deployments |
//! | `/version` | GET |
//!
//! Every collection path also answers cluster-wide (`/api/v1/pods`). Query
//! parameters: `labelSelector` (`=`, `==`, `!=`, `key`, `!key`),
//! `fieldSelector` (`metadata.name`, `metadata.namespace`), `watch`
//! (`true`/`1`), `resourceVersion`, `resourceVersionMatch`, `limit`,
//! `timeoutSeconds`, `allowWatchBookmarks`, `sendInitialEvents`,
//! `gracePeriodSeconds`; `dryRun` is refused (400). Errors are metav1
//! `Status` bodies with the real codes and reasons.
//!
//! A watch is a chunked stream of newline-delimited `WatchEvent`s: from
//! resourceVersion unset or `0`, the matching objects as ADDED first; from
//! an RV, every change since (an RV older than the kept history gets an
//! `ERROR` event with a 410 `Expired` Status); a BOOKMARK every second when
//! asked for; the stream ends after `timeoutSeconds`.
//!
//! # What is not modelled
//!
//! No authentication or authorization, no admission, no schemas or
//! defaulting beyond what the kubelet writes, no scheduling or nodes (every
//! pod is on node `kubefake`), no images (the command runs on this
//! machine), no ReplicaSet objects or rollouts, one EndpointSlice per
//! Service, no cluster IPs (Services are headless), no server-side apply
//! field ownership, no strategic-merge directives, no `dryRun`, no
//! pagination, no protobuf, and a readiness probe that stops once the pod
//! is ready (the process exiting is what makes it unready again).

mod cluster;
mod kubelet;
mod metrics;
mod patch;
mod selector;
mod server;
mod status;
mod store;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

pub use cluster::{Kind, PodView, RecordedRequest, Workload};

use cluster::{release_ip, Fault, ResInfo, Role, Shared};
use store::Res;

/// How long dropping a cluster waits for its pods to exit after SIGTERM
/// before it SIGKILLs them (shorter than a pod's grace: a test is over).
const DROP_GRACE: Duration = Duration::from_secs(5);
/// How often [`FakeCluster::wait_until`] looks.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// A running fake cluster: the API server on 127.0.0.1, its kubelet, and
/// the pods' processes. Dropping it stops the server and every pod
/// (SIGTERM, then SIGKILL after a few seconds).
pub struct FakeCluster {
    shared: Arc<Shared>,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    tasks: Vec<AbortHandle>,
    /// Kubeconfig and pod logs; removed last, on drop.
    dir: tempfile::TempDir,
}

impl FakeCluster {
    /// Binds the API server on `127.0.0.1:0`, starts the kubelet, and
    /// writes a kubeconfig (one cluster, user and context; namespace
    /// `default`; no auth) pointing at it. Needs a tokio runtime.
    pub async fn start() -> anyhow::Result<FakeCluster> {
        let dir = tempfile::Builder::new()
            .prefix("rouse-kubefake-")
            .tempdir()
            .context("creating the cluster's temp dir")?;
        let logs = dir.path().join("pods");
        std::fs::create_dir_all(&logs).context("creating the pod log dir")?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the API server")?;
        let addr = listener.local_addr()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server::url(addr)))
            .context("writing the kubeconfig")?;
        let shared = Shared::new(logs);
        let server = tokio::spawn(server::serve(listener, shared.clone()));
        let kubelet = tokio::spawn(kubelet::run(shared.clone()));
        let sampler = tokio::spawn(metrics::run(shared.clone()));
        Ok(FakeCluster {
            shared,
            addr,
            kubeconfig,
            tasks: vec![
                server.abort_handle(),
                kubelet.abort_handle(),
                sampler.abort_handle(),
            ],
            dir,
        })
    }

    /// The kubeconfig file (for `Kubeconfig::read_from` or `KUBECONFIG`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        server::url(self.addr)
    }

    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a workload object (Deployment, StatefulSet or a custom kind at
    /// `spec.replicas` = `spec.replicas`), a Service `spec.service` and its
    /// EndpointSlice. The kubelet runs each pod as `spec.command` with
    /// `{ip}` and `{port}` replaced (env PORT, POD_NAME, POD_NAMESPACE,
    /// POD_IP, `ROUSE_REPLICA_ID=<pod name>`) and marks it ready once `GET
    /// http://{ip}:{port}{readiness_path}` answers 2xx (polled every 50 ms).
    pub fn add_workload(&self, spec: Workload) -> anyhow::Result<()> {
        self.shared.lock().add_workload(spec)
    }

    /// `spec.replicas` of a workload.
    pub fn replicas(&self, namespace: &str, kind: &Kind, name: &str) -> Option<i32> {
        self.shared
            .lock()
            .desired(&(kind.res(), (namespace.into(), name.into())))
    }

    /// Sets `spec.replicas` as an HPA or KEDA would (a new resourceVersion,
    /// a MODIFIED event; the kubelet reacts).
    pub fn set_replicas(
        &self,
        namespace: &str,
        kind: &Kind,
        name: &str,
        replicas: i32,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(replicas >= 0, "replicas must be >= 0, not {replicas}");
        self.shared
            .lock()
            .write_replicas(&(kind.res(), (namespace.into(), name.into())), replicas)
            .map(|_| ())
            .with_context(|| format!("no {} {namespace}/{name}", kind.kind_name()))
    }

    /// The pods of a namespace (terminating ones included), by name.
    pub fn pods(&self, namespace: &str) -> Vec<PodView> {
        let state = self.shared.lock();
        state
            .pods
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .filter_map(|key| state.pod_view(key))
            .collect()
    }

    /// Every pod chosen for deletion so far, in that order, as it was when
    /// chosen (its annotations and deletion cost then).
    pub fn deleted_pods(&self) -> Vec<PodView> {
        self.shared.lock().deleted.clone()
    }

    /// Every API call answered so far (the latest 100 000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Creates or replaces a generic object, e.g. `http.keda.sh/v1alpha1`
    /// `httpscaledobjects`: its kind is then served (LIST, WATCH, GET, and
    /// writes as for leases). `namespace: None` makes the kind
    /// cluster-scoped. The object needs `kind` and `metadata.name`.
    pub fn put_object(
        &self,
        group_version: &str,
        plural: &str,
        namespace: Option<&str>,
        mut object: Value,
    ) -> anyhow::Result<()> {
        let res = Res::from_api_version(group_version, plural);
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .context("the object has no kind")?
            .to_string();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .context("the object has no metadata.name")?
            .to_string();
        object["apiVersion"] = group_version.into();
        let mut state = self.shared.lock();
        match state.resources.get(&res) {
            Some(info) => {
                anyhow::ensure!(
                    info.role == Role::Full && info.namespaced == namespace.is_some(),
                    "{plural} of {group_version} is already served differently"
                );
            }
            None => {
                state.resources.insert(
                    res.clone(),
                    ResInfo {
                        kind,
                        namespaced: namespace.is_some(),
                        role: Role::Full,
                    },
                );
            }
        }
        state
            .store
            .put(&res, namespace.unwrap_or(""), &name, object);
        Ok(())
    }

    /// A stored object of any kind, as the API would return it.
    pub fn object(
        &self,
        group_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = Res::from_api_version(group_version, plural);
        self.shared
            .lock()
            .store
            .get(&res, namespace.unwrap_or(""), name)
            .cloned()
    }

    /// Deletes an object put with [`FakeCluster::put_object`] (a DELETED
    /// event); `false` when there was none.
    pub fn delete_object(
        &self,
        group_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let res = Res::from_api_version(group_version, plural);
        let mut state = self.shared.lock();
        if state.resources.get(&res).map(|i| i.role) != Some(Role::Full) {
            return false;
        }
        state
            .store
            .remove(&res, namespace.unwrap_or(""), name)
            .is_some()
    }

    /// A `coordination.k8s.io/v1` Lease, as stored.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object("coordination.k8s.io/v1", "leases", Some(namespace), name)
    }

    /// Makes the next API call with this method whose path contains
    /// `path_contains` fail with `status` (and a matching Status reason),
    /// once. Queued faults are matched in the order they were added.
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16) {
        self.shared.lock().faults.push(Fault {
            method: method.to_string(),
            path_contains: path_contains.to_string(),
            status,
        });
    }

    /// Forgets the watch history, as a compaction or a watch-cache reset
    /// would: open watches get an `ERROR` 410 Gone event, and so does any
    /// watch from a resourceVersion handed out before; clients relist.
    pub fn compact_history(&self) {
        self.shared.lock().store.compact();
    }

    /// SIGKILLs a pod's process, as a crash would: the kubelet marks it
    /// unready and starts it again after a backoff. `false` when the pod
    /// has no running process.
    pub fn kill_pod_process(&self, namespace: &str, name: &str) -> bool {
        let mut state = self.shared.lock();
        let Some(pod) = state.pods.get_mut(&(namespace.into(), name.into())) else {
            return false;
        };
        match &mut pod.proc {
            Some(proc) => {
                let running = proc.is_running();
                if running {
                    proc.sigkill();
                }
                running
            }
            None => false,
        }
    }

    /// Serves `metrics.k8s.io` (the default, as with metrics-server) or
    /// not: off, every path of the group is a 404, as on a cluster without
    /// metrics-server.
    pub fn serve_metrics(&self, on: bool) {
        self.shared.lock().metrics_served = on;
    }

    /// What a pod's processes wrote to stdout and stderr so far.
    pub fn pod_log(&self, namespace: &str, name: &str) -> String {
        let path = kubelet::pod_log_path(&self.shared.dir, &(namespace.into(), name.into()));
        rouse_stack::read_lossy(&path)
    }

    /// The directory of the kubeconfig and the pod logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Polls `probe` every 20 ms until it returns `Some`, for at most
    /// `timeout`; the error names `what` and lists the pods then.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&FakeCluster) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe(self) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                let pods: Vec<_> = {
                    let state = self.shared.lock();
                    state
                        .pods
                        .keys()
                        .filter_map(|key| state.pod_view(key))
                        .collect()
                };
                anyhow::bail!("timed out after {timeout:?} waiting for {what}; pods: {pods:#?}");
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        let mut procs = Vec::new();
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            for (_, pod) in std::mem::take(&mut state.pods) {
                if let Some(task) = pod.task {
                    task.abort();
                }
                release_ip(pod.ip);
                procs.extend(pod.proc);
            }
        }
        // Synchronous on purpose: drop may run on a runtime that will not
        // be polled again (the end of a test), so nothing here awaits.
        for proc in &mut procs {
            proc.sigterm();
        }
        let deadline = Instant::now() + DROP_GRACE;
        while Instant::now() < deadline && procs.iter_mut().any(|p| p.is_running()) {
            std::thread::sleep(WAIT_POLL);
        }
        for proc in &mut procs {
            proc.kill_now();
        }
    }
}

/// One cluster, one user without credentials, one context in `default`.
fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubefake
  cluster:
    server: {server}
users:
- name: kubefake
  user: {{}}
contexts:
- name: kubefake
  context:
    cluster: kubefake
    user: kubefake
    namespace: default
current-context: kubefake
preferences: {{}}
"
    )
}
