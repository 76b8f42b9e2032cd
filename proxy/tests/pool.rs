//! The upstream connection pool against real sockets on 127.0.0.1: a
//! released connection is reused, an unreleased one never is, idle ones are
//! closed after the idle timeout, and one the replica closed is skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use rouse_proxy::{OutBody, Pool, PoolSettings, Pooled};

mod common;
use common::raw_replica;

fn pool(idle_timeout: Duration) -> Arc<Pool> {
    Pool::new(PoolSettings {
        connect_timeout: Duration::from_secs(2),
        idle_timeout,
        max_idle_per_endpoint: 8,
    })
}

/// One GET on a pooled connection, its body read to the end.
async fn exchange(pool: &Arc<Pool>, authority: &Authority) -> Pooled {
    let mut conn = pool.get(authority).await.expect("connect");
    let request = Request::builder()
        .uri("/")
        .header("host", authority.as_str())
        .body(OutBody::Empty)
        .expect("request");
    let response = conn.sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body");
    assert_eq!(body.to_bytes(), "ok");
    conn
}

/// Polls `done` every 10 ms for at most 5 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn released_connection_is_reused_and_unreleased_one_is_not() {
    let replica = raw_replica(false).await;
    let pool = pool(Duration::from_secs(60));
    let first = exchange(&pool, &replica.authority).await;
    assert!(!first.reused);
    first.release();
    assert_eq!(pool.idle_count(), 1);

    let second = exchange(&pool, &replica.authority).await;
    assert!(second.reused, "the released connection was taken again");
    assert_eq!(replica.accepted.load(Ordering::SeqCst), 1);
    // Dropped, not released (as for a response abandoned mid-body): gone.
    drop(second);
    assert_eq!(pool.idle_count(), 0);
    eventually("the replica sees the dropped connection closed", || {
        replica.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    let third = exchange(&pool, &replica.authority).await;
    assert!(!third.reused);
    assert_eq!(replica.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let replica = raw_replica(false).await;
    let kept = pool(Duration::from_secs(60));
    exchange(&kept, &replica.authority).await.release();
    kept.sweep();
    assert_eq!(kept.idle_count(), 1, "well within the idle timeout");

    let short = pool(Duration::from_millis(50));
    exchange(&short, &replica.authority).await.release();
    eventually("the sweep drops the idle connection", || {
        short.sweep();
        short.idle_count() == 0
    })
    .await;
    eventually("the replica sees it closed", || {
        replica.ended.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(kept.idle_count(), 1);
}

#[tokio::test]
async fn connection_the_replica_closed_is_skipped() {
    let replica = raw_replica(true).await;
    let pool = pool(Duration::from_secs(60));
    exchange(&pool, &replica.authority).await.release();
    eventually("the pool notices the replica closed it", || {
        pool.sweep();
        pool.idle_count() == 0
    })
    .await;
    let again = exchange(&pool, &replica.authority).await;
    assert!(!again.reused);
    assert_eq!(replica.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let authority: Authority = listener
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("authority");
    drop(listener);
    let pool = pool(Duration::from_secs(60));
    assert!(pool.get(&authority).await.is_err());
    assert_eq!(pool.idle_count(), 0);
}
