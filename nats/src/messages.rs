//! The JSON messages that cross NATS, each carrying `"v": 1`.
//!
//! Decoding is strict about the version and lenient about additions (unknown
//! fields are ignored) so that a newer peer can add fields without breaking an
//! older one. Anything that fails to decode is the receiver's to count and drop.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The only message version this build speaks.
pub const VERSION: u32 = 1;

/// Proxy → controller: requests are being held for a service with no ready replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wake {
    pub v: u32,
    pub service: String,
    pub proxy: String,
    pub held: u64,
    pub at_ms: u64,
}

/// Proxy → controller: one report interval's worth of load on one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub v: u32,
    pub service: String,
    pub proxy: String,
    /// Increases by one per report from this proxy process.
    pub seq: u64,
    pub interval_ms: u64,
    /// Requests that arrived during the interval.
    pub arrivals: u64,
    /// Requests that finished during the interval.
    pub completed: u64,
    /// Being forwarded right now.
    pub in_flight: u64,
    /// Waiting in the hold queue right now.
    pub held: u64,
    /// In flight per endpoint id, right now.
    #[serde(default)]
    pub per_endpoint: BTreeMap<String, u64>,
    /// Generation of the endpoint set this proxy routes by; a drain waits for
    /// every proxy to have seen the generation that marked the endpoint draining.
    #[serde(default)]
    pub endpoints_generation: u64,
    #[serde(default)]
    pub at_ms: u64,
}

/// Proxy → controller, `<prefix>.report.<proxy>`: everything one proxy has
/// to say each `report_interval`, in one message however many services it
/// routes.
///
/// It is the proxy's heartbeat (liveness, and how far its endpoint watch
/// has come) and carries a load entry only for the services active since
/// the previous report: a service it leaves out had no arrival, nothing in
/// flight and nothing held. So idle services cost nothing on the bus. A
/// report too large for one NATS message is sent in `parts` parts with one
/// `seq`; the set of services is complete once the last part arrived.
/// Immediate reports (a wake, the first request at an idle service, a
/// surge) still go out alone as [`Load`] on `<prefix>.load.<service>`,
/// numbered from the same `seq` counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub v: u32,
    pub proxy: String,
    /// Grows by one per message from this proxy (reports and immediate
    /// loads alike), and from one process to the next (it starts at the
    /// process's start time in microseconds).
    pub seq: u64,
    /// Time since the previous report.
    pub interval_ms: u64,
    /// The highest revision of the endpoints bucket this proxy's watch has
    /// applied: every endpoint set written at or before it is in force here,
    /// for the services it reports and those it does not.
    #[serde(default)]
    pub endpoints_revision: u64,
    /// This message's index among the parts of the report (0-based).
    #[serde(default)]
    pub part: u32,
    /// How many messages make up the report (at least 1).
    #[serde(default = "one")]
    pub parts: u32,
    /// The active services (see above).
    #[serde(default)]
    pub services: Vec<ServiceLoad>,
    #[serde(default)]
    pub at_ms: u64,
}

fn one() -> u32 {
    1
}

impl Report {
    /// Whether this message completes its report (it is the last part).
    pub fn is_last_part(&self) -> bool {
        self.part.saturating_add(1) >= self.parts
    }
}

/// One service's entry in a [`Report`]: a [`Load`] without the fields the
/// report carries once for all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceLoad {
    pub service: String,
    /// Time since this service's previous report from this proxy.
    pub interval_ms: u64,
    pub arrivals: u64,
    pub completed: u64,
    pub in_flight: u64,
    pub held: u64,
    #[serde(default)]
    pub per_endpoint: BTreeMap<String, u64>,
    #[serde(default)]
    pub endpoints_generation: u64,
}

impl ServiceLoad {
    /// The entry as a standalone load report of `report`'s proxy.
    pub fn into_load(self, report: &Report) -> Load {
        Load {
            v: report.v,
            service: self.service,
            proxy: report.proxy.clone(),
            seq: report.seq,
            interval_ms: self.interval_ms,
            arrivals: self.arrivals,
            completed: self.completed,
            in_flight: self.in_flight,
            held: self.held,
            per_endpoint: self.per_endpoint,
            endpoints_generation: self.endpoints_generation,
            at_ms: report.at_ms,
        }
    }

    /// The part of `load` a report carries per service.
    pub fn from_load(load: Load) -> Self {
        Self {
            service: load.service,
            interval_ms: load.interval_ms,
            arrivals: load.arrivals,
            completed: load.completed,
            in_flight: load.in_flight,
            held: load.held,
            per_endpoint: load.per_endpoint,
            endpoints_generation: load.endpoints_generation,
        }
    }
}

/// Whether an endpoint may receive new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    Ready,
    Draining,
}

/// One replica as the proxies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    /// `host:port` the proxy connects to.
    pub addr: String,
    pub state: EndpointState,
    /// The rank of the replica's pool (0 = first) for a service with
    /// `backend.pools`; with `prefer: first`, proxies break ties between
    /// equally busy replicas towards the lower rank. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_rank: Option<u32>,
}

/// Controller → proxies, KV `rouse-endpoints/<service>`: the routable replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSet {
    pub v: u32,
    /// Increases with every change; proxies ignore anything older than they hold.
    pub generation: u64,
    pub endpoints: Vec<Endpoint>,
}

/// Controller → anyone: a service changed its replica count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaled {
    pub v: u32,
    pub service: String,
    pub from: u32,
    pub to: u32,
    pub reason: String,
    pub at_ms: u64,
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON for this message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported message version {0} (this build speaks {VERSION})")]
    Version(u32),
    #[error("subject names service `{subject}` but the payload says `{payload}`")]
    ServiceMismatch { subject: String, payload: String },
}

/// Messages that carry a version, for the shared decode check.
pub trait Versioned {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($ty:ty),*) => {$(
        impl Versioned for $ty {
            fn version(&self) -> u32 {
                self.v
            }
        }
    )*};
}
versioned!(Wake, Load, Report, EndpointSet, Scaled);

/// Decodes and checks the version.
pub fn decode<T: DeserializeOwned + Versioned>(payload: &[u8]) -> Result<T, DecodeError> {
    let message: T = serde_json::from_slice(payload)?;
    match message.version() {
        VERSION => Ok(message),
        other => Err(DecodeError::Version(other)),
    }
}

/// Encodes any message; serialising these plain structs cannot fail.
pub fn encode<T: Serialize>(message: &T) -> bytes::Bytes {
    serde_json::to_vec(message)
        .map(Into::into)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, for `at_ms` fields.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_version() {
        let set = EndpointSet {
            v: VERSION,
            generation: 3,
            endpoints: vec![Endpoint {
                id: "echo-1".into(),
                addr: "127.0.0.1:4000".into(),
                state: EndpointState::Draining,
                pool_rank: None,
            }],
        };
        let bytes = encode(&set);
        assert!(std::str::from_utf8(&bytes)
            .expect("utf8")
            .contains("\"state\":\"draining\""));
        assert_eq!(decode::<EndpointSet>(&bytes).expect("decodes"), set);

        let future = br#"{"v":2,"generation":1,"endpoints":[]}"#;
        assert!(matches!(
            decode::<EndpointSet>(future),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            decode::<Wake>(b"garbage"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn pool_rank_is_optional_on_the_wire() {
        let old = br#"{"v":1,"generation":1,"endpoints":[{"id":"a","addr":"127.0.0.1:1","state":"ready"}]}"#;
        let set: EndpointSet = decode(old).expect("decodes without a rank");
        assert_eq!(set.endpoints[0].pool_rank, None);
        let plain = String::from_utf8(encode(&set).to_vec()).expect("utf8");
        assert!(!plain.contains("pool_rank"), "{plain}");
        let mut ranked = set;
        ranked.endpoints[0].pool_rank = Some(1);
        let bytes = encode(&ranked);
        assert!(std::str::from_utf8(&bytes)
            .expect("utf8")
            .contains("\"pool_rank\":1"));
        assert_eq!(decode::<EndpointSet>(&bytes).expect("decodes"), ranked);
    }

    #[test]
    fn load_tolerates_missing_optional_fields() {
        let raw = br#"{"v":1,"service":"a","proxy":"p","seq":1,"interval_ms":1000,
            "arrivals":2,"completed":1,"in_flight":1,"held":0,"extra":true}"#;
        let load: Load = decode(raw).expect("decodes");
        assert!(load.per_endpoint.is_empty());
        assert_eq!(load.endpoints_generation, 0);
    }

    #[test]
    fn a_report_is_one_part_unless_it_says_otherwise() {
        let raw = br#"{"v":1,"proxy":"p","seq":9,"interval_ms":1000}"#;
        let report: Report = decode(raw).expect("decodes");
        assert!(report.services.is_empty(), "a heartbeat carries no service");
        assert_eq!((report.part, report.parts), (0, 1));
        assert!(report.is_last_part());
        let first_of_two = Report {
            parts: 2,
            ..report.clone()
        };
        assert!(!first_of_two.is_last_part());
        let entry = ServiceLoad {
            service: "s".into(),
            interval_ms: 500,
            arrivals: 3,
            completed: 2,
            in_flight: 1,
            held: 0,
            per_endpoint: [("r1".to_string(), 1)].into(),
            endpoints_generation: 4,
        };
        let load = entry.clone().into_load(&report);
        assert_eq!((load.proxy.as_str(), load.seq), ("p", 9));
        assert_eq!(ServiceLoad::from_load(load), entry);
    }
}
