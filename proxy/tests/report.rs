//! The proxy's load reports against a real nats-server (started by the e2e
//! harness on 127.0.0.1): an idle service that gets traffic, and a load step
//! on a busy one, are reported at once, not at the next periodic report.
//! That is what lets the controller act on a step within milliseconds.
//!
//! The report interval here is 60 s; every wait is bounded far below it, so
//! a report that arrives proves the immediate path. Requests are held in
//! flight at the replica by a gate the test opens at the end (no sleeps).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rouse_e2e::nats::NatsServer;
use rouse_nats::config::Config;
use rouse_nats::messages::{self, Endpoint, EndpointSet, EndpointState, Load, VERSION};
use rouse_nats::Subjects;
use rouse_proxy::serve;
use rouse_proxy::Forwarder;
use rouse_proxy::Proxy;
use rouse_proxy::ProxyMetrics;
use rouse_proxy::Reporter;
use rouse_proxy::RequestLimits;
use rouse_proxy::Routes;
use rouse_proxy::Service;
use tokio::net::TcpListener;
use tokio::sync::watch;

const CONFIG: &str = "
proxy:
  report_interval: 60s
services:
  - name: app
    hosts: [app.test]
    backend: {process: {command: [x]}}
";

/// A replica that answers only once `open` turns true.
async fn gated_replica(open: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let open = open.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let mut open = open.clone();
                    async move {
                        let _ = open.wait_for(|open| *open).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The next load report of `app`, waiting at most 20 s (a third of the
/// report interval).
async fn next_load(reports: &mut async_nats::Subscriber) -> Load {
    let message = tokio::time::timeout(Duration::from_secs(20), reports.next())
        .await
        .expect("a load report well before the 60 s interval")
        .expect("subscription open");
    messages::decode(&message.payload).expect("a valid load report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_on_an_idle_service_and_a_surge_are_reported_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start_in(dir.path()).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let subjects = Subjects::new(String::from("rouse"));
    let mut reports = client
        .subscribe(subjects.load("app"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let config = Config::parse(std::path::Path::new("test.yaml"), CONFIG).expect("config");
    let metrics = Arc::new(ProxyMetrics::new());
    let service = Arc::new(Service::new(
        &config.services[0],
        config.proxy.response_timeout,
        metrics.for_service("app"),
    ));
    let (open_tx, open_rx) = watch::channel(false);
    let replica = gated_replica(open_rx).await;
    let set = EndpointSet {
        v: VERSION,
        generation: 1,
        endpoints: vec![Endpoint {
            id: "r0".into(),
            addr: replica.to_string(),
            state: EndpointState::Ready,
            pool_rank: None,
        }],
    };
    assert!(service.apply(&set).is_empty());

    let mut heartbeats = client
        .subscribe(subjects.report("test-proxy"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let (signals, signal_rx) = rouse_proxy::Signals::channel();
    let reporter = Reporter::new(
        client.clone(),
        subjects.clone(),
        "test-proxy".into(),
        config.proxy.report_interval,
        Arc::new(std::sync::atomic::AtomicU64::new(0)),
    );
    tokio::spawn(reporter.run(signal_rx));
    let mut routes = Routes::default();
    routes.insert("app.test", "/", Arc::clone(&service));
    let proxy = Arc::new(Proxy {
        routes: Arc::new(ArcSwap::from_pointee(routes)),
        forwarder: Forwarder::new(&config.proxy),
        signals,
        metrics,
        limits: RequestLimits::from(&config.proxy.limits),
        observers: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = listener.local_addr().expect("addr");
    let proxy_config = config.proxy.clone();
    tokio::spawn(async move {
        serve(listener, proxy, &proxy_config, std::future::pending()).await;
    });

    // The first periodic report (at start): a heartbeat, the idle service
    // left out of it.
    let message = tokio::time::timeout(Duration::from_secs(20), heartbeats.next())
        .await
        .expect("the first report at start")
        .expect("subscription open");
    let first: messages::Report = messages::decode(&message.payload).expect("a report");
    assert!(first.services.is_empty(), "{first:?}");

    let send = move || {
        tokio::spawn(async move {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let request = Request::get(format!("http://{proxy_addr}/"))
                .header("host", "app.test")
                .body(Empty::new())
                .expect("request");
            let response = client.request(request).await.expect("proxy answers");
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        })
    };

    // One request at the idle service: reported at once.
    let mut pending = vec![send()];
    let busy = next_load(&mut reports).await;
    assert_eq!(busy.arrivals, 1, "{busy:?}");

    // A step to 8 in flight (from the 0–1 just reported): reported at once,
    // showing the step.
    pending.extend((0..7).map(|_| send()));
    let surge = loop {
        let load = next_load(&mut reports).await;
        if load.in_flight >= 4 {
            break load;
        }
    };
    assert!(surge.seq > busy.seq);

    open_tx.send(true).expect("open the gate");
    for request in pending {
        assert_eq!(request.await.expect("task"), StatusCode::OK);
    }
}
