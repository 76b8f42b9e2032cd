//! Acceptance criterion 4: a request body streamed slowly to a cold service
//! arrives complete and unaltered.
//!
//! The proxy holds a cold request without reading it (DESIGN.md, data flow
//! 3), so the client is still sending the body while the replica starts;
//! this proves that nothing of the body is lost, reordered or truncated
//! across the hold and the forward. rouse-echo echoes POST bodies back.

use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use reqwest::Method;
use rouse_e2e::{request, Cluster, Service};

const HOST: &str = "stream.localhost";
const CHUNKS: usize = 10;
const CHUNK_LEN: usize = 10 * 1024;

/// Criterion 4: 10 chunks of 10 KiB, 100 ms apart, POSTed to a service at
/// zero → 200 with the identical 100 KiB body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_streamed_body_to_a_cold_service_is_echoed_whole() {
    let cluster = Cluster::start(vec![Service::new("stream", HOST)]).await;

    // Every chunk differs, so a lost, doubled or reordered chunk shows.
    let chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|i| {
            let line = format!("chunk {i:02} of rouse e2e streaming body|");
            let bytes: Vec<u8> = line.bytes().cycle().take(CHUNK_LEN).collect();
            Bytes::from(bytes)
        })
        .collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();

    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let sender = tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(Ok(chunk)).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    });

    let resp = request(
        &cluster.client,
        Method::POST,
        cluster.proxy_addr(0),
        HOST,
        "/upload",
        Some(reqwest::Body::wrap_stream(rx)),
    )
    .await;
    let resp = match resp {
        Ok(resp) => resp,
        Err(e) => cluster.fail(&format!("streamed POST failed: {e:#}")).await,
    };
    assert!(
        sender.await.unwrap(),
        "the proxy stopped reading the body early"
    );
    assert_eq!(resp.status, 200, "streamed POST: {resp}");
    assert!(
        resp.cold_start(),
        "the service was at zero, so the POST was held: {resp}"
    );
    assert_eq!(
        resp.body.len(),
        expected.len(),
        "echoed body length differs"
    );
    assert!(
        resp.body.as_ref() == expected.as_slice(),
        "echoed body differs from what was sent"
    );
}
