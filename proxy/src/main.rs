//! `rouse-proxy --config FILE`: the data path.

use std::process::ExitCode;

use clap::Parser;
use rouse_nats::cli::CommonArgs;
use rouse_nats::process;

/// The data path allocates small, short-lived buffers on every request from
/// every worker thread: mimalloc's per-thread free lists serve that better
/// than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // The shared loader cannot open certificates (rouse-nats has no TLS
    // library): the proxy checks `proxy.tls`'s files itself, for `--check`
    // and before starting alike, with the same exit code and message form.
    if let Err(err) = rouse_proxy::tls::check_config_files(&args.common.config) {
        rouse_nats::cli::report(&err);
        return ExitCode::from(rouse_nats::cli::EXIT_BAD_CONFIG);
    }
    // The control plane (NATS, reports, admin) needs one thread; the data
    // path runs on its own threads (`proxy.worker_threads`).
    process::main("rouse-proxy", &args.common, Some(1), rouse_proxy::run)
}
