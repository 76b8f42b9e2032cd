//! `rouse-compare`: the proxy comparison of `bench/run`.
//! See [`rouse_compare`].

use std::process::ExitCode;

use clap::Parser;
use rouse_compare::Cli;
use rouse_nats::runtime::Threads;

fn main() -> ExitCode {
    // One thread: it only starts processes and waits for them; the load
    // runs in the load generator (and the burst on a runtime of its own).
    rouse_nats::runtime::run(
        "rouse-compare",
        Threads::Current,
        None,
        rouse_compare::run(Cli::parse()),
    )
}
