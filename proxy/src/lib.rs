//! rouse-proxy: the data path of rouse.
//!
//! A request goes through clear stages, each its own module:
//! [`server`] accepts → [`route`] finds the service → [`hold`] waits while the
//! service is cold → [`balance`] picks a replica → [`forward`] sends it.
//! [`handler`] strings the stages together; [`endpoints`] keeps replica sets
//! current from NATS KV and [`report`] tells the controller about load.

pub mod admin;
pub mod balance;
pub mod body;
pub mod endpoints;
pub mod forward;
pub mod handler;
pub mod hold;
pub mod metrics;
pub mod pool;
pub mod report;
pub mod route;
pub mod run;
pub mod server;
pub mod service;
