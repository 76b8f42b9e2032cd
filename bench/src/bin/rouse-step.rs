//! `rouse-step`: load-step → scale-decision benchmark against a running rouse
//! stack. See [`rouse_bench::step`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::step::{self, Args};
use rouse_nats::runtime::Threads;

fn main() -> ExitCode {
    // One thread: the client adds as little scheduling noise as it can to
    // what it measures.
    rouse_nats::runtime::run(
        "rouse-step",
        Threads::Current,
        None,
        step::run(Args::parse()),
    )
}
