//! `rouse-scale`: what rouse costs when it is large, the driver of
//! `bench/scale`.
//!
//! - idle: `--services` services configured (process backend, all at zero)
//!   behind `--proxies` proxies. How long the stack takes to be ready, then,
//!   over a `--window`: messages and bytes per second on the bus (from
//!   nats-server's `/varz`), CPU of the controller and of each proxy, and
//!   the resident memory each configured service costs (against a stack
//!   with `--baseline-services`).
//! - active: on the same stack, `--active-percent` of the services get
//!   steady traffic (`--active-rate` requests per second each, spread over
//!   the proxies); the same figures again, so that they can be compared
//!   with the idle ones: what grows, and with what.
//! - held: `--held-requests` requests held at once on one proxy over h2c
//!   (`--held-streams` per connection: an HTTP/1.1 connection per request
//!   would need more file descriptors than an unprivileged process may
//!   open here), at a service whose replica is slow to start; how many are
//!   answered and the proxy's memory per held request.
//!
//! Nothing here asserts a figure: the report says which of the issue's
//! targets were met. Modules: `sample` (bus counters and process
//! readings), `traffic` (the active part's load), `held` (the h2c client),
//! `report` (`latest.json` and the Markdown block of `bench/README.md`).

mod held;
mod report;
mod run;
mod sample;
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Parser, ValueEnum};

pub use run::run;

/// Command line of `rouse-scale`; every flag can also be set through the
/// environment variable `bench/scale` documents.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rouse-scale",
    version,
    about = "rouse at scale: 10,000 services idle and 1 % active behind several proxies, 100,000 held requests"
)]
pub struct Cli {
    /// Which part to run.
    #[arg(value_enum, default_value = "all")]
    pub part: Part,

    /// Services configured in the idle and active parts.
    #[arg(long, env = "SCALE_SERVICES", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub services: u32,

    /// Services of the stack the memory per service is measured against.
    #[arg(long, env = "SCALE_BASELINE_SERVICES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub baseline_services: u32,

    /// Proxies in the idle and active parts.
    #[arg(long, env = "SCALE_PROXIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub proxies: u32,

    /// Share of the services that get traffic in the active part, percent.
    #[arg(long, env = "SCALE_ACTIVE_PERCENT", default_value_t = 1.0)]
    pub active_percent: f64,

    /// Requests per second to each active service.
    #[arg(long, env = "SCALE_ACTIVE_RATE", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub active_rate: u32,

    /// Length of each measuring window.
    #[arg(long, env = "SCALE_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub window: Duration,

    /// Wait between a part being ready and its window.
    #[arg(long, env = "SCALE_SETTLE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// The proxies' `report_interval`.
    #[arg(long, env = "SCALE_REPORT_INTERVAL", default_value = "1s")]
    pub report_interval: String,

    /// Requests held at once in the held part.
    #[arg(long, env = "SCALE_HELD", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub held_requests: u32,

    /// Concurrent h2c streams per connection in the held part (the proxy
    /// allows 1,024).
    #[arg(long, env = "SCALE_HELD_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub held_streams: u32,

    /// How long the held part's replica takes to start: long enough for
    /// every request to be sent while none can be answered.
    #[arg(long, env = "SCALE_HELD_STARTUP_DELAY", default_value = "30s")]
    pub held_startup_delay: String,

    /// Bound on the whole held part, from the first request on.
    #[arg(long, env = "SCALE_HELD_TIMEOUT", default_value = "180s", value_parser = humantime::parse_duration)]
    pub held_timeout: Duration,

    /// Directory of `latest.json`.
    #[arg(long, env = "ROUSE_BENCH_OUT", default_value = "bench/results/scale")]
    pub out: PathBuf,

    /// Markdown file whose generated block (`scale`) is rewritten.
    #[arg(long, default_value = "bench/README.md")]
    pub readme: PathBuf,

    /// Leave --readme alone.
    #[arg(long, env = "ROUSE_BENCH_NO_README", value_parser = FalseyValueParser::new())]
    pub no_readme: bool,

    /// Only write each part's config and validate it; start nothing.
    #[arg(long, env = "ROUSE_BENCH_CHECK_CONFIG", value_parser = FalseyValueParser::new())]
    pub check_config: bool,

    /// Measure nothing: rewrite the README block from `--out`'s
    /// `latest.json`.
    #[arg(long, env = "SCALE_REPORT_ONLY", value_parser = FalseyValueParser::new())]
    pub report_only: bool,

    /// Keep configs and logs here.
    #[arg(long, env = "ROUSE_BENCH_KEEP")]
    pub keep: Option<PathBuf>,
}

/// A part of the scale benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Idle,
    Active,
    Held,
    All,
}

impl Cli {
    fn wants(&self, part: Part) -> bool {
        self.part == Part::All || self.part == part
    }

    /// Services that get traffic in the active part (at least one).
    fn active_services(&self) -> u32 {
        let share = (f64::from(self.services) * self.active_percent / 100.0).round();
        (share as u32).clamp(1, self.services)
    }
}

/// Name of the i-th service (from 1) and its host.
fn service_name(i: u32) -> (String, String) {
    let name = format!("svc-{i}");
    let host = format!("{name}.localhost");
    (name, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percent_of_ten_thousand_is_a_hundred_and_never_none() {
        let mut cli = Cli::parse_from(["rouse-scale"]);
        assert_eq!(cli.active_services(), 100);
        cli.services = 10;
        assert_eq!(cli.active_services(), 1);
        cli.active_percent = 500.0;
        assert_eq!(cli.active_services(), 10);
    }
}
