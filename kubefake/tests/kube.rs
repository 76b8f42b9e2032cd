//! The fake API server driven by a real `kube::Client` (kube 5) built from
//! the kubeconfig it writes: every response here went through kube-rs's own
//! deserialisation, watcher and reflector, and every pod is a real
//! `rouse-echo` process.
//!
//! The API server is a fake. What it does not model, for all the tests
//! below: authentication, authorization and admission; scheduling and nodes
//! (every pod is on node `kubefake`, on its own 127.0.0.x address); images
//! (the command runs on this machine); ReplicaSet objects and rollouts; more
//! than one EndpointSlice per Service; cluster IPs; server-side apply field
//! ownership and strategic-merge directives; pagination and `dryRun`.
//!
//! Waits poll a condition against a generous deadline, never a fixed sleep.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client, Config};
use rouse_kubefake::{FakeCluster, Kind, RecordedRequest, Workload};
use serde_json::json;
use tokio::sync::mpsc;

/// Bound for anything that involves starting or stopping processes.
const DEADLINE: Duration = Duration::from_secs(30);
const COST: &str = "controller.kubernetes.io/pod-deletion-cost";

async fn client(fake: &FakeCluster) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(fake.kubeconfig())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    assert_eq!(config.default_namespace, "default");
    Ok(Client::try_from(config)?)
}

/// Polls `probe` until it yields, at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reflector over the EndpointSlices of `service`, as the backend will
/// run one; the task ends with the test's runtime.
fn slice_reflector(
    client: &Client,
    service: &str,
    config: watcher::Config,
) -> Store<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let config = config.labels(&format!("kubernetes.io/service-name={service}"));
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

/// Every EndpointSlice state a raw watcher sees, in order.
fn slice_events(client: &Client, service: &str) -> mpsc::UnboundedReceiver<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = watcher(api, config).default_backoff().touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(slice) = item {
                if tx.send(slice).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next slice state from the watcher that satisfies `want`.
async fn next_slice(
    rx: &mut mpsc::UnboundedReceiver<EndpointSlice>,
    what: &str,
    want: impl Fn(&EndpointSlice) -> bool,
) -> anyhow::Result<EndpointSlice> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let slice = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("timed out waiting for a slice where {what}"))?
            .context("the watcher ended")?;
        if want(&slice) {
            return Ok(slice);
        }
    }
}

fn endpoint<'a>(slice: &'a EndpointSlice, pod: &str) -> Option<&'a Endpoint> {
    slice
        .endpoints
        .iter()
        .flatten()
        .find(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
}

fn endpoints(slice: &EndpointSlice) -> &[Endpoint] {
    slice.endpoints.as_deref().unwrap_or_default()
}

fn conditions(e: &Endpoint) -> (bool, bool, bool) {
    let c = e.conditions.clone().unwrap_or_default();
    (
        c.ready.unwrap_or(false),
        c.serving.unwrap_or(false),
        c.terminating.unwrap_or(false),
    )
}

fn api_code(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(status) => Some((status.code, status.reason.clone())),
        _ => None,
    }
}

fn slice_requests(fake: &FakeCluster) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
        .collect()
}

/// Not modelled here: the HPA itself (the test patches /scale as it
/// would), image pulls, the scheduler; readiness is a single HTTP probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_subresource_starts_a_real_echo_pod_that_the_slice_shows_ready() -> anyhow::Result<()>
{
    let fake = FakeCluster::start().await?;
    fake.add_workload(Workload::echo("echo"))?;
    let client = client(&fake).await?;
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());

    let scale = deployments.get_scale("echo").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(0));
    let status = scale.status.context("scale status")?;
    assert_eq!(
        (status.replicas, status.selector.as_deref()),
        (0, Some("app=echo"))
    );

    let slices = slice_reflector(&client, "echo", watcher::Config::default());
    let patched = deployments
        .patch_scale(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    assert_eq!(patched.spec.and_then(|s| s.replicas), Some(1));
    assert_eq!(fake.replicas("default", &Kind::Deployment, "echo"), Some(1));

    let ready = eventually("a ready endpoint in the reflector", DEADLINE, || {
        let slices = slices.clone();
        async move {
            let state = slices.state();
            let slice = state.first()?;
            let e = endpoints(slice).first()?;
            (conditions(e) == (true, true, false)).then(|| (Arc::clone(slice), e.clone()))
        }
    })
    .await?;
    let (slice, e) = ready;
    assert_eq!(slice.address_type, "IPv4");
    let port = slice
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .context("slice port")?;
    assert_eq!(port.name.as_deref(), Some("http"));
    let pod_name = e
        .target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .context("targetRef")?;
    assert!(pod_name.starts_with("echo-") && pod_name.len() == "echo-".len() + 10);
    let ip: std::net::Ipv4Addr = e.addresses[0].parse()?;
    assert!(ip.is_loopback() && ip != std::net::Ipv4Addr::LOCALHOST);

    // The endpoint is a real rouse-echo, on its own loopback address.
    let addr = std::net::SocketAddr::from((ip, u16::try_from(port.port.context("port")?)?));
    let (code, body) = rouse_stack::http_get(addr, "/", Duration::from_secs(5)).await?;
    assert_eq!(code, 200);
    assert!(body.contains(&pod_name), "{body}");

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod = pods.get(&pod_name).await?;
    let status = pod.status.context("pod status")?;
    assert_eq!(status.pod_ip.as_deref(), Some(e.addresses[0].as_str()));
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .context("Ready condition")?;
    assert_eq!(ready_condition.status, "True");
    let listed = pods.list(&ListParams::default().labels("app=echo")).await?;
    assert_eq!(listed.items.len(), 1);

    let deployment = eventually("deployment status readyReplicas 1", DEADLINE, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("echo").await.ok()?;
            (d.status.as_ref()?.ready_replicas == Some(1)).then_some(d)
        }
    })
    .await?;
    assert_eq!(deployment.spec.replicas, Some(1));

    // A replace with a stale resourceVersion is refused, a current one taken.
    let mut stale = deployments.get_scale("echo").await?;
    stale.metadata.resource_version = Some("1".into());
    let err = deployments
        .replace_scale("echo", &PostParams::default(), &stale)
        .await
        .expect_err("stale replace");
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));

    // JSON patch back to zero: the pod drains and its endpoint goes away.
    deployments
        .patch_scale(
            "echo",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/spec/replicas", "value": 0}
            ]))?),
        )
        .await?;
    eventually("the slice to empty", DEADLINE, || {
        let slices = slices.clone();
        async move {
            let state = slices.state();
            state
                .first()
                .filter(|s| endpoints(s).is_empty())
                .map(|_| ())
        }
    })
    .await?;
    assert!(fake.pods("default").is_empty());
    assert_eq!(fake.deleted_pods().len(), 1);
    Ok(())
}

/// Not modelled: the ReplicaSet object (the kubelet picks victims the way
/// its controller ranks them), pod disruption budgets, preStop hooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_takes_the_lowest_deletion_cost_and_the_watch_sees_it_drain(
) -> anyhow::Result<()> {
    let fake = FakeCluster::start().await?;
    fake.add_workload(Workload {
        replicas: 3,
        ..Workload::echo("echo")
    })?;
    let client = client(&fake).await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());

    let running = fake
        .wait_until("3 ready pods", DEADLINE, |f| {
            let pods = f.pods("default");
            (pods.len() == 3 && pods.iter().all(|p| p.ready)).then_some(pods)
        })
        .await?;
    // Not the newest pod: without costs, the newest would go first.
    let victim = running[0].name.clone();
    for (i, pod) in running.iter().enumerate() {
        let cost = if pod.name == victim {
            "-100".to_string()
        } else {
            (i * 10).to_string()
        };
        pods.patch(
            &pod.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {COST: cost}}})),
        )
        .await?;
    }
    let err = pods
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {COST: "cheap"}}})),
        )
        .await
        .expect_err("a non-integer deletion cost");
    assert_eq!(api_code(&err), Some((422, "Invalid".into())));
    let annotated = pods.get(&victim).await?;
    assert_eq!(
        annotated
            .metadata
            .annotations
            .and_then(|a| a.get(COST).cloned())
            .as_deref(),
        Some("-100")
    );

    let mut events = slice_events(&client, "echo");
    next_slice(&mut events, "3 endpoints are ready", |s| {
        endpoints(s).len() == 3 && endpoints(s).iter().all(|e| conditions(e).0)
    })
    .await?;

    deployments
        .patch_scale(
            "echo",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let draining = next_slice(&mut events, "the victim is terminating", |s| {
        endpoint(s, &victim).is_some_and(|e| conditions(e) == (false, true, true))
    })
    .await?;
    assert_eq!(endpoints(&draining).len(), 3);
    next_slice(&mut events, "the victim is gone", |s| {
        endpoint(s, &victim).is_none() && endpoints(s).len() == 2
    })
    .await?;

    // What kube-runtime's watcher sends by default: a plain list (limit 500,
    // no resourceVersion), then watches with bookmarks and a 290 s timeout.
    let sent = slice_requests(&fake);
    let list = sent.iter().find(|r| !r.watch).context("list")?;
    assert_eq!(list.param("limit").as_deref(), Some("500"));
    assert_eq!(list.param("resourceVersion"), None);
    let watch = sent.iter().find(|r| r.watch).context("watch")?;
    assert_eq!(watch.param("timeoutSeconds").as_deref(), Some("290"));
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
    assert!(watch.param("resourceVersion").is_some());

    let deleted = fake.deleted_pods();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].name, victim);
    assert_eq!(deleted[0].deletion_cost, Some(-100));
    let err = pods
        .get(&victim)
        .await
        .expect_err("the victim's pod is gone");
    assert_eq!(api_code(&err), Some((404, "NotFound".into())));
    let left: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app=echo"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let expected: BTreeSet<String> = running
        .iter()
        .map(|p| p.name.clone())
        .filter(|n| n != &victim)
        .collect();
    assert_eq!(left, expected);
    Ok(())
}

/// Not modelled: lease duration enforcement (the API server never expires
/// a lease; holders and clients do), RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_create_conflict_and_not_found_as_kube_sees_them() -> anyhow::Result<()> {
    let fake = FakeCluster::start().await?;
    let client = client(&fake).await?;
    let leases: Api<Lease> = Api::default_namespaced(client);

    let err = leases
        .get("rouse-controller")
        .await
        .expect_err("no lease yet");
    assert_eq!(api_code(&err), Some((404, "NotFound".into())));
    assert!(leases.get_opt("rouse-controller").await?.is_none());

    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "rouse-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))?;
    let created = leases.create(&PostParams::default(), &lease).await?;
    let first_rv = created.metadata.resource_version.clone().context("rv")?;
    let err = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect_err("second create");
    assert_eq!(api_code(&err), Some((409, "AlreadyExists".into())));

    // Two candidates replace from the same read: the second one loses.
    let mut mine = created.clone();
    mine.spec.get_or_insert_default().holder_identity = Some("a".into());
    mine.spec.get_or_insert_default().lease_transitions = Some(1);
    let renewed = leases
        .replace("rouse-controller", &PostParams::default(), &mine)
        .await?;
    assert_ne!(
        renewed.metadata.resource_version.as_deref(),
        Some(first_rv.as_str())
    );
    let mut theirs = created.clone();
    theirs.spec.get_or_insert_default().holder_identity = Some("b".into());
    let err = leases
        .replace("rouse-controller", &PostParams::default(), &theirs)
        .await
        .expect_err("stale replace");
    assert_eq!(api_code(&err), Some((409, "Conflict".into())));

    let patched = leases
        .patch(
            "rouse-controller",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "c"}})),
        )
        .await?;
    assert_eq!(
        patched.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("c")
    );
    let stored = fake.lease("default", "rouse-controller").context("lease")?;
    assert_eq!(stored["spec"]["holderIdentity"], "c");
    assert_eq!(stored["spec"]["leaseTransitions"], 1);

    let deleted = leases
        .delete("rouse-controller", &DeleteParams::default())
        .await?;
    assert!(deleted.is_right(), "a lease delete answers a Status");
    assert!(fake.lease("default", "rouse-controller").is_none());
    let err = leases
        .delete("rouse-controller", &DeleteParams::default())
        .await
        .expect_err("deleted twice");
    assert_eq!(api_code(&err), Some((404, "NotFound".into())));
    Ok(())
}

/// Not modelled: the watch cache's own bookmark timing (one per second
/// here), and history beyond 10 000 changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_resumes_after_timeouts_from_bookmarks_and_relists_on_410() -> anyhow::Result<()>
{
    let fake = FakeCluster::start().await?;
    fake.add_workload(Workload::echo("echo"))?;
    let client = client(&fake).await?;
    let slices = slice_reflector(&client, "echo", watcher::Config::default().timeout(2));

    eventually("the reflector's first list", DEADLINE, || {
        let slices = slices.clone();
        async move { (slices.state().len() == 1).then_some(()) }
    })
    .await?;
    let list = slice_requests(&fake)
        .into_iter()
        .find(|r| !r.watch)
        .context("the initial list")?;
    assert_eq!(list.param("limit").as_deref(), Some("500"));
    assert_eq!(list.param("resourceVersion"), None);

    // A write elsewhere after the list moves the global RV; with no slice
    // changing, only a bookmark can tell the slice watcher about it.
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "bump"}}))?;
    let bumped: u64 = leases
        .create(&PostParams::default(), &lease)
        .await?
        .metadata
        .resource_version
        .context("rv")?
        .parse()?;

    // Each watch ends after its 2 s; the watcher resumes from the newest
    // RV it saw, which only a bookmark can have raised past the lease's.
    let watches = eventually(
        "a rewatch from a bookmark's resourceVersion",
        DEADLINE,
        || {
            let fake = &fake;
            async move {
                let watches: Vec<_> = slice_requests(fake)
                    .into_iter()
                    .filter(|r| r.watch)
                    .collect();
                let resumed = watches.iter().skip(1).any(|w| {
                    w.param("resourceVersion")
                        .and_then(|rv| rv.parse::<u64>().ok())
                        .is_some_and(|rv| rv >= bumped)
                });
                resumed.then_some(watches)
            }
        },
    )
    .await?;
    for w in &watches {
        assert_eq!(w.param("timeoutSeconds").as_deref(), Some("2"));
        assert_eq!(w.param("allowWatchBookmarks").as_deref(), Some("true"));
        assert_eq!(
            w.param("labelSelector").as_deref(),
            Some("kubernetes.io/service-name=echo")
        );
    }
    assert_eq!(
        slice_requests(&fake).iter().filter(|r| !r.watch).count(),
        1,
        "no relist"
    );

    // A change after the rewatches reaches the reflector's state.
    fake.set_replicas("default", &Kind::Deployment, "echo", 1)?;
    eventually("the new pod in the resumed reflector", DEADLINE, || {
        let slices = slices.clone();
        async move {
            let state = slices.state();
            let e = endpoints(state.first()?).first()?.clone();
            conditions(&e).0.then_some(())
        }
    })
    .await?;
    assert_eq!(
        slice_requests(&fake).iter().filter(|r| !r.watch).count(),
        1,
        "no relist"
    );

    // Once history is compacted, the open watch gets 410 and relists; the
    // reflector keeps its state through it.
    fake.compact_history();
    eventually("a relist after 410 Gone", DEADLINE, || {
        let fake = &fake;
        async move { (slice_requests(fake).iter().filter(|r| !r.watch).count() >= 2).then_some(()) }
    })
    .await?;
    let state = slices.state();
    assert_eq!(endpoints(state.first().context("slice")?).len(), 1);
    eprintln!("requests kube-runtime's watcher sent:");
    for r in slice_requests(&fake).iter().take(4) {
        eprintln!("  {} {}?{}", r.method, r.path, r.query);
    }
    Ok(())
}

/// Not modelled: StatefulSet's OrderedReady policy (pods start in
/// parallel), volumes, stable network identities beyond the pod name; for
/// the custom kind, no CRD object or schema (its /scale is built in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_drop_the_highest_ordinal_and_custom_kinds_scale_too() -> anyhow::Result<()> {
    let fake = FakeCluster::start().await?;
    fake.add_workload(Workload {
        kind: Kind::StatefulSet,
        replicas: 2,
        ..Workload::echo("db")
    })?;
    let custom = Kind::Custom {
        api_version: "example.com/v1".into(),
        kind: "EchoApp".into(),
        plural: "echoapps".into(),
    };
    fake.add_workload(Workload {
        kind: custom.clone(),
        ..Workload::echo("app")
    })?;
    let client = client(&fake).await?;

    fake.wait_until("db-0 and db-1 ready", DEADLINE, |f| {
        let names: Vec<_> = f
            .pods("default")
            .into_iter()
            .filter(|p| p.ready)
            .map(|p| p.name)
            .collect();
        (names == ["db-0", "db-1"]).then_some(())
    })
    .await?;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    // A Deployment would take db-0 for its cost; a StatefulSet ignores it.
    pods.patch(
        "db-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {COST: "-1000"}}})),
    )
    .await?;
    let statefulsets: Api<StatefulSet> = Api::default_namespaced(client.clone());
    statefulsets
        .patch_scale(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    fake.wait_until("db-1 gone", DEADLINE, |f| {
        let names: Vec<_> = f
            .pods("default")
            .into_iter()
            .map(|p| p.name)
            .filter(|n| n.starts_with("db-"))
            .collect();
        (names == ["db-0"]).then_some(())
    })
    .await?;
    assert_eq!(fake.deleted_pods()[0].name, "db-1");
    let sts = statefulsets.get("db").await?;
    assert_eq!(sts.spec.service_name.as_deref(), Some("db"));

    let gvk = GroupVersionKind::gvk("example.com", "v1", "EchoApp");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "echoapps");
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let scale = apps
        .patch_scale(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));
    assert_eq!(fake.replicas("default", &custom, "app"), Some(1));
    let app = eventually(
        "the custom object's status to show a ready pod",
        DEADLINE,
        || {
            let apps = apps.clone();
            async move {
                let app = apps.get("app").await.ok()?;
                (app.data["status"]["readyReplicas"] == 1).then_some(app)
            }
        },
    )
    .await?;
    assert_eq!(app.data["spec"]["replicas"], 1);
    Ok(())
}

/// Not modelled: CRDs (a kind exists once a test puts an object of it),
/// admission webhooks, the real kubelet's CrashLoopBackOff timings (the
/// restart backoff here starts at 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_objects_injected_faults_unknown_paths_and_crash_restarts() -> anyhow::Result<()> {
    let fake = FakeCluster::start().await?;
    let client = client(&fake).await?;
    let hso = |name: &str| {
        json!({
            "apiVersion": "http.keda.sh/v1alpha1",
            "kind": "HTTPScaledObject",
            "metadata": {"name": name},
            "spec": {"hosts": [format!("{name}.localhost")], "scaleTargetRef": {"name": name}}
        })
    };
    fake.put_object(
        "http.keda.sh/v1alpha1",
        "httpscaledobjects",
        Some("default"),
        hso("echo"),
    )?;
    let gvk = GroupVersionKind::gvk("http.keda.sh", "v1alpha1", "HTTPScaledObject");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "httpscaledobjects");
    let namespaced: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    assert_eq!(
        namespaced.list(&ListParams::default()).await?.items.len(),
        1
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = watcher(all.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(object)) = stream.next().await {
            if tx.send(object).is_err() {
                return;
            }
        }
    });
    let first = tokio::time::timeout(DEADLINE, rx.recv())
        .await?
        .context("watcher ended")?;
    assert_eq!(first.metadata.name.as_deref(), Some("echo"));
    fake.put_object(
        "http.keda.sh/v1alpha1",
        "httpscaledobjects",
        Some("default"),
        hso("other"),
    )?;
    let second = tokio::time::timeout(DEADLINE, rx.recv())
        .await?
        .context("watcher ended")?;
    assert_eq!(second.metadata.name.as_deref(), Some("other"));
    assert_eq!(second.data["spec"]["hosts"][0], "other.localhost");

    fake.fail_next("GET", "/httpscaledobjects/echo", 500);
    let err = namespaced.get("echo").await.expect_err("injected fault");
    assert_eq!(api_code(&err), Some((500, "InternalError".into())));
    assert_eq!(
        namespaced.get("echo").await?.metadata.name.as_deref(),
        Some("echo")
    );

    let nowhere = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nope.example", "v1", "Thing"),
        "things",
    );
    let nowhere: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &nowhere);
    let err = nowhere.get("x").await.expect_err("unknown kind");
    assert_eq!(api_code(&err), Some((404, "NotFound".into())));

    fake.add_workload(Workload {
        replicas: 1,
        ..Workload::echo("echo")
    })?;
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let slice = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=echo"))
        .await?;
    let name = slice.items[0].metadata.name.clone().context("slice name")?;
    assert!(name.starts_with("echo-") && name.len() == "echo-".len() + 5);
    let err = slices
        .delete(&name, &DeleteParams::default())
        .await
        .expect_err("slices are the fake's");
    assert_eq!(api_code(&err), Some((405, "MethodNotAllowed".into())));

    let before = fake
        .wait_until("a ready pod", DEADLINE, |f| {
            f.pods("default").into_iter().find(|p| p.ready)
        })
        .await?;
    assert!(fake.kill_pod_process("default", &before.name));
    let after = fake
        .wait_until("the pod restarted and ready again", DEADLINE, |f| {
            f.pods("default")
                .into_iter()
                .find(|p| p.ready && p.restarts == 1)
        })
        .await?;
    assert_eq!(
        after.name, before.name,
        "restartPolicy Always keeps the pod"
    );
    assert_eq!(after.ip, before.ip);
    assert_ne!(after.pid, before.pid);
    let (code, _) = rouse_stack::http_get(after.addr(), "/healthz", Duration::from_secs(5)).await?;
    assert_eq!(code, 200);

    // Deleting a pod through the API drains it and the Deployment replaces it.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let answer = pods.delete(&after.name, &DeleteParams::default()).await?;
    let terminating = answer.left().context("a pod delete answers the pod")?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let replacement = fake
        .wait_until("a ready replacement", DEADLINE, |f| {
            let pods = f.pods("default");
            (pods.len() == 1 && pods[0].ready && pods[0].name != after.name)
                .then(|| pods[0].clone())
        })
        .await?;
    assert_ne!(
        replacement.ip, after.ip,
        "the old pod's address was still held while it drained"
    );
    assert_eq!(
        fake.deleted_pods().last().map(|p| p.name.clone()),
        Some(after.name)
    );
    Ok(())
}

/// Not modelled: the watch cache (initial events come from the store), and
/// consistent reads from etcd (`resourceVersionMatch` is accepted, and the
/// current state is always what is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_and_any_semantic_lists_are_served() -> anyhow::Result<()> {
    let fake = FakeCluster::start().await?;
    let client = client(&fake).await?;
    let leases: Api<Lease> = Api::default_namespaced(client.clone());
    for name in ["a", "b"] {
        let lease: Lease = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        leases.create(&PostParams::default(), &lease).await?;
    }
    for config in [
        watcher::Config::default().streaming_lists(),
        // kube-core drops resourceVersion=0 from a list that has a limit, so
        // the "any" semantic shows only without a page size.
        watcher::Config {
            page_size: None,
            ..watcher::Config::default().any_semantic()
        },
    ] {
        let (reader, writer) = reflector::store();
        let stream =
            reflector::reflector(writer, watcher(leases.clone(), config)).default_backoff();
        let task = tokio::spawn(stream.for_each(|_| async {}));
        tokio::time::timeout(DEADLINE, reader.wait_until_ready()).await??;
        let mut names: Vec<_> = reader
            .state()
            .iter()
            .filter_map(|l| l.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        task.abort();
    }
    let sent: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.path == "/apis/coordination.k8s.io/v1/namespaces/default/leases" && r.method == "GET"
        })
        .collect();
    let streaming = &sent[0];
    assert!(streaming.watch);
    assert_eq!(
        streaming.param("sendInitialEvents").as_deref(),
        Some("true")
    );
    assert_eq!(
        streaming.param("resourceVersionMatch").as_deref(),
        Some("NotOlderThan")
    );
    let any = sent
        .iter()
        .find(|r| !r.watch)
        .context("the any-semantic list")?;
    assert_eq!(any.param("resourceVersion").as_deref(), Some("0"));
    assert_eq!(
        any.param("resourceVersionMatch").as_deref(),
        Some("NotOlderThan")
    );
    Ok(())
}

/// PodMetrics as a metrics-server would serve them, from the pods' real
/// processes: a pod burning CPU shows it (in nanocores), every pod shows
/// its resident memory; selectors filter; with metrics off the group is a
/// 404, as on a cluster without metrics-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_metrics_are_measured_from_the_pods_processes() -> anyhow::Result<()> {
    let fake = FakeCluster::start().await?;
    let mut spec = Workload::echo("busy");
    spec.replicas = 2;
    fake.add_workload(spec)?;
    let pods = fake
        .wait_until("two ready pods", DEADLINE, |f| {
            let pods = f.pods("default");
            (pods.len() == 2 && pods.iter().all(|p| p.ready)).then_some(pods)
        })
        .await?;
    let client = client(&fake).await?;
    let gvk = GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "pods");
    let metrics: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &resource);

    // Keeps one pod busy (bounded: at most 120 burns of 500 ms).
    let (busy, idle) = (pods[0].clone(), pods[1].name.clone());
    let burner = tokio::spawn(async move {
        for _ in 0..120 {
            let _ = rouse_stack::http_get(busy.addr(), "/cpu/500", DEADLINE).await;
        }
    });
    let busy = pods[0].name.clone();
    let cores = |m: &DynamicObject| -> Option<f64> {
        let cpu = m.data.pointer("/containers/0/usage/cpu")?.as_str()?;
        Some(cpu.strip_suffix('n')?.parse::<f64>().ok()? / 1e9)
    };
    let seen = eventually("the busy pod at 0.3 cores or more", DEADLINE, || {
        let metrics = metrics.clone();
        let busy = busy.clone();
        async move {
            let list = metrics.list(&ListParams::default()).await.ok()?;
            let pod = list
                .items
                .into_iter()
                .find(|m| m.metadata.name.as_deref() == Some(busy.as_str()))?;
            (cores(&pod)? >= 0.3).then_some(pod)
        }
    })
    .await;
    burner.abort();
    let seen = seen?;
    assert_eq!(seen.data["containers"][0]["name"], "app");
    let memory = seen.data["containers"][0]["usage"]["memory"]
        .as_str()
        .context("memory")?;
    let kib: u64 = memory
        .strip_suffix("Ki")
        .context(memory.to_string())?
        .parse()?;
    assert!(kib > 1024, "a rouse-echo in under 1 MiB? {memory}");
    let window = seen.data["window"].as_str().context("window")?;
    assert!(window.ends_with('s'), "{window}");
    assert!(seen.data["timestamp"].is_string(), "{:?}", seen.data);
    assert_eq!(
        seen.metadata.labels.as_ref().and_then(|l| l.get("app")),
        Some(&"busy".to_string())
    );

    // The idle pod shows up once its own samples span the least window,
    // which need not be by the time the busy one's do.
    let one = eventually("the idle pod's metrics", DEADLINE, || {
        let (metrics, idle) = (metrics.clone(), idle.clone());
        async move { metrics.get(&idle).await.ok() }
    })
    .await?;
    let idle_cores = cores(&one).context("idle cpu")?;
    assert!(idle_cores < 0.2, "the idle pod used {idle_cores} cores");

    let by_label = metrics
        .list(&ListParams::default().labels("app=busy"))
        .await?;
    assert_eq!(by_label.items.len(), 2);
    let none = metrics
        .list(&ListParams::default().labels("app=other"))
        .await?;
    assert!(none.items.is_empty());
    let by_name = metrics
        .list(&ListParams::default().fields(&format!("metadata.name={idle}")))
        .await?;
    assert_eq!(by_name.items.len(), 1);
    match metrics.get("no-such-pod").await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404),
        other => panic!("metrics of an unknown pod: {other:?}"),
    }

    fake.serve_metrics(false);
    match metrics.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 404, "{status:?}"),
        other => panic!("metrics switched off still answered: {other:?}"),
    }
    Ok(())
}
