//! The per-service status served at `/api/v1/services`, and its recent
//! history served at `/api/v1/history` (the status page's chart and events).
//!
//! Each service loop writes its own entry after every reconcile; the admin
//! server only reads. A `DashMap` keeps writers of different services from
//! contending with each other or with readers. Writing a status also
//! samples its replica counts into that service's bounded ring (see
//! [`history`]), so the history costs the loop one short map write a pass.

mod history;

use std::sync::Mutex;

use dashmap::DashMap;
use serde::Serialize;

use history::{Events, Sample, Samples, ServiceEvent};

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

/// All services' status, by name, and their last hour.
#[derive(Debug, Default)]
pub struct StatusBoard {
    services: DashMap<String, ServiceStatus>,
    samples: DashMap<String, Samples>,
    /// Written only on a scale event, read by `/api/v1/history`.
    events: Mutex<Events>,
}

impl StatusBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the status of `name` and samples its replica counts now.
    pub fn insert(&self, name: String, status: ServiceStatus) {
        self.insert_at(rouse_nats::messages::now_ms(), name, status);
    }

    fn insert_at(&self, now_ms: u64, name: String, status: ServiceStatus) {
        let (desired, ready) = (status.desired, status.ready);
        self.samples
            .entry(name.clone())
            .or_default()
            .record(now_ms, desired, ready);
        self.services.insert(name, status);
    }

    /// Remembers a scale event of `service` for the event list.
    pub fn scaled(&self, service: &str, event: ScaleEvent) {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(service, event);
    }

    /// Forgets a removed service: its status and its samples (its scale
    /// events stay in the recent list).
    pub fn remove(&self, name: &str) {
        self.services.remove(name);
        self.samples.remove(name);
    }

    /// The status of `name`, if its loop has written one.
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<ServiceStatus> {
        self.services.get(name).map(|entry| entry.value().clone())
    }

    fn sorted(&self) -> Vec<ServiceStatus> {
        let mut services: Vec<ServiceStatus> =
            self.services.iter().map(|e| e.value().clone()).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
    }

    fn history_at(&self, now_ms: u64) -> History {
        let mut services: Vec<ServiceHistory> = self
            .samples
            .iter()
            .map(|entry| ServiceHistory {
                name: entry.key().clone(),
                samples: entry.value().within(now_ms),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let events = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .newest_first();
        History {
            now_ms,
            window_ms: history::WINDOW_MS,
            sample_every_ms: history::SAMPLE_EVERY_MS,
            services,
            events,
        }
    }
}

#[derive(Serialize)]
struct Listing<'a> {
    services: &'a [ServiceStatus],
}

/// `{"services": [...]}` sorted by name.
pub fn render(board: &StatusBoard) -> String {
    let services = board.sorted();
    serde_json::to_string_pretty(&Listing {
        services: &services,
    })
    .unwrap_or_else(|_| "{}".into())
}

/// `/api/v1/history`: the replica counts of the last hour, per service.
#[derive(Debug, Serialize)]
struct History {
    /// The controller's clock when answering: where the chart ends.
    now_ms: u64,
    window_ms: u64,
    sample_every_ms: u64,
    services: Vec<ServiceHistory>,
    /// The last scale events, newest first.
    events: Vec<ServiceEvent>,
}

#[derive(Debug, Serialize)]
struct ServiceHistory {
    name: String,
    /// Oldest first; a sample on every change, else one per `sample_every_ms`.
    samples: Vec<Sample>,
}

/// `{"now_ms", "window_ms", "sample_every_ms", "services": [{name, samples:
/// [{at_ms, desired, ready}]}], "events": [{service, from, to, reason, at_ms}]}`.
pub fn render_history(board: &StatusBoard) -> String {
    let history = board.history_at(rouse_nats::messages::now_ms());
    serde_json::to_string(&history).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, desired: u32, ready: u32) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            backend: "process",
            desired,
            ready,
            metrics: Vec::new(),
            replicas: Vec::new(),
            held: 0,
            in_flight: 0,
            rps: 0.0,
            proxies: 0,
            last_scale: None,
            pinned: None,
            last_error: None,
            pools: Vec::new(),
        }
    }

    #[test]
    fn writing_a_status_samples_its_counts() {
        let board = StatusBoard::new();
        let t0 = 1_700_000_000_000;
        board.insert_at(t0, "b".into(), status("b", 0, 0));
        board.insert_at(t0 + 500, "a".into(), status("a", 1, 0));
        board.insert_at(t0 + 900, "a".into(), status("a", 1, 1));
        board.scaled(
            "a",
            ScaleEvent {
                from: 0,
                to: 1,
                reason: "wake".into(),
                at_ms: t0 + 400,
            },
        );
        let history = serde_json::to_value(board.history_at(t0 + 1_000)).unwrap_or_default();
        assert_eq!(history["now_ms"], t0 + 1_000);
        assert_eq!(history["services"][0]["name"], "a");
        assert_eq!(
            history["services"][0]["samples"],
            serde_json::json!([
                {"at_ms": t0 + 500, "desired": 1, "ready": 0},
                {"at_ms": t0 + 900, "desired": 1, "ready": 1},
            ])
        );
        assert_eq!(history["services"][1]["name"], "b");
        assert_eq!(
            history["events"],
            serde_json::json!([{"service": "a", "from": 0, "to": 1, "reason": "wake", "at_ms": t0 + 400}])
        );
        assert_eq!(board.get("a").map(|s| s.ready), Some(1));
    }

    #[test]
    fn an_hour_later_the_history_is_empty_but_the_status_stays() {
        let board = StatusBoard::new();
        let t0 = 1_700_000_000_000;
        board.insert_at(t0, "a".into(), status("a", 1, 1));
        let later =
            serde_json::to_value(board.history_at(t0 + history::WINDOW_MS + 1)).unwrap_or_default();
        assert_eq!(later["services"][0]["samples"], serde_json::json!([]));
        assert!(render(&board).contains("\"a\""));
    }
}
