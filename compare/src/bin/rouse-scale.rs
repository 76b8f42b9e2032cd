//! `rouse-scale`: rouse at scale, the driver of `bench/scale`.
//! See [`rouse_compare::scale`].

use std::process::ExitCode;

use clap::Parser;
use rouse_compare::scale::Cli;
use rouse_nats::runtime::Threads;

fn main() -> ExitCode {
    // Two threads: the held part's client opens 100,000 streams, the
    // active part runs a task per active service.
    rouse_nats::runtime::run(
        "rouse-scale",
        Threads::Pool(Some(2)),
        None,
        rouse_compare::scale::run(Cli::parse()),
    )
}
