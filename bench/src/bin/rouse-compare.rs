//! `rouse-compare`: measuring and reporting half of `bench/run`.
//! See [`rouse_bench::compare`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::compare::{self, Cli};

fn main() -> ExitCode {
    match compare::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rouse-compare: {err:#}");
            ExitCode::FAILURE
        }
    }
}
