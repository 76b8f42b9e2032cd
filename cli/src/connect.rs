//! Finding NATS and the controller: flags, environment, rouse's own config.
//!
//! An operator on the controller's machine already has the config file, so
//! `--config`/`ROUSE_CONFIG` is enough: `nats.*` (URL, credentials, TLS,
//! prefix) and `controller.admin_listen`/`admin_token_file` come from it,
//! read with the binaries' own loader. `--nats-url` and `--controller`
//! override single values (or stand alone, with the defaults of the file).
//! NATS is reached through `rouse_nats::bus::connect`, so every auth and
//! TLS option works exactly as in the proxy and the controller.
//!
//! `bus::connect` returns at once and keeps retrying (right for a daemon);
//! a command instead waits `--connect-timeout` for the first connection and
//! then fails with exit code 1, naming the URL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use reqwest::StatusCode;
use rouse_nats::config::{Config, NatsConfig};

use crate::exit::{fail, Code, OrExit, Outcome};

/// The controller's admin address when nothing names one.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:9091";

/// Where to find NATS and the controller (global flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// rouse's config file: `nats.*` and `controller.admin_listen` (and
    /// `controller.admin_token_file`) are read from it.
    #[arg(
        long,
        env = "ROUSE_CONFIG",
        global = true,
        help_heading = "Connection",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// NATS URL, instead of the config's `nats.url` [default:
    /// nats://127.0.0.1:4222].
    #[arg(
        long,
        env = "ROUSE_NATS_URL",
        global = true,
        help_heading = "Connection",
        value_name = "URL"
    )]
    pub nats_url: Option<String>,
    /// The controller's admin server, instead of the config's
    /// `controller.admin_listen` [default: http://127.0.0.1:9091].
    #[arg(
        long,
        env = "ROUSE_CONTROLLER",
        global = true,
        help_heading = "Connection",
        value_name = "URL"
    )]
    pub controller: Option<String>,
    /// File holding the bearer token of the controller's /api; else
    /// ROUSE_ADMIN_TOKEN, else the config's `controller.admin_token_file`.
    #[arg(long, global = true, help_heading = "Connection", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How long NATS and the controller get to answer.
    #[arg(
        long,
        global = true,
        help_heading = "Connection",
        value_name = "DURATION",
        default_value = "5s",
        value_parser = humantime::parse_duration
    )]
    pub connect_timeout: Duration,
}

/// Everything resolved: what to connect to, and how.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub nats: NatsConfig,
    pub controller: Controller,
    pub timeout: Duration,
}

impl Target {
    /// Reads the config file (if named) and applies the overrides. A config
    /// that does not load is a usage error (exit 2) naming file, line, key.
    pub fn resolve(&self) -> Outcome<Endpoints> {
        let config = match &self.config {
            Some(path) => Some(
                Config::load(path)
                    .context("cannot use the config file")
                    .or_exit(Code::Usage)?,
            ),
            None => None,
        };
        let mut nats = config.as_ref().map(|c| c.nats.clone()).unwrap_or_default();
        if let Some(url) = &self.nats_url {
            nats.url.clone_from(url);
        }
        let base = match (&self.controller, &config) {
            (Some(url), _) => normalise_url(url),
            (None, Some(config)) => admin_url(config.controller.admin_listen),
            (None, None) => DEFAULT_CONTROLLER.to_string(),
        };
        let token = self.token(config.as_ref())?;
        let controller = Controller::new(base, token, self.connect_timeout)?;
        Ok(Endpoints {
            nats,
            controller,
            timeout: self.connect_timeout,
        })
    }

    /// `--token-file`, else `ROUSE_ADMIN_TOKEN`, else the config's file.
    fn token(&self, config: Option<&Config>) -> Outcome<Option<String>> {
        if let Some(file) = &self.token_file {
            return read_token(file).map(Some);
        }
        let env = std::env::var(rouse_nats::admin::TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        if env.is_some() {
            return Ok(env);
        }
        match config.and_then(|c| c.controller.admin_token_file.as_ref()) {
            Some(file) => read_token(file).map(Some),
            None => Ok(None),
        }
    }
}

fn read_token(file: &std::path::Path) -> Outcome<String> {
    rouse_nats::admin::read_token(file)
        .with_context(|| format!("cannot read the token file {}", file.display()))
        .or_exit(Code::Usage)
}

/// `host:port` gets `http://`; a trailing `/` goes.
fn normalise_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The URL of an admin listen address; a wildcard address (`0.0.0.0`) is
/// reached on loopback.
fn admin_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// A connected NATS client with its JetStream context.
pub struct Nats {
    pub js: jetstream::Context,
    pub prefix: String,
    pub url: String,
    /// `nats.replicas`, for a bucket or stream the CLI creates.
    pub replicas: usize,
    /// How long one call may take (`--connect-timeout`); idempotent ones
    /// are retried for [`crate::retry::budget`] of it.
    pub timeout: Duration,
}

impl Endpoints {
    /// Connects to NATS and waits (at most the timeout) until connected.
    pub async fn nats(&self) -> Outcome<Nats> {
        let url = self.nats.url.clone();
        let bus = rouse_nats::bus::connect(&self.nats, "rouse-cli")
            .await
            .or_exit(Code::Unreachable)?;
        let mut connects = bus.connects.clone();
        let connected = tokio::time::timeout(self.timeout, connects.wait_for(|n| *n > 0)).await;
        if !matches!(connected, Ok(Ok(_))) {
            return Err(fail(
                Code::Unreachable,
                format!(
                    "cannot reach NATS at {url}: not connected within {} \
                     (is nats-server running there, and are the nats.* \
                     credentials right?)",
                    humantime::format_duration(self.timeout)
                ),
            ));
        }
        let mut js = jetstream::new(bus.client);
        js.set_timeout(self.timeout);
        Ok(Nats {
            js,
            prefix: self.nats.prefix.clone(),
            url,
            replicas: bus.replicas,
            timeout: self.timeout,
        })
    }
}

/// The controller's admin API.
#[derive(Debug, Clone)]
pub struct Controller {
    http: reqwest::Client,
    pub base: String,
    token: Option<String>,
}

impl Controller {
    fn new(base: String, token: Option<String>, timeout: Duration) -> Outcome<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .context("cannot build an HTTP client")
            .or_exit(Code::Unreachable)?;
        Ok(Self { http, base, token })
    }

    /// `GET <base><path>` as JSON; a refused token or any other non-2xx is
    /// exit code 1 with what the controller said.
    pub async fn get_json(&self, path: &str) -> Outcome<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            fail(
                Code::Unreachable,
                format!(
                    "cannot reach the controller at {}: {} \
                         (is rouse-controller running? see --controller, --config)",
                    self.base,
                    describe(&e)
                ),
            )
        })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            let hint = if self.token.is_some() {
                "it refused the token given"
            } else {
                "it asks for a token: set ROUSE_ADMIN_TOKEN or --token-file"
            };
            return Err(fail(Code::Unreachable, format!("GET {url}: 401: {hint}")));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(fail(
                Code::Unreachable,
                format!("GET {url}: {status}: {}", body.trim()),
            ));
        }
        response
            .json()
            .await
            .with_context(|| format!("GET {url}: the answer is not JSON"))
            .or_exit(Code::Unreachable)
    }
}

/// reqwest's error, short: its innermost cause ("Connection refused (os
/// error 111)"), or "no answer in time".
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    let mut last: &dyn std::error::Error = error;
    while let Some(cause) = last.source() {
        last = cause;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:9091".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(admin_url(any), "http://127.0.0.1:9091");
        let v6: SocketAddr = "[::]:9091".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(admin_url(v6), "http://[::1]:9091");
        let fixed: SocketAddr = "10.0.0.2:80".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(admin_url(fixed), "http://10.0.0.2:80");
    }

    #[test]
    fn bare_addresses_get_a_scheme() {
        assert_eq!(normalise_url("127.0.0.1:9091/"), "http://127.0.0.1:9091");
        assert_eq!(normalise_url("https://c.example"), "https://c.example");
    }
}
