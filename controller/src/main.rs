//! `rouse-controller --config FILE`: scaling.

use std::process::ExitCode;

use clap::Parser;
use rouse_nats::cli::CommonArgs;
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
    process::main(
        "rouse-controller",
        &args.common,
        None,
        rouse_controller::run,
    )
}
