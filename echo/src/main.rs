//! `rouse-echo`: demo HTTP backend for rouse. See [`rouse_echo`].

use std::ffi::OsStr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rouse_echo::{healthcheck, publish, Cli, Command};
use rouse_nats::runtime::Threads;
use tracing_subscriber::EnvFilter;

/// How long leftover background work (e.g. a `/cpu` burn that outlived the
/// shutdown grace period) may delay the exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    match &cli.command {
        Some(Command::Healthcheck(args)) => return healthcheck::main(args),
        Some(Command::Publish(args)) => return publish::main(args),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    rouse_nats::runtime::run(
        "rouse-echo",
        Threads::Pool(None),
        Some(RUNTIME_SHUTDOWN),
        rouse_echo::run(cli.serve),
    )
}

/// Prints a command-line error (or `--help`) the way clap does; for
/// `healthcheck` the status is 1, not clap's 2, since Docker reserves 2 in a
/// HEALTHCHECK (a malformed `PORT` in the environment, for one, lands here).
fn usage_error(err: &clap::Error) -> ExitCode {
    let _ = err.print();
    let healthcheck = std::env::args_os().nth(1).as_deref() == Some(OsStr::new("healthcheck"));
    match err.exit_code() {
        0 => ExitCode::SUCCESS,
        _ if healthcheck => ExitCode::FAILURE,
        code => ExitCode::from(u8::try_from(code).unwrap_or(2)),
    }
}
