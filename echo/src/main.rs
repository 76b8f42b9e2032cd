//! `rouse-echo`: demo HTTP backend for rouse. See [`rouse_echo`].

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rouse_echo::Args;
use rouse_nats::runtime::Threads;
use tracing_subscriber::EnvFilter;

/// How long leftover background work (e.g. a `/cpu` burn that outlived the
/// shutdown grace period) may delay the exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let args = Args::parse();
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
        rouse_echo::run(args),
    )
}
