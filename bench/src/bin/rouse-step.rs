//! `rouse-step`: load-step → scale-decision benchmark against a running rouse
//! stack. See [`rouse_bench::step`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::step::{self, Args};

fn main() -> ExitCode {
    rouse_bench::run_single_threaded("rouse-step", step::run(Args::parse()))
}
