//! `rouse-proxy --config FILE`: the data path.

use std::process::ExitCode;

/// The data path allocates small, short-lived buffers on every request from
/// every worker thread: mimalloc's per-thread free lists serve that better
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use rouse_nats::cli::{self, CommonArgs, Loaded};
use rouse_nats::process;

#[derive(Parser)]
#[command(
    name = "rouse-proxy",
    version,
    about = "rouse's scale-to-zero HTTP proxy"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match cli::load(&args.common) {
        Loaded::Run(config) => config,
        Loaded::Exit(code) => return code,
    };
    cli::init_logging(args.common.log_format);
    // The control plane (NATS, reports, admin) needs one thread; the data
    // path runs on its own threads (`proxy.worker_threads`).
    let threads = Some(1);
    process::run_main("rouse-proxy", threads, rouse_proxy::run::run(*config))
}
