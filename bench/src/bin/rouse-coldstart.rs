//! `rouse-coldstart`: cold-start benchmark against a running rouse stack.
//! See [`rouse_bench::coldstart`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::coldstart::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: the client does one thing at a time and should add as
    // little scheduling noise as possible to what it measures.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse-coldstart: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(coldstart::run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rouse-coldstart: {err:#}");
            ExitCode::FAILURE
        }
    }
}
