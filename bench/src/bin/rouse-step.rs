//! `rouse-step`: load-step → scale-decision benchmark against a running rouse
//! stack. See [`rouse_bench::step`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::step::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    // One thread: the clients only wait on the proxy, and the poller should
    // share as little CPU with them as possible on a small machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse-step: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(step::run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rouse-step: {err:#}");
            ExitCode::FAILURE
        }
    }
}
