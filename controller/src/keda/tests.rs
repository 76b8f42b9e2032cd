//! The API over a real connection, with real inboxes fed through the
//! intake's own delivery path, as NATS messages would arrive.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rouse_nats::config::Config;
use rouse_nats::messages::{Load, Wake, VERSION};
use rouse_nats::Subjects;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};

use super::proto::external_scaler_client::ExternalScalerClient;
use super::*;
use crate::intake::{self, Inboxes};

/// Every wait in these tests ends by this bound, never by a guess.
const BOUND: Duration = Duration::from_secs(20);

const CONFIG: &str = "
proxy:
  report_interval: 1s
services:
  - name: echo
    hosts: [echo.localhost]
    backend: {process: {command: [x]}}
    scaling:
      target_concurrency: 4
      target_rps: 25.5
      scale_to_zero_after: 300ms
  - name: quiet
    hosts: [quiet.localhost]
    backend: {process: {command: [x]}}
";

struct Fixture {
    /// The services in force, fed as the bucket's watch would.
    catalog: Arc<KedaCatalog>,
    channel: Channel,
    client: ExternalScalerClient<Channel>,
    inboxes: Arc<Inboxes>,
    subjects: Subjects,
    metrics: Arc<ControllerMetrics>,
    seq: u64,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(RECHECK).await
    }

    /// With streams that look again only every `recheck`.
    async fn start_with(recheck: Duration) -> Fixture {
        let config = Config::parse(Path::new("test.yaml"), CONFIG).expect("test config is valid");
        let inboxes = Arc::new(Inboxes::with(
            config.proxy.report_interval,
            config.services.iter().map(|s| s.name.as_str()),
        ));
        let metrics = Arc::new(ControllerMetrics::new());
        let catalog = Arc::new(KedaCatalog::new(
            config.services.clone(),
            Arc::clone(&inboxes),
        ));
        let scaler = Scaler::over(catalog.targets(), Arc::clone(&metrics)).with_recheck(recheck);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(serve(listener, scaler));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the KEDA server");
        Fixture {
            catalog,
            client: ExternalScalerClient::new(channel.clone()),
            channel,
            inboxes,
            subjects: Subjects::new("rouse"),
            metrics,
            seq: 0,
        }
    }

    /// A proxy's `wake` for `service`, through the intake.
    fn wake(&self, service: &str) {
        let wake = Wake {
            v: VERSION,
            service: service.into(),
            proxy: "p1".into(),
            held: 1,
            at_ms: 0,
        };
        let message = message(self.subjects.wake(service), &wake);
        intake::deliver_wake(&self.subjects, &self.inboxes, &message).expect("wake delivered");
    }

    /// A proxy's `load` report for `service`, through the intake.
    fn load(&mut self, service: &str, arrivals: u64, in_flight: u64, held: u64) {
        self.seq += 1;
        let load = Load {
            v: VERSION,
            service: service.into(),
            proxy: "p1".into(),
            seq: self.seq,
            interval_ms: 1000,
            arrivals,
            completed: 0,
            in_flight,
            held,
            per_endpoint: BTreeMap::new(),
            endpoints_generation: 0,
            at_ms: 0,
        };
        let message = message(self.subjects.load(service), &load);
        intake::deliver_load(&self.subjects, &self.inboxes, &message).expect("load delivered");
    }

    async fn is_active(&mut self, object: ScaledObjectRef) -> Result<bool, Status> {
        Ok(self.client.is_active(object).await?.into_inner().result)
    }

    async fn stream(&mut self, object: ScaledObjectRef) -> Streaming<IsActiveResponse> {
        self.client
            .stream_is_active(object)
            .await
            .expect("StreamIsActive opens")
            .into_inner()
    }

    async fn metric(&mut self, service: &str, name: &str) -> Result<MetricValue, Status> {
        let request = GetMetricsRequest {
            scaled_object_ref: Some(named(service)),
            metric_name: name.into(),
        };
        let mut values = self
            .client
            .get_metrics(request)
            .await?
            .into_inner()
            .metric_values;
        assert_eq!(values.len(), 1, "one value per metric asked for");
        Ok(values.remove(0))
    }
}

fn message<T: serde::Serialize>(subject: String, payload: &T) -> async_nats::Message {
    let payload = Bytes::from(serde_json::to_vec(payload).expect("encode"));
    async_nats::Message {
        subject: subject.into(),
        reply: None,
        length: payload.len(),
        payload,
        headers: None,
        status: None,
        description: None,
    }
}

/// A ScaledObject named after the service, with no metadata.
/// A bucket entry at `revision` defining service `name` (host
/// `<name>.localhost`) with these `scaling` settings (YAML flow mapping).
fn entry(revision: u64, name: &str, scaling: &str) -> rouse_nats::catalog::Entry {
    let yaml = format!(
        "services:
  - name: {name}
    hosts: [{name}.localhost]
    backend: {{process: {{command: [x]}}}}
    scaling: {scaling}
"
    );
    let config = Config::parse(Path::new("entry.yaml"), &yaml).expect("entry is valid");
    let spec = config.services[0].clone();
    rouse_nats::catalog::Entry {
        revision,
        record: rouse_nats::catalog::ServiceRecord::new(
            rouse_nats::catalog::Source::Api,
            spec,
            "test",
        ),
    }
}

/// The stream's next event: `Some(answer)`, or `None` once it has ended.
async fn next_or_end(stream: &mut Streaming<IsActiveResponse>) -> Option<bool> {
    let message = within("a stream message or its end", stream.message()).await;
    message.expect("the stream ends cleanly").map(|m| m.result)
}

fn named(name: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: name.into(),
        namespace: "default".into(),
        scaler_metadata: HashMap::new(),
    }
}

/// A ScaledObject named `name` whose trigger names `service`.
fn with_service(name: &str, service: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        scaler_metadata: HashMap::from([("service".to_string(), service.to_string())]),
        ..named(name)
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {BOUND:?}"),
    }
}

async fn next_answer(stream: &mut Streaming<IsActiveResponse>) -> bool {
    within("the next StreamIsActive message", stream.message())
        .await
        .expect("the stream stays healthy")
        .expect("the stream stays open")
        .result
}

/// Waits until `condition` holds, looking every few milliseconds.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Far beyond every wait's bound: what a stream pushes within one, it pushed
/// because of a delivered message or its own deadline, not a periodic look.
const NEVER: Duration = Duration::from_secs(24 * 3600);

#[tokio::test]
async fn activity_follows_a_wake_and_ends_after_scale_to_zero_after() {
    let mut f = Fixture::start_with(NEVER).await;
    assert!(
        !f.is_active(named("echo")).await.unwrap(),
        "nothing seen yet"
    );

    let mut stream = f.stream(named("echo")).await;
    assert!(
        !next_answer(&mut stream).await,
        "the current value comes first"
    );

    let woke = now();
    f.wake("echo");
    assert!(next_answer(&mut stream).await, "a wake is pushed as true");
    // Active for 300 ms of real time: a stalled machine may be past it.
    let active = f.is_active(named("echo")).await.unwrap();
    assert!(
        active || now().saturating_duration_since(woke) >= Duration::from_millis(300),
        "active right after the wake"
    );
    let other = f.is_active(named("quiet")).await.unwrap();
    assert!(!other, "another service's wake is not this one's");

    // Nothing more happens: the turn to false is pushed on its own, once
    // scale_to_zero_after has passed.
    assert!(!next_answer(&mut stream).await);
    let last = f
        .inboxes
        .get("echo")
        .expect("inbox")
        .observations()
        .last_activity();
    let idle = now().saturating_duration_since(last.expect("the wake was recorded"));
    assert!(idle >= Duration::from_millis(300), "turned after {idle:?}");
    assert!(!f.is_active(named("echo")).await.unwrap());

    // The reconcile loop still gets its wake: reading consumed nothing.
    let observation = f
        .inboxes
        .get("echo")
        .expect("inbox")
        .observations()
        .observe(now());
    assert!(observation.woken);
}

#[tokio::test]
async fn held_requests_keep_a_service_active_until_their_proxy_goes_silent() {
    let mut f = Fixture::start().await;
    let mut stream = f.stream(with_service("so", "echo")).await;
    assert!(!next_answer(&mut stream).await);

    // One report with requests held, then silence: the report counts for
    // three report intervals, far past scale_to_zero_after.
    f.load("echo", 0, 0, 2);
    assert!(next_answer(&mut stream).await, "held requests are activity");
    assert!(
        !next_answer(&mut stream).await,
        "pushed when the proxy expires"
    );
    let totals = f
        .inboxes
        .get("echo")
        .expect("inbox")
        .observations()
        .totals(now());
    assert_eq!(
        totals.proxies, 0,
        "false only once nothing is held any more"
    );
    assert!(!f.is_active(named("echo")).await.unwrap());
}

#[tokio::test]
async fn metric_spec_names_concurrency_and_rps_with_the_services_targets() {
    let mut f = Fixture::start().await;
    let specs = f
        .client
        .get_metric_spec(named("echo"))
        .await
        .unwrap()
        .into_inner()
        .metric_specs;
    let names: Vec<_> = specs.iter().map(|s| s.metric_name.as_str()).collect();
    assert_eq!(names, ["concurrency", "rps"]);
    assert_eq!(specs[0].target_size_float, 4.0);
    assert_eq!(specs[0].target_size, 4);
    assert_eq!(specs[1].target_size_float, 25.5);
    assert_eq!(specs[1].target_size, 26);

    let specs = f
        .client
        .get_metric_spec(named("quiet"))
        .await
        .unwrap()
        .into_inner()
        .metric_specs;
    assert_eq!(specs.len(), 1, "no target_rps: concurrency only");
    assert_eq!(specs[0].metric_name, "concurrency");
    assert_eq!(specs[0].target_size_float, 10.0);
}

#[tokio::test]
async fn metrics_report_what_the_live_proxies_carry() {
    let mut f = Fixture::start().await;
    let zero = f.metric("echo", "concurrency").await.unwrap();
    assert_eq!((zero.metric_value, zero.metric_value_float), (0, 0.0));

    f.load("echo", 7, 3, 2);
    let concurrency = f.metric("echo", "concurrency").await.unwrap();
    assert_eq!(concurrency.metric_name, "concurrency");
    assert_eq!(concurrency.metric_value, 5, "in flight + held");
    assert_eq!(concurrency.metric_value_float, 5.0);
    let rps = f.metric("echo", "rps").await.unwrap();
    assert_eq!((rps.metric_value, rps.metric_value_float), (7, 7.0));

    // KEDA strips its `s<index>-` prefix; an unstripped or upper-case name
    // is still understood, and answered under the name asked for.
    let prefixed = f.metric("echo", "s0-concurrency").await.unwrap();
    assert_eq!(prefixed.metric_name, "s0-concurrency");
    assert_eq!(prefixed.metric_value, 5);
    assert_eq!(f.metric("echo", "RPS").await.unwrap().metric_value, 7);

    let unknown = f.metric("echo", "latency").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("latency"), "{unknown:?}");
    assert_eq!(
        f.metric("quiet", "concurrency").await.unwrap().metric_value,
        0
    );
}

/// Services deployed through the catalog (`rouse deploy`)
/// are KEDA's to ask about too, with their own targets; reports reach them
/// (their inbox is opened even where no fleet runs, as on a standby); a
/// removed one is `NOT_FOUND` and its open stream ends.
#[tokio::test]
async fn catalog_services_are_served_until_they_are_removed() {
    use rouse_nats::catalog::Sink as _;
    let mut f = Fixture::start().await;
    let late = named("late");
    let before = f.is_active(late.clone()).await.unwrap_err();
    assert_eq!(before.code(), Code::NotFound, "{before:?}");

    f.catalog
        .change("late", Some(entry(1, "late", "{target_concurrency: 7}")));
    let specs = f.client.get_metric_spec(late.clone()).await.expect("spec");
    let specs = specs.into_inner().metric_specs;
    assert_eq!(specs.len(), 1, "{specs:?}");
    assert_eq!(specs[0].target_size_float, 7.0);
    let mut stream = f.stream(late.clone()).await;
    assert_eq!(next_or_end(&mut stream).await, Some(false));
    f.load("late", 3, 2, 0);
    assert_eq!(
        next_or_end(&mut stream).await,
        Some(true),
        "its report counts"
    );
    assert_eq!(
        f.metric("late", "concurrency").await.unwrap().metric_value,
        2
    );

    f.catalog.change("late", None);
    let after = f.is_active(late).await.unwrap_err();
    assert_eq!(after.code(), Code::NotFound, "{after:?}");
    assert_eq!(next_or_end(&mut stream).await, None, "the stream ends");
    assert!(f.is_active(named("echo")).await.is_ok(), "the file's stay");
}

/// A definition changed in the catalog applies to a stream already open:
/// with `scale_to_zero_after` raised from 300 ms to an hour, a new arrival
/// keeps the service active instead of turning it off 300 ms later.
#[tokio::test]
async fn a_changed_definition_reaches_an_open_stream() {
    use rouse_nats::catalog::Sink as _;
    let mut f = Fixture::start_with(NEVER).await;
    f.catalog.change(
        "late",
        Some(entry(1, "late", "{scale_to_zero_after: 300ms}")),
    );
    let mut stream = f.stream(named("late")).await;
    assert_eq!(next_or_end(&mut stream).await, Some(false));
    f.wake("late");
    assert_eq!(next_or_end(&mut stream).await, Some(true));
    assert_eq!(next_or_end(&mut stream).await, Some(false), "300 ms idle");

    f.catalog
        .change("late", Some(entry(2, "late", "{scale_to_zero_after: 1h}")));
    f.wake("late");
    assert_eq!(next_or_end(&mut stream).await, Some(true));
    let turned = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
    assert!(
        turned.is_err(),
        "still active 2 s later under the new definition: {turned:?}"
    );
    // An older revision arriving late changes nothing.
    f.catalog
        .change("late", Some(entry(1, "late", "{target_concurrency: 3}")));
    let specs = f.client.get_metric_spec(named("late")).await.expect("spec");
    assert_eq!(specs.into_inner().metric_specs[0].target_size_float, 10.0);
}

/// SIGHUP's new file list is followed: a service taken out of the file is
/// `NOT_FOUND`.
#[tokio::test]
async fn the_files_services_follow_a_reload() {
    let mut f = Fixture::start().await;
    assert!(f.is_active(named("quiet")).await.is_ok());
    let config = Config::parse(Path::new("test.yaml"), CONFIG).expect("test config is valid");
    let only_echo: Vec<_> = config
        .services
        .into_iter()
        .filter(|s| s.name == "echo")
        .collect();
    f.catalog.set_file(only_echo);
    let quiet = f.is_active(named("quiet")).await.unwrap_err();
    assert_eq!(quiet.code(), Code::NotFound, "{quiet:?}");
    assert!(f.is_active(named("echo")).await.is_ok());
}

#[tokio::test]
async fn the_service_comes_from_metadata_else_from_the_scaled_objects_name() {
    let mut f = Fixture::start().await;
    // `quiet` stays active for the default scale_to_zero_after, `echo`
    // would turn after 300 ms of real time.
    f.wake("quiet");
    assert!(f.is_active(with_service("web", "quiet")).await.unwrap());
    assert!(f.is_active(named("quiet")).await.unwrap());
    let echo = with_service("quiet", "echo");
    assert!(!f.is_active(echo).await.unwrap(), "metadata wins");
}

#[tokio::test]
async fn an_unknown_service_is_not_found_and_named_by_every_method() {
    let mut f = Fixture::start().await;
    let object = with_service("web", "nosuch");
    let checks = [
        f.is_active(object.clone()).await.unwrap_err(),
        f.client.stream_is_active(object.clone()).await.unwrap_err(),
        f.client.get_metric_spec(object.clone()).await.unwrap_err(),
        f.metric("nosuch", "concurrency").await.unwrap_err(),
    ];
    for status in checks {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("`nosuch`"), "{status:?}");
    }
}

#[tokio::test]
async fn garbage_requests_get_errors_and_the_server_keeps_answering() {
    let mut f = Fixture::start().await;
    let long = "x".repeat(100_000);
    let odd = "\u{0}\r\n\u{202e}é🦀 echo";
    let objects = [
        ScaledObjectRef::default(),
        named(""),
        named("   "),
        named(&long),
        named(odd),
        with_service("echo", &long),
        with_service("", odd),
        ScaledObjectRef {
            scaler_metadata: (0..1000)
                .map(|i| (format!("k{i}"), long[..i].to_string()))
                .collect(),
            ..named("nosuch")
        },
    ];
    for object in objects {
        let status = f.is_active(object.clone()).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::NotFound | Code::InvalidArgument),
            "{status:?}"
        );
        assert!(status.message().len() < 200, "error messages stay short");
        let request = GetMetricsRequest {
            scaled_object_ref: Some(object),
            metric_name: long.clone(),
        };
        assert!(f.client.get_metrics(request).await.is_err());
    }
    let request = GetMetricsRequest {
        scaled_object_ref: None,
        metric_name: "concurrency".into(),
    };
    let status = f.client.get_metrics(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let garbage_name = f.metric("echo", "s-9-\u{0}").await.unwrap_err();
    assert_eq!(garbage_name.code(), Code::NotFound);

    assert!(!f.is_active(named("echo")).await.unwrap(), "still serving");
}

#[tokio::test]
async fn a_stream_ends_when_its_client_goes_away() {
    let mut f = Fixture::start().await;
    let mut first = f.stream(named("echo")).await;
    let mut second = f.stream(named("echo")).await;
    next_answer(&mut first).await;
    next_answer(&mut second).await;
    assert_eq!(f.metrics.keda_streams.get(), 2);

    drop(first);
    let metrics = Arc::clone(&f.metrics);
    until("the dropped stream to end", || {
        metrics.keda_streams.get() == 1
    })
    .await;

    // The other one still works.
    f.wake("echo");
    assert!(next_answer(&mut second).await);
    drop(second);
    drop(f.client);
    drop(f.channel);
    until("the last stream to end", || metrics.keda_streams.get() == 0).await;
}

#[tokio::test]
async fn methods_kedas_client_may_try_and_rouse_does_not_serve_are_unimplemented() {
    let f = Fixture::start().await;
    let mut grpc = tonic::client::Grpc::new(f.channel.clone());
    grpc.ready().await.expect("channel ready");
    let path =
        http::uri::PathAndQuery::from_static("/externalscaler.ExternalScaler/StreamMetricSpec");
    let codec: tonic_prost::ProstCodec<ScaledObjectRef, GetMetricSpecResponse> =
        tonic_prost::ProstCodec::default();
    let status = grpc
        .server_streaming(Request::new(named("echo")), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn every_call_is_counted_by_method() {
    let mut f = Fixture::start().await;
    f.is_active(named("echo")).await.unwrap();
    f.is_active(named("nosuch")).await.unwrap_err();
    f.metric("echo", "rps").await.unwrap();
    let count = |method| {
        f.metrics
            .keda_requests
            .get_or_create(&MethodLabel { method })
            .get()
    };
    assert_eq!(count("IsActive"), 2);
    assert_eq!(count("GetMetrics"), 1);
    assert_eq!(count("GetMetricSpec"), 0);
}

// ---- pure parts ----------------------------------------------------------

#[test]
fn activity_is_rouses_to_zero_rule() {
    let t0 = Instant::now();
    let idle_after = Duration::from_secs(60);
    let quiet = Reading {
        in_flight: 0,
        held: 0,
        arrival_rate: 0.0,
        last_activity: None,
    };
    assert!(!quiet.activity(idle_after, t0).active, "never seen");

    let recent = Reading {
        last_activity: Some(t0),
        ..quiet
    };
    let activity = recent.activity(idle_after, t0 + Duration::from_secs(59));
    assert_eq!(
        activity.until,
        Some(t0 + idle_after),
        "turns at the deadline"
    );
    assert!(activity.active);
    assert!(!recent.activity(idle_after, t0 + idle_after).active);

    let busy = Reading { held: 1, ..recent };
    let activity = busy.activity(idle_after, t0 + Duration::from_secs(3600));
    assert_eq!(
        activity,
        Activity {
            active: true,
            until: None
        }
    );
}

#[test]
fn metric_names_are_read_leniently_and_nothing_else_matches() {
    for name in [
        "concurrency",
        "s0-concurrency",
        "s12-Concurrency",
        " CONCURRENCY ",
    ] {
        assert_eq!(Metric::parse(name), Some(Metric::Concurrency), "{name}");
    }
    assert_eq!(Metric::parse("s3-rps"), Some(Metric::Rps));
    for name in [
        "",
        "s-rps",
        "sx-rps",
        "x0-rps",
        "s0-",
        "s0-s1-rps",
        "rps2",
        "🦀-rps",
    ] {
        assert_eq!(Metric::parse(name), None, "{name}");
    }
}

#[test]
fn targets_below_one_still_give_old_kedas_an_integer_target() {
    let spec = metric_spec(Metric::Concurrency, 0.3);
    assert_eq!((spec.target_size, spec.target_size_float), (1, 0.3));
}

#[test]
fn long_names_are_cut_in_errors() {
    assert_eq!(shortened("echo"), "echo");
    let cut = shortened(&"é".repeat(100));
    assert_eq!(cut.chars().count(), NAME_IN_ERRORS + 1);
    assert!(cut.ends_with('…'));
}
