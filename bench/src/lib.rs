//! Benchmarks of rouse, each a binary under `src/bin/` over one module
//! here (command line and `run`), so that the logic stays testable.
//!
//! Modules, from what the benchmarks share to what they measure:
//! - `results`: the machine, statistics over repeated measurements, the
//!   measuring loop, the summary table, the JSON file;
//! - `status`: the controller's status API, strictly typed, and polling it;
//! - `client`: one fresh HTTP/1.1 connection per client;
//! - `live`: the stack measured, started through `rouse-stack` or already
//!   running;
//! - [`coldstart`]: `rouse-coldstart`, zero → one request → zero, split into
//!   wake, replica start and rouse's own overhead;
//! - [`step`]: `rouse-step`, a load step and the scale decision it causes;
//! - [`burst`]: `rouse-burst`, thousands of requests held at zero replicas;
//! - [`compare`]: `rouse-compare`, `bench/run`'s proxy comparison (throughput
//!   vs direct, nginx and HAProxy; the burst; the idle footprint).

mod client;
mod live;
mod results;
mod status;

pub mod burst;
pub mod coldstart;
pub mod compare;
pub mod step;
