//! `rouse-burst`: many concurrent requests at a service with zero replicas.
//! See [`rouse_compare::burst`].

use std::process::ExitCode;

use clap::Parser;
use rouse_compare::burst::{self, Args};
use rouse_nats::runtime::Threads;

fn main() -> ExitCode {
    let args = Args::parse();
    // Two threads: enough to open thousands of connections quickly without
    // taking every core from the proxy it measures.
    rouse_nats::runtime::run(
        "rouse-burst",
        Threads::Pool(Some(2)),
        None,
        burst::run(args),
    )
}
