//! `rouse-controller --config FILE`: scaling.

use std::process::ExitCode;

use clap::Parser;
use rouse_nats::cli::{self, CommonArgs, Loaded};
use rouse_nats::process;

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
    let threads = None;
    process::run_main(
        "rouse-controller",
        threads,
        rouse_controller::run::run(*config),
    )
}
