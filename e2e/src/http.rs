//! HTTP helpers: requests through the proxy (routed by `Host`), the
//! controller's status API; Prometheus text parsing is `rouse-stack`'s.
//!
//! Clients ignore any proxy env (`no_proxy()`), since all traffic is to
//! 127.0.0.1, and every request has an overall timeout so that a hung proxy
//! fails a test instead of hanging it. A `reqwest::Client` drives its pooled
//! connections on the runtime that created it, and every `#[tokio::test]`
//! has its own runtime, so clients are made per test (see
//! [`crate::Cluster::client`]) or per call, never shared statically.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HOST};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

pub use rouse_stack::metric_value;

/// Upper bound of any single request made by the harness.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// A client for 127.0.0.1: no env proxies, bounded request time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

/// A finished response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// A header's value as text (`None` if absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the proxy marked the response as having waited for a cold start.
    pub fn cold_start(&self) -> bool {
        self.header("x-rouse-cold-start")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.text();
        let body: String = body.chars().take(300).collect();
        write!(f, "{} {:?} body={body:?}", self.status, self.headers)
    }
}

/// `method http://<addr><path>` with `Host: <host>` and an optional body.
pub async fn request(
    client: &reqwest::Client,
    method: Method,
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: Option<reqwest::Body>,
) -> anyhow::Result<Resp> {
    let url = format!("http://{addr}{path}");
    let mut req = client.request(method.clone(), &url).header(HOST, host);
    if let Some(body) = body {
        req = req.body(body);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url} (Host: {host})"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading body of {method} {url} (Host: {host})"))?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// `GET http://<proxy_addr><path>` with `Host: <host>`, on a fresh client;
/// panics on a transport error (a status code is never an error here).
pub async fn get(proxy_addr: SocketAddr, host: &str, path: &str) -> Resp {
    request(&client(), Method::GET, proxy_addr, host, path, None)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `GET /api/v1/services` of the controller at `controller_admin`, as JSON
/// (fresh client; see [`services_with`]).
pub async fn services(controller_admin: SocketAddr) -> anyhow::Result<Value> {
    services_with(&client(), controller_admin).await
}

/// `GET /api/v1/services` with a given client.
pub async fn services_with(
    client: &reqwest::Client,
    controller_admin: SocketAddr,
) -> anyhow::Result<Value> {
    let url = format!("http://{controller_admin}/api/v1/services");
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .with_context(|| format!("GET {url} body"))?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
}

/// One replica in the controller's status.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReplicaStatus {
    pub id: String,
    pub addr: String,
    /// `starting`, `ready` or `draining`.
    pub state: String,
}

/// One service in the controller's `GET /api/v1/services`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    pub desired: u64,
    pub ready: u64,
    pub replicas: Vec<ReplicaStatus>,
    pub held: u64,
    pub in_flight: u64,
    pub proxies: u64,
    pub last_scale: Option<Value>,
    pub last_error: Option<String>,
    /// The service's JSON as received.
    #[serde(skip)]
    pub raw: Value,
}

impl ServiceStatus {
    /// The entry called `name` in a `/api/v1/services` document; `None` if it
    /// is missing or does not have the agreed shape.
    pub fn find(doc: &Value, name: &str) -> Option<ServiceStatus> {
        let raw = doc
            .get("services")?
            .as_array()?
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name))?
            .clone();
        let mut status: ServiceStatus = serde_json::from_value(raw.clone()).ok()?;
        status.raw = raw;
        Some(status)
    }

    /// Replica addresses in any state.
    pub fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr.clone()).collect()
    }
}

/// `rouse_controller_leader` of the controller at `admin` (1 leading, 0
/// standing by), if it answers.
pub async fn controller_leader(admin: SocketAddr) -> Option<f64> {
    let url = format!("http://{admin}/metrics");
    let text = client().get(&url).send().await.ok()?.text().await.ok()?;
    rouse_stack::leader_gauge(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_service_status() {
        let doc: Value = serde_json::json!({"services":[{"name":"echo","desired":1,"ready":1,
            "replicas":[{"id":"echo-1","addr":"127.0.0.1:4000","state":"ready"}],
            "held":0,"in_flight":0,"proxies":1,"last_scale":null,"last_error":null}]});
        let s = ServiceStatus::find(&doc, "echo").unwrap();
        assert_eq!((s.desired, s.ready, s.proxies), (1, 1, 1));
        assert_eq!(s.addrs(), vec!["127.0.0.1:4000".to_string()]);
        assert!(ServiceStatus::find(&doc, "other").is_none());
    }
}
