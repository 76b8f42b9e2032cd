//! rouse-controller: turns the proxies' load reports into replica counts and
//! drives a backend.
//!
//! In the order a report flows through it:
//! 1. [`intake`] receives `wake` and `load` messages into each service's
//!    [`observations`] (the sum over live proxies);
//! 2. [`autoscaler`] (pure, fake-clock tested) turns them into a count;
//! 3. [`reconcile`] acts on it through a [`backend`], probes readiness
//!    ([`probe`]) and publishes the endpoint set and `scaled` events;
//! 4. [`status`] and [`metrics`] record the outcome, served by [`admin`];
//! 5. [`keda`] answers KEDA's external scaler API from the same observations.
//!
//! [`fleet`] keeps one loop per service in force (the config file, the
//! catalog bucket, SIGHUP) and seeds the catalog with the file's services.
//! [`run`] assembles them into the running controller; with
//! `controller.leader_election`, only the controller that holds the
//! [`leader`] lease runs the loops.
//!
//! Beside it, [`import`] turns the KEDA HTTP add-on's HTTPScaledObjects into
//! rouse services (`rouse-controller import`).

mod admin;
pub mod autoscaler;
mod backend;
mod fleet;
pub mod import;
mod intake;
mod keda;
mod leader;
mod meter;
mod metrics;
mod observations;
mod probe;
mod proxies;
mod reconcile;
mod removals;
mod run;
mod status;

pub use run::run;
