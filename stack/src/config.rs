//! Writes the one YAML config file both binaries read (DESIGN.md, "Config").
//!
//! The harness emits YAML by hand, with every string as a JSON string (a
//! valid YAML double-quoted scalar), so it needs no YAML library and the
//! text is predictable line by line: the `--check` tests rely on that to
//! break one key and compute the line number the error must name.
//!
//! Only keys from the DESIGN.md contract are written. Defaults suit tests:
//! fast load reports (200ms), nothing scales to zero unless a test asks
//! (`scale_to_zero_after: 300s`), short drains; a benchmark sets what it
//! measures with.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::bins::Bins;

/// A YAML scalar for `s`: a JSON string is a valid YAML double-quoted one.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A flow sequence of strings: `["a", "b"]`.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// One entry of `services:`.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub hosts: Vec<String>,
    /// `None`: the key is left out (the default is `["/"]`).
    pub paths: Option<Vec<String>>,
    /// `None`: `[<rouse-echo>, "--port", "{port}"]` plus [`Service::extra_args`].
    pub command: Option<Vec<String>>,
    /// Appended to the default rouse-echo command (e.g. `--startup-delay 10s`).
    pub extra_args: Vec<String>,
    /// Env of the replicas; the cluster adds its marker to it.
    pub env: BTreeMap<String, String>,
    /// `readiness.http_get`.
    pub readiness_http_get: String,
    /// `readiness.period`, when set.
    pub readiness_period: Option<String>,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_concurrency: u32,
    pub scale_to_zero_after: String,
    pub drain_timeout: String,
    pub hold_timeout: String,
    pub hold_max_requests: u32,
    /// More `hold:` keys, written as given (e.g. `browser_page: true`).
    pub hold_extra: Vec<(String, String)>,
    /// More `scaling:` keys, written as given (e.g. `container_concurrency: 4`).
    pub scaling_extra: Vec<(String, String)>,
    /// `backend.docker` keys, values written as given (YAML), instead of
    /// the process backend; `env` gets the marker as for processes.
    pub docker: Option<Vec<(String, String)>>,
    /// `backend.kubernetes` keys, when the service runs on a cluster.
    pub kubernetes: Option<Vec<(String, String)>>,
    /// More service keys, written as given (e.g. `resources: {cpus: 0.5}`).
    pub service_extra: Vec<(String, String)>,
    /// `backend.protocol` (`http1`, `h2c`, `auto`); `None` leaves it out.
    pub protocol: Option<String>,
}

impl Service {
    /// A rouse-echo service called `name` answering for `host`, at zero,
    /// with test-friendly defaults.
    pub fn new(name: &str, host: &str) -> Service {
        Service {
            name: name.to_string(),
            hosts: vec![host.to_string()],
            paths: None,
            command: None,
            extra_args: Vec::new(),
            env: BTreeMap::new(),
            readiness_http_get: "/healthz".to_string(),
            readiness_period: None,
            min_replicas: 0,
            max_replicas: 2,
            target_concurrency: 10,
            scale_to_zero_after: "300s".to_string(),
            drain_timeout: "5s".to_string(),
            hold_timeout: "30s".to_string(),
            hold_max_requests: 1000,
            hold_extra: Vec::new(),
            scaling_extra: Vec::new(),
            docker: None,
            kubernetes: None,
            service_extra: Vec::new(),
            protocol: None,
        }
    }

    /// Any other service key, its value as YAML (e.g. `("resources",
    /// "{cpus: 0.5}")`).
    pub fn key(mut self, key: &str, value: &str) -> Self {
        self.service_extra
            .push((key.to_string(), value.to_string()));
        self
    }

    /// A Kubernetes service: `backend.kubernetes` with these keys (values
    /// are YAML, e.g. `("deployment", "echo")`).
    pub fn kubernetes(mut self, keys: &[(&str, &str)]) -> Self {
        self.kubernetes = Some(
            keys.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }

    /// A containers service: `backend.docker` with these keys (values are
    /// YAML, e.g. `("image", "rouse:dev")`, `("args", "[--port, '8080']")`).
    pub fn docker(mut self, keys: &[(&str, &str)]) -> Self {
        self.docker = Some(
            keys.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }

    /// `backend.protocol`: the HTTP version the proxy speaks to replicas.
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.protocol = Some(protocol.to_string());
        self
    }

    /// How often ready replicas are re-probed.
    pub fn readiness_period(mut self, period: &str) -> Self {
        self.readiness_period = Some(period.to_string());
        self
    }

    /// Any other `scaling:` key (`stable_window`, `container_concurrency`, ...).
    pub fn scaling(mut self, key: &str, value: &str) -> Self {
        self.scaling_extra
            .push((key.to_string(), value.to_string()));
        self
    }

    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    pub fn paths(mut self, paths: &[&str]) -> Self {
        self.paths = Some(paths.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Replaces the whole backend command (no rouse-echo).
    pub fn command(mut self, argv: &[&str]) -> Self {
        self.command = Some(argv.iter().map(|a| a.to_string()).collect());
        self
    }

    /// Extra rouse-echo arguments, e.g. `&["--startup-delay", "10s"]`.
    pub fn echo_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    pub fn min_replicas(mut self, n: u32) -> Self {
        self.min_replicas = n;
        self
    }

    pub fn max_replicas(mut self, n: u32) -> Self {
        self.max_replicas = n;
        self
    }

    pub fn target_concurrency(mut self, n: u32) -> Self {
        self.target_concurrency = n;
        self
    }

    pub fn scale_to_zero_after(mut self, d: &str) -> Self {
        self.scale_to_zero_after = d.to_string();
        self
    }

    pub fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = d.to_string();
        self
    }

    pub fn hold_timeout(mut self, d: &str) -> Self {
        self.hold_timeout = d.to_string();
        self
    }

    /// Another `hold:` key, its value as YAML (e.g. `("browser_page", "true")`).
    pub fn hold_key(mut self, key: &str, value: &str) -> Self {
        self.hold_extra.push((key.to_string(), value.to_string()));
        self
    }

    pub fn hold_max_requests(mut self, n: u32) -> Self {
        self.hold_max_requests = n;
        self
    }

    /// The argv the controller will run, with rouse-echo from `bins`.
    pub fn argv(&self, bins: &Bins) -> Vec<String> {
        match &self.command {
            Some(argv) => argv.clone(),
            None => {
                let mut argv = vec![
                    bins.path("rouse-echo").to_string_lossy().into_owned(),
                    "--port".to_string(),
                    "{port}".to_string(),
                ];
                argv.extend(self.extra_args.iter().cloned());
                argv
            }
        }
    }

    /// `{nats_url}` in the command and the env stands for the stack's NATS.
    fn write_yaml(&self, out: &mut String, marker: &str, bins: &Bins, nats_url: &str) {
        let mut env: BTreeMap<String, String> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{nats_url}", nats_url)))
            .collect();
        env.insert(crate::MARKER_ENV.to_string(), marker.to_string());
        let _ = writeln!(out, "  - name: {}", q(&self.name));
        let _ = writeln!(out, "    hosts: {}", list(&self.hosts));
        if let Some(paths) = &self.paths {
            let _ = writeln!(out, "    paths: {}", list(paths));
        }
        out.push_str("    backend:\n");
        match (&self.docker, &self.kubernetes) {
            (_, Some(keys)) => {
                // The cluster runs the pods: no env of rouse's to pass.
                out.push_str("      kubernetes:\n");
                for (key, value) in keys {
                    let _ = writeln!(out, "        {key}: {value}");
                }
            }
            (Some(keys), None) => {
                out.push_str("      docker:\n");
                for (key, value) in keys {
                    let _ = writeln!(out, "        {key}: {value}");
                }
            }
            (None, None) => {
                out.push_str("      process:\n");
                let argv: Vec<String> = self
                    .argv(bins)
                    .iter()
                    .map(|arg| arg.replace("{nats_url}", nats_url))
                    .collect();
                let _ = writeln!(out, "        command: {}", list(&argv));
            }
        }
        if self.kubernetes.is_none() {
            out.push_str("        env:\n");
            for (key, value) in &env {
                let _ = writeln!(out, "          {}: {}", q(key), q(value));
            }
        }
        if let Some(protocol) = &self.protocol {
            let _ = writeln!(out, "      protocol: {}", q(protocol));
        }
        out.push_str("    readiness:\n");
        let _ = writeln!(out, "      http_get: {}", q(&self.readiness_http_get));
        if let Some(period) = &self.readiness_period {
            let _ = writeln!(out, "      period: {}", q(period));
        }
        out.push_str("    scaling:\n");
        let _ = writeln!(out, "      min_replicas: {}", self.min_replicas);
        let _ = writeln!(out, "      max_replicas: {}", self.max_replicas);
        let _ = writeln!(out, "      target_concurrency: {}", self.target_concurrency);
        let _ = writeln!(
            out,
            "      scale_to_zero_after: {}",
            q(&self.scale_to_zero_after)
        );
        let _ = writeln!(out, "      drain_timeout: {}", q(&self.drain_timeout));
        for (key, value) in &self.scaling_extra {
            let _ = writeln!(out, "      {key}: {value}");
        }
        out.push_str("    hold:\n");
        let _ = writeln!(out, "      timeout: {}", q(&self.hold_timeout));
        let _ = writeln!(out, "      max_requests: {}", self.hold_max_requests);
        // Every test and benchmark client is 127.0.0.1: one address stands
        // for many clients, so it gets the whole queue.
        let _ = writeln!(
            out,
            "      max_requests_per_client: {}",
            self.hold_max_requests
        );
        for (key, value) in &self.hold_extra {
            let _ = writeln!(out, "      {key}: {value}");
        }
        for (key, value) in &self.service_extra {
            let _ = writeln!(out, "    {key}: {value}");
        }
    }
}

/// The whole file.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// `nats.replicas`, when set (a stack on a NATS cluster).
    pub nats_replicas: Option<usize>,
    pub proxy_listen: SocketAddr,
    pub proxy_admin: SocketAddr,
    pub report_interval: String,
    /// `proxy.worker_threads`, when set (default: one per core).
    pub worker_threads: Option<u32>,
    /// More `proxy:` keys, each a YAML value (e.g. `tls`, `header_read_timeout`).
    pub proxy_extra: Vec<(String, String)>,
    pub controller_admin: SocketAddr,
    /// More `controller:` keys, each a YAML value (e.g. `leader_election`).
    pub controller_extra: Vec<(String, String)>,
    /// `controller.keda_listen`, when set (default: off).
    pub keda_listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    /// Put into every service's env as `ROUSE_E2E_MARKER`.
    pub marker: String,
    pub services: Vec<Service>,
    /// More `services:` items as YAML text (each `  - name: ...`), e.g.
    /// what `rouse-controller import` wrote. `{marker}` in it becomes the
    /// stack's marker, for the `ROUSE_E2E_MARKER` env of replicas.
    pub raw_services: String,
    /// Where the services' default command finds rouse-echo.
    pub bins: Bins,
}

impl Config {
    /// A config with fresh ports on 127.0.0.1, a 200ms report interval and no
    /// services.
    pub fn new(nats_url: &str, state_dir: &Path, marker: &str) -> Config {
        Config {
            nats_url: nats_url.to_string(),
            nats_replicas: None,
            proxy_listen: crate::free_addr(),
            proxy_admin: crate::free_addr(),
            report_interval: "200ms".to_string(),
            worker_threads: None,
            proxy_extra: Vec::new(),
            controller_admin: crate::free_addr(),
            controller_extra: Vec::new(),
            keda_listen: None,
            state_dir: state_dir.to_path_buf(),
            marker: marker.to_string(),
            services: Vec::new(),
            raw_services: String::new(),
            bins: Bins::default(),
        }
    }

    pub fn service(mut self, service: Service) -> Self {
        self.services.push(service);
        self
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        out.push_str("# written by rouse-stack\n");
        out.push_str("nats:\n");
        let _ = writeln!(out, "  url: {}", q(&self.nats_url));
        if let Some(replicas) = self.nats_replicas {
            let _ = writeln!(out, "  replicas: {replicas}");
        }
        out.push_str("proxy:\n");
        let _ = writeln!(out, "  listen: {}", q(&self.proxy_listen.to_string()));
        let _ = writeln!(out, "  admin_listen: {}", q(&self.proxy_admin.to_string()));
        let _ = writeln!(out, "  report_interval: {}", q(&self.report_interval));
        if let Some(threads) = self.worker_threads {
            let _ = writeln!(out, "  worker_threads: {threads}");
        }
        for (key, value) in &self.proxy_extra {
            let _ = writeln!(out, "  {key}: {value}");
        }
        out.push_str("controller:\n");
        let _ = writeln!(
            out,
            "  admin_listen: {}",
            q(&self.controller_admin.to_string())
        );
        let _ = writeln!(out, "  state_dir: {}", q(&self.state_dir.to_string_lossy()));
        for (key, value) in &self.controller_extra {
            let _ = writeln!(out, "  {key}: {value}");
        }
        if let Some(keda) = self.keda_listen {
            let _ = writeln!(out, "  keda_listen: {}", q(&keda.to_string()));
        }
        if self.services.is_empty() && self.raw_services.trim().is_empty() {
            out.push_str("services: []\n");
        } else {
            out.push_str("services:\n");
            for service in &self.services {
                service.write_yaml(&mut out, &self.marker, &self.bins, &self.nats_url);
            }
            out.push_str(&self.raw_services.replace("{marker}", &self.marker));
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Writes the YAML to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.to_yaml())
            .unwrap_or_else(|e| panic!("write config {}: {e}", path.display()));
    }
}

/// 1-based number of the first line of `yaml` whose trimmed text starts with
/// `prefix`, searching from line `after` (1-based, exclusive; 0 = from the top).
pub fn line_of(yaml: &str, prefix: &str, after: usize) -> Option<usize> {
    yaml.lines()
        .enumerate()
        .skip(after)
        .find(|(_, line)| line.trim_start().starts_with(prefix))
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_has_the_contract_keys_one_per_line() {
        let config = Config::new("nats://127.0.0.1:4222", Path::new("/tmp/s"), "m1").service(
            Service::new("echo", "echo.localhost")
                .command(&["/bin/echo-it", "--port", "{port}"])
                .paths(&["/api"]),
        );
        let yaml = config.to_yaml();
        for key in [
            "nats:",
            "url:",
            "proxy:",
            "listen:",
            "admin_listen:",
            "report_interval: \"200ms\"",
            "controller:",
            "state_dir: \"/tmp/s\"",
            "services:",
            "- name: \"echo\"",
            "hosts: [\"echo.localhost\"]",
            "paths: [\"/api\"]",
            "command: [\"/bin/echo-it\", \"--port\", \"{port}\"]",
            "\"ROUSE_E2E_MARKER\": \"m1\"",
            "http_get: \"/healthz\"",
            "scale_to_zero_after: \"300s\"",
            "max_requests: 1000",
        ] {
            assert!(line_of(&yaml, key, 0).is_some(), "missing {key} in\n{yaml}");
        }
        assert_eq!(line_of(&yaml, "nats:", 0), Some(2));
        let scaling = line_of(&yaml, "scaling:", 0).unwrap();
        assert!(line_of(&yaml, "min_replicas:", 0).unwrap() == scaling + 1);
        assert!(
            line_of(&yaml, "keda_listen:", 0).is_none(),
            "off unless asked"
        );
    }

    #[test]
    fn proxy_keys_go_under_proxy() {
        let mut config = Config::new("nats://127.0.0.1:4222", Path::new("/tmp/s"), "m1");
        config
            .proxy_extra
            .push(("tls".into(), "{certs: []}".into()));
        let yaml = config.to_yaml();
        let proxy = line_of(&yaml, "proxy:", 0).unwrap();
        let tls = line_of(&yaml, "tls: {certs: []}", 0).unwrap();
        assert!(tls > proxy && line_of(&yaml, "controller:", 0).unwrap() > tls);
    }

    #[test]
    fn keda_listen_goes_under_controller() {
        let mut config = Config::new("nats://127.0.0.1:4222", Path::new("/tmp/s"), "m1");
        config.keda_listen = Some(SocketAddr::from(([127, 0, 0, 1], 9095)));
        let yaml = config.to_yaml();
        let controller = line_of(&yaml, "controller:", 0).unwrap();
        let keda = line_of(&yaml, "keda_listen: \"127.0.0.1:9095\"", 0).unwrap();
        assert!(keda > controller && line_of(&yaml, "services:", 0).unwrap() > keda);
    }
}
