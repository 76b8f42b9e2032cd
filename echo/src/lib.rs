//! `rouse-echo`: the demo backend that rouse scales to and from zero.
//!
//! It exists so that the proxy, the controller, the end-to-end tests, the
//! demo and the benchmarks all have one small, predictable HTTP backend to
//! talk to: it tells which replica answered, can be made slow (`/sleep`), CPU
//! hungry (`/cpu`) or memory hungry (`/mem`), counts what it served
//! (`/stats`), echoes request bodies (any `POST`), reflects the forwarding
//! headers it received, echoes bytes on an upgraded connection (`/ws`), and
//! can fake a slow cold start (`--startup-delay`), and with `--grpc` is a
//! gRPC server too (unary `Hello`, server-streaming `Count`). `rouse-echo healthcheck`
//! checks a health URL instead of serving.
//!
//! It is also the demo queue worker for rouse's `queue` scaling signal:
//! with `--queue-stream S --queue-consumer C` it takes messages one at a
//! time from an existing durable JetStream pull consumer beside serving
//! HTTP, spends `--work-ms` (or a message's `Work-Ms` header) on each, acks
//! it, counts it in `/stats` (`processed`) and republishes its payload on
//! `--done-subject`. `rouse-echo publish` makes the backlog: N messages
//! `0`..`N-1`, every one acked by JetStream, and with `--create` the
//! WorkQueue stream and its pull consumer first.
//!
//! It speaks HTTP/1.1 and h2c (prior knowledge) on the same port and shuts
//! down gracefully on SIGTERM / SIGINT.
//!
//! Modules, in the order a request meets them:
//! - `server`: the command line ([`Cli`], [`Args`]), the start-up delay, the accept
//!   loop and graceful shutdown ([`run`]);
//! - `shutdown`: SIGTERM / SIGINT as one stop every task waits on;
//! - `handler`: the route and response of one request, and the per-process
//!   counters `/stats` shows;
//! - [`grpc`]: with `--grpc`, the gRPC service (proto/echo.proto) beside
//!   the HTTP routes on the same port;
//! - [`worker`]: the queue worker beside the HTTP server;
//! - [`healthcheck`]: `rouse-echo healthcheck`, the one `GET` the rouse
//!   image's `HEALTHCHECK` runs (the image has no shell and no curl);
//! - [`publish`]: `rouse-echo publish`, test messages for the worker.

pub mod grpc;
mod handler;
pub mod healthcheck;
pub mod publish;
mod server;
mod shutdown;
pub mod worker;

pub use server::{run, Args, Cli, Command};
