//! gRPC through rouse: `backend.protocol: h2c` forwards over HTTP/2 to a
//! real gRPC server (`rouse-echo --grpc`), called by a real tonic client
//! over the proxy's plaintext port (h2c with prior knowledge).
//!
//! What gRPC needs of a proxy is what these tests look at: HTTP/2 both
//! ways, `te: trailers` reaching the server, every streamed message in
//! order, and the status, which lives in the response trailers, arriving
//! intact, OK or not. And a plain HTTP/1.1 client of the same service is
//! translated to HTTP/2 on the way to the replica.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rouse_e2e::grpc::{self, CountRequest, HelloRequest};
use rouse_e2e::{Cluster, Service};
use tonic::Code;

const HOST: &str = "grpc.localhost";
/// Generous: a cold start on a loaded 2-core machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const MESSAGES: u32 = 5;
/// Bound of every wait on a condition.
const WAIT: Duration = Duration::from_secs(30);

fn grpc_service() -> Service {
    Service::new("grpc", HOST)
        .echo_args(&["--grpc"])
        .protocol("h2c")
}

/// A server-streaming call to the service at zero is held until a replica
/// is ready (cold start), then every message arrives in order and the call
/// ends with status OK; a unary call after it is warm; a call the server
/// fails (unary: status in a trailers-only answer; streaming: status in
/// real trailers after messages) shows the client that exact code and
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_rouse_with_their_status() {
    let cluster = Cluster::start(vec![grpc_service()]).await;
    assert!(
        cluster.replica_pids().is_empty(),
        "a service with min_replicas 0 must not run a replica before any call"
    );
    let mut client = match grpc::client(cluster.proxy_addr(0), HOST, CALL_TIMEOUT) {
        Ok(client) => client,
        Err(e) => cluster.fail(&format!("gRPC client: {e:#}")).await,
    };

    // Cold: server streaming.
    let request = CountRequest {
        count: MESSAGES,
        interval_ms: 50,
        ..Default::default()
    };
    let response = match client.count(request).await {
        Ok(response) => response,
        Err(status) => cluster.fail(&format!("cold Count call: {status:?}")).await,
    };
    assert_eq!(
        response
            .metadata()
            .get("x-rouse-cold-start")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "the first call must have been held for a cold start: {:?}",
        response.metadata()
    );
    let mut stream = response.into_inner();
    let mut seqs = Vec::new();
    let mut replica = None;
    loop {
        match stream.message().await {
            Ok(Some(reply)) => {
                seqs.push(reply.seq);
                replica = Some(reply.replica);
            }
            // The end of the stream with status OK, read from the trailers.
            Ok(None) => break,
            Err(status) => {
                cluster
                    .fail(&format!("stream ended with {status:?} after {seqs:?}"))
                    .await
            }
        }
        assert!(
            seqs.len() <= MESSAGES as usize,
            "more messages than asked: {seqs:?}"
        );
    }
    assert_eq!(
        seqs,
        (0..MESSAGES).collect::<Vec<_>>(),
        "streamed messages in order"
    );
    let replica = replica.unwrap_or_default();
    assert!(!replica.is_empty(), "replies name their replica");

    // Warm: unary.
    let hello = match client.hello(HelloRequest::default()).await {
        Ok(hello) => hello,
        Err(status) => cluster.fail(&format!("warm Hello call: {status:?}")).await,
    };
    assert!(
        hello.metadata().get("x-rouse-cold-start").is_none(),
        "a call to a ready service must not be marked cold: {:?}",
        hello.metadata()
    );
    assert_eq!(
        hello.into_inner().replica,
        replica,
        "the one replica answers"
    );

    // A failing unary call: the status the server chose, exactly.
    let failing = HelloRequest {
        fail_code: Code::NotFound as u32,
        fail_message: "no such greeting".to_string(),
    };
    match client.hello(failing).await {
        Ok(reply) => {
            cluster
                .fail(&format!("Hello asked to fail answered {reply:?}"))
                .await
        }
        Err(status) => {
            assert_eq!(status.code(), Code::NotFound, "status: {status:?}");
            assert_eq!(status.message(), "no such greeting", "status: {status:?}");
        }
    }

    // A stream that fails after its messages: the status is in trailers.
    let failing = CountRequest {
        count: 2,
        interval_ms: 10,
        fail_code: Code::ResourceExhausted as u32,
        fail_message: "out of numbers".to_string(),
    };
    let mut stream = match client.count(failing).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            cluster
                .fail(&format!("failing Count call: {status:?}"))
                .await
        }
    };
    let mut got = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(reply)) => got.push(reply.seq),
            Ok(None) => {
                cluster
                    .fail(&format!("stream asked to fail ended OK after {got:?}"))
                    .await
            }
            Err(status) => break status,
        }
        assert!(got.len() <= 2, "more messages than asked: {got:?}");
    };
    assert_eq!(got, vec![0, 1], "messages before the failure");
    assert_eq!(status.code(), Code::ResourceExhausted, "status: {status:?}");
    assert_eq!(status.message(), "out of numbers", "status: {status:?}");

    // A stream counts as in flight (so a draining replica is not stopped
    // under it) until it ends, here when the client cancels it.
    let in_flight = || async { cluster.proxy_metric(0, "rouse_in_flight", "grpc").await };
    cluster
        .wait_until("the finished calls are counted out", WAIT, || async {
            in_flight().await == Some(0.0)
        })
        .await;
    let long = CountRequest {
        count: 2,
        interval_ms: 60_000,
        ..Default::default()
    };
    let mut stream = match client.count(long).await {
        Ok(response) => response.into_inner(),
        Err(status) => cluster.fail(&format!("long Count call: {status:?}")).await,
    };
    match stream.message().await {
        Ok(Some(reply)) => assert_eq!(reply.seq, 0),
        other => {
            cluster
                .fail(&format!("first message of the long stream: {other:?}"))
                .await
        }
    }
    cluster
        .wait_until("the open stream is in flight", WAIT, || async {
            in_flight().await == Some(1.0)
        })
        .await;
    drop(stream);
    cluster
        .wait_until("the cancelled stream is counted out", WAIT, || async {
            in_flight().await == Some(0.0)
        })
        .await;
}

/// An HTTP/1.1 client of an `h2c` service: the proxy speaks HTTP/2 to the
/// replica (which says so in `x-echo-version`) and HTTP/1.1 back, Host
/// preserved; POST bodies stream through the translation both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_is_translated_for_an_h2c_service() {
    let cluster = Cluster::start(vec![grpc_service()]).await;
    let cold = cluster.get_ok(HOST, "/").await;
    assert!(cold.text().starts_with("handled by"), "response: {cold}");
    assert!(
        cold.cold_start(),
        "the first request wakes the service: {cold}"
    );
    assert_eq!(
        cold.header("x-echo-version"),
        Some("HTTP/2"),
        "the replica must be spoken to in HTTP/2: {cold}"
    );
    assert_eq!(
        cold.header("x-echo-host"),
        Some(HOST),
        "Host preserved: {cold}"
    );

    let body = "a body through HTTP/1.1 to HTTP/2 and back ".repeat(2000);
    let client = rouse_e2e::http::client();
    let addr = cluster.proxy_addr(0);
    let sent = Some(reqwest::Body::from(body.clone()));
    let echoed =
        match rouse_e2e::request(&client, reqwest::Method::POST, addr, HOST, "/echo", sent).await {
            Ok(resp) => resp,
            Err(e) => {
                cluster
                    .fail(&format!("POST through the proxy: {e:#}"))
                    .await
            }
        };
    assert_eq!(echoed.status, 200, "POST response: {echoed}");
    assert_eq!(echoed.header("x-echo-version"), Some("HTTP/2"), "{echoed}");
    assert!(echoed.text() == body, "the POST body came back changed");
}

/// Scale-to-zero waits for an open stream: with `scale_to_zero_after: 2s`
/// and a stream several times that long, the call ends with status OK, and
/// the scale to zero is decided only after it ended (it counted as in
/// flight to its last frame, in the load reports too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_waits_for_an_open_stream() {
    let cluster = Cluster::start(vec![grpc_service()
        .scale_to_zero_after("2s")
        .drain_timeout("5s")])
    .await;
    let mut client = match grpc::client(cluster.proxy_addr(0), HOST, CALL_TIMEOUT) {
        Ok(client) => client,
        Err(e) => cluster.fail(&format!("gRPC client: {e:#}")).await,
    };
    let long = CountRequest {
        count: 7,
        interval_ms: 1000,
        ..Default::default()
    };
    let mut stream = match client.count(long).await {
        Ok(response) => response.into_inner(),
        Err(status) => cluster.fail(&format!("Count call: {status:?}")).await,
    };
    let mut seqs = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => seqs.push(reply.seq),
            Ok(None) => break,
            Err(status) => {
                cluster
                    .fail(&format!("the stream was cut after {seqs:?}: {status:?}"))
                    .await
            }
        }
        assert!(seqs.len() <= 7, "more messages than asked: {seqs:?}");
    }
    let ended_ms = now_ms();
    assert_eq!(seqs, (0..7).collect::<Vec<_>>());

    let status = cluster
        .wait_status("grpc", "scaled to zero after the stream", WAIT, |s| {
            let to = s.last_scale.as_ref().and_then(|v| v.get("to")?.as_u64());
            s.ready == 0 && to == Some(0)
        })
        .await;
    let decided_ms = status
        .last_scale
        .as_ref()
        .and_then(|v| v.get("at_ms")?.as_u64())
        .unwrap_or_default();
    // The decision needs 2 s without anything in flight, so it follows the
    // stream's end; were the stream counted out early it would come seconds
    // before it. 1 s of slack for this clock read lagging the real end.
    assert!(
        decided_ms + 1000 >= ended_ms,
        "scaled to zero at {decided_ms} ms, before the stream ended at {ended_ms} ms"
    );
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
