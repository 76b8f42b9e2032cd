//! rouse-proxy: the data path of rouse.
//!
//! A request meets these stages in this order, one module each:
//!
//! 1. `server`: accept connections, serve HTTP/1.1 and h2c (and, through
//!    `tls`, HTTPS with SNI certificates and ALPN h2), within the head
//!    limits of `proxy.limits` (431).
//!    `strict`: refuse what a trusted edge refuses (400, 414, 413).
//! 2. `route`: find the service of the host and path (or 404).
//! 3. `hold`: wait in the service's queue while it has no ready replica
//!    (or 503 with `Retry-After`); a browser's navigation to a service
//!    with `hold.browser_page` gets `waiting`'s page instead, which follows
//!    the wake through `wake_phase`.
//! 4. `balance`: lease a ready replica.
//! 5. `forward`: send the request over a pooled connection, retrying a
//!    refused connection on another replica (or 502, 504).
//! 6. `upgrade`: splice the two connections of a protocol switch.
//!
//! `handler` strings the stages together and nothing else; every failure on
//! the way is a `ProxyError` (`error`), turned into a response in one place.
//!
//! Supporting modules, leaves first:
//! - `request_body` / `response_body`: the bodies going to the replica and
//!   to the client.
//! - `headers`: hop-by-hop and `X-Forwarded-*` rules.
//! - `pool`: each data thread's idle replica connections (HTTP/1.1).
//! - `h2pool`: each data thread's shared HTTP/2 replica connections.
//! - `queue`: a service's bounded wait queue.
//! - `service`: per-service state (endpoint set, counters, queue).
//! - `completion`: counts a forwarded request out at its last byte.
//! - `metrics`, `admin`: Prometheus metrics and the admin server.
//! - `catalog`: the services in force (file, catalog bucket, SIGHUP) and
//!   the route table swapped whole on every change.
//! - `observe`: what a request tells once its response has ended: the
//!   `access_log` line and the `trace` (OpenTelemetry) spans; off unless
//!   configured. Both leave the request path through a `batch_queue`.
//! - `endpoints`: keeps endpoint sets current from NATS KV.
//! - `limits`: raises the file-descriptor limit at start-up.
//! - `report`: tells the controller about load (`wake`, `load`).
//! - `run`: assembles all of it from a config and runs it.
//!
//! Exported is what the binary and the integration tests use.

mod access_log;
mod admin;
mod balance;
mod batch_queue;
mod catalog;
mod completion;
mod endpoints;
mod error;
mod forward;
mod h2pool;
mod handler;
mod headers;
mod hold;
mod limits;
mod metrics;
mod observe;
mod pool;
mod queue;
mod report;
mod request_body;
mod response_body;
mod route;
mod run;
mod server;
mod service;
mod strict;
pub mod tls;
mod trace;
mod upgrade;
mod waiting;
mod wake_phase;

pub use catalog::Registry;
pub use forward::Forwarder;
pub use h2pool::H2Pool;
pub use handler::Proxy;
pub use metrics::ProxyMetrics;
pub use observe::{ObservedBody, Observers};
pub use pool::{Pool, PoolSettings, Pooled};
pub use report::{Reporter, Signals};
pub use request_body::OutBody;
pub use route::Routes;
pub use run::run;
pub use server::{serve, serve_with, Handshake, Plain};
pub use service::{Defaults, Service};
pub use strict::RequestLimits;
pub use waiting::{NO_PAGE_HEADER, PAGE_HEADER, WAIT_EVENTS_PATH};

/// The private stages that the fuzz targets in `fuzz/` exercise: that crate
/// sits outside this one and reaches only what is public. One item per
/// function under test, each passing straight through. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::headers::{is_upgrade, prepare_head, strip_hop_by_hop};
    pub use crate::route::RouteTable;

    /// `RouteTable::find`: the target of a Host value and a path.
    pub fn find<'t, T: Clone>(table: &'t RouteTable<T>, host: &str, path: &str) -> Option<&'t T> {
        table.find(host, path)
    }

    /// `RouteTable::route`: the target of a whole request, `None` for a 404.
    pub fn route<T: Clone, B>(table: &RouteTable<T>, request: &http::Request<B>) -> Option<T> {
        table.route(request).ok()
    }
}
