//! A replica written against raw sockets, for tests that need behaviour a
//! well-behaved HTTP server would not show. Shared by several test files,
//! not all of which read every field.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal HTTP/1.1 replica: answers every request head with a 2-byte
/// body as soon as the head has arrived, whether or not a request body
/// follows (which it reads and ignores; a body must not contain an empty
/// line). With `close_after_response` it closes the connection right after
/// the response, without announcing it (as a replica's idle timeout does).
/// Counts accepted and ended connections.
pub struct RawReplica {
    pub authority: Authority,
    pub accepted: Arc<AtomicUsize>,
    pub ended: Arc<AtomicUsize>,
}

pub async fn raw_replica(close_after_response: bool) -> RawReplica {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let authority: Authority = listener
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("authority");
    let accepted = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (accepts, ends) = (Arc::clone(&accepted), Arc::clone(&ended));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepts.fetch_add(1, Ordering::SeqCst);
            let ends = Arc::clone(&ends);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(response).await.is_err() {
                            break;
                        }
                    }
                    if close_after_response {
                        break;
                    }
                }
                drop(stream);
                ends.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    RawReplica {
        authority,
        accepted,
        ended,
    }
}
