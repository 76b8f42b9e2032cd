//! Benchmarks of rouse's scaling path, each a binary under `src/bin/` over
//! one module here (command line and `run`), so that the logic stays
//! testable, and what every benchmark shares (`rouse-compare`, the proxy
//! comparison, uses it too).
//!
//! Modules, from what the benchmarks share to what they measure:
//! - [`results`]: the machine, statistics over repeated measurements, the
//!   measuring loop, the summary table, the JSON file;
//! - `status`: the controller's status API, strictly typed, and polling it;
//! - [`client`]: one fresh HTTP/1.1 connection per client;
//! - `live`: the stack measured, started through `rouse-stack` or already
//!   running ([`until_interrupted`]);
//! - [`coldstart`]: `rouse-coldstart`, zero → one request → zero, split into
//!   wake, replica start and rouse's own overhead;
//! - [`step`]: `rouse-step`, a load step and the scale decision it causes.

pub mod client;
mod live;
pub mod results;
mod status;

pub mod coldstart;
pub mod step;

pub use coldstart::COLD_START_HEADER;
pub use live::until_interrupted;
