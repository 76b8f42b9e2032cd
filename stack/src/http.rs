//! The one small HTTP client a stack needs: `GET` an admin endpoint
//! (`/healthz`, `/readyz`, `/api/v1/services`, `/metrics`) on a fresh
//! HTTP/1.1 connection, and reading one sample out of Prometheus text.
//!
//! A fresh connection per request keeps a poll loop from holding sockets
//! between polls and from depending on the runtime that made a client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::header;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proc::Proc;

/// Largest body read (a `/metrics` page of many services fits easily).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Time one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET http://<addr><path>`: the status code and the body as text, all
/// within `limit`.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(limit, get(addr, path))
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {limit:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `GET http://<addr><path>` every [`crate::POLL_INTERVAL`] until it
/// answers 200, failing when `proc` (the process that should answer) exits
/// first or `deadline` passes.
pub async fn wait_http_ok(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
    mut proc: Option<&mut Proc>,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let rounds = deadline.as_millis() / crate::POLL_INTERVAL.as_millis() + 2;
    for _ in 0..rounds {
        if let Some(proc) = proc.as_deref_mut() {
            if let Some(status) = proc.try_exit() {
                let name = proc.name();
                anyhow::bail!("{name} exited ({status}) before http://{addr}{path} answered 200");
            }
        }
        let limit = PROBE_TIMEOUT.min(deadline);
        if let Ok((200, _)) = http_get(addr, path, limit).await {
            return Ok(());
        }
        if start.elapsed() >= deadline {
            break;
        }
        tokio::time::sleep(crate::POLL_INTERVAL).await;
    }
    anyhow::bail!("http://{addr}{path} did not answer 200 within {deadline:?}")
}

/// The value of the first sample of `name` whose labels include
/// `service="<service>"` in Prometheus text `text`.
pub fn metric_value(text: &str, name: &str, service: &str) -> Option<f64> {
    let label = format!("service=\"{service}\"");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(&label))
        })
        .find_map(|line| {
            line.rsplit_once('}')?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metric_samples() {
        let text = "# HELP rouse_held held\n# TYPE rouse_held gauge\n\
                    rouse_held{service=\"a\"} 0\nrouse_held{service=\"slow\"} 2\n\
                    rouse_held_total{service=\"slow\"} 9\n";
        assert_eq!(metric_value(text, "rouse_held", "slow"), Some(2.0));
        assert_eq!(metric_value(text, "rouse_held", "a"), Some(0.0));
        assert_eq!(metric_value(text, "rouse_held", "b"), None);
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error() {
        let addr = crate::free_addr();
        let err = http_get(addr, "/healthz", Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        assert!(format!("{err:#}").contains("/healthz"), "{err:#}");
    }
}
