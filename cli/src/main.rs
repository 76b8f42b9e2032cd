//! `rouse`: the command line of a running rouse.
//!
//! Read commands ask the controller (`status`) or NATS (`events`, `routes`);
//! write commands change the service catalog in NATS KV (`deploy`, `remove`,
//! `scale`), which the controller and the proxies watch. Nothing here talks
//! to a proxy or a backend: the CLI is one more client of the same contract.
//!
//! Modules: one per subcommand, plus `connect` (finding NATS and the
//! controller), `store` (the catalog buckets), `retry` (bounded retries of
//! idempotent NATS calls), `table` and `output` (what
//! stdout gets), `progress` (stderr while waiting) and `exit` (exit codes).

mod connect;
mod deploy;
mod events;
mod exit;
mod output;
mod remove;
mod retry;
mod routes;
mod scale;
mod status;
mod store;
mod table;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::{Failure, Outcome};

/// Talk to a running rouse: see its services, tail its scale events,
/// deploy, remove and pin services.
#[derive(Debug, Parser)]
#[command(name = "rouse", version, after_help = exit::HELP)]
struct Cli {
    #[command(flatten)]
    target: connect::Target,
    /// What stdout gets: aligned columns, or stable JSON for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = output::Format::Table, help_heading = "Output")]
    output: output::Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Services as the controller sees them: replicas desired and ready,
    /// requests held and in flight, requests per second, last scale event.
    #[command(after_help = exit::HELP)]
    Status(status::Args),
    /// Scale events (`<prefix>.scaled.*` in stream ROUSE_EVENTS).
    #[command(after_help = exit::HELP)]
    Events(events::Args),
    /// Add or replace a service in the catalog (KV rouse-services).
    #[command(after_help = exit::HELP)]
    Deploy(Box<deploy::Args>),
    /// Remove a service from the catalog.
    #[command(after_help = exit::HELP)]
    Remove(remove::Args),
    /// Pin a service at N replicas, or unpin it.
    #[command(after_help = exit::HELP)]
    Scale(scale::Args),
    /// Which host and path goes to which service.
    #[command(after_help = exit::HELP)]
    Routes(routes::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match rouse_nats::runtime::build(rouse_nats::runtime::Threads::Current) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rouse: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) if closed_pipe(&failure) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("rouse: {failure}");
            failure.exit_code()
        }
    }
}

async fn run(cli: &Cli) -> Outcome {
    let endpoints = cli.target.resolve()?;
    match &cli.command {
        Command::Status(args) => status::run(args, &endpoints, cli.output).await,
        Command::Events(args) => events::run(args, &endpoints, cli.output).await,
        Command::Deploy(args) => deploy::run(args, &endpoints, cli.output).await,
        Command::Remove(args) => remove::run(args, &endpoints, cli.output).await,
        Command::Scale(args) => scale::run(args, &endpoints, cli.output).await,
        Command::Routes(args) => routes::run(args, &endpoints, cli.output).await,
    }
}

/// stdout closed by its reader (`rouse events -f | head`): done, not failed.
fn closed_pipe(failure: &Failure) -> bool {
    failure
        .error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A service name as the config allows it (`[a-z0-9-]{1,63}`): it is also a
/// NATS subject token and a KV key, so nothing else may reach either.
fn service_name(value: &str) -> Result<String, String> {
    let valid = (1..=63).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(value.to_string())
    } else {
        Err(format!(
            "`{value}` is not a service name: 1 to 63 of a-z, 0-9 and -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn service_names_follow_the_config_rule() {
        assert!(service_name("web-2").is_ok());
        assert!(service_name("Web").is_err());
        assert!(service_name("a.b").is_err());
        assert!(service_name("").is_err());
        assert!(service_name(&"a".repeat(64)).is_err());
    }
}
