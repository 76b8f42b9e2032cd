//! `rouse-coldstart`: cold-start benchmark against a running rouse stack. See [`rouse_bench::coldstart`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::coldstart::{self, Args};
use rouse_nats::runtime::Threads;

fn main() -> ExitCode {
    // One thread: the client adds as little scheduling noise as it can to
    // what it measures.
    rouse_nats::runtime::run(
        "rouse-coldstart",
        Threads::Current,
        None,
        coldstart::run(Args::parse()),
    )
}
