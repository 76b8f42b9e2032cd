//! `rouse-proxy --config FILE`: the data path.

use std::process::ExitCode;

use clap::Parser;
use rouse_nats::cli::{self, CommonArgs, Loaded};

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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.proxy.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse-proxy: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rouse_proxy::run::run(*config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("rouse-proxy: {err:#}");
            ExitCode::FAILURE
        }
    }
}
