//! The one configuration file both binaries read.
//!
//! The proxy and the controller must agree on every service (its name, hosts,
//! scaling and hold limits), so they share one YAML file and these types.
//! Loading is strict: unknown keys are errors, durations are humantime strings,
//! and every error names the file, the line and the key, so that `--check`
//! can tell an operator exactly what to fix.

mod defaults;
mod limits;
mod locate;
mod observe;
mod scaling;
mod tls;
mod validate;

pub use validate::{route_conflict, route_key, route_keys};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use limits::{LimitsConfig, MAX_REQUEST_LINE, MIN_HEADER_BYTES};
pub use locate::LineIndex;
pub use observe::{AccessLogConfig, AccessLogFormat, OtlpProtocol, TracingConfig};
pub use scaling::{
    BehaviorConfig, MetricSpec, PolicySpec, PolicyType, ResourcesConfig, ScalingRules, SelectPolicy,
};
pub use tls::{CertKeyFiles, ProxyTlsConfig, TlsVersion};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// The file this was read from (by [`Config::load`]), for a reload.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// How to reach NATS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One server URL, or several separated by commas (the servers of one
    /// NATS cluster): the client picks one and fails over to the others.
    #[serde(default = "defaults::nats_url")]
    pub url: String,
    /// JetStream replicas of every bucket and stream rouse creates; 3 on a
    /// three-node cluster, so losing one node loses no state.
    #[serde(default = "defaults::nats_replicas")]
    pub replicas: usize,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Prefix of every subject; the KV bucket and stream names are fixed.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
}

/// Most JetStream replicas a stream may have (the server's own limit).
pub const MAX_NATS_REPLICAS: usize = 5;

impl NatsConfig {
    /// The servers `url` lists, in order; the first entry that is not a
    /// NATS server URL is the error, as a sentence naming it.
    pub fn servers(&self) -> Result<Vec<async_nats::ServerAddr>, String> {
        parse_servers(&self.url)
    }
}

/// `url` split at its commas, each entry parsed as async-nats parses it
/// (`host:port` gets `nats://`), and checked to name a host.
pub fn parse_servers(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let mut servers = Vec::new();
    for (i, entry) in url.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            return Err(if url.trim().is_empty() {
                "must name at least one NATS server".to_string()
            } else {
                format!("entry {} of the comma-separated list is empty", i + 1)
            });
        }
        let server: async_nats::ServerAddr = entry
            .parse()
            .map_err(|e| format!("`{entry}` is not a NATS server URL: {e}"))?;
        if server.host().is_empty() {
            return Err(format!("`{entry}` names no host"));
        }
        servers.push(server);
    }
    Ok(servers)
}

/// TLS towards NATS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "defaults::yes")]
    pub required: bool,
}

/// The data path.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default = "defaults::proxy_listen")]
    pub listen: SocketAddr,
    #[serde(default = "defaults::proxy_admin")]
    pub admin_listen: SocketAddr,
    #[serde(default = "defaults::report_interval", with = "humantime_serde")]
    pub report_interval: Duration,
    /// Identity in load reports; defaults to `<hostname>-<pid>`.
    #[serde(default)]
    pub id: Option<String>,
    /// Time a replica may take to send response headers before 504.
    #[serde(default = "defaults::response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Time to open a connection to a replica.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle pooled connections to replicas are closed after this.
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Time a client may take to send request headers.
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(default = "defaults::shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Runtime worker threads; defaults to the number of cores.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// What a request may carry (headers, request line, body).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// A file holding the bearer token `/api/...` on the admin port asks
    /// for; unset: `ROUSE_ADMIN_TOKEN`, else open.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// A TLS listener besides `listen` (off when unset).
    #[serde(default)]
    pub tls: Option<ProxyTlsConfig>,
    /// One line per request (off when unset).
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    /// OpenTelemetry traces over OTLP (off when unset).
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
}

/// What a controller does with its replicas when it is stopped (SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownPolicy {
    /// Stop every replica it started: nothing is left behind.
    Stop,
    /// Leave replicas running, for a restarted controller to adopt.
    Keep,
}

/// Scaling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default = "defaults::controller_admin")]
    pub admin_listen: SocketAddr,
    /// A file holding the bearer token `/api/...` asks for (e.g.
    /// `/api/v1/services`); unset: `ROUSE_ADMIN_TOKEN`, else open.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Where the process backend keeps its pid files and replica logs.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// How often each service is reconciled when nothing else wakes it.
    #[serde(default = "defaults::tick", with = "humantime_serde")]
    pub tick: Duration,
    /// What SIGTERM does to the replicas.
    #[serde(default = "defaults::on_shutdown")]
    pub on_shutdown: ShutdownPolicy,
    /// Names this controller's containers (label `rouse.controller`): a
    /// restarted controller with the same id adopts them, and controllers
    /// with other ids sharing the engine leave them alone.
    #[serde(default = "defaults::controller_id")]
    pub id: String,
    /// Serves KEDA's external scaler gRPC API here (off when unset).
    #[serde(default)]
    pub keda_listen: Option<SocketAddr>,
    /// Lets several controllers run, one leading (off when unset: this
    /// controller leads alone).
    #[serde(default)]
    pub leader_election: Option<LeaderElection>,
}

/// Which lease elects the leading controller, and its timing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElection {
    pub lease: LeaseKind,
    /// The lease's name: a `coordination.k8s.io` Lease, or a key of the
    /// NATS KV bucket `<prefix>-leases`.
    #[serde(default = "defaults::lease_name")]
    pub name: String,
    /// Namespace of the Kubernetes Lease.
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// A lease not renewed this long (by the standby's own clock) is taken.
    #[serde(default = "defaults::lease_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// How often the leader renews and standbys look.
    #[serde(default = "defaults::lease_retry", with = "humantime_serde")]
    pub retry_period: Duration,
    /// This controller's name in the lease; default `<hostname>-<pid>`.
    #[serde(default)]
    pub identity: Option<String>,
}

/// Where the lease lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// A NATS KV key (processes, Docker: wherever NATS is).
    Nats,
    /// A `coordination.k8s.io/v1` Lease.
    Kubernetes,
}

/// One service: where its traffic comes from and what serves it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// Hosts routed to this service; a queue worker (a `queue` metric)
    /// needs none.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "defaults::paths")]
    pub paths: Vec<String>,
    pub backend: BackendConfig,
    #[serde(default)]
    pub readiness: ReadinessConfig,
    #[serde(default)]
    pub scaling: ScalingConfig,
    /// What one replica is sized for: the denominators of `cpu` and
    /// `memory` utilization targets.
    #[serde(default)]
    pub resources: ResourcesConfig,
    #[serde(default)]
    pub hold: HoldConfig,
    /// Overrides `proxy.response_timeout` for this service.
    #[serde(default, with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    /// Largest request body accepted; more → 413. Overrides
    /// `proxy.limits.max_body`.
    #[serde(default)]
    pub max_body: Option<bytesize::ByteSize>,
}

impl ServiceConfig {
    /// The cores one replica is sized for: `resources.cpus`, else the
    /// smallest docker `cpus` limit among its backends, else one core.
    pub fn replica_cpus(&self) -> f64 {
        self.resources
            .cpus
            .or_else(|| {
                self.dockers()
                    .filter_map(|docker| docker.cpus)
                    .reduce(f64::min)
            })
            .unwrap_or(1.0)
    }

    /// The memory one replica is sized for: `resources.memory`, else the
    /// smallest docker `memory` limit when every backend (every pool) is a
    /// docker one with a limit; `None` otherwise.
    pub fn replica_memory(&self) -> Option<u64> {
        if let Some(memory) = self.resources.memory {
            return Some(memory.as_u64());
        }
        let backends = self.backend.each();
        let limits: Option<Vec<u64>> = backends
            .iter()
            .map(|backend| match backend {
                Backend::Docker(docker) => docker.memory.map(|m| m.as_u64()),
                _ => None,
            })
            .collect();
        limits.and_then(|limits| limits.into_iter().min())
    }

    fn dockers(&self) -> impl Iterator<Item = &DockerBackend> {
        self.backend
            .each()
            .into_iter()
            .filter_map(|backend| match backend {
                Backend::Docker(docker) => Some(docker),
                _ => None,
            })
    }
}

/// Exactly one backend per service: `process`, `docker` or `kubernetes`,
/// or overflow `pools` of them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    #[serde(default)]
    pub process: Option<ProcessBackend>,
    #[serde(default)]
    pub docker: Option<DockerBackend>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesBackend>,
    /// Overflow pools in priority order: the first is filled to its
    /// `max_replicas` before the next gets any; scale-down empties the
    /// last first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolConfig>,
    /// How proxies spread requests over the pools' replicas.
    #[serde(default)]
    pub prefer: PoolPreference,
    /// The HTTP version proxies speak to the replicas.
    #[serde(default)]
    pub protocol: BackendProtocol,
}

/// The HTTP version proxies speak to a service's replicas (cleartext).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendProtocol {
    /// HTTP/1.1 for every request, whatever the client spoke.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge for every request (gRPC needs this):
    /// one multiplexed connection per replica and proxy thread.
    H2c,
    /// The client's version: HTTP/2 requests go out as h2c, HTTP/1.x ones
    /// as HTTP/1.1.
    Auto,
}

/// One overflow pool: a name, a cap, and exactly one backend.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub max_replicas: u32,
    #[serde(default)]
    pub process: Option<ProcessBackend>,
    #[serde(default)]
    pub docker: Option<DockerBackend>,
    #[serde(default)]
    pub kubernetes: Option<KubernetesBackend>,
}

/// Which replicas a proxy picks when several pools serve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolPreference {
    /// The least busy replica, whatever its pool.
    #[default]
    Any,
    /// The least busy replica, ties going to the earlier pool: an idle
    /// first pool takes the traffic, later pools take what overflows.
    First,
}

/// The backend a service (or a pool) selected.
#[derive(Debug, Clone, Copy)]
pub enum Backend<'a> {
    Process(&'a ProcessBackend),
    Docker(&'a DockerBackend),
    Kubernetes(&'a KubernetesBackend),
    Pools(&'a [PoolConfig]),
}

fn select<'a>(
    process: &'a Option<ProcessBackend>,
    docker: &'a Option<DockerBackend>,
    kubernetes: &'a Option<KubernetesBackend>,
) -> Option<Backend<'a>> {
    match (process, docker, kubernetes) {
        (Some(p), None, None) => Some(Backend::Process(p)),
        (None, Some(d), None) => Some(Backend::Docker(d)),
        (None, None, Some(k)) => Some(Backend::Kubernetes(k)),
        _ => None,
    }
}

impl BackendConfig {
    /// The one backend configured; validation guarantees there is exactly one.
    pub fn selected(&self) -> Option<Backend<'_>> {
        if !self.pools.is_empty() {
            return (self.count() == 0).then_some(Backend::Pools(&self.pools));
        }
        select(&self.process, &self.docker, &self.kubernetes)
    }

    /// Every backend the service may run replicas on: its one backend, or
    /// each pool's.
    pub fn each(&self) -> Vec<Backend<'_>> {
        if self.pools.is_empty() {
            self.selected().into_iter().collect()
        } else {
            self.pools.iter().filter_map(PoolConfig::selected).collect()
        }
    }

    pub(crate) fn count(&self) -> usize {
        usize::from(self.process.is_some())
            + usize::from(self.docker.is_some())
            + usize::from(self.kubernetes.is_some())
    }
}

impl PoolConfig {
    /// The pool's one backend; validation guarantees there is exactly one.
    pub fn selected(&self) -> Option<Backend<'_>> {
        select(&self.process, &self.docker, &self.kubernetes)
    }

    pub(crate) fn count(&self) -> usize {
        usize::from(self.process.is_some())
            + usize::from(self.docker.is_some())
            + usize::from(self.kubernetes.is_some())
    }
}

/// Local processes: the embedded default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessBackend {
    /// argv; `{port}` in any element is replaced by the replica's port.
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    /// After SIGTERM, SIGKILL follows this much later.
    #[serde(default = "defaults::grace_period", with = "humantime_serde")]
    pub grace_period: Duration,
    /// A replica not ready this long after it was started is replaced.
    #[serde(default = "defaults::startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
}

/// Docker containers through the Engine API (`DOCKER_HOST`, default the
/// local unix socket). Keys follow `docker run`; `command` and `args` follow
/// Kubernetes: `command` replaces the image's ENTRYPOINT, `args` its CMD.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerBackend {
    pub image: String,
    /// The port the app listens on inside the container. On the `host`
    /// network each replica gets a free port instead, in `PORT` and `{port}`.
    pub port: u16,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the image's ENTRYPOINT; `{port}` is replaced as for processes.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replaces the image's CMD; `{port}` is replaced as for processes.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `host`, or a user network, created by the controller when missing.
    #[serde(default = "defaults::docker_network")]
    pub network: String,
    /// How proxies reach a replica (ignored on the `host` network).
    #[serde(default)]
    pub address: DockerAddress,
    /// Where `address: published` ports are bound on the engine's host.
    #[serde(default = "defaults::publish_ip")]
    pub publish_ip: std::net::IpAddr,
    /// Added to the container's labels (`rouse.*` ones are rouse's own).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `docker run -v` syntax: `source:target[:options]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Memory limit, e.g. `256MiB` (`m` alone means MB, 10^6 bytes).
    #[serde(default)]
    pub memory: Option<bytesize::ByteSize>,
    /// CPU limit in cores, e.g. `0.5`.
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pull: PullPolicy,
    /// The engine's stop timeout: SIGTERM, then SIGKILL this much later.
    #[serde(default = "defaults::grace_period", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// A replica not ready this long after it was started is replaced.
    #[serde(default = "defaults::startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Heed the image's HEALTHCHECK, when it has one: once the engine has
    /// checked, `healthy` puts a replica in rotation and `unhealthy` takes it
    /// out (before that, `readiness` probes decide). `false` turns the check
    /// off in the container.
    #[serde(default = "defaults::yes")]
    pub healthcheck: bool,
}

/// How proxies reach a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DockerAddress {
    /// A port the engine publishes on `publish_ip`: the proxy runs on the
    /// engine's host, outside its networks.
    #[default]
    Published,
    /// The container's own address on `network`: the proxy shares that
    /// network (compose) or routes to it (Linux hosts reach bridge networks).
    Container,
}

/// When the controller pulls a service's image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Only when the engine does not have it.
    #[default]
    IfNotPresent,
    /// Before every scale-up, so a moved tag is followed.
    Always,
    /// Never: a missing image is an error.
    Never,
}

/// A Kubernetes workload scaled through its `/scale` subresource; its
/// replicas are the pods of `service`'s EndpointSlices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesBackend {
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    /// Shorthand for `target: {kind: Deployment, name: ...}`.
    #[serde(default)]
    pub deployment: Option<String>,
    /// Any resource with a `/scale` subresource (StatefulSet, a custom
    /// resource); exactly one of `deployment` and `target`.
    #[serde(default)]
    pub target: Option<ScaleTarget>,
    /// The Service whose EndpointSlices list the pods.
    pub service: String,
    /// The pod port the proxies connect to: a number or an EndpointSlice
    /// port name. Unset, or a Service port that no slice lists (80 in front
    /// of a pod's 8080), with slices of one port: that port.
    #[serde(default)]
    pub port: Option<PortRef>,
    /// A requested pod not ready this long is given up on (and replaced).
    #[serde(
        default = "defaults::kubernetes_startup_timeout",
        with = "humantime_serde"
    )]
    pub startup_timeout: Duration,
}

/// What `/scale` is patched on, as KEDA's `scaleTargetRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleTarget {
    pub kind: String,
    pub name: String,
    /// `group/version`; defaults to `apps/v1` for Deployment, StatefulSet
    /// and ReplicaSet, required for anything else.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The resource's plural name when it is not `<kind in lowercase>s`.
    #[serde(default)]
    pub plural: Option<String>,
}

impl ScaleTarget {
    /// The API version, with the default for the built-in workloads.
    pub fn api_version(&self) -> Option<&str> {
        match (&self.api_version, self.kind.as_str()) {
            (Some(version), _) => Some(version),
            (None, "Deployment" | "StatefulSet" | "ReplicaSet") => Some("apps/v1"),
            (None, _) => None,
        }
    }
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl KubernetesBackend {
    /// The scale target; validation guarantees one of the two keys.
    pub fn scale_target(&self) -> Option<ScaleTarget> {
        match (&self.deployment, &self.target) {
            (Some(name), None) => Some(ScaleTarget {
                kind: "Deployment".into(),
                name: name.clone(),
                api_version: Some("apps/v1".into()),
                plural: None,
            }),
            (None, Some(target)) => Some(target.clone()),
            _ => None,
        }
    }
}

/// How the controller decides a replica may receive traffic.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// Ready when `GET <path>` answers 2xx.
    #[serde(default)]
    pub http_get: Option<String>,
    /// Ready when the port accepts a TCP connection.
    #[serde(default)]
    pub tcp: Option<bool>,
    /// Interval of the liveness re-check of ready replicas.
    #[serde(default = "defaults::probe_period", with = "humantime_serde")]
    pub period: Duration,
}

/// The kind of probe a service's readiness config selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    HttpGet(String),
    Tcp,
}

impl ReadinessConfig {
    /// `http_get` wins when given; a service with neither uses a TCP probe.
    pub fn probe(&self) -> Probe {
        match &self.http_get {
            Some(path) => Probe::HttpGet(path.clone()),
            None => Probe::Tcp,
        }
    }
}

/// Autoscaling knobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingConfig {
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "defaults::max_replicas")]
    pub max_replicas: u32,
    /// In-flight requests per replica to aim for.
    #[serde(default = "defaults::target_concurrency")]
    pub target_concurrency: f64,
    /// Requests per second per replica to aim for; the larger need wins.
    #[serde(default)]
    pub target_rps: Option<f64>,
    #[serde(default = "defaults::scale_to_zero_after", with = "humantime_serde")]
    pub scale_to_zero_after: Duration,
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Concurrency is averaged over this window to decide scale-down.
    #[serde(default = "defaults::stable_window", with = "humantime_serde")]
    pub stable_window: Duration,
    /// Concurrency is averaged over this shorter window to react to bursts.
    /// Unset: a tenth of `stable_window` (6s with the defaults), as
    /// Knative's panic-window percentage; read it with
    /// [`ScalingConfig::panic_window`].
    #[serde(default, rename = "panic_window", with = "humantime_serde")]
    pub panic_window_setting: Option<Duration>,
    /// Panic (scale up at once, no scale-down) when the panic-window need
    /// reaches this multiple of the current replicas.
    #[serde(default = "defaults::panic_threshold")]
    pub panic_threshold: f64,
    /// One scale-down step divides the replica count by at most this.
    #[serde(default = "defaults::max_scale_down_rate")]
    pub max_scale_down_rate: f64,
    /// Minimum time between two scale-down steps.
    #[serde(default = "defaults::scale_down_step", with = "humantime_serde")]
    pub scale_down_step: Duration,
    /// Most requests a proxy sends one replica at once; 0 = no limit. The rest
    /// wait in the service's queue and count as held.
    #[serde(default)]
    pub container_concurrency: u32,
    /// Who sets the replica count: rouse's autoscaler, or KEDA through the
    /// external scaler API (`controller.keda_listen`).
    #[serde(default)]
    pub driver: ScalingDriver,
    /// Signals to scale on; the largest need wins. Empty: concurrency at
    /// `target_concurrency` (and rate at `target_rps` when set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricSpec>,
    /// Utilization-style signals (cpu, memory, queue) within this share of
    /// their target leave the count alone, as HPA's tolerance.
    #[serde(default = "defaults::tolerance")]
    pub tolerance: f64,
    /// HPA-style stabilization windows and rate policies.
    #[serde(default)]
    pub behavior: BehaviorConfig,
}

/// Who sets a service's replica count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalingDriver {
    /// rouse's autoscaler.
    #[default]
    Rouse,
    /// KEDA (a ScaledObject of type `external-push` pointing at rouse):
    /// rouse still holds, wakes and forwards, and follows the replicas
    /// KEDA's HPA makes, but never scales the target itself.
    Keda,
}

impl ScalingConfig {
    /// The signals this service scales on: `metrics`, plus the shorthands.
    /// `target_concurrency` counts only when `metrics` lists nothing (it
    /// still sizes a wake and a held backlog); `target_rps` always adds
    /// a rate signal.
    pub fn signals(&self) -> Vec<MetricSpec> {
        let mut signals = self.metrics.clone();
        if signals.is_empty() {
            signals.push(MetricSpec::Concurrency {
                target: self.target_concurrency,
            });
        }
        if let Some(target) = self.target_rps {
            signals.push(MetricSpec::Rps { target });
        }
        signals
    }

    /// The queue signal, if the service has one.
    pub fn queue(&self) -> Option<(&str, &str, f64)> {
        self.metrics.iter().find_map(|m| match m {
            MetricSpec::Queue {
                stream,
                consumer,
                target,
            } => Some((stream.as_str(), consumer.as_str(), *target)),
            _ => None,
        })
    }

    /// The panic window: as configured, else a tenth of the stable window.
    pub fn panic_window(&self) -> Duration {
        self.panic_window_setting
            .unwrap_or(self.stable_window / defaults::PANIC_WINDOW_DIVISOR)
    }
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            min_replicas: 0,
            max_replicas: defaults::max_replicas(),
            target_concurrency: defaults::target_concurrency(),
            target_rps: None,
            scale_to_zero_after: defaults::scale_to_zero_after(),
            drain_timeout: defaults::drain_timeout(),
            stable_window: defaults::stable_window(),
            panic_window_setting: None,
            panic_threshold: defaults::panic_threshold(),
            max_scale_down_rate: defaults::max_scale_down_rate(),
            scale_down_step: defaults::scale_down_step(),
            container_concurrency: 0,
            driver: ScalingDriver::Rouse,
            metrics: Vec::new(),
            tolerance: defaults::tolerance(),
            behavior: BehaviorConfig::default(),
        }
    }
}

/// Where the waiting page's event stream is served (`hold.browser_page`):
/// on every host of such a service, this path is the proxy's, not the app's.
pub const WAIT_EVENTS_PATH: &str = "/__rouse/wait/events";

/// The path prefix the proxy keeps for itself on a `hold.browser_page`
/// service (see [`WAIT_EVENTS_PATH`]).
pub const RESERVED_PREFIX: &str = "/__rouse";

/// Limits of the proxy's wait queue for a cold service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HoldConfig {
    #[serde(default = "defaults::hold_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "defaults::hold_max_requests")]
    pub max_requests: usize,
    /// Held requests of one client address at once; more → 429. Defaults
    /// to a quarter of `max_requests`, so one client cannot fill the queue.
    #[serde(default)]
    pub max_requests_per_client: Option<usize>,
    /// A browser navigating to the service while it is at zero gets a small
    /// waiting page at once (live progress, then a reload into the app)
    /// instead of a blank tab; other clients are held as always.
    #[serde(default)]
    pub browser_page: bool,
}

impl HoldConfig {
    /// `max_requests_per_client`, or its default share of `max_requests`.
    pub fn per_client_limit(&self) -> usize {
        self.max_requests_per_client
            .unwrap_or((self.max_requests / 4).max(1))
    }
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            timeout: defaults::hold_timeout(),
            max_requests: defaults::hold_max_requests(),
            max_requests_per_client: None,
            browser_page: false,
        }
    }
}

macro_rules! default_via_serde {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                // Every field has a serde default, so an empty map is valid.
                serde_norway::from_str("{}").unwrap_or_else(|e| unreachable!("{e}"))
            }
        }
    )*};
}
default_via_serde!(NatsConfig, ProxyConfig, ControllerConfig);

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `services[1].scaling.drain_timeout`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.reason)
        }
    }
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", join_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn join_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(path, &source)?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates `source`; `path` is only used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Self, ConfigError> {
        let index = LineIndex::new(source);
        let issue = |key: String, reason: String, fallback: Option<usize>| ConfigIssue {
            file: path.to_path_buf(),
            line: index.line_of(&key).or(fallback),
            key,
            reason,
        };
        let deserializer = serde_norway::Deserializer::from_str(source);
        let config: Config = match serde_path_to_error::deserialize(deserializer) {
            Ok(config) => config,
            Err(err) => {
                let key = err.path().to_string();
                let inner = err.into_inner();
                let line = inner.location().map(|l| l.line());
                let key = if key == "." { String::new() } else { key };
                let reason = strip_location(&inner.to_string());
                // serde_norway prefixes the message with the path it knows.
                let reason = match reason.split_once(": ") {
                    Some((path, rest)) if !path.is_empty() && key.starts_with(path) => {
                        rest.to_string()
                    }
                    _ => reason,
                };
                return Err(ConfigError::Invalid(vec![issue(key, reason, line)]));
            }
        };
        let problems = validate::check(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(
                problems
                    .into_iter()
                    .map(|(key, reason)| issue(key, reason, None))
                    .collect(),
            ))
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl ServiceConfig {
    /// Every problem of this service on its own, as (key relative to the
    /// service, reason): the file's own checks, for a definition that comes
    /// from elsewhere (the catalog).
    pub fn problems(&self) -> Vec<(String, String)> {
        validate::check_one(self)
    }
}

/// serde_norway appends " at line L column C"; the issue carries the line itself.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests;
