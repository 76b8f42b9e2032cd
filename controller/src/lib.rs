//! rouse-controller: turns the proxies' load reports into replica counts and
//! drives a backend.
//!
//! [`intake`] receives reports into per-service [`observations`]; the pure
//! [`autoscaler`] decides; [`reconcile`] acts through a [`backend`], probes
//! readiness ([`probe`]) and writes endpoint sets to NATS KV; [`admin`]
//! serves metrics and [`status`].

pub mod admin;
pub mod autoscaler;
pub mod backend;
pub mod intake;
pub mod metrics;
pub mod observations;
pub mod probe;
pub mod reconcile;
pub mod run;
pub mod status;
