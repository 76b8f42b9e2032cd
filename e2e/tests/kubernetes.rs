//! The kubernetes backend end to end, against a fake API server.
//!
//! No Kubernetes API server can run on the test machines, so each test
//! starts `rouse-kubefake`: real HTTP on 127.0.0.1, spoken to by the real
//! controller's kube-rs client through a kubeconfig (`KUBECONFIG`), with a
//! small kubelet that runs every pod as a real rouse-echo process on its own
//! loopback address and writes the Service's EndpointSlice. What the fake
//! does not model: authentication and RBAC, admission, scheduling and
//! nodes, ReplicaSet objects (the Deployment's pods are managed directly,
//! picked for removal by the ReplicaSet's ranking: not ready first, then
//! the lowest deletion cost, then the newest), more than one slice per
//! Service, and the API server's pagination.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rouse_e2e::http::{self, ServiceStatus};
use rouse_e2e::{assert_stays, load, poll_until, Cluster, ClusterBuilder, Service};
use rouse_kubefake::{FakeCluster, Kind, RecordedRequest, Workload};

/// The cost rouse gives the pod it drained (the lowest there is).
const DRAINED_COST: i32 = i32::MIN;

/// A fake cluster with `workload`, and rouse in front of it with `service`.
struct Kube {
    fake: FakeCluster,
    cluster: Cluster,
}

async fn start(
    workload: Workload,
    service: Service,
    tweak: impl FnOnce(ClusterBuilder) -> ClusterBuilder,
) -> Kube {
    let fake = FakeCluster::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    fake.add_workload(workload)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let kubeconfig = fake.kubeconfig().to_string_lossy().into_owned();
    let builder = Cluster::builder()
        .service(service)
        .controller_env("KUBECONFIG", &kubeconfig);
    let cluster = tweak(builder).start().await;
    Kube { fake, cluster }
}

/// A rouse service for the Deployment `name` and its Service `name`.
fn deployment(name: &str, host: &str) -> Service {
    Service::new(name, host).kubernetes(&[("deployment", name), ("service", name)])
}

fn replicas(fake: &FakeCluster, name: &str) -> Option<i32> {
    fake.replicas("default", &Kind::Deployment, name)
}

/// API calls other than the long-running watches, from `from` on.
fn calls_since(fake: &FakeCluster, from: usize) -> Vec<RecordedRequest> {
    fake.requests()
        .into_iter()
        .skip(from)
        .filter(|r| !r.watch)
        .collect()
}

fn describe(calls: &[RecordedRequest]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// Criterion 1: a cold request patches /scale 0 → 1, the fake kubelet
/// starts the pod, its EndpointSlice turns ready and the held request is
/// answered by that pod with `x-rouse-cold-start: true`. Warm, rouse makes
/// no API call at all (the slices are watched). Idle, it drains the pod,
/// marks it with the lowest deletion cost and scales back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_request_scales_the_deployment_from_zero_and_back() {
    const HOST: &str = "kecho.localhost";
    let k = start(
        Workload::echo("kecho"),
        deployment("kecho", HOST).scale_to_zero_after("4s"),
        |b| b,
    )
    .await;
    assert_eq!(replicas(&k.fake, "kecho"), Some(0));
    let before = k.fake.requests().len();
    let resp = k.cluster.get(HOST, "/").await;
    assert_eq!(resp.status, 200, "{resp}");
    assert!(resp.cold_start(), "a held request says so: {resp}");
    assert_eq!(replicas(&k.fake, "kecho"), Some(1));
    let pods = k.fake.pods("default");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert!(
        resp.text().contains(&pods[0].name),
        "answered by the pod the kubelet started ({}): {}",
        pods[0].name,
        resp.text()
    );
    let cold_calls = calls_since(&k.fake, before);
    let cold = describe(&cold_calls);
    assert!(
        cold.iter()
            .any(|c| c.starts_with("PATCH") && c.ends_with("/deployments/kecho/scale")),
        "a cold start patches /scale: {cold:?}"
    );
    eprintln!("API calls for one cold start: {cold:?}");

    // Warm: requests flow and the controller makes no API call.
    let warm_from = k.fake.requests().len();
    for _ in 0..5 {
        k.cluster.get_ok(HOST, "/").await;
    }
    let fake = &k.fake;
    assert_stays("no API call while warm", Duration::from_secs(2), || {
        let calls = calls_since(fake, warm_from);
        async move { calls.is_empty() }
    })
    .await;

    k.cluster
        .wait_until(
            "the Deployment is back at 0 with no pod",
            Duration::from_secs(60),
            || async { replicas(&k.fake, "kecho") == Some(0) && k.fake.pods("default").is_empty() },
        )
        .await;
    let deleted = k.fake.deleted_pods();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].name, pods[0].name);
    assert_eq!(deleted[0].deletion_cost, Some(DRAINED_COST), "{deleted:?}");
    let status = k
        .cluster
        .wait_status("kecho", "0 desired", Duration::from_secs(10), |s| {
            s.desired == 0
        })
        .await;
    assert_eq!(status.raw["backend"], "kubernetes", "{:?}", status.raw);
}

/// Criterion 2: scale-down under continuous load loses no request, and
/// every serving pod the cluster removed is one rouse drained and marked
/// with the lowest deletion cost (none other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_under_load_removes_only_drained_pods_and_loses_nothing() {
    scale_down_under_load("kdrain", Kind::Deployment).await;
}

/// The same on a StatefulSet, which ignores deletion cost and removes its
/// highest ordinal: rouse must drain exactly that pod (a pod removed that
/// rouse had not drained and marked fails the story).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_scales_down_from_its_highest_ordinal_losing_nothing() {
    scale_down_under_load("ksts", Kind::StatefulSet).await;
}

async fn scale_down_under_load(name: &str, kind: Kind) {
    let host = format!("{name}.localhost");
    let host = host.as_str();
    let mut workload = Workload::echo(name);
    workload.kind = kind.clone();
    let target = match kind {
        Kind::StatefulSet => format!("{{kind: StatefulSet, name: {name}}}"),
        _ => format!("{{kind: Deployment, name: {name}}}"),
    };
    let k = start(
        workload,
        Service::new(name, host)
            .kubernetes(&[("target", target.as_str()), ("service", name)])
            .max_replicas(4)
            .target_concurrency(5)
            .drain_timeout("20s")
            .hold_timeout("60s")
            .scaling("stable_window", "4s")
            .scaling("panic_window", "2s")
            .scaling("scale_down_step", "1s"),
        |b| b,
    )
    .await;
    let (client, addr) = (&k.cluster.client, k.cluster.proxy_addr(0));
    let (high, served_high) =
        load::steady_noting_replicas(client, addr, host, "/sleep/50", 40, Duration::from_secs(10))
            .await;
    let peak = k.fake.pods("default").len();
    let (low, served_low) =
        load::steady_noting_replicas(client, addr, host, "/sleep/50", 4, Duration::from_secs(20))
            .await;
    // A pod served if it answered a request (rouse-echo names itself on
    // every response; in the fake cluster the replica id is the pod's name).
    let served: std::collections::BTreeSet<String> =
        served_high.union(&served_low).cloned().collect();
    let after = k
        .fake
        .pods("default")
        .iter()
        .filter(|p| !p.terminating)
        .count();
    let failures = load::failures(&high) + load::failures(&low);
    let deleted = k.fake.deleted_pods();
    if failures > 0 || peak < 2 || after >= peak || deleted.is_empty() {
        k.cluster
            .fail(&format!(
                "pods at peak {peak}, after {after}, deleted {deleted:?}; high load {high:?}, low load {low:?}"
            ))
            .await;
    }
    // Pods that never served carried no request: lowering the count may
    // cancel them without a drain, even one the cluster had just seen turn
    // ready before rouse's probe or the EndpointSlice said so (a
    // StatefulSet then removes that newest, highest ordinal). Every pod
    // that served was drained and marked first.
    let served_and_deleted: Vec<_> = deleted
        .iter()
        .filter(|p| served.contains(&p.name))
        .collect();
    assert!(
        !served_and_deleted.is_empty(),
        "no serving pod was scaled down: deleted {deleted:?}, served {served:?}"
    );
    for pod in served_and_deleted {
        assert_eq!(
            pod.deletion_cost,
            Some(DRAINED_COST),
            "the cluster removed a serving pod rouse had not drained: {pod:?}"
        );
    }
    let marked_alive: Vec<_> = k
        .fake
        .pods("default")
        .into_iter()
        .filter(|p| p.deletion_cost == Some(DRAINED_COST) && !p.terminating)
        .collect();
    assert!(
        marked_alive.is_empty(),
        "drained pods left running: {marked_alive:?}"
    );
}

/// Criterion 3: two controllers on a `coordination.k8s.io` Lease; the
/// leader is SIGKILLed under warm traffic; the standby leads within 15 s,
/// warm traffic never fails, and the Deployment is neither scaled twice
/// nor left: the same single pod serves before, during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_the_lease_from_a_killed_leader_and_nothing_is_doubled() {
    const HOST: &str = "kha.localhost";
    let mut k = start(
        Workload::echo("kha"),
        deployment("kha", HOST).scale_to_zero_after("300s"),
        |b| {
            b.controller_key(
                "leader_election",
                "{lease: kubernetes, duration: 4s, retry_period: 500ms}",
            )
            .standby_controllers(1)
        },
    )
    .await;
    let (_, standby_admin) = k.cluster.standby(0);
    assert_eq!(
        http::controller_leader(k.cluster.controller_admin()).await,
        Some(1.0)
    );
    assert_eq!(http::controller_leader(standby_admin).await, Some(0.0));
    let first_holder = k
        .fake
        .lease("default", "rouse-controller")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from))
        .expect("the leader wrote the Lease");
    k.cluster.get_ok(HOST, "/").await;
    let pods = k.fake.pods("default");
    assert_eq!(pods.len(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load::sequential_until(k.cluster.proxy_addr(0), HOST, "/", Arc::clone(&stop));
    let killed = Instant::now();
    k.cluster.kill_controller().await;
    poll_until("the standby leads", Duration::from_secs(15), || async {
        (http::controller_leader(standby_admin).await == Some(1.0)).then_some(())
    })
    .await;
    let took_over = killed.elapsed();
    let status: ServiceStatus = poll_until(
        "the new leader sees the pod ready",
        Duration::from_secs(15),
        || async {
            let doc = http::services(standby_admin).await.ok()?;
            // Adoption shows the pod ready a pass before the loop has
            // decided its count.
            ServiceStatus::find(&doc, "kha").filter(|s| s.ready == 1 && s.desired == 1)
        },
    )
    .await;
    assert_eq!(status.desired, 1);
    let holder = k
        .fake
        .lease("default", "rouse-controller")
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(String::from));
    assert_ne!(
        holder.as_deref(),
        Some(first_holder.as_str()),
        "the Lease changed hands"
    );
    let fake = &k.fake;
    assert_stays(
        "one pod, the same, at replicas 1",
        Duration::from_secs(3),
        || {
            let same = replicas(fake, "kha") == Some(1)
                && fake
                    .pods("default")
                    .iter()
                    .map(|p| p.name.clone())
                    .collect::<Vec<_>>()
                    == [pods[0].name.clone()];
            async move { same }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let outcome = traffic.await.expect("traffic task");
    k.cluster
        .expect_no_failed_traffic(&format!("in the hand-over (took {took_over:?})"), outcome)
        .await;
}

/// Criterion 5: an HTTPScaledObject shaped like the add-on's own example
/// (hosts, pathPrefixes, scaleTargetRef with a Service port in front of
/// the pods', replicas, a concurrency target, scaledownPeriod), read from
/// the cluster by `rouse-controller import --cluster`, becomes a rouse
/// service that routes by its host and scales its Deployment as its fields
/// say: up from zero on a request, past one replica under concurrency
/// above the target, and back to zero after the scaledown period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_httpscaledobject_routes_and_scales_as_its_fields_say() {
    const HOST: &str = "hso.localhost";
    let fake = FakeCluster::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut workload = Workload::echo("hso-web");
    workload.service = "hso-svc".into();
    fake.add_workload(workload)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let object = serde_json::json!({
        "apiVersion": "http.keda.sh/v1alpha1",
        "kind": "HTTPScaledObject",
        "metadata": {"name": "hso", "namespace": "default"},
        "spec": {
            "hosts": [HOST],
            "pathPrefixes": ["/"],
            "scaleTargetRef": {
                "name": "hso-web", "kind": "Deployment", "apiVersion": "apps/v1",
                "service": "hso-svc", "port": 8080
            },
            "replicas": {"min": 0, "max": 3},
            "scaledownPeriod": 6,
            "scalingMetric": {"concurrency": {"targetValue": 2}}
        }
    });
    fake.put_object(
        "http.keda.sh/v1alpha1",
        "httpscaledobjects",
        Some("default"),
        object,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let kubeconfig = fake.kubeconfig().to_string_lossy().into_owned();
    let out = std::process::Command::new(rouse_e2e::bin("rouse-controller"))
        .args(["import", "--cluster"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .expect("run rouse-controller import");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "import failed: {stderr}");
    for expected in [
        "name: hso",
        HOST,
        "deployment: hso-web",
        "service: hso-svc",
        "max_replicas: 3",
        "target_concurrency: 2",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing from:\n{stdout}"
        );
    }
    let items = stdout
        .split_once("services:\n")
        .map(|(_, items)| items.to_string())
        .unwrap_or_else(|| panic!("no services list in:\n{stdout}"));

    let cluster = Cluster::builder()
        .raw_services(&items)
        .controller_env("KUBECONFIG", &kubeconfig)
        .start()
        .await;
    let resp = cluster.get(HOST, "/").await;
    assert_eq!(resp.status, 200, "{resp}");
    assert!(resp.cold_start(), "{resp}");
    assert_eq!(replicas(&fake, "hso-web"), Some(1));
    // Eight requests in flight at a target of 2 per replica: more pods, at
    // most `replicas.max`.
    let (client, addr) = (&cluster.client, cluster.proxy_addr(0));
    let statuses = load::steady(client, addr, HOST, "/sleep/300", 8, Duration::from_secs(6)).await;
    assert_eq!(load::failures(&statuses), 0, "{statuses:?}");
    // Scale-down waits for the stable window (60 s), so the count the
    // load asked for is still there.
    let scaled = replicas(&fake, "hso-web");
    assert!(
        scaled.is_some_and(|n| (2..=3).contains(&n)),
        "between 2 and replicas.max (3) under load: {scaled:?}"
    );
    cluster
        .wait_until(
            "back to zero after the scaledown period",
            Duration::from_secs(90),
            || async { replicas(&fake, "hso-web") == Some(0) && fake.pods("default").is_empty() },
        )
        .await;
}

/// `scaling.driver: keda`: KEDA (played by the test, through the gRPC API
/// and the Deployment's replicas, as its HPA would) sets the count. A held
/// request is pushed as active at once; rouse never patches `/scale`; when
/// "KEDA" scales to one, the held request is answered by the new pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_keda_driver_rouse_holds_and_follows_but_never_scales() {
    const HOST: &str = "kkeda.localhost";
    let k = start(
        Workload::echo("kkeda"),
        deployment("kkeda", HOST)
            .scaling("driver", "keda")
            .scale_to_zero_after("300s"),
        |b| b.keda(),
    )
    .await;
    let addr = k.cluster.keda_addr().expect("keda_listen is set");
    let mut client = rouse_e2e::keda::connect(addr)
        .await
        .expect("connect to keda_listen");
    let object = rouse_e2e::keda::scaled_object("kkeda", "kkeda");
    let mut stream = client
        .stream_is_active(object)
        .await
        .expect("StreamIsActive")
        .into_inner();
    assert!(!next_active(&mut stream).await, "at zero: inactive");
    let proxy = k.cluster.proxy_addr(0);
    let request = tokio::spawn(async move { http::get(proxy, HOST, "/").await });
    assert!(
        next_active(&mut stream).await,
        "the held request is pushed as active"
    );
    assert!(
        !request.is_finished(),
        "still held: KEDA has not scaled yet"
    );
    assert_eq!(
        replicas(&k.fake, "kkeda"),
        Some(0),
        "rouse must not scale under KEDA"
    );
    // KEDA's answer to the push: the HPA sets the Deployment to 1.
    k.fake
        .set_replicas("default", &Kind::Deployment, "kkeda", 1)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let resp = request.await.expect("request task");
    assert_eq!(resp.status, 200, "{resp}");
    assert!(resp.cold_start(), "{resp}");
    let patches: Vec<String> = describe(&k.fake.requests())
        .into_iter()
        .filter(|c| c.starts_with("PATCH") || c.starts_with("PUT"))
        .collect();
    assert!(
        patches.is_empty(),
        "rouse wrote to the cluster under KEDA: {patches:?}"
    );
}

/// The next StreamIsActive answer, within a generous bound.
async fn next_active(stream: &mut tonic::Streaming<rouse_e2e::keda::IsActiveResponse>) -> bool {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an answer in time")
        .expect("a healthy stream")
        .expect("an open stream")
        .result
}

/// A `cpu` target on a Kubernetes service reads the pods' usage from
/// `metrics.k8s.io`: the status shows each pod's CPU and memory while the
/// API is served, and says why the signal is missing when it is not (the
/// count then holds: a missing metric never scales down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_targets_read_the_metrics_api_and_say_so_when_it_is_missing() {
    const HOST: &str = "kmetrics.localhost";
    let k = start(
        Workload::echo("kmetrics"),
        deployment("kmetrics", HOST)
            .min_replicas(1)
            .key("resources", "{cpus: 0.5}")
            .scaling("metrics", "[{type: cpu, target: 50}]"),
        |b| b,
    )
    .await;
    let with_figures = k
        .cluster
        .poll_until(
            "a ready pod with its CPU and memory in the status",
            Duration::from_secs(60),
            || async {
                let status = k.cluster.service_status("kmetrics").await?;
                let replica = status.raw.get("replicas")?.as_array()?.first()?.clone();
                let memory = replica.get("memory_bytes")?.as_u64()?;
                (status.ready == 1 && memory > 0).then_some(replica)
            },
        )
        .await;
    eprintln!("replica with figures: {with_figures}");
    assert!(with_figures.get("cpu_cores").is_some(), "{with_figures}");

    k.fake.serve_metrics(false);
    let error = k
        .cluster
        .poll_until(
            "the status says the metrics API is missing",
            Duration::from_secs(60),
            || async {
                let status = k.cluster.service_status("kmetrics").await?;
                status
                    .last_error
                    .filter(|e| e.contains("metrics.k8s.io is not served"))
            },
        )
        .await;
    eprintln!("last_error: {error}");
    let status = k.cluster.service_status("kmetrics").await;
    assert_eq!(status.map(|s| s.desired), Some(1), "the count holds");
}
