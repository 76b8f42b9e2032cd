//! `rouse-controller --config FILE`: scaling.

use std::process::ExitCode;

use clap::Parser;
use rouse_nats::cli::{self, CommonArgs, Loaded};

#[derive(Parser)]
#[command(
    name = "rouse-controller",
    version,
    about = "rouse's scaling controller"
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse-controller: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rouse_controller::run::run(*config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("rouse-controller: {err:#}");
            ExitCode::FAILURE
        }
    }
}
