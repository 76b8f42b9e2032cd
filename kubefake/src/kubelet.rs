//! The fake's controllers and kubelet in one: it turns a workload's
//! `spec.replicas` into pods, runs each pod as a real process on its own
//! loopback IP, probes it, and keeps the Pod objects, the EndpointSlice and
//! the workload's status in the store up to date.
//!
//! A Kubernetes backend is only as right as its handling of what these
//! controllers do between two API calls: pods that exist before they are
//! ready, endpoints that are `terminating` while the process still drains,
//! victims chosen by deletion cost. So those steps are modelled on the real
//! ReplicaSet, StatefulSet and EndpointSlice controllers; what is not needed
//! for that (scheduling, nodes, images, volumes, rollouts) is not.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec, ScaleStatus};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, EnvVar, HTTPGetAction, ObjectReference, Pod,
    PodCondition, PodIP, PodSpec, PodStatus, PodTemplateSpec, Probe, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rouse_stack::Proc;
use serde_json::Value;

use crate::cluster::{
    allocate_ip, allocate_port, release_ip, stopped, Kind, NsName, PodRt, PodView, ResInfo, Role,
    Shared, State, Termination, Workload, WorkloadRt,
};
use crate::store::{now_ts, random_suffix, Res};

/// How often a pod's process and readiness are looked at.
const POD_POLL: Duration = Duration::from_millis(50);
/// How often the workloads are reconciled even when nothing was written
/// (a write wakes the loop at once).
const RESYNC: Duration = Duration::from_millis(500);
/// Time one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// First restart delay of a crashed pod; doubles up to [`MAX_BACKOFF`]
/// (the real kubelet's 10 s .. 5 min would make fault tests slow).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The annotation the ReplicaSet controller ranks victims by.
pub(crate) const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The one node every pod is on.
const NODE: &str = "kubefake";

fn services() -> Res {
    Res::new("", "v1", "services")
}
fn slices() -> Res {
    Res::new("discovery.k8s.io", "v1", "endpointslices")
}
pub(crate) fn pods() -> Res {
    Res::new("", "v1", "pods")
}

fn app_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), name.to_string())])
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl State {
    /// Creates the workload object, its Service and its (empty)
    /// EndpointSlice; the kubelet loop then makes its pods.
    pub fn add_workload(&mut self, spec: Workload) -> anyhow::Result<()> {
        anyhow::ensure!(!spec.name.is_empty(), "a workload needs a name");
        anyhow::ensure!(
            !spec.command.is_empty(),
            "workload {}: empty command",
            spec.name
        );
        anyhow::ensure!(
            spec.readiness_path.starts_with('/'),
            "workload {}: the readiness path must start with /",
            spec.name
        );
        anyhow::ensure!(
            spec.replicas >= 0,
            "workload {}: negative replicas",
            spec.name
        );
        let res = spec.kind.res();
        let key = (res.clone(), (spec.namespace.clone(), spec.name.clone()));
        anyhow::ensure!(
            !self.workloads.contains_key(&key),
            "workload {}/{} already exists",
            spec.namespace,
            spec.name
        );
        if self
            .workloads
            .values()
            .any(|w| w.spec.namespace == spec.namespace && w.spec.service == spec.service)
        {
            anyhow::bail!(
                "service {}/{} already belongs to another workload",
                spec.namespace,
                spec.service
            );
        }
        match self.resources.get(&res) {
            Some(info) if info.role != Role::Workload => {
                anyhow::bail!(
                    "{} is already served as a kind that cannot be scaled",
                    res.plural
                )
            }
            Some(_) => {}
            None => {
                self.resources.insert(
                    res.clone(),
                    ResInfo {
                        kind: spec.kind.kind_name().to_string(),
                        namespaced: true,
                        role: Role::Workload,
                    },
                );
            }
        }
        let port = match spec.port {
            Some(port) => port,
            None => allocate_port()?,
        };
        let object = workload_object(&spec, port);
        self.store.put(&res, &spec.namespace, &spec.name, object);

        let service = Service {
            metadata: ObjectMeta {
                name: Some(spec.service.clone()),
                namespace: Some(spec.namespace.clone()),
                labels: Some(app_labels(&spec.name)),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                // No VIP is modelled: clients reach pods through the slice.
                cluster_ip: Some("None".into()),
                selector: Some(app_labels(&spec.name)),
                ports: Some(vec![ServicePort {
                    name: Some(spec.port_name.clone()),
                    port: i32::from(port),
                    target_port: Some(IntOrString::Int(i32::from(port))),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        self.store.put(
            &services(),
            &spec.namespace,
            &spec.service,
            to_json(&service),
        );

        let slice_name = format!("{}-{}", spec.service, random_suffix(5));
        self.workloads.insert(
            key.clone(),
            WorkloadRt {
                spec,
                port,
                slice_name,
            },
        );
        self.sync_workload(&key);
        Ok(())
    }

    /// `spec.replicas` of a workload object, as stored.
    pub fn desired(&self, owner: &(Res, NsName)) -> Option<i32> {
        let (res, (ns, name)) = owner;
        let object = self.store.get(res, ns, name)?;
        let replicas = object.pointer("/spec/replicas").and_then(Value::as_i64)?;
        Some(i32::try_from(replicas.max(0)).unwrap_or(i32::MAX))
    }

    /// Writes `spec.replicas` (and the generation a spec change bumps), as
    /// the scale subresource, an HPA or KEDA would.
    pub fn write_replicas(&mut self, owner: &(Res, NsName), replicas: i32) -> Option<Value> {
        let (res, (ns, name)) = owner;
        let mut object = self.store.get(res, ns, name)?.clone();
        let current = object.pointer("/spec/replicas").and_then(Value::as_i64);
        if current == Some(i64::from(replicas)) {
            return Some(object);
        }
        let generation = object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        object["metadata"]["generation"] = (generation + 1).into();
        object["spec"]["replicas"] = replicas.into();
        Some(self.store.put(res, ns, name, object))
    }

    /// The `autoscaling/v1` Scale of a workload.
    pub fn scale_of(&self, owner: &(Res, NsName)) -> Option<Value> {
        let (res, (ns, name)) = owner;
        let object = self.store.get(res, ns, name)?;
        let meta: ObjectMeta =
            serde_json::from_value(object.get("metadata").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        let live = self.live_pods(owner).len();
        let scale = Scale {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                resource_version: meta.resource_version,
                uid: meta.uid,
                creation_timestamp: meta.creation_timestamp,
                ..ObjectMeta::default()
            },
            spec: Some(ScaleSpec {
                replicas: self.desired(owner),
            }),
            status: Some(ScaleStatus {
                replicas: i32::try_from(live).unwrap_or(i32::MAX),
                selector: Some(format!("app={name}")),
            }),
        };
        Some(to_json(&scale))
    }

    /// Pods of a workload that are not terminating, by name.
    fn live_pods(&self, owner: &(Res, NsName)) -> Vec<&NsName> {
        self.pods
            .iter()
            .filter(|(_, p)| &p.owner == owner && p.terminating.is_none())
            .map(|(k, _)| k)
            .collect()
    }

    /// Brings every workload's pods to its `spec.replicas`: creates the
    /// missing ones (and their tasks), picks and terminates the extra ones.
    pub fn reconcile(&mut self, shared: &Arc<Shared>) {
        if self.stopping {
            return;
        }
        let owners: Vec<_> = self.workloads.keys().cloned().collect();
        for owner in owners {
            let Some(desired) = self.desired(&owner) else {
                continue;
            };
            let desired = usize::try_from(desired).unwrap_or(0);
            let Some(workload) = self.workloads.get(&owner) else {
                continue;
            };
            let stateful = workload.spec.kind == Kind::StatefulSet;
            let name = workload.spec.name.clone();
            let ns = workload.spec.namespace.clone();
            let grace = workload.spec.termination_grace;
            if stateful {
                // Parallel pod management: every missing ordinal at once; an
                // ordinal still terminating is made again only once it is gone.
                for ordinal in 0..desired {
                    let pod = (ns.clone(), format!("{name}-{ordinal}"));
                    if !self.pods.contains_key(&pod) {
                        let ordinal = u32::try_from(ordinal).unwrap_or(u32::MAX);
                        self.create_pod(shared, &owner, pod.1, Some(ordinal));
                    }
                }
                let mut extra: Vec<_> = self
                    .pods
                    .iter()
                    .filter(|(_, p)| p.owner == owner && p.terminating.is_none())
                    .filter_map(|(k, p)| {
                        let ordinal = p.ordinal?;
                        (usize::try_from(ordinal).unwrap_or(usize::MAX) >= desired)
                            .then(|| (ordinal, k.clone()))
                    })
                    .collect();
                extra.sort_by_key(|(ordinal, _)| Reverse(*ordinal));
                for (_, pod) in extra {
                    self.terminate(&pod, grace);
                }
            } else {
                let live = self.live_pods(&owner).len();
                for _ in live..desired {
                    // A clash of 10 random characters is all but impossible;
                    // a few redraws make it impossible to overwrite a pod.
                    let fresh = (0..8)
                        .map(|_| format!("{name}-{}", random_suffix(10)))
                        .find(|pod| !self.pods.contains_key(&(ns.clone(), pod.clone())));
                    if let Some(pod) = fresh {
                        self.create_pod(shared, &owner, pod, None);
                    }
                }
                if live > desired {
                    for pod in self.victims(&owner, live - desired) {
                        self.terminate(&pod, grace);
                    }
                }
            }
            self.sync_workload(&owner);
        }
    }

    /// The `n` pods the ReplicaSet controller would delete first: not yet
    /// running, then not ready, then lower deletion cost, then ready for
    /// the shortest time, then more restarts, then the newest.
    fn victims(&self, owner: &(Res, NsName), n: usize) -> Vec<NsName> {
        let mut ranked: Vec<_> = self
            .pods
            .iter()
            .filter(|(_, p)| &p.owner == owner && p.terminating.is_none())
            .map(|(key, p)| {
                let cost = self.deletion_cost(key).unwrap_or(0);
                let rank = (
                    p.started_at.is_some(),
                    p.ready,
                    cost,
                    p.ready_since.map(Reverse),
                    Reverse(p.restarts),
                    Reverse(p.seq),
                );
                (rank, key.clone())
            })
            .collect();
        ranked.sort();
        ranked.into_iter().take(n).map(|(_, key)| key).collect()
    }

    /// The pod's deletion cost annotation, when it is a valid int32.
    fn deletion_cost(&self, pod: &NsName) -> Option<i32> {
        self.store
            .get(&pods(), &pod.0, &pod.1)?
            .pointer("/metadata/annotations")?
            .get(DELETION_COST)?
            .as_str()?
            .parse()
            .ok()
    }

    fn create_pod(
        &mut self,
        shared: &Arc<Shared>,
        owner: &(Res, NsName),
        name: String,
        ordinal: Option<u32>,
    ) {
        let Some(workload) = self.workloads.get(owner) else {
            return;
        };
        let port = workload.port;
        let ns = workload.spec.namespace.clone();
        let Some(ip) = allocate_ip(port) else {
            tracing::warn!(pod = %name, port, "no loopback IP left where the port is free");
            return;
        };
        self.next_seq += 1;
        let key = (ns, name);
        self.pods.insert(
            key.clone(),
            PodRt {
                owner: owner.clone(),
                ip,
                port,
                ordinal,
                seq: self.next_seq,
                proc: None,
                run: 0,
                ready: false,
                ready_since: None,
                started_at: None,
                restarts: 0,
                next_start: Instant::now(),
                last_exit: None,
                terminating: None,
                task: None,
            },
        );
        self.sync_pod(&key);
        let task = tokio::spawn(run_pod(shared.clone(), key.clone()));
        if let Some(pod) = self.pods.get_mut(&key) {
            pod.task = Some(task.abort_handle());
        }
    }

    /// Marks a pod for deletion: deletionTimestamp, endpoint terminating;
    /// its task sends SIGTERM and removes it once the process is gone.
    /// Returns `false` when it already was terminating (or is unknown).
    pub fn terminate(&mut self, key: &NsName, grace: Duration) -> bool {
        let cost = self.deletion_cost(key);
        let annotations = self.annotations(key);
        let Some(pod) = self.pods.get_mut(key) else {
            return false;
        };
        if pod.terminating.is_some() {
            return false;
        }
        pod.terminating = Some(Termination {
            grace,
            deletion_timestamp: now_ts(),
            signalled_at: None,
            serving: pod.ready,
        });
        let mut view = self.pod_view(key);
        if let Some(view) = &mut view {
            view.deletion_cost = cost;
            view.annotations = annotations;
            self.deleted.push(view.clone());
        }
        let owner = self.pods.get(key).map(|p| p.owner.clone());
        if let Some(owner) = owner {
            self.sync_workload(&owner);
        }
        true
    }

    fn annotations(&self, key: &NsName) -> BTreeMap<String, String> {
        self.store
            .get(&pods(), &key.0, &key.1)
            .and_then(|p| p.pointer("/metadata/annotations"))
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default()
    }

    /// A pod as a test sees it.
    pub fn pod_view(&self, key: &NsName) -> Option<PodView> {
        let pod = self.pods.get(key)?;
        Some(PodView {
            namespace: key.0.clone(),
            name: key.1.clone(),
            workload: pod.owner.1 .1.clone(),
            ip: pod.ip,
            port: pod.port,
            ready: pod.ready,
            terminating: pod.terminating.is_some(),
            deletion_cost: self.deletion_cost(key),
            annotations: self.annotations(key),
            pid: pod.proc.as_ref().map(Proc::pid),
            restarts: pod.restarts,
            ordinal: pod.ordinal,
        })
    }

    /// One step of a pod's life, under the lock; the task does the waiting
    /// (and the probing, which must not hold the lock).
    fn step_pod(&mut self, dir: &Path, key: &NsName) -> Step {
        if self.stopping {
            return Step::Done;
        }
        let Some(pod) = self.pods.get_mut(key) else {
            return Step::Done;
        };
        let owner = pod.owner.clone();
        if let Some(term) = &mut pod.terminating {
            let signalled_at = *term.signalled_at.get_or_insert_with(|| {
                if let Some(proc) = &mut pod.proc {
                    proc.sigterm();
                }
                Instant::now()
            });
            let mut exited = pod.proc.as_mut().is_none_or(|p| p.try_exit().is_some());
            if !exited && signalled_at.elapsed() >= term.grace {
                if let Some(proc) = &mut pod.proc {
                    proc.kill_now();
                }
                exited = true;
            }
            if exited {
                if let Some(pod) = self.pods.remove(key) {
                    release_ip(pod.ip);
                }
                self.store.remove(&pods(), &key.0, &key.1);
                self.sync_workload(&owner);
                return Step::Done;
            }
            return Step::Wait;
        }
        let Some(workload) = self.workloads.get(&owner) else {
            return Step::Done;
        };
        match &mut pod.proc {
            None if Instant::now() >= pod.next_start => {
                match spawn(dir, workload, key, pod.ip, pod.port) {
                    Ok(proc) => {
                        pod.proc = Some(proc);
                        pod.run += 1;
                        pod.started_at = Some(now_ts());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key.1, "could not start: {e:#}");
                        pod.last_exit = Some(format!("{e:#}"));
                        pod.restarts += 1;
                        pod.next_start = Instant::now() + backoff(pod.restarts);
                    }
                }
                self.sync_pod(key);
                self.sync_workload(&owner);
                Step::Wait
            }
            None => Step::Wait,
            Some(proc) => {
                if let Some(status) = proc.try_exit() {
                    // restartPolicy Always: the same pod, a new process, after
                    // a backoff; not ready until probed again.
                    pod.proc = None;
                    pod.ready = false;
                    pod.ready_since = None;
                    pod.restarts += 1;
                    pod.last_exit = Some(status.to_string());
                    pod.next_start = Instant::now() + backoff(pod.restarts);
                    self.sync_workload(&owner);
                    Step::Wait
                } else if !pod.ready {
                    Step::Probe {
                        addr: SocketAddr::from((pod.ip, pod.port)),
                        path: workload.spec.readiness_path.clone(),
                        run: pod.run,
                    }
                } else {
                    Step::Wait
                }
            }
        }
    }

    /// A probe of run `run` passed.
    fn mark_ready(&mut self, key: &NsName, run: u64) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        if pod.run != run || pod.proc.is_none() || pod.terminating.is_some() || pod.ready {
            return;
        }
        pod.ready = true;
        pod.ready_since = Some(Instant::now());
        let owner = pod.owner.clone();
        self.sync_workload(&owner);
    }

    /// Writes what the API shows of a workload from the kubelet's state:
    /// each pod, the EndpointSlice, the workload's status.
    pub fn sync_workload(&mut self, owner: &(Res, NsName)) {
        let keys: Vec<NsName> = self
            .pods
            .iter()
            .filter(|(_, p)| &p.owner == owner)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.sync_pod(key);
        }
        let Some(workload) = self.workloads.get(owner) else {
            return;
        };
        let spec = &workload.spec;
        let endpoints = keys
            .iter()
            .filter_map(|key| {
                let pod = self.pods.get(key)?;
                let uid = self
                    .store
                    .get(&pods(), &key.0, &key.1)
                    .and_then(|p| p.pointer("/metadata/uid"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let (ready, serving, terminating) = match &pod.terminating {
                    Some(term) => (false, term.serving, true),
                    None => (pod.ready, pod.ready, false),
                };
                Some(Endpoint {
                    addresses: vec![pod.ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    node_name: Some(NODE.into()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(key.1.clone()),
                        namespace: Some(key.0.clone()),
                        uid,
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                })
            })
            .collect();
        let service_uid = self
            .store
            .get(&services(), &spec.namespace, &spec.service)
            .and_then(|s| s.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(workload.slice_name.clone()),
                generate_name: Some(format!("{}-", spec.service)),
                namespace: Some(spec.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_string(),
                        spec.service.clone(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_string(),
                        "endpointslice-controller.k8s.io".to_string(),
                    ),
                ])),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Service".into(),
                    name: spec.service.clone(),
                    uid: service_uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some(spec.port_name.clone()),
                port: Some(i32::from(workload.port)),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        };
        let slice_name = workload.slice_name.clone();
        let ns = spec.namespace.clone();
        self.store
            .put_if_changed(&slices(), &ns, &slice_name, to_json(&slice));
        self.sync_status(owner);
    }

    /// The workload's `status`, as its controller would report it.
    fn sync_status(&mut self, owner: &(Res, NsName)) {
        let (res, (ns, name)) = owner;
        let Some(mut object) = self.store.get(res, ns, name).cloned() else {
            return;
        };
        let Some(workload) = self.workloads.get(owner) else {
            return;
        };
        let mine = || self.pods.values().filter(|p| &p.owner == owner);
        let live = count(mine().filter(|p| p.terminating.is_none()));
        let ready = count(mine().filter(|p| p.terminating.is_none() && p.ready));
        let terminating = count(mine().filter(|p| p.terminating.is_some()));
        let desired = self.desired(owner).unwrap_or(0);
        let generation = object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64);
        let status = match workload.spec.kind {
            Kind::Deployment => to_json(&DeploymentStatus {
                available_replicas: Some(ready),
                observed_generation: generation,
                ready_replicas: Some(ready),
                replicas: Some(live),
                terminating_replicas: Some(terminating),
                unavailable_replicas: Some((desired - ready).max(0)),
                updated_replicas: Some(live),
                ..DeploymentStatus::default()
            }),
            Kind::StatefulSet => to_json(&StatefulSetStatus {
                available_replicas: Some(ready),
                current_replicas: Some(live),
                observed_generation: generation,
                ready_replicas: Some(ready),
                replicas: live,
                updated_replicas: Some(live),
                ..StatefulSetStatus::default()
            }),
            Kind::Custom { .. } => serde_json::json!({
                "replicas": live,
                "readyReplicas": ready,
                "selector": format!("app={name}"),
            }),
        };
        object["status"] = status;
        self.store.put_if_changed(res, ns, name, object);
    }

    /// Writes one Pod object from the kubelet's state, keeping the labels
    /// and annotations clients patched.
    fn sync_pod(&mut self, key: &NsName) {
        let Some(pod) = self.pods.get(key) else {
            return;
        };
        let Some(workload) = self.workloads.get(&pod.owner) else {
            return;
        };
        let existing = self.store.get(&pods(), &key.0, &key.1);
        let mut object = to_json(&render_pod(key, pod, workload));
        if let Some(existing) = existing {
            for field in ["labels", "annotations"] {
                match existing.pointer(&format!("/metadata/{field}")) {
                    Some(v) => object["metadata"][field] = v.clone(),
                    None => {
                        if let Some(meta) = object["metadata"].as_object_mut() {
                            meta.remove(field);
                        }
                    }
                }
            }
        }
        self.store.put_if_changed(&pods(), &key.0, &key.1, object);
    }
}

fn count<'a>(pods: impl Iterator<Item = &'a PodRt>) -> i32 {
    i32::try_from(pods.count()).unwrap_or(i32::MAX)
}

fn backoff(restarts: u32) -> Duration {
    let factor = 2u32.saturating_pow(restarts.saturating_sub(1).min(16));
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// What a pod's task does next.
enum Step {
    /// Nothing to do; look again after [`POD_POLL`].
    Wait,
    /// Probe readiness, then look again.
    Probe {
        addr: SocketAddr,
        path: String,
        run: u64,
    },
    /// The pod is gone: the task ends.
    Done,
}

/// The workload's command with `{ip}` and `{port}` filled in, started with
/// its output appended to `<dir>/<namespace>_<pod>.log`.
fn spawn(
    dir: &Path,
    workload: &WorkloadRt,
    key: &NsName,
    ip: Ipv4Addr,
    port: u16,
) -> anyhow::Result<Proc> {
    let fill = |arg: &String| {
        arg.replace("{ip}", &ip.to_string())
            .replace("{port}", &port.to_string())
    };
    let mut argv = workload.spec.command.iter().map(fill);
    let program = PathBuf::from(argv.next().unwrap_or_default());
    let args: Vec<OsString> = argv.map(OsString::from).collect();
    let mut env = BTreeMap::from([
        ("PORT".to_string(), port.to_string()),
        ("POD_NAME".to_string(), key.1.clone()),
        ("POD_NAMESPACE".to_string(), key.0.clone()),
        ("POD_IP".to_string(), ip.to_string()),
        ("ROUSE_REPLICA_ID".to_string(), key.1.clone()),
    ]);
    env.extend(workload.spec.env.clone());
    let log = pod_log_path(dir, key);
    Proc::try_spawn(&key.1, &program, &args, &env, &log)
}

/// Where a pod's stdout and stderr go.
pub(crate) fn pod_log_path(dir: &Path, key: &NsName) -> PathBuf {
    dir.join(format!("{}_{}.log", key.0, key.1))
}

/// The initial Deployment, StatefulSet or custom object of a workload.
fn workload_object(spec: &Workload, port: u16) -> Value {
    let meta = ObjectMeta {
        name: Some(spec.name.clone()),
        namespace: Some(spec.namespace.clone()),
        labels: Some(app_labels(&spec.name)),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    let selector = LabelSelector {
        match_labels: Some(app_labels(&spec.name)),
        ..LabelSelector::default()
    };
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(app_labels(&spec.name)),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(spec, port, spec.command.clone())),
    };
    match &spec.kind {
        Kind::Deployment => to_json(&Deployment {
            metadata: meta,
            spec: DeploymentSpec {
                replicas: Some(spec.replicas),
                selector,
                template,
                ..DeploymentSpec::default()
            },
            status: Some(DeploymentStatus::default()),
        }),
        Kind::StatefulSet => to_json(&StatefulSet {
            metadata: meta,
            spec: StatefulSetSpec {
                replicas: Some(spec.replicas),
                selector,
                template,
                service_name: Some(spec.service.clone()),
                pod_management_policy: Some("Parallel".into()),
                ..StatefulSetSpec::default()
            },
            status: Some(StatefulSetStatus::default()),
        }),
        Kind::Custom {
            api_version, kind, ..
        } => serde_json::json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": to_json(&meta),
            "spec": {"replicas": spec.replicas, "template": to_json(&template)},
            "status": {"replicas": 0},
        }),
    }
}

fn pod_spec(spec: &Workload, port: u16, command: Vec<String>) -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: "app".into(),
            image: command.first().map(|c| {
                Path::new(c)
                    .file_name()
                    .map_or_else(|| c.clone(), |f| f.to_string_lossy().into_owned())
            }),
            command: Some(command),
            env: Some(
                spec.env
                    .iter()
                    .map(|(name, value)| EnvVar {
                        name: name.clone(),
                        value: Some(value.clone()),
                        value_from: None,
                    })
                    .collect(),
            ),
            ports: Some(vec![ContainerPort {
                name: Some(spec.port_name.clone()),
                container_port: i32::from(port),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(spec.readiness_path.clone()),
                    port: IntOrString::String(spec.port_name.clone()),
                    ..HTTPGetAction::default()
                }),
                period_seconds: Some(1),
                ..Probe::default()
            }),
            ..Container::default()
        }],
        node_name: Some(NODE.into()),
        restart_policy: Some("Always".into()),
        termination_grace_period_seconds: Some(
            i64::try_from(spec.termination_grace.as_secs()).unwrap_or(i64::MAX),
        ),
        ..PodSpec::default()
    }
}

fn render_pod(key: &NsName, pod: &PodRt, workload: &WorkloadRt) -> Pod {
    let spec = &workload.spec;
    let mut labels = app_labels(&spec.name);
    let owner_kind = match &spec.kind {
        Kind::StatefulSet => {
            labels.insert("statefulset.kubernetes.io/pod-name".into(), key.1.clone());
            if let Some(ordinal) = pod.ordinal {
                labels.insert("apps.kubernetes.io/pod-index".into(), ordinal.to_string());
            }
            (
                "apps/v1".to_string(),
                "StatefulSet".to_string(),
                spec.name.clone(),
            )
        }
        // No ReplicaSet objects are modelled; the reference names the one a
        // real Deployment would have made.
        Kind::Deployment => (
            "apps/v1".to_string(),
            "ReplicaSet".to_string(),
            format!("{}-rs", spec.name),
        ),
        Kind::Custom {
            api_version, kind, ..
        } => (api_version.clone(), kind.clone(), spec.name.clone()),
    };
    let filled: Vec<String> = spec
        .command
        .iter()
        .map(|a| {
            a.replace("{ip}", &pod.ip.to_string())
                .replace("{port}", &pod.port.to_string())
        })
        .collect();
    let running = pod.proc.is_some();
    let condition = |type_: &str, ok: bool| PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        ..PodCondition::default()
    };
    let state = if running {
        ContainerState {
            running: Some(ContainerStateRunning {
                started_at: pod.started_at.map(Time),
            }),
            ..ContainerState::default()
        }
    } else {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(
                    if pod.restarts > 0 {
                        "CrashLoopBackOff"
                    } else {
                        "ContainerCreating"
                    }
                    .into(),
                ),
                message: pod.last_exit.clone(),
            }),
            ..ContainerState::default()
        }
    };
    let last_state = pod.last_exit.as_ref().map(|exit| ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 1,
            message: Some(exit.clone()),
            reason: Some("Error".into()),
            ..ContainerStateTerminated::default()
        }),
        ..ContainerState::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(key.1.clone()),
            namespace: Some(key.0.clone()),
            generate_name: pod.ordinal.is_none().then(|| format!("{}-", spec.name)),
            labels: Some(labels),
            deletion_timestamp: pod.terminating.as_ref().map(|t| Time(t.deletion_timestamp)),
            deletion_grace_period_seconds: pod
                .terminating
                .as_ref()
                .map(|t| i64::try_from(t.grace.as_secs()).unwrap_or(i64::MAX)),
            owner_references: Some(vec![OwnerReference {
                api_version: owner_kind.0,
                kind: owner_kind.1,
                name: owner_kind.2,
                uid: String::new(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            hostname: pod.ordinal.map(|_| key.1.clone()),
            subdomain: pod.ordinal.map(|_| spec.service.clone()),
            ..pod_spec(spec, pod.port, filled)
        }),
        status: Some(PodStatus {
            phase: Some(
                if pod.started_at.is_some() {
                    "Running"
                } else {
                    "Pending"
                }
                .into(),
            ),
            conditions: Some(vec![
                condition("PodScheduled", true),
                condition("Initialized", true),
                condition("ContainersReady", pod.ready),
                condition("Ready", pod.ready),
            ]),
            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
            pod_ip: Some(pod.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: pod.ip.to_string(),
            }]),
            start_time: pod.started_at.map(Time),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                image: filled_image(spec),
                image_id: String::new(),
                container_id: pod.proc.as_ref().map(|p| format!("kubefake://{}", p.pid())),
                ready: pod.ready,
                restart_count: i32::try_from(pod.restarts).unwrap_or(i32::MAX),
                started: Some(running),
                state: Some(state),
                last_state,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn filled_image(spec: &Workload) -> String {
    spec.command
        .first()
        .and_then(|c| Path::new(c).file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The kubelet loop: reconciles on every write and every [`RESYNC`], until
/// the cluster shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut changed = shared.lock().store.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        shared.lock().reconcile(&shared);
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(RESYNC) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// One pod's task: starts, restarts, probes and finally stops its process.
async fn run_pod(shared: Arc<Shared>, key: NsName) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let step = shared.lock().step_pod(&shared.dir, &key);
        match step {
            Step::Done => return,
            Step::Wait => {}
            Step::Probe { addr, path, run } => {
                let probe = rouse_stack::http_get(addr, &path, PROBE_TIMEOUT);
                let ok = tokio::select! {
                    answer = probe => matches!(answer, Ok((200..=299, _))),
                    _ = stopped(&mut shutdown) => return,
                };
                if ok {
                    shared.lock().mark_ready(&key, run);
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POD_POLL) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}
