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
versioned!(Wake, Load, EndpointSet, Scaled);

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
}
