//! Checks that serde cannot express: names, ranges, and conflicts between
//! services. Each problem is reported as (key path, reason); the caller adds
//! the file and line.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    Backend, BackendConfig, Config, DockerBackend, KubernetesBackend, LeaderElection, LimitsConfig,
    MetricSpec, PortRef, ScalingDriver, ScalingRules, ServiceConfig, MAX_REQUEST_LINE,
    MIN_HEADER_BYTES,
};

type Problems = Vec<(String, String)>;

/// Every problem in `config`, in file order.
pub fn check(config: &Config) -> Problems {
    let mut problems = Problems::new();
    check_globals(config, &mut problems);
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut routes: HashMap<(String, String), &str> = HashMap::new();
    for (i, service) in config.services.iter().enumerate() {
        let at = format!("services[{i}]");
        if let Some(first) = names.insert(&service.name, i) {
            problems.push((
                format!("{at}.name"),
                format!(
                    "service name `{}` is already used by services[{first}]",
                    service.name
                ),
            ));
        }
        check_service(&at, service, &mut problems);
        check_routes(&at, service, &mut routes, &mut problems);
    }
    problems
}

/// Every problem of one service on its own (not its routes against other
/// services'), with keys relative to the service (`scaling.max_replicas`):
/// what a definition outside the file (the catalog) must pass.
pub fn check_one(service: &ServiceConfig) -> Problems {
    let mut problems = Problems::new();
    check_service("", service, &mut problems);
    for (key, _) in &mut problems {
        if let Some(relative) = key.strip_prefix('.') {
            *key = relative.to_string();
        }
    }
    problems
}

/// How a host+path pair is compared with another: host case-folded, path
/// without its trailing slashes.
pub fn route_key(host: &str, path: &str) -> (String, String) {
    (host.to_ascii_lowercase(), normalise_path(path))
}

/// Every host+path pair `spec` routes, as compared.
pub fn route_keys(spec: &ServiceConfig) -> impl Iterator<Item = (String, String)> + '_ {
    spec.hosts
        .iter()
        .flat_map(|host| spec.paths.iter().map(move |path| route_key(host, path)))
}

/// The first host+path pair of `candidate` that one of `others` (by name,
/// not `candidate` itself) already routes, as a sentence.
pub fn route_conflict<'a>(
    candidate: &ServiceConfig,
    others: impl IntoIterator<Item = &'a ServiceConfig>,
) -> Option<String> {
    let mut routes: HashMap<(String, String), &str> = HashMap::new();
    for other in others {
        if other.name == candidate.name {
            continue;
        }
        for key in route_keys(other) {
            routes.insert(key, &other.name);
        }
    }
    for host in &candidate.hosts {
        for path in &candidate.paths {
            let key = route_key(host, path);
            if let Some(other) = routes.get(&key) {
                return Some(format!(
                    "host `{host}` with path `{path}` is already routed to service `{other}`"
                ));
            }
        }
    }
    None
}

/// Longest duration accepted anywhere: far beyond any sensible setting, and
/// small enough that adding it to a clock reading cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

fn check_durations(durations: &[(String, Duration)], problems: &mut Problems) {
    for (key, value) in durations {
        if *value > MAX_DURATION {
            problems.push((key.clone(), "must be at most 30 days".into()));
        }
    }
}

fn check_globals(config: &Config, problems: &mut Problems) {
    let proxy = &config.proxy;
    check_limits(&proxy.limits, problems);
    for (key, file) in [
        ("proxy.admin_token_file", &proxy.admin_token_file),
        (
            "controller.admin_token_file",
            &config.controller.admin_token_file,
        ),
    ] {
        if let Some(file) = file {
            if let Err(err) = crate::admin::read_token(file) {
                problems.push((key.into(), format!("cannot read {}: {err}", file.display())));
            }
        }
    }
    check_durations(
        &[
            ("proxy.report_interval".into(), proxy.report_interval),
            ("proxy.response_timeout".into(), proxy.response_timeout),
            ("proxy.connect_timeout".into(), proxy.connect_timeout),
            ("proxy.pool_idle_timeout".into(), proxy.pool_idle_timeout),
            (
                "proxy.header_read_timeout".into(),
                proxy.header_read_timeout,
            ),
            ("proxy.shutdown_timeout".into(), proxy.shutdown_timeout),
            ("controller.tick".into(), config.controller.tick),
        ],
        problems,
    );
    if let Some(tls) = &proxy.tls {
        problems.extend(super::tls::check(tls, proxy.listen));
    }
    problems.extend(super::observe::check(
        proxy.access_log.as_ref(),
        proxy.tracing.as_ref(),
    ));
    if proxy.worker_threads == Some(0) {
        problems.push(("proxy.worker_threads".into(), "must be at least 1".into()));
    }
    if config.proxy.report_interval.is_zero() {
        problems.push(("proxy.report_interval".into(), "must be above 0".into()));
    }
    if config.controller.tick.is_zero() {
        problems.push(("controller.tick".into(), "must be above 0".into()));
    }
    if !is_valid_name(&config.controller.id) {
        problems.push((
            "controller.id".into(),
            "must be letters, digits, `-` or `_`".into(),
        ));
    }
    if let Some(election) = &config.controller.leader_election {
        check_leader_election(election, problems);
    }
    let keda_services = config
        .services
        .iter()
        .any(|s| s.scaling.driver == ScalingDriver::Keda);
    if keda_services && config.controller.keda_listen.is_none() {
        problems.push((
            "controller.keda_listen".into(),
            "needed: a service has `scaling.driver: keda`, and KEDA must reach rouse".into(),
        ));
    }
    if let Err(reason) = config.nats.servers() {
        problems.push(("nats.url".into(), reason));
    }
    let replicas = config.nats.replicas;
    if !(1..=super::MAX_NATS_REPLICAS).contains(&replicas) {
        problems.push((
            "nats.replicas".into(),
            format!(
                "must be 1 to {} (JetStream replicas), not {replicas}",
                super::MAX_NATS_REPLICAS
            ),
        ));
    }
    let prefix = &config.nats.prefix;
    if prefix.is_empty() || !prefix.split('.').all(is_subject_token) {
        problems.push((
            "nats.prefix".into(),
            format!("`{prefix}` is not a valid NATS subject prefix"),
        ));
    }
}

fn check_leader_election(election: &LeaderElection, problems: &mut Problems) {
    let at = "controller.leader_election";
    check_durations(
        &[
            (format!("{at}.duration"), election.duration),
            (format!("{at}.retry_period"), election.retry_period),
        ],
        problems,
    );
    if election.retry_period.is_zero() {
        problems.push((format!("{at}.retry_period"), "must be above 0".into()));
    }
    // The leader must be able to renew at least twice before its lease lapses.
    if election.duration < election.retry_period * 2 {
        problems.push((
            format!("{at}.duration"),
            "must be at least twice `retry_period`".into(),
        ));
    }
    if !is_object_name(&election.name, true) {
        problems.push((
            format!("{at}.name"),
            format!("`{}` is not a lease name: use [a-z0-9.-]", election.name),
        ));
    }
    if election
        .identity
        .as_ref()
        .is_some_and(|i| i.trim().is_empty())
    {
        problems.push((format!("{at}.identity"), "must not be empty".into()));
    }
}

fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Names end up in NATS subjects, KV keys, metric labels and file names.
fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_service(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    if !is_valid_name(&service.name) {
        problems.push((
            format!("{at}.name"),
            format!(
                "`{}` is not a valid name: use 1 to 63 of [a-z0-9-]",
                service.name
            ),
        ));
    }
    if service.hosts.is_empty() && service.scaling.queue().is_none() {
        problems.push((
            format!("{at}.hosts"),
            "needs at least one host (only a queue worker, with a `queue` metric, needs none)"
                .into(),
        ));
    }
    for (j, host) in service.hosts.iter().enumerate() {
        if let Err(reason) = check_host(host) {
            problems.push((format!("{at}.hosts[{j}]"), reason));
        }
    }
    if service.paths.is_empty() {
        problems.push((format!("{at}.paths"), "needs at least one path".into()));
    }
    for (j, path) in service.paths.iter().enumerate() {
        if !path.starts_with('/') {
            problems.push((
                format!("{at}.paths[{j}]"),
                format!("`{path}` must start with `/`"),
            ));
        }
    }
    check_backend(at, &service.backend, problems);
    check_readiness(at, service, problems);
    check_scaling(at, service, problems);
    if service.hold.timeout.is_zero() {
        problems.push((format!("{at}.hold.timeout"), "must be above 0".into()));
    }
    if service.hold.max_requests == 0 {
        problems.push((
            format!("{at}.hold.max_requests"),
            "must be at least 1: the first held request is what wakes the service".into(),
        ));
    }
    check_hold_share(at, service, problems);
    check_browser_page(at, service, problems);
    let scaling = &service.scaling;
    let mut durations = vec![
        (
            format!("{at}.scaling.scale_to_zero_after"),
            scaling.scale_to_zero_after,
        ),
        (format!("{at}.scaling.drain_timeout"), scaling.drain_timeout),
        (format!("{at}.scaling.stable_window"), scaling.stable_window),
        (format!("{at}.scaling.panic_window"), scaling.panic_window()),
        (
            format!("{at}.scaling.scale_down_step"),
            scaling.scale_down_step,
        ),
        (format!("{at}.hold.timeout"), service.hold.timeout),
        (format!("{at}.readiness.period"), service.readiness.period),
    ];
    if let Some(timeout) = service.response_timeout {
        durations.push((format!("{at}.response_timeout"), timeout));
    }
    check_durations(&durations, problems);
}

fn check_host(host: &str) -> Result<(), String> {
    if host == "*" {
        return Ok(());
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host: use a name, `*.suffix` or `*` (no port, no scheme)"
        ))
    }
}

fn check_routes<'a>(
    at: &str,
    service: &'a ServiceConfig,
    routes: &mut HashMap<(String, String), &'a str>,
    problems: &mut Problems,
) {
    for host in &service.hosts {
        for path in &service.paths {
            let key = (host.to_ascii_lowercase(), normalise_path(path));
            if let Some(other) = routes.insert(key, &service.name) {
                if other != service.name {
                    problems.push((
                        format!("{at}.hosts"),
                        format!("host `{host}` with path `{path}` is already routed to service `{other}`"),
                    ));
                }
            }
        }
    }
}

/// `/api/` and `/api` are the same segment-aware prefix.
pub(crate) fn normalise_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

fn check_backend(at: &str, backend: &BackendConfig, problems: &mut Problems) {
    let at = format!("{at}.backend");
    if !backend.pools.is_empty() {
        if backend.count() > 0 {
            problems.push((
                at.clone(),
                "choose `pools` or one of `process`, `docker`, `kubernetes`, not both".into(),
            ));
        }
        check_pools(&at, backend, problems);
        return;
    }
    match backend.selected() {
        None => {
            let reason = if backend.count() == 0 {
                "needs one of `process`, `docker`, `kubernetes` (or `pools`)"
            } else {
                "choose only one of `process`, `docker`, `kubernetes`"
            };
            problems.push((at, reason.into()));
        }
        Some(selected) => check_one_backend(&at, selected, problems),
    }
}

fn check_one_backend(at: &str, backend: Backend<'_>, problems: &mut Problems) {
    match backend {
        Backend::Process(process) => {
            if process.command.first().is_none_or(|c| c.is_empty()) {
                problems.push((
                    format!("{at}.process.command"),
                    "needs a program to run".into(),
                ));
            }
            check_durations(
                &[
                    (format!("{at}.process.grace_period"), process.grace_period),
                    (
                        format!("{at}.process.startup_timeout"),
                        process.startup_timeout,
                    ),
                ],
                problems,
            );
        }
        Backend::Docker(docker) => check_docker(&format!("{at}.docker"), docker, problems),
        Backend::Kubernetes(kubernetes) => {
            check_kubernetes(&format!("{at}.kubernetes"), kubernetes, problems)
        }
        Backend::Pools(_) => {}
    }
}

fn check_pools(at: &str, backend: &BackendConfig, problems: &mut Problems) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, pool) in backend.pools.iter().enumerate() {
        let at = format!("{at}.pools[{i}]");
        if !is_valid_name(&pool.name) {
            problems.push((
                format!("{at}.name"),
                format!(
                    "`{}` is not a valid pool name: use 1 to 63 of [a-z0-9-]",
                    pool.name
                ),
            ));
        }
        if let Some(first) = names.insert(&pool.name, i) {
            problems.push((
                format!("{at}.name"),
                format!(
                    "pool name `{}` is already used by pools[{first}]",
                    pool.name
                ),
            ));
        }
        if pool.max_replicas == 0 {
            problems.push((format!("{at}.max_replicas"), "must be at least 1".into()));
        }
        match pool.selected() {
            Some(selected) => check_one_backend(&at, selected, problems),
            None => {
                let reason = if pool.count() == 0 {
                    "needs one of `process`, `docker`, `kubernetes`"
                } else {
                    "choose only one of `process`, `docker`, `kubernetes`"
                };
                problems.push((at, reason.into()));
            }
        }
    }
}

/// Kubernetes object names (RFC 1123 labels for namespaces and Services;
/// workloads may also use dots).
fn is_object_name(name: &str, dots: bool) -> bool {
    (1..=253).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.')
        })
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_kubernetes(at: &str, kubernetes: &KubernetesBackend, problems: &mut Problems) {
    if !is_object_name(&kubernetes.namespace, false) || kubernetes.namespace.len() > 63 {
        problems.push((
            format!("{at}.namespace"),
            format!("`{}` is not a namespace name", kubernetes.namespace),
        ));
    }
    if !is_object_name(&kubernetes.service, false) || kubernetes.service.len() > 63 {
        problems.push((
            format!("{at}.service"),
            format!("`{}` is not a Service name", kubernetes.service),
        ));
    }
    match (&kubernetes.deployment, &kubernetes.target) {
        (None, None) => problems.push((
            at.into(),
            "needs `deployment` or `target` (the workload to scale)".into(),
        )),
        (Some(_), Some(_)) => {
            problems.push((at.into(), "choose one of `deployment` and `target`".into()))
        }
        (Some(name), None) if !is_object_name(name, true) => problems.push((
            format!("{at}.deployment"),
            format!("`{name}` is not a Deployment name"),
        )),
        (None, Some(target)) => {
            if !is_object_name(&target.name, true) {
                problems.push((
                    format!("{at}.target.name"),
                    format!("`{}` is not an object name", target.name),
                ));
            }
            if target.kind.is_empty() || !target.kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
                problems.push((
                    format!("{at}.target.kind"),
                    format!("`{}` is not a kind, e.g. StatefulSet", target.kind),
                ));
            }
            match target.api_version() {
                None => problems.push((
                    format!("{at}.target.api_version"),
                    format!("needed for kind `{}` (e.g. `example.com/v1`)", target.kind),
                )),
                Some(version) if version.split('/').count() > 2 || version.is_empty() => problems
                    .push((
                        format!("{at}.target.api_version"),
                        format!("`{version}` is not `group/version` or `version`"),
                    )),
                Some(_) => {}
            }
        }
        _ => {}
    }
    match &kubernetes.port {
        Some(PortRef::Number(0)) => problems.push((
            format!("{at}.port"),
            "must be a port from 1 to 65535 or a port name".into(),
        )),
        Some(PortRef::Name(name)) if name.is_empty() => problems.push((
            format!("{at}.port"),
            "must be a port from 1 to 65535 or a port name".into(),
        )),
        _ => {}
    }
    check_durations(
        &[(format!("{at}.startup_timeout"), kubernetes.startup_timeout)],
        problems,
    );
}

fn check_docker(at: &str, docker: &DockerBackend, problems: &mut Problems) {
    if docker.image.trim().is_empty() {
        problems.push((format!("{at}.image"), "needs an image name".into()));
    }
    if docker.port == 0 {
        problems.push((
            format!("{at}.port"),
            "must be a port from 1 to 65535".into(),
        ));
    }
    if docker.network.trim().is_empty() {
        problems.push((
            format!("{at}.network"),
            "needs a network name (or `host`)".into(),
        ));
    }
    if let Some(cpus) = docker.cpus {
        if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
            problems.push((
                format!("{at}.cpus"),
                "must be a number of cores above 0, e.g. 0.5".into(),
            ));
        }
    }
    // The engine refuses limits below 6 MiB; say so before it does.
    if docker.memory.is_some_and(|m| m.as_u64() < 6 * 1024 * 1024) {
        problems.push((format!("{at}.memory"), "must be at least 6MiB".into()));
    }
    for key in docker.labels.keys() {
        if key.starts_with("rouse.") {
            problems.push((
                format!("{at}.labels.{key}"),
                "labels starting with `rouse.` are set by rouse".into(),
            ));
        }
    }
    for (i, volume) in docker.volumes.iter().enumerate() {
        if volume.trim().is_empty() {
            problems.push((
                format!("{at}.volumes[{i}]"),
                "needs `source:target[:options]` or a container path".into(),
            ));
        }
    }
    check_durations(
        &[
            (format!("{at}.stop_timeout"), docker.stop_timeout),
            (format!("{at}.startup_timeout"), docker.startup_timeout),
        ],
        problems,
    );
}

fn check_readiness(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    let readiness = &service.readiness;
    if readiness.http_get.is_some() && readiness.tcp == Some(true) {
        problems.push((
            format!("{at}.readiness"),
            "choose one of `http_get` and `tcp`".into(),
        ));
    }
    if let Some(path) = &readiness.http_get {
        if !path.starts_with('/') {
            problems.push((
                format!("{at}.readiness.http_get"),
                format!("`{path}` must start with `/`"),
            ));
        }
    }
}

fn check_scaling(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    let scaling = &service.scaling;
    if scaling.max_replicas == 0 {
        problems.push((
            format!("{at}.scaling.max_replicas"),
            "must be at least 1".into(),
        ));
    }
    if scaling.min_replicas > scaling.max_replicas {
        problems.push((
            format!("{at}.scaling.min_replicas"),
            format!(
                "{} is above max_replicas ({})",
                scaling.min_replicas, scaling.max_replicas
            ),
        ));
    }
    if !(scaling.target_concurrency.is_finite() && scaling.target_concurrency > 0.0) {
        problems.push((
            format!("{at}.scaling.target_concurrency"),
            "must be a number above 0".into(),
        ));
    }
    if !(scaling.panic_threshold.is_finite() && scaling.panic_threshold >= 1.0) {
        problems.push((
            format!("{at}.scaling.panic_threshold"),
            "must be a number of at least 1".into(),
        ));
    }
    if !(scaling.max_scale_down_rate.is_finite() && scaling.max_scale_down_rate > 1.0) {
        problems.push((
            format!("{at}.scaling.max_scale_down_rate"),
            "must be a number above 1".into(),
        ));
    }
    if scaling.panic_window().is_zero() || scaling.panic_window() > scaling.stable_window {
        problems.push((
            format!("{at}.scaling.panic_window"),
            "must be above 0 and at most stable_window".into(),
        ));
    }
    check_metrics(at, service, problems);
    check_behavior(at, service, problems);
    if !(scaling.tolerance.is_finite() && (0.0..1.0).contains(&scaling.tolerance)) {
        problems.push((
            format!("{at}.scaling.tolerance"),
            "must be a share from 0 to below 1, e.g. 0.1".into(),
        ));
    }
    if scaling.driver == ScalingDriver::Keda && service.backend.kubernetes.is_none() {
        problems.push((
            format!("{at}.scaling.driver"),
            "`keda` scales Kubernetes workloads: it needs `backend.kubernetes`".into(),
        ));
    }
    if let Some(rps) = scaling.target_rps {
        if !(rps.is_finite() && rps > 0.0) {
            problems.push((
                format!("{at}.scaling.target_rps"),
                "must be a number above 0".into(),
            ));
        }
    }
}

fn check_metrics(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for (i, metric) in service.scaling.metrics.iter().enumerate() {
        let key = format!("{at}.scaling.metrics[{i}]");
        if let Some(first) = kinds.insert(metric.kind(), i) {
            problems.push((
                format!("{key}.type"),
                format!(
                    "`{}` is already listed at metrics[{first}]: one entry per type",
                    metric.kind()
                ),
            ));
        }
        let target = metric.target();
        if !(target.is_finite() && target > 0.0) {
            problems.push((format!("{key}.target"), "must be a number above 0".into()));
        }
        match metric {
            MetricSpec::Cpu { target } | MetricSpec::Memory { target } if *target > 1000.0 => {
                problems.push((
                    format!("{key}.target"),
                    "is a percentage of `resources`: at most 1000".into(),
                ));
            }
            MetricSpec::Memory { .. } if service.replica_memory().is_none() => {
                problems.push((
                    format!("{key}.type"),
                    "a memory target is a share of `resources.memory` (or the docker backend's `memory`): set one".into(),
                ));
            }
            MetricSpec::Queue {
                stream, consumer, ..
            } => {
                if stream.is_empty() || !stream.bytes().all(is_stream_name_byte) {
                    problems.push((
                        format!("{key}.stream"),
                        format!("`{stream}` is not a JetStream stream name"),
                    ));
                }
                if consumer.is_empty() || !consumer.bytes().all(is_stream_name_byte) {
                    problems.push((
                        format!("{key}.consumer"),
                        format!("`{consumer}` is not a JetStream consumer name"),
                    ));
                }
            }
            _ => {}
        }
    }
    let resources = &service.resources;
    if let Some(cpus) = resources.cpus {
        if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
            problems.push((
                format!("{at}.resources.cpus"),
                "must be a number of cores above 0, e.g. 0.5".into(),
            ));
        }
    }
    if resources.memory.is_some_and(|m| m.as_u64() == 0) {
        problems.push((format!("{at}.resources.memory"), "must be above 0".into()));
    }
}

/// JetStream names may not hold whitespace, `.`, `*`, `>`, path separators.
fn is_stream_name_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\')
}

/// HPA's limits: windows up to an hour, periods up to 30 minutes.
const MAX_STABILIZATION: Duration = Duration::from_secs(3600);
const MAX_POLICY_PERIOD: Duration = Duration::from_secs(1800);

fn check_behavior(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    let behavior = &service.scaling.behavior;
    for (direction, rules) in [
        ("scale_up", &behavior.scale_up),
        ("scale_down", &behavior.scale_down),
    ] {
        if let Some(rules) = rules {
            check_rules(
                &format!("{at}.scaling.behavior.{direction}"),
                rules,
                problems,
            );
        }
    }
}

fn check_rules(at: &str, rules: &ScalingRules, problems: &mut Problems) {
    if rules.stabilization_window > MAX_STABILIZATION {
        problems.push((
            format!("{at}.stabilization_window"),
            "must be at most 1h".into(),
        ));
    }
    for (i, policy) in rules.policies.iter().enumerate() {
        let key = format!("{at}.policies[{i}]");
        if policy.value == 0 {
            problems.push((format!("{key}.value"), "must be at least 1".into()));
        }
        if policy.period.is_zero() || policy.period > MAX_POLICY_PERIOD {
            problems.push((
                format!("{key}.period"),
                "must be above 0 and at most 30m".into(),
            ));
        }
    }
}

fn check_limits(limits: &LimitsConfig, problems: &mut Problems) {
    let header_bytes = limits.max_header_bytes.as_u64();
    if header_bytes < MIN_HEADER_BYTES {
        problems.push((
            "proxy.limits.max_header_bytes".into(),
            format!(
                "must be at least {MIN_HEADER_BYTES} bytes (8 KiB): that is also the read buffer"
            ),
        ));
    }
    if header_bytes > u64::from(u32::MAX) {
        problems.push((
            "proxy.limits.max_header_bytes".into(),
            "must be below 4 GiB".into(),
        ));
    }
    if limits.max_headers == 0 {
        problems.push((
            "proxy.limits.max_headers".into(),
            "must be at least 1: HTTP/1.1 requests carry Host".into(),
        ));
    }
    let line = limits.max_request_line.as_u64();
    if line == 0 || line > MAX_REQUEST_LINE {
        problems.push((
            "proxy.limits.max_request_line".into(),
            format!("must be between 1 and {MAX_REQUEST_LINE} bytes"),
        ));
    }
    if limits.body_buffer.as_u64() > 64 * 1024 * 1024 {
        problems.push((
            "proxy.limits.body_buffer".into(),
            "must be at most 64 MiB: it is held in memory per request".into(),
        ));
    }
}

/// A waiting-page service keeps `/__rouse` for the proxy: a route of its
/// own under it would never reach the app.
fn check_browser_page(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    if !service.hold.browser_page {
        return;
    }
    let prefix = super::RESERVED_PREFIX;
    for path in &service.paths {
        let reserved = path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if reserved {
            problems.push((
                format!("{at}.hold.browser_page"),
                format!(
                    "paths may not include `{path}`: with browser_page the proxy keeps `{prefix}/` for the waiting page's events"
                ),
            ));
        }
    }
}

fn check_hold_share(at: &str, service: &ServiceConfig, problems: &mut Problems) {
    let Some(per_client) = service.hold.max_requests_per_client else {
        return;
    };
    if per_client == 0 {
        problems.push((
            format!("{at}.hold.max_requests_per_client"),
            "must be at least 1".into(),
        ));
    } else if per_client > service.hold.max_requests {
        problems.push((
            format!("{at}.hold.max_requests_per_client"),
            format!(
                "{per_client} is more than hold.max_requests ({}), which caps every client together",
                service.hold.max_requests
            ),
        ));
    }
}
