//! Command-line plumbing shared by `rouse-proxy` and `rouse-controller`:
//! `--config`/`ROUSE_CONFIG`, `--check`, `--log-format`, and the exit-2
//! contract for a bad config.

use std::path::PathBuf;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};

/// Flags both binaries take.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The YAML config file.
    #[arg(long, env = "ROUSE_CONFIG")]
    pub config: PathBuf,
    /// Validate the config and exit: 0 when valid, 2 with the reasons when not.
    #[arg(long)]
    pub check: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Exit code for an unusable config, fixed by the contract.
pub const EXIT_BAD_CONFIG: u8 = 2;

/// Logs to stderr at the level in `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// What `main` should do after reading the config.
pub enum Loaded {
    /// Run with this config.
    Run(Box<Config>),
    /// Exit now with this code (a `--check`, or a bad config already reported).
    Exit(ExitCode),
}

/// Loads the config named by `args`, printing problems to stderr.
pub fn load(args: &CommonArgs) -> Loaded {
    match Config::load(&args.config) {
        Ok(config) if args.check => {
            println!(
                "{}: ok ({} services)",
                args.config.display(),
                config.services.len()
            );
            Loaded::Exit(ExitCode::SUCCESS)
        }
        Ok(config) => Loaded::Run(Box::new(config)),
        Err(err) => {
            report(&err);
            Loaded::Exit(ExitCode::from(EXIT_BAD_CONFIG))
        }
    }
}

/// Prints a bad config's issues to stderr, one per line.
pub fn report(err: &ConfigError) {
    eprintln!("invalid config:");
    for line in err.to_string().lines() {
        eprintln!("  {line}");
    }
}
