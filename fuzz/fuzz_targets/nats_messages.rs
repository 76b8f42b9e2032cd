//! Every decoder the proxy and the controller apply to bytes from NATS
//! (`rouse_nats::messages::decode` for wake, load, the endpoint set in KV
//! and scaled events), on the same bytes. Never panics; whatever decodes
//! re-encodes to a message that decodes to the same value; the subject a
//! message is published on names its service back; and an endpoint set is
//! applied to a proxy's service the same way twice.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rouse_nats::config::ServiceConfig;
use rouse_nats::messages::{self, EndpointSet, Load, Scaled, Wake};
use rouse_nats::Subjects;
use rouse_proxy::{ProxyMetrics, Service};
use serde::de::DeserializeOwned;
use serde::Serialize;

fuzz_target!(|data: &[u8]| {
    if let Some(wake) = round_trip::<Wake>(data) {
        check_subject(&wake.service, |s, name| s.wake(name));
    }
    if let Some(load) = round_trip::<Load>(data) {
        check_subject(&load.service, |s, name| s.load(name));
    }
    if let Some(scaled) = round_trip::<Scaled>(data) {
        check_subject(&scaled.service, |s, name| s.scaled(name));
    }
    if let Some(set) = round_trip::<EndpointSet>(data) {
        check_apply(&set);
    }
});

fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug + messages::Versioned,
{
    let message: T = messages::decode(data).ok()?;
    assert_eq!(message.version(), messages::VERSION);
    let encoded = messages::encode(&message);
    let again: T = match messages::decode(&encoded) {
        Ok(again) => again,
        Err(err) => panic!("{message:?} encoded as {encoded:?} does not decode: {err}"),
    };
    assert_eq!(again, message, "changed on the way through {encoded:?}");
    assert_eq!(messages::encode(&again), encoded);
    Some(message)
}

/// The controller reads the service from the subject and drops a message
/// whose payload names another: a service name that is one subject token
/// must come back from its own subject, anything else must not.
fn check_subject(service: &str, subject: impl Fn(&Subjects, &str) -> String) {
    let subjects = Subjects::new("rouse");
    let one_token = !service.is_empty() && !service.contains('.');
    let subject = subject(&subjects, service);
    let back = subjects.service_of(&subject);
    assert_eq!(back, one_token.then_some(service), "service {service:?}");
}

fn service_config() -> &'static ServiceConfig {
    static CONFIG: OnceLock<ServiceConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let yaml = "name: fuzz\nhosts: [fuzz.localhost]\nbackend: {process: {command: [x]}}\n";
        serde_norway::from_str(yaml).unwrap_or_else(|e| panic!("fuzz service config: {e}"))
    })
}

fn metrics() -> &'static ProxyMetrics {
    static METRICS: OnceLock<ProxyMetrics> = OnceLock::new();
    METRICS.get_or_init(ProxyMetrics::new)
}

/// What the KV watcher does with a decoded set: unusable endpoints are
/// skipped and named, never more than were sent; a set delivered again
/// (a reconnect replays the last value) is judged the same.
fn check_apply(set: &EndpointSet) {
    let service = Service::new(
        service_config(),
        Duration::from_secs(1),
        metrics().for_service("fuzz"),
    );
    let skipped = service.apply(set);
    assert!(skipped.len() <= set.endpoints.len());
    assert_eq!(service.apply(set), skipped, "{set:?}");
}
