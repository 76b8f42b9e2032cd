//! `rouse-coldstart`: cold-start benchmark against a running rouse stack. See [`rouse_bench::coldstart`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::coldstart::{self, Args};

fn main() -> ExitCode {
    rouse_bench::run_single_threaded("rouse-coldstart", coldstart::run(Args::parse()))
}
