//! `proxy.access_log` and `proxy.tracing`: what the proxy tells about each
//! request, besides its metrics. Both are off unless their section is there.
//!
//! Only the shape and the checks plain values allow live here (a known
//! format, a ratio within 0..=1, an endpoint that is an http(s) URL); the
//! writer and the exporter are rouse-proxy's. The defaults sit with the
//! types so that each section reads in one place.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One line per request, written by a task of its own.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    #[serde(default)]
    pub format: AccessLogFormat,
    /// A file to append to, or `-` for standard output.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// The share of requests logged (0.0 to 1.0); a response of 500 or more
    /// is logged whatever this is.
    #[serde(default = "one")]
    pub sample: f64,
    /// Lines waiting for the writer; beyond it, lines are dropped and
    /// counted (`rouse_access_log_dropped_total`), never waited for.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Whether `path` keeps the query string (off: it may hold secrets).
    #[serde(default)]
    pub query: bool,
    /// Longest a written line waits in the buffer before it reaches the
    /// file; all are written at shutdown whatever this is.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
}

/// How an access log line looks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// nginx's `combined` format, rouse's fields after it.
    Combined,
}

/// OpenTelemetry traces over OTLP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector: `http://host:4317` for gRPC, `http://host:4318` (the
    /// path `/v1/traces` is added) for HTTP.
    #[serde(default = "default_otlp_endpoint")]
    pub otlp_endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces recorded (0.0 to 1.0); a request whose
    /// `traceparent` says sampled is always recorded.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

fn default_path() -> PathBuf {
    PathBuf::from("-")
}
fn one() -> f64 {
    1.0
}
fn default_buffer() -> usize {
    8192
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_otlp_endpoint() -> String {
    "http://127.0.0.1:4317".into()
}
fn default_service_name() -> String {
    "rouse-proxy".into()
}

/// Most lines `buffer` may hold: beyond this a stalled writer would hold
/// gigabytes.
const MAX_BUFFER: usize = 1 << 20;

/// Problems serde cannot see, as (key path, reason).
pub(super) fn check(
    access_log: Option<&AccessLogConfig>,
    tracing: Option<&TracingConfig>,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(log) = access_log {
        check_ratio("proxy.access_log.sample", log.sample, &mut problems);
        if log.buffer == 0 || log.buffer > MAX_BUFFER {
            problems.push((
                "proxy.access_log.buffer".into(),
                format!("must be 1 to {MAX_BUFFER} lines"),
            ));
        }
        if log.flush_interval.is_zero() || log.flush_interval > Duration::from_secs(24 * 3600) {
            problems.push((
                "proxy.access_log.flush_interval".into(),
                "must be above 0 and at most 24h".into(),
            ));
        }
        check_log_path(&log.path, &mut problems);
    }
    if let Some(tracing) = tracing {
        check_ratio(
            "proxy.tracing.sample_ratio",
            tracing.sample_ratio,
            &mut problems,
        );
        check_endpoint(&tracing.otlp_endpoint, &mut problems);
        if tracing.service_name.trim().is_empty() {
            problems.push(("proxy.tracing.service_name".into(), "is empty".into()));
        }
    }
    problems
}

fn check_log_path(path: &std::path::Path, problems: &mut Vec<(String, String)>) {
    let key = "proxy.access_log.path";
    if path.as_os_str().is_empty() {
        problems.push((key.into(), "is empty (use `-` for standard output)".into()));
        return;
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent.filter(|dir| !dir.is_dir()) {
        problems.push((
            key.into(),
            format!("the directory {} does not exist", dir.display()),
        ));
    }
}

fn check_ratio(key: &str, value: f64, problems: &mut Vec<(String, String)>) {
    if !(0.0..=1.0).contains(&value) {
        problems.push((key.into(), format!("{value} is not within 0.0 to 1.0")));
    }
}

fn check_endpoint(endpoint: &str, problems: &mut Vec<(String, String)>) {
    let key = "proxy.tracing.otlp_endpoint";
    let uri = match endpoint.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(err) => {
            problems.push((key.into(), format!("`{endpoint}` is not a URL: {err}")));
            return;
        }
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.authority().is_none() {
        problems.push((
            key.into(),
            format!("`{endpoint}` is not an http(s)://host:port URL"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, ConfigIssue};
    use super::*;

    fn parse(source: &str) -> Result<Config, Vec<ConfigIssue>> {
        match Config::parse(Path::new("rouse.yaml"), source) {
            Ok(config) => Ok(config),
            Err(ConfigError::Invalid(issues)) => Err(issues),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn both_are_off_unless_present_and_have_defaults() {
        let config = parse("proxy: {}\n").expect("valid");
        assert!(config.proxy.access_log.is_none());
        assert!(config.proxy.tracing.is_none());
        let config = parse("proxy:\n  access_log: {}\n  tracing: {}\n").expect("valid");
        let log = config.proxy.access_log.expect("access_log");
        assert_eq!(log.format, AccessLogFormat::Json);
        assert_eq!(log.path, PathBuf::from("-"));
        assert_eq!(log.sample, 1.0);
        assert!(!log.query);
        assert_eq!(log.flush_interval, Duration::from_secs(1));
        let tracing = config.proxy.tracing.expect("tracing");
        assert_eq!(tracing.protocol, OtlpProtocol::Grpc);
        assert_eq!(tracing.otlp_endpoint, "http://127.0.0.1:4317");
        assert_eq!(tracing.service_name, "rouse-proxy");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let source = "proxy:\n  access_log:\n    format: combined\n    sample: 1.5\n    buffer: 0\n  tracing:\n    otlp_endpoint: \"127.0.0.1:4317\"\n    protocol: http\n";
        let issues = parse(source).expect_err("accepted");
        let keys: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            keys,
            [
                ("proxy.access_log.sample", Some(4)),
                ("proxy.access_log.buffer", Some(5)),
                ("proxy.tracing.otlp_endpoint", Some(7)),
            ],
            "{issues:?}"
        );
    }

    #[test]
    fn a_log_in_a_missing_directory_is_an_error() {
        let source = "proxy:\n  access_log:\n    path: /no/such/dir/access.log\n";
        let issues = parse(source).expect_err("accepted");
        assert_eq!(issues[0].key, "proxy.access_log.path", "{issues:?}");
        assert_eq!(issues[0].line, Some(3));
        assert!(issues[0].reason.contains("/no/such/dir"), "{issues:?}");
    }

    #[test]
    fn unknown_keys_and_formats_are_errors() {
        let issues = parse("proxy:\n  access_log:\n    format: common\n").expect_err("accepted");
        assert_eq!(issues[0].key, "proxy.access_log.format", "{issues:?}");
        assert_eq!(issues[0].line, Some(3));
        let issues = parse("proxy:\n  tracing:\n    endpoint: x\n").expect_err("accepted");
        assert!(issues[0].reason.contains("endpoint"), "{issues:?}");
    }
}
