//! `rouse-echo`: the demo backend that rouse scales to and from zero.
//!
//! It exists so that the proxy, the controller, the end-to-end tests, the
//! demo and the benchmarks all have one small, predictable HTTP backend to
//! talk to: it tells which replica answered, can be made slow (`/sleep`), CPU
//! hungry (`/cpu`) or memory hungry (`/mem`), counts what it served
//! (`/stats`), echoes request bodies (any `POST`), reflects the forwarding
//! headers it received, echoes bytes on an upgraded connection (`/ws`), and
//! can fake a slow cold start (`--startup-delay`).
//!
//! It speaks HTTP/1.1 and h2c (prior knowledge) on the same port and shuts
//! down gracefully on SIGTERM / SIGINT.
//!
//! Modules, in the order a request meets them:
//! - `server`: the command line ([`Args`]), the start-up delay, the accept
//!   loop and graceful shutdown ([`run`]);
//! - `handler`: the route and response of one request, and the per-process
//!   counters `/stats` shows.

mod handler;
mod server;

pub use server::{run, Args};
