//! The per-service status served at `/api/v1/services`.
//!
//! Each service loop writes its own entry after every reconcile; the admin
//! server only reads. A `DashMap` keeps writers of different services from
//! contending with each other or with readers.

use dashmap::DashMap;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReplicaStatus {
    pub id: String,
    pub addr: String,
    /// `starting`, `ready`, `draining` or `stopping`.
    pub state: &'static str,
    /// When the controller asked for it (or adopted it), µs since the epoch.
    pub started_at_us: u64,
    /// When its readiness probe first passed; `null` while starting and for
    /// adopted replicas that were already ready.
    pub ready_at_us: Option<u64>,
    /// Cores in use, for services that scale on `cpu` or `memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<f64>,
    /// Memory in use, for services that scale on `cpu` or `memory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The pool it runs in, for a service with `backend.pools`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// One scaling signal: its target and where it stands, per replica.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricStatus {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub target: f64,
    /// `null` while there is nothing to measure (no ready replica, no
    /// sample yet).
    pub current: Option<f64>,
}

/// One pool of a service with `backend.pools`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolStatus {
    pub name: String,
    /// `process`, `docker` or `kubernetes`.
    pub backend: &'static str,
    pub max_replicas: u32,
    /// The service's replicas in this pool, in any state.
    pub replicas: u32,
    pub ready: u32,
    /// Why the pool last failed to start or list replicas; `null` once it
    /// does again. A failed pool is skipped (its share goes to the next)
    /// and tried again after a backoff.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScaleEvent {
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub backend: &'static str,
    pub desired: u32,
    pub ready: u32,
    /// The signals it scales on (`scaling.metrics`, or the shorthands).
    pub metrics: Vec<MetricStatus>,
    pub replicas: Vec<ReplicaStatus>,
    pub held: u64,
    pub in_flight: u64,
    /// Requests per second arriving, summed over the live proxies' last
    /// report intervals.
    pub rps: f64,
    /// Proxies whose reports are live.
    pub proxies: usize,
    pub last_scale: Option<ScaleEvent>,
    /// The replica count fixed by `rouse scale --pin`, while pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<u32>,
    /// The latest backend error, cleared when a replica next becomes ready.
    pub last_error: Option<String>,
    /// The pools in priority order; left out for a service without them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolStatus>,
}

/// All services' status, by name.
pub type StatusBoard = DashMap<String, ServiceStatus>;

#[derive(Serialize)]
struct Listing<'a> {
    services: Vec<&'a ServiceStatus>,
}

/// `{"services": [...]}` sorted by name.
pub fn render(board: &StatusBoard) -> String {
    let entries: Vec<ServiceStatus> = board.iter().map(|e| e.value().clone()).collect();
    let mut services: Vec<&ServiceStatus> = entries.iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    serde_json::to_string_pretty(&Listing { services }).unwrap_or_else(|_| "{}".into())
}
