//! The controller's status API (`GET /api/v1/services`) as the benchmarks
//! read it: strictly typed (the per-replica timestamps are what they
//! measure with, so a status without them is an error, not a default), and
//! a client that polls it until a service is in the state a measurement
//! waits for.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Path of the controller's status API.
pub(crate) const STATUS_PATH: &str = "/api/v1/services";
/// Interval between two polls while waiting for a service's state.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Time one status API request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /api/v1/services`: `{"services": [...]}`. Fields the benchmarks do
/// not use are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct Listing {
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct ServiceStatus {
    pub name: String,
    pub desired: u32,
    pub ready: u32,
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Requests held by the live proxies, summed (controller's view).
    #[serde(default)]
    pub held: u64,
    /// Requests in flight at the live proxies, summed (controller's view).
    #[serde(default)]
    pub in_flight: u64,
    /// The latest change of the replica count.
    #[serde(default)]
    pub last_scale: Option<ScaleEvent>,
}

/// A change of a service's replica count, as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct ScaleEvent {
    pub from: u32,
    pub to: u32,
    pub reason: String,
    /// When the controller recorded it, ms since the epoch.
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) struct ReplicaStatus {
    pub id: String,
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub state: String,
    /// When the controller asked the backend for it, µs since the epoch.
    pub started_at_us: u64,
    /// Its first passing readiness probe, µs since the epoch.
    #[serde(default)]
    pub ready_at_us: Option<u64>,
}

impl Listing {
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The service names, comma-separated (`none` when there is none).
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

impl ServiceStatus {
    /// No ready replica and none starting, draining or stopping.
    pub fn is_at_zero(&self) -> bool {
        self.ready == 0 && self.replicas.is_empty()
    }

    pub fn replica(&self, id: &str) -> Option<&ReplicaStatus> {
        self.replicas.iter().find(|r| r.id == id)
    }

    /// One line for "last seen" in an error.
    pub fn describe(&self) -> String {
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("{}:{}", r.id, r.state))
            .collect();
        format!(
            "ready={} desired={} in_flight={} held={} replicas=[{}]",
            self.ready,
            self.desired,
            self.in_flight,
            self.held,
            replicas.join(", ")
        )
    }
}

/// Parses the body of `/api/v1/services`.
pub(crate) fn parse_status(body: &[u8]) -> anyhow::Result<Listing> {
    serde_json::from_slice(body).context("parsing the controller's /api/v1/services JSON")
}

/// Client of the controller's status API.
#[derive(Debug, Clone)]
pub(crate) struct Controller {
    addr: SocketAddr,
}

impl Controller {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// One `GET /api/v1/services`, parsed.
    pub async fn status(&self) -> anyhow::Result<Listing> {
        let (status, body) = rouse_stack::http_get(self.addr, STATUS_PATH, STATUS_TIMEOUT)
            .await
            .with_context(|| format!("asking the controller at {} for its status", self.addr))?;
        if status != 200 {
            bail!(
                "controller at {} answered {status} to GET {STATUS_PATH}: {}",
                self.addr,
                body.trim()
            );
        }
        parse_status(body.as_bytes())
    }

    /// The status of `service`; an error names the services there are.
    pub async fn service(&self, service: &str) -> anyhow::Result<ServiceStatus> {
        let listing = self.status().await?;
        match listing.service(service) {
            Some(status) => Ok(status.clone()),
            None => bail!(
                "the controller at {} has no service {service:?} (it has: {})",
                self.addr,
                listing.names()
            ),
        }
    }

    /// Polls every [`POLL_INTERVAL`] until `service` is `what` (`done`);
    /// returns how long that took. Transient errors are retried within
    /// `limit`; the last status or error is reported if time runs out.
    pub async fn wait_for(
        &self,
        service: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&ServiceStatus) -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let last = match self.service(service).await {
                Ok(status) if done(&status) => return Ok(start.elapsed()),
                Ok(status) => status.describe(),
                Err(err) => format!("{err:#}"),
            };
            if start.elapsed() >= limit {
                bail!(
                    "service {service:?} did not {what} within {} (last seen: {last})",
                    humantime::format_duration(limit)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "services": [
        {
          "name": "api",
          "backend": "docker",
          "desired": 2,
          "ready": 2,
          "replicas": [],
          "held": 0, "in_flight": 3, "proxies": 1,
          "last_scale": null, "last_error": null
        },
        {
          "name": "echo",
          "backend": "process",
          "desired": 1,
          "ready": 1,
          "replicas": [
            {"id": "echo-7", "addr": "127.0.0.1:40001", "state": "ready",
             "started_at_us": 1700000000000000, "ready_at_us": 1700000000012500},
            {"id": "echo-8", "addr": "127.0.0.1:40002", "state": "starting",
             "started_at_us": 1700000000020000, "ready_at_us": null}
          ],
          "held": 1, "in_flight": 0, "proxies": 1,
          "last_scale": {"from": 0, "to": 1, "reason": "wake", "at_ms": 1700000000000},
          "last_error": null
        }
      ]
    }"#;

    #[test]
    fn parses_the_status_api() {
        let listing = parse_status(SAMPLE.as_bytes()).expect("sample parses");
        assert_eq!(listing.services.len(), 2);
        let echo = listing.service("echo").expect("echo present");
        assert_eq!((echo.desired, echo.ready), (1, 1));
        assert!(!echo.is_at_zero());
        let ready = echo.replica("echo-7").expect("echo-7");
        assert_eq!(ready.addr, "127.0.0.1:40001");
        assert_eq!(ready.state, "ready");
        assert_eq!(ready.started_at_us, 1_700_000_000_000_000);
        assert_eq!(ready.ready_at_us, Some(1_700_000_000_012_500));
        assert_eq!(echo.replica("echo-8").and_then(|r| r.ready_at_us), None);
        assert!(echo.replica("nope").is_none());
        assert!(listing.service("missing").is_none());
        assert_eq!(listing.names(), "api, echo");
    }

    #[test]
    fn zero_means_nothing_ready_and_no_replica_at_all() {
        let mut listing = parse_status(SAMPLE.as_bytes()).expect("sample parses");
        let echo = &mut listing.services[1];
        echo.ready = 0;
        assert!(!echo.is_at_zero(), "a starting replica is not zero");
        echo.replicas.clear();
        assert!(echo.is_at_zero());
        let json = r#"{"services":[{"name":"x","desired":0,"ready":0}]}"#;
        let listing = parse_status(json.as_bytes()).expect("replicas may be absent");
        assert!(listing.services[0].is_at_zero());
    }

    #[test]
    fn rejects_malformed_status() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"services":[{"name":"x"}]}"#,
            r#"{"services":[{"name":"x","desired":0,"ready":0,"replicas":[{"id":"r"}]}]}"#,
            r#"{"services":[{"name":"x","desired":-1,"ready":0}]}"#,
        ] {
            let err = parse_status(bad.as_bytes()).expect_err(bad);
            assert!(format!("{err:#}").contains("/api/v1/services"), "{err:#}");
        }
    }
}
