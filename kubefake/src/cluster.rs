//! The state behind one fake cluster, shared by the HTTP server, the
//! kubelet and the test's handle, and the public types a test sees.
//!
//! One mutex guards it all: every API call and every kubelet step is short
//! and synchronous under it (no await while it is held), which makes each of
//! them atomic the way a single etcd transaction is, and keeps the fake
//! simple enough to trust.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use rouse_stack::Proc;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::metrics::PodSamples;
use crate::store::{Res, Store};

/// How many API calls [`crate::FakeCluster::requests`] keeps (the oldest
/// are dropped beyond that, so that a long soak cannot eat memory).
const REQUEST_LOG_LIMIT: usize = 100_000;

/// What kind of workload owns the pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `apps/v1` Deployment: pods `<name>-<10 chars>`; scale-down picks
    /// victims the way the ReplicaSet controller does (deletion cost).
    Deployment,
    /// `apps/v1` StatefulSet: pods `<name>-<ordinal>`; scale-down removes
    /// the highest ordinals and ignores deletion cost.
    StatefulSet,
    /// A custom resource with a `/scale` subresource (the way KEDA or an
    /// operator's kind would be scaled); pods behave as a Deployment's.
    Custom {
        /// `group/version`, e.g. `example.com/v1`.
        api_version: String,
        /// The kind, e.g. `EchoApp`.
        kind: String,
        /// The plural in the URL, e.g. `echoapps`.
        plural: String,
    },
}

impl Kind {
    pub(crate) fn res(&self) -> Res {
        match self {
            Kind::Deployment => Res::new("apps", "v1", "deployments"),
            Kind::StatefulSet => Res::new("apps", "v1", "statefulsets"),
            Kind::Custom {
                api_version,
                plural,
                ..
            } => Res::from_api_version(api_version, plural),
        }
    }

    pub(crate) fn kind_name(&self) -> &str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::Custom { kind, .. } => kind,
        }
    }
}

/// A workload for [`crate::FakeCluster::add_workload`]: the object (at the
/// given initial replicas, usually 0), a Service for it, and the command the
/// kubelet runs for each pod.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Namespace of the workload, its Service, slice and pods.
    pub namespace: String,
    /// Deployment, StatefulSet or a custom scalable kind.
    pub kind: Kind,
    /// Name of the workload object; its pods carry the label `app=<name>`.
    pub name: String,
    /// The Service (and so the EndpointSlice's `kubernetes.io/service-name`).
    pub service: String,
    /// Name of the one port in the Service and the slice (`http`).
    pub port_name: String,
    /// The port every pod listens on; `None` picks one free on loopback.
    pub port: Option<u16>,
    /// argv of each pod; `{ip}` and `{port}` are replaced in every element.
    pub command: Vec<String>,
    /// Added to each pod's environment (after PORT, POD_NAME, POD_IP,
    /// POD_NAMESPACE and ROUSE_REPLICA_ID, which it may override).
    pub env: BTreeMap<String, String>,
    /// Readiness probe path: ready once `GET http://ip:port<path>` is 2xx.
    pub readiness_path: String,
    /// Time between SIGTERM and SIGKILL (`terminationGracePeriodSeconds`).
    pub termination_grace: Duration,
    /// `spec.replicas` the object starts with.
    pub replicas: i32,
}

impl Workload {
    /// A Deployment `name` in `default` with a Service `name`, port `http`,
    /// running `command`, probed on `/healthz`, 30 s grace, 0 replicas.
    pub fn new(name: &str, command: Vec<String>) -> Workload {
        Workload {
            namespace: "default".into(),
            kind: Kind::Deployment,
            name: name.into(),
            service: name.into(),
            port_name: "http".into(),
            port: None,
            command,
            env: BTreeMap::new(),
            readiness_path: "/healthz".into(),
            termination_grace: Duration::from_secs(30),
            replicas: 0,
        }
    }

    /// [`Workload::new`] running this workspace's `rouse-echo --bind {ip}
    /// --port {port}` (found, and built if needed, by `rouse_stack::bin`).
    pub fn echo(name: &str) -> Workload {
        let bin = rouse_stack::bin("rouse-echo");
        Workload::new(
            name,
            vec![
                bin.display().to_string(),
                "--bind".into(),
                "{ip}".into(),
                "--port".into(),
                "{port}".into(),
            ],
        )
    }
}

/// A pod as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name (`<workload>-<10 chars>`, or `<statefulset>-<ordinal>`).
    pub name: String,
    /// Name of the owning workload.
    pub workload: String,
    /// Its own loopback address (127.0.0.2 and up), as `status.podIP`.
    pub ip: Ipv4Addr,
    /// The workload's port, the same for all its pods.
    pub port: u16,
    /// Its readiness probe passed and the process is still the one probed.
    pub ready: bool,
    /// It has a deletionTimestamp (chosen for scale-down or deleted).
    pub terminating: bool,
    /// `controller.kubernetes.io/pod-deletion-cost`, when set and an int32.
    pub deletion_cost: Option<i32>,
    /// `metadata.annotations` as clients patched them.
    pub annotations: BTreeMap<String, String>,
    /// The pid of its current process, if one runs.
    pub pid: Option<u32>,
    /// How often its process exited and was started again.
    pub restarts: u32,
    /// StatefulSet ordinal.
    pub ordinal: Option<u32>,
}

impl PodView {
    /// `ip:port`, where the pod serves.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }
}

/// One API call the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The URL path, without the query.
    pub path: String,
    /// The raw query string (kube-rs starts it with `&`).
    pub query: String,
    /// A watch (`watch=true` or `watch=1`).
    pub watch: bool,
    /// The HTTP status answered (200 for a watch that streamed).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl RecordedRequest {
    /// The value of a query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// A fault to inject ([`crate::FakeCluster::fail_next`]).
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub method: String,
    pub path_contains: String,
    pub status: u16,
}

/// What the API does with a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Deployments, StatefulSets, scalable custom kinds: read, `/scale`, and
    /// writes that take only `spec.replicas`, labels and annotations.
    Workload,
    /// Pods: read, patch of labels and annotations, delete (graceful).
    Pods,
    /// Services and EndpointSlices: owned by the fake, read only.
    ReadOnly,
    /// Leases and objects put by tests: full create/replace/patch/delete.
    Full,
}

/// A resource type the API serves.
#[derive(Debug, Clone)]
pub(crate) struct ResInfo {
    pub kind: String,
    pub namespaced: bool,
    pub role: Role,
}

/// Key of a workload or pod: namespace and name.
pub(crate) type NsName = (String, String);

/// A workload the kubelet runs.
#[derive(Debug)]
pub(crate) struct WorkloadRt {
    pub spec: Workload,
    pub port: u16,
    pub slice_name: String,
}

/// Why and how a pod is going away.
pub(crate) struct Termination {
    pub grace: Duration,
    pub deletion_timestamp: Timestamp,
    /// When SIGTERM was sent (`None`: not yet).
    pub signalled_at: Option<Instant>,
    /// The endpoint's `serving` while it drains: whether it was ready.
    pub serving: bool,
}

/// A pod the kubelet runs.
pub(crate) struct PodRt {
    /// Kind, namespace and name of the owning workload.
    pub owner: (Res, NsName),
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ordinal: Option<u32>,
    /// Creation order (newest is the highest), for victim ranking.
    pub seq: u64,
    pub proc: Option<Proc>,
    /// Bumped at each start, so that a probe of an earlier run that answers
    /// late cannot mark the new run ready.
    pub run: u64,
    pub ready: bool,
    pub ready_since: Option<Instant>,
    pub started_at: Option<Timestamp>,
    pub restarts: u32,
    /// Not started again before this (crash backoff).
    pub next_start: Instant,
    pub last_exit: Option<String>,
    pub terminating: Option<Termination>,
    pub task: Option<AbortHandle>,
}

/// Everything under the one lock.
pub(crate) struct State {
    pub store: Store,
    pub resources: BTreeMap<Res, ResInfo>,
    pub workloads: BTreeMap<(Res, NsName), WorkloadRt>,
    pub pods: BTreeMap<NsName, PodRt>,
    pub deleted: Vec<PodView>,
    pub requests: VecDeque<RecordedRequest>,
    pub faults: Vec<Fault>,
    pub next_seq: u64,
    /// Set when the cluster is dropped: the kubelet starts nothing any more.
    pub stopping: bool,
    /// Recent samples of each running pod's processes, for metrics.k8s.io.
    pub usage: BTreeMap<NsName, PodSamples>,
    /// Whether metrics.k8s.io is served (a cluster with metrics-server).
    pub metrics_served: bool,
}

impl State {
    pub fn new() -> State {
        let mut resources = BTreeMap::new();
        let builtin = [
            ("", "v1", "pods", "Pod", Role::Pods),
            ("", "v1", "services", "Service", Role::ReadOnly),
            ("apps", "v1", "deployments", "Deployment", Role::Workload),
            ("apps", "v1", "statefulsets", "StatefulSet", Role::Workload),
            (
                "discovery.k8s.io",
                "v1",
                "endpointslices",
                "EndpointSlice",
                Role::ReadOnly,
            ),
            ("coordination.k8s.io", "v1", "leases", "Lease", Role::Full),
        ];
        for (group, version, plural, kind, role) in builtin {
            resources.insert(
                Res::new(group, version, plural),
                ResInfo {
                    kind: kind.into(),
                    namespaced: true,
                    role,
                },
            );
        }
        State {
            store: Store::new(),
            resources,
            workloads: BTreeMap::new(),
            pods: BTreeMap::new(),
            deleted: Vec::new(),
            requests: VecDeque::new(),
            faults: Vec::new(),
            next_seq: 0,
            stopping: false,
            usage: BTreeMap::new(),
            metrics_served: true,
        }
    }

    pub fn record(&mut self, request: RecordedRequest) {
        if self.requests.len() >= REQUEST_LOG_LIMIT {
            self.requests.pop_front();
        }
        self.requests.push_back(request);
    }

    /// The first queued fault this call matches, consumed.
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<u16> {
        let i = self.faults.iter().position(|f| {
            f.method.eq_ignore_ascii_case(method) && path.contains(&f.path_contains)
        })?;
        Some(self.faults.remove(i).status)
    }
}

/// What the server, the kubelet and the handle share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Where pod logs go.
    pub dir: PathBuf,
    /// `true` once the cluster is being dropped; every task ends on it.
    pub shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn new(dir: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State::new()),
            dir,
            shutdown: watch::Sender::new(false),
        })
    }

    /// The state; a panic elsewhere while it was held does not make the
    /// fake unusable (every step leaves it consistent before it can panic).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Resolves once `rx` says `true` (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Loopback IPs and ports handed out by any cluster of this process: tests
/// run clusters in parallel threads, and two pods must never share an IP,
/// nor two workloads a port.
static HANDED_OUT: Mutex<(BTreeSet<Ipv4Addr>, BTreeSet<u16>)> =
    Mutex::new((BTreeSet::new(), BTreeSet::new()));

fn handed_out() -> MutexGuard<'static, (BTreeSet<Ipv4Addr>, BTreeSet<u16>)> {
    HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many ports are tried before giving up.
const PORT_TRIES: usize = 200;

/// A port free on 127.0.0.1 now and not yet given to another workload.
pub(crate) fn allocate_port() -> anyhow::Result<u16> {
    let mut taken = handed_out();
    for _ in 0..PORT_TRIES {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if taken.1.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found in {PORT_TRIES} tries")
}

/// The lowest loopback IP from 127.0.0.2 up that no live pod has and where
/// `port` can be bound right now.
pub(crate) fn allocate_ip(port: u16) -> Option<Ipv4Addr> {
    let mut taken = handed_out();
    // 127.0.0.2 ..= 127.0.255.254: every pod its own address, the way pods
    // get their own network namespace, all still on `lo`.
    for i in 2u32..0xffff {
        let ip = Ipv4Addr::from(0x7f00_0000 | i);
        let last = ip.octets()[3];
        if last == 0 || last == 255 || taken.0.contains(&ip) {
            continue;
        }
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            taken.0.insert(ip);
            return Some(ip);
        }
    }
    None
}

/// Gives an IP back once its pod is gone.
pub(crate) fn release_ip(ip: Ipv4Addr) {
    handed_out().0.remove(&ip);
}
