//! `rouse-burst`: many concurrent requests at a service with zero replicas.
//! See [`rouse_bench::burst`].

use std::process::ExitCode;

use clap::Parser;
use rouse_bench::burst::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    // Two threads: enough to open thousands of connections quickly without
    // taking every core from the proxy it measures.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse-burst: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(burst::run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rouse-burst: {err:#}");
            ExitCode::FAILURE
        }
    }
}
