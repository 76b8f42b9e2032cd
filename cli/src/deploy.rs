//! `rouse deploy NAME`: adds or replaces a service in the catalog.
//!
//! The flags become a `services[]` entry of the config file (the same serde
//! types, so the same defaults), which must pass the file's own checks
//! (`catalog::check_service`). It is refused when the config file owns the
//! name (`source: file`) or another service in force routes one of its
//! host+path pairs, and written with the revision it was read at, so two
//! deploys racing cannot both win. A deploy replaces the whole definition:
//! flags not given take their defaults, not the previous values.
//!
//! `--wait` then follows the controller until it lists the service and,
//! with `--min` of 1 or more, until a replica is ready.

use std::collections::BTreeMap;
use std::time::Duration;

use rouse_nats::catalog::{self, ServiceRecord, Source};
use rouse_nats::config::ServiceConfig;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::connect::Endpoints;
use crate::exit::{fail, Code, Outcome};
use crate::output::{self, Format};
use crate::store::{self, Store};
use crate::wait::{self, Step};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("backend").required(true).args(["image", "command"])))]
pub struct Args {
    /// The service's name: 1 to 63 of a-z, 0-9 and -.
    #[arg(value_parser = crate::service_name)]
    pub name: String,
    /// Run containers of this image (docker backend); needs --port.
    #[arg(long, requires = "port", help_heading = "Backend")]
    pub image: Option<String>,
    /// The port the app listens on inside the container.
    #[arg(long, requires = "image", help_heading = "Backend")]
    pub port: Option<u16>,
    /// Run this command per replica (process backend); `{port}` becomes the
    /// replica's port. Everything after --command is the command, so it
    /// comes last.
    #[arg(
        long,
        num_args = 1..,
        allow_hyphen_values = true,
        value_name = "ARGV",
        help_heading = "Backend"
    )]
    pub command: Option<Vec<String>>,
    /// An environment variable of every replica (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, help_heading = "Backend")]
    pub env: Vec<(String, String)>,
    /// A host routed to the service: exact, `*.suffix` or `*` (repeatable).
    #[arg(
        long = "host",
        required = true,
        value_name = "HOST",
        help_heading = "Routing"
    )]
    pub hosts: Vec<String>,
    /// A path prefix routed to the service (repeatable) [default: /].
    #[arg(long = "path", value_name = "PATH", help_heading = "Routing")]
    pub paths: Vec<String>,
    /// Readiness probe: an HTTP path (`/healthz`) or `tcp` [default: tcp].
    #[arg(long, value_name = "PATH|tcp", value_parser = parse_readiness, help_heading = "Routing")]
    pub readiness: Option<Readiness>,
    /// scaling.min_replicas [default: 0].
    #[arg(long, value_name = "N", help_heading = "Scaling")]
    pub min: Option<u32>,
    /// scaling.max_replicas [default: 10].
    #[arg(long, value_name = "N", help_heading = "Scaling")]
    pub max: Option<u32>,
    /// scaling.target_concurrency: in-flight requests per replica [default: 10].
    #[arg(long, value_name = "N", help_heading = "Scaling")]
    pub target_concurrency: Option<f64>,
    /// scaling.target_rps: requests per second per replica.
    #[arg(long, value_name = "RPS", help_heading = "Scaling")]
    pub target_rps: Option<f64>,
    /// scaling.scale_to_zero_after [default: 60s].
    #[arg(long, value_parser = duration, value_name = "DURATION", help_heading = "Scaling")]
    pub scale_to_zero_after: Option<String>,
    /// hold.timeout: how long a request waits for a replica [default: 30s].
    #[arg(long, value_parser = duration, value_name = "DURATION", help_heading = "Scaling")]
    pub hold_timeout: Option<String>,
    /// Wait until the controller runs the service (and, with --min 1 or
    /// more, until a replica is ready).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `--readiness`: an HTTP GET of a path, or a TCP connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    HttpGet(String),
    Tcp,
}

fn parse_readiness(value: &str) -> Result<Readiness, String> {
    match value {
        "tcp" => Ok(Readiness::Tcp),
        path if path.starts_with('/') => Ok(Readiness::HttpGet(path.to_string())),
        _ => Err("an HTTP path (`/healthz`) or `tcp`".into()),
    }
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("`{value}` is not KEY=VALUE")),
    }
}

/// A humantime duration, kept as the text the config file would hold.
fn duration(value: &str) -> Result<String, String> {
    humantime::parse_duration(value)
        .map(|_| value.to_string())
        .map_err(|e| format!("`{value}` is not a duration (`30s`, `5m`): {e}"))
}

/// The flags as a `services[]` entry: JSON with only the keys given, so
/// serde fills in the file's defaults for the rest.
fn definition(args: &Args) -> Value {
    let env: BTreeMap<&str, &str> = args
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let backend = match (&args.image, &args.command) {
        (Some(image), _) => json!({"docker": {"image": image, "port": args.port, "env": env}}),
        (None, command) => json!({"process": {"command": command, "env": env}}),
    };
    let mut spec = Map::new();
    spec.insert("name".into(), json!(args.name));
    spec.insert("hosts".into(), json!(args.hosts));
    if !args.paths.is_empty() {
        spec.insert("paths".into(), json!(args.paths));
    }
    spec.insert("backend".into(), backend);
    match &args.readiness {
        Some(Readiness::HttpGet(path)) => {
            spec.insert("readiness".into(), json!({"http_get": path}));
        }
        Some(Readiness::Tcp) => {
            spec.insert("readiness".into(), json!({"tcp": true}));
        }
        None => {}
    }
    let mut scaling = Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            scaling.insert(key.into(), value);
        }
    };
    set("min_replicas", args.min.map(Value::from));
    set("max_replicas", args.max.map(Value::from));
    set(
        "target_concurrency",
        args.target_concurrency.map(Value::from),
    );
    set("target_rps", args.target_rps.map(Value::from));
    set(
        "scale_to_zero_after",
        args.scale_to_zero_after.clone().map(Value::from),
    );
    if !scaling.is_empty() {
        spec.insert("scaling".into(), Value::Object(scaling));
    }
    if let Some(timeout) = &args.hold_timeout {
        spec.insert("hold".into(), json!({"timeout": timeout}));
    }
    Value::Object(spec)
}

/// The flag a config key comes from, for messages about it.
fn flag_of(key: &str) -> Option<&'static str> {
    const FLAGS: &[(&str, &str)] = &[
        ("hosts", "--host"),
        ("paths", "--path"),
        ("backend.docker.image", "--image"),
        ("backend.docker.port", "--port"),
        ("backend.docker.env", "--env"),
        ("backend.process.command", "--command"),
        ("backend.process.env", "--env"),
        ("readiness", "--readiness"),
        ("scaling.min_replicas", "--min"),
        ("scaling.max_replicas", "--max"),
        ("scaling.target_concurrency", "--target-concurrency"),
        ("scaling.target_rps", "--target-rps"),
        ("scaling.scale_to_zero_after", "--scale-to-zero-after"),
        ("hold.timeout", "--hold-timeout"),
        ("name", "NAME"),
    ];
    FLAGS
        .iter()
        .find(|(prefix, _)| key.starts_with(prefix))
        .map(|(_, flag)| *flag)
}

/// The definition the flags make, checked as the file checks a service.
pub fn build(args: &Args) -> Outcome<ServiceConfig> {
    let spec: ServiceConfig = serde_json::from_value(definition(args))
        .map_err(|e| fail(Code::Usage, format!("invalid service `{}`: {e}", args.name)))?;
    if let Err(problems) = catalog::check_service(&spec) {
        let lines: Vec<String> = problems
            .iter()
            .map(|problem| {
                let key = problem
                    .strip_prefix("key `")
                    .and_then(|rest| rest.split('`').next())
                    .unwrap_or_default();
                match flag_of(key) {
                    Some(flag) => format!("  {problem} ({flag})"),
                    None => format!("  {problem}"),
                }
            })
            .collect();
        return Err(fail(
            Code::Usage,
            format!("invalid service `{}`:\n{}", args.name, lines.join("\n")),
        ));
    }
    Ok(spec)
}

/// What the deploy did, as `--output json` prints it.
#[derive(Debug, Serialize)]
struct Done<'a> {
    service: &'a str,
    /// `created`, `updated` or `unchanged`.
    action: &'static str,
    revision: u64,
}

pub async fn run(args: &Args, endpoints: &Endpoints, format: Format) -> Outcome {
    let spec = build(args)?;
    let store = Store::open(endpoints).await?;
    let current = store.get(&args.name).await?;
    if let Some(found) = &current {
        if let Ok(record) = &found.record {
            if record.source == Source::File {
                return Err(fail(
                    Code::Conflict,
                    format!(
                        "service `{}` is defined in the config file; change it there",
                        args.name
                    ),
                ));
            }
        }
    }
    let entries = store.list().await?;
    let in_force = catalog::merge(&[], &entries);
    if let Some(reason) = rouse_nats::config::route_conflict(&spec, in_force.specs()) {
        return Err(fail(
            Code::Conflict,
            format!("service `{}` not deployed: {reason}", args.name),
        ));
    }
    let unchanged = current.as_ref().is_some_and(|found| {
        found.record.as_ref().is_ok_and(|record| {
            serde_json::to_value(&record.spec).ok() == serde_json::to_value(&spec).ok()
        })
    });
    let (action, revision) = match &current {
        Some(found) if unchanged => ("unchanged", found.revision),
        Some(found) => ("updated", update(&store, &spec, found.revision).await?),
        None => ("created", create(&store, &spec).await?),
    };
    match format {
        Format::Json => output::json(&Done {
            service: &args.name,
            action,
            revision,
        })?,
        Format::Table => output::print(&format!(
            "service {} {action} (revision {revision})\n",
            args.name
        ))?,
    }
    if args.wait {
        wait_running(args, endpoints).await?;
    }
    Ok(())
}

fn record(spec: &ServiceConfig) -> bytes::Bytes {
    catalog::encode(&ServiceRecord::new(
        Source::Api,
        spec.clone(),
        store::writer(),
    ))
}

async fn create(store: &Store, spec: &ServiceConfig) -> Outcome<u64> {
    match store.services.create(&spec.name, record(spec)).await {
        Ok(revision) => Ok(revision),
        Err(err) => Err(store.write_failed(&spec.name, None, err.into()).await),
    }
}

async fn update(store: &Store, spec: &ServiceConfig, revision: u64) -> Outcome<u64> {
    match store
        .services
        .update(&spec.name, record(spec), revision)
        .await
    {
        Ok(revision) => Ok(revision),
        Err(err) => Err(store
            .write_failed(&spec.name, Some(revision), err.into())
            .await),
    }
}

/// Until the controller lists the service, and with `--min` ≥ 1 until one
/// replica is ready.
async fn wait_running(args: &Args, endpoints: &Endpoints) -> Outcome {
    let name = args.name.as_str();
    let need_ready = args.min.unwrap_or(0) >= 1;
    wait::until(
        &endpoints.controller,
        name,
        args.timeout,
        |look| match look {
            Err(reason) => Step::Waiting(format!("{name}: the controller: {reason}")),
            Ok(None) => Step::Waiting(format!("{name}: waiting for the controller to pick it up")),
            Ok(Some(row)) if need_ready && row.ready == 0 => {
                Step::Waiting(format!("{name}: {}", wait::replicas(row)))
            }
            Ok(Some(row)) if need_ready => Step::Done(format!("{name}: {}", wait::replicas(row))),
            Ok(Some(row)) => Step::Done(format!("{name}: running, {}", wait::replicas(row))),
        },
    )
    .await
}
