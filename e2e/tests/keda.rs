//! The controller's KEDA external scaler API against the real binaries: a
//! request held by the proxy reaches KEDA as a pushed `true` while it is
//! still held, and the service's idle time as a pushed `false`.
//!
//! `scaling.driver: keda` needs the kubernetes backend, so these services
//! run on the process backend (rouse scales them) and KEDA's API is only
//! asked: any service can be.

use std::time::{Duration, Instant};

use rouse_e2e::catalog::{echo_spec, Catalog};
use rouse_e2e::keda::{self, ExternalScalerClient, GetMetricsRequest, IsActiveResponse};
use rouse_e2e::{bin, poll_until, Cluster, Config, Service};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const HOST: &str = "echo.localhost";
const LATE: &str = "late.localhost";

/// Every wait's bound.
const BOUND: Duration = Duration::from_secs(30);

async fn next_answer(stream: &mut Streaming<IsActiveResponse>) -> bool {
    let message = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no StreamIsActive message within {BOUND:?}"));
    message
        .expect("the stream stays healthy")
        .expect("the stream stays open")
        .result
}

async fn client(cluster: &Cluster) -> ExternalScalerClient<Channel> {
    let addr = cluster.keda_addr().expect("the cluster serves KEDA's API");
    keda::connect(addr).await.expect("connect to keda_listen")
}

async fn concurrency(client: &mut ExternalScalerClient<Channel>) -> i64 {
    let request = GetMetricsRequest {
        scaled_object_ref: Some(keda::scaled_object("web", "echo")),
        metric_name: "concurrency".to_string(),
    };
    let values = client.get_metrics(request).await.expect("GetMetrics");
    values.into_inner().metric_values[0].metric_value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_is_pushed_as_active_and_idleness_as_inactive() {
    // The replica takes a while to start, so the request stays held.
    let service = Service::new("echo", HOST)
        .echo_args(&["--startup-delay", "3s"])
        .scale_to_zero_after("2s");
    let cluster = Cluster::builder().keda().service(service).start().await;
    let mut client = client(&cluster).await;
    let object = keda::scaled_object("web", "echo");

    let specs = client.get_metric_spec(object.clone()).await.unwrap();
    let specs = specs.into_inner().metric_specs;
    assert_eq!(specs.len(), 1, "{specs:?}");
    assert_eq!(specs[0].metric_name, "concurrency");
    assert_eq!(specs[0].target_size_float, 10.0);

    let mut stream = client.stream_is_active(object.clone()).await.unwrap();
    let stream = stream.get_mut();
    assert!(
        !next_answer(stream).await,
        "at zero and never asked: inactive"
    );

    let proxy = cluster.proxy_addr(0);
    let request = tokio::spawn(async move { rouse_e2e::get(proxy, HOST, "/").await });
    assert!(next_answer(stream).await, "the held request is pushed");
    assert!(!request.is_finished(), "pushed while the request was held");
    poll_until("GetMetrics counts the held request", BOUND, || {
        let mut client = client.clone();
        async move { (concurrency(&mut client).await >= 1).then_some(()) }
    })
    .await;

    let response = request.await.expect("the request task");
    assert_eq!(response.status, 200, "{response}");
    assert!(response.cold_start(), "{response}");

    assert!(!next_answer(stream).await, "idle for scale_to_zero_after");
    let answer = client.is_active(object).await.unwrap().into_inner();
    assert!(!answer.result);
    assert_eq!(concurrency(&mut client).await, 0);

    let unknown = client
        .is_active(keda::scaled_object("web", "nosuch"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

/// A service deployed through the catalog, as `rouse deploy` and `rouse
/// import` do, is KEDA's to ask about as soon as it is in force, and
/// `NOT_FOUND` again once removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_deployed_through_the_catalog_is_served_until_removed() {
    let cluster = Cluster::builder()
        .keda()
        .service(Service::new("echo", HOST))
        .start()
        .await;
    let catalog = Catalog::connect(&cluster.nats.url())
        .await
        .expect("catalog");
    let client = client(&cluster).await;
    let object = keda::scaled_object("web", "late");
    let asked = |client: &ExternalScalerClient<Channel>| {
        let (mut client, object) = (client.clone(), object.clone());
        async move {
            client
                .is_active(object)
                .await
                .map(|a| a.into_inner().result)
        }
    };
    let before = asked(&client).await.unwrap_err();
    assert_eq!(before.code(), Code::NotFound, "{before:?}");

    catalog
        .deploy(&echo_spec("late", LATE, &cluster.marker))
        .await
        .expect("deploy");
    let first = poll_until("KEDA knows the deployed service", BOUND, || async {
        asked(&client).await.ok()
    })
    .await;
    assert!(!first, "at zero and never asked: inactive");
    let response = poll_until("the deployed service answers", BOUND, || async {
        let response = cluster.get(LATE, "/").await;
        (response.status == 200).then_some(response)
    })
    .await;
    assert!(response.cold_start(), "{response}");
    poll_until("its traffic makes it active for KEDA", BOUND, || async {
        asked(&client).await.ok().filter(|active| *active)
    })
    .await;

    catalog.remove("late").await.expect("remove");
    poll_until(
        "KEDA no longer knows the removed service",
        BOUND,
        || async {
            let code = asked(&client).await.err().map(|status| status.code());
            code.filter(|code| *code == Code::NotFound)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keda_listen_address_in_use_stops_the_controller_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local addr");
    let dir = tempfile::tempdir().expect("temp dir");
    // NATS is a closed port: the listener is bound before NATS is dialled.
    let mut config = Config::new("nats://127.0.0.1:1", &dir.path().join("state"), "keda-bind")
        .service(Service::new("echo", HOST));
    config.keda_listen = Some(addr);
    let path = dir.path().join("rouse.yaml");
    config.write(&path);

    let run = tokio::process::Command::new(bin("rouse-controller"))
        .arg("--config")
        .arg(&path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(BOUND, run)
        .await
        .expect("the controller exits instead of running without its KEDA listener")
        .expect("run rouse-controller");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stderr}{stdout}");
    assert!(
        stderr.contains("controller.keda_listen") || stdout.contains("controller.keda_listen"),
        "the error names the key:\n{stderr}{stdout}"
    );
}

/// The time from sending a request to a service at zero until
/// StreamIsActive pushes `true`, median of a few cold starts. A figure, not
/// a check: `cargo test -p rouse-e2e --test keda -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it by name"]
async fn time_from_a_cold_request_to_a_pushed_true() {
    const RUNS: usize = 7;
    let service = Service::new("echo", HOST)
        .scale_to_zero_after("1s")
        .drain_timeout("1s");
    let cluster = Cluster::builder().keda().service(service).start().await;
    let mut client = client(&cluster).await;
    let object = keda::scaled_object("web", "echo");
    let mut stream = client.stream_is_active(object).await.unwrap();
    let stream = stream.get_mut();
    assert!(!next_answer(stream).await);

    let mut times = Vec::new();
    for _ in 0..RUNS {
        cluster
            .wait_until("no replica runs", BOUND, || async {
                cluster.replica_pids().is_empty()
            })
            .await;
        let proxy = cluster.proxy_addr(0);
        let sent = Instant::now();
        let request = tokio::spawn(async move { rouse_e2e::get(proxy, HOST, "/").await });
        assert!(next_answer(stream).await);
        times.push(sent.elapsed());
        let response = request.await.expect("the request task");
        assert!(response.cold_start(), "{response}");
        assert!(!next_answer(stream).await, "idle again");
    }
    times.sort();
    println!(
        "cold request → StreamIsActive true: median {:?}, min {:?}, max {:?} ({RUNS} runs)",
        times[RUNS / 2],
        times[0],
        times[RUNS - 1]
    );
}
