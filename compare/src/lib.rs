//! `rouse-compare`: the proxy comparison `bench/run` runs, and
//! `rouse-burst`, its burst at zero replicas.
//!
//! - throughput: the same backend (one rouse-echo replica, started by rouse
//!   with `min_replicas = max_replicas = 1`) measured round-robin over
//!   `--rounds` rounds along up to seven paths: direct, rouse-proxy,
//!   rouse-proxy with its access log on and with tracing on, nginx, HAProxy
//!   and `rouse-floor`
//!   (a bare hyper 1 proxy: the floor under rouse-proxy's CPU per request),
//!   with the same load generator;
//! - burst: `--burst-requests` concurrent requests at a service with zero
//!   replicas whose replica is slow to start;
//! - footprint: the idle RSS of rouse-proxy and rouse-controller with
//!   `--footprint-services` services configured.
//!
//! Each part starts a fresh stack through `rouse-stack`. The results go to
//! `latest.json` and `latest.svg` in `--out` and into the generated blocks
//! of `bench/README.md`.
//!
//! It is a crate of its own, next to `rouse-bench`, because it measures
//! something else with other tools: rouse-proxy's data path against other
//! proxies with external load generators, reported into `bench/README.md`,
//! where `rouse-bench` times rouse's own scaling path from the controller's
//! status API. It uses `rouse-bench`'s machine record, statistics, JSON
//! writing and HTTP client.
//!
//! Modules, in the order a run goes through them:
//! - `run`: the three parts, each on a fresh stack, then the report;
//! - `loadgen`: one load run against one path (bombardier, oha or wrk);
//! - [`burst`]: `rouse-burst`, thousands of requests held at zero replicas;
//! - `report`: medians, paired ratios, targets, `latest.json`, Markdown;
//! - `chart`: the SVG of the throughput part;
//! - [`scale`]: `rouse-scale` (`bench/scale`), rouse with 10,000 services,
//!   several proxies and 100,000 held requests.

pub mod burst;
mod chart;
mod collector;
mod loadgen;
mod report;
mod run;
pub mod scale;

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::FalseyValueParser;
use clap::{Parser, ValueEnum};

pub use run::run;

/// The paths compared, in report order, as [`Target`] orders them
/// (`rouse-log`, `rouse-trace`: rouse-proxy with its access log, or its
/// tracing, on; `floor`: `rouse-floor`, a bare hyper 1 proxy, the least any
/// proxy on rouse's parts can cost).
pub(crate) const TARGETS: [&str; 7] = [
    "direct",
    "rouse",
    "rouse-log",
    "rouse-trace",
    "nginx",
    "haproxy",
    "floor",
];

/// Command line of `rouse-compare`; every flag can also be set through the
/// environment variable `bench/run` documents.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rouse-compare",
    version,
    about = "The proxy comparison of bench/run: throughput vs direct, nginx and HAProxy, a burst at zero, the idle footprint"
)]
pub struct Cli {
    /// Which part to run.
    #[arg(value_enum, default_value = "all")]
    pub part: Part,

    /// Measured rounds of the throughput part.
    #[arg(long, env = "ROUNDS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Connections of the load generator.
    #[arg(long, env = "CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub connections: u32,

    /// Length of one measured run, whole seconds.
    #[arg(long, env = "DURATION", default_value = "10s", value_parser = whole_seconds)]
    pub duration: Duration,

    /// Unrecorded warm-up run per path, whole seconds.
    #[arg(long, env = "WARMUP", default_value = "2s", value_parser = whole_seconds)]
    pub warmup: Duration,

    /// Worker threads of every proxy (default: the number of cores).
    #[arg(long, env = "THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,

    /// Load generator: bombardier, oha, wrk, or auto (the first installed).
    #[arg(long, env = "LOADGEN", default_value = "auto")]
    pub loadgen: String,

    /// Paths measured, space-separated.
    #[arg(
        long,
        env = "TARGETS",
        default_value = "direct rouse rouse-log rouse-trace nginx haproxy floor",
        value_delimiter = ' '
    )]
    pub targets: Vec<Target>,

    /// Concurrent requests of the burst part (one connection each).
    #[arg(long, env = "BURST_REQUESTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst_requests: u32,

    /// How long the burst part's replica takes to start.
    #[arg(long, env = "BURST_STARTUP_DELAY", default_value = "10s")]
    pub burst_startup_delay: String,

    /// Bound on the whole burst.
    #[arg(long, env = "BURST_TIMEOUT", default_value = "120s")]
    pub burst_timeout: String,

    /// Services configured in the footprint part.
    #[arg(long, env = "FOOTPRINT_SERVICES", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub footprint_services: u32,

    /// Seconds between the footprint stack's start and the reading.
    #[arg(long, env = "FOOTPRINT_SETTLE", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub footprint_settle: u64,

    /// First of the seven ports used: nats-server, proxy, proxy admin,
    /// controller, nginx, HAProxy.
    #[arg(long, env = "ROUSE_BENCH_BASE_PORT", default_value_t = 31000)]
    pub base_port: u16,

    /// Directory of `latest.json` and `latest.svg`.
    #[arg(long, env = "ROUSE_BENCH_OUT", default_value = "bench/results/compare")]
    pub out: PathBuf,

    /// Markdown file whose generated blocks are rewritten.
    #[arg(long, default_value = "bench/README.md")]
    pub readme: PathBuf,

    /// Leave --readme alone.
    #[arg(long, env = "ROUSE_BENCH_NO_README", value_parser = FalseyValueParser::new())]
    pub no_readme: bool,

    /// Only write each part's config and validate it; start nothing.
    #[arg(long, env = "ROUSE_BENCH_CHECK_CONFIG", value_parser = FalseyValueParser::new())]
    pub check_config: bool,

    /// Keep configs, logs and the load generator's raw output here.
    #[arg(long, env = "ROUSE_BENCH_KEEP")]
    pub keep: Option<PathBuf>,
}

/// A part of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Throughput,
    Burst,
    Footprint,
    All,
}

/// A path of the throughput part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Direct,
    Rouse,
    /// Another rouse-proxy of the same stack, with `proxy.access_log` on
    /// (JSON lines to a file): what the access log costs.
    RouseLog,
    /// Another rouse-proxy of the same stack, with `proxy.tracing` on
    /// (every request sampled, OTLP/gRPC to a collector in the benchmark's
    /// process): what tracing costs.
    RouseTrace,
    Nginx,
    Haproxy,
    Floor,
}

impl Target {
    pub fn name(self) -> &'static str {
        TARGETS[self as usize]
    }
}

impl Cli {
    fn wants(&self, part: Part) -> bool {
        self.part == Part::All || self.part == part
    }
}

/// A duration of whole seconds, at least one (every load generator takes
/// whole seconds).
fn whole_seconds(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.subsec_nanos() == 0 && d.as_secs() > 0 => Ok(d),
        _ => Err(format!("must be whole seconds like 10s (got '{text}')")),
    }
}
