//! Benchmark tooling for rouse.
//!
//! Each tool lives in its own module; the binaries under `src/bin/` are thin
//! wrappers around them so that the logic stays testable.

pub mod burst;
pub mod coldstart;
pub mod compare;
pub mod footprint;
pub mod step;
