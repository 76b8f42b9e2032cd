use std::path::Path;

use super::*;

const VALID: &str = "\
nats:
  url: nats://127.0.0.1:4222
proxy:
  listen: 127.0.0.1:8080
  report_interval: 500ms
services:
  - name: echo
    hosts: [echo.localhost]
    backend:
      process:
        command: [rouse-echo, --port, \"{port}\"]
    readiness: {http_get: /healthz}
    scaling:
      max_replicas: 3
      scale_to_zero_after: 2s
    hold:
      timeout: 5s
";

fn issues(source: &str) -> Vec<ConfigIssue> {
    match Config::parse(Path::new("rouse.yaml"), source) {
        Ok(_) => panic!("expected an error"),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(other) => panic!("unexpected {other}"),
    }
}

#[test]
fn valid_config_parses_with_defaults() {
    let config = Config::parse(Path::new("rouse.yaml"), VALID).expect("valid");
    let echo = config.service("echo").expect("echo");
    assert_eq!(echo.scaling.scale_to_zero_after, Duration::from_secs(2));
    assert_eq!(echo.scaling.min_replicas, 0);
    assert_eq!(echo.hold.max_requests, 10_000);
    assert_eq!(echo.paths, vec!["/".to_string()]);
    assert_eq!(config.proxy.report_interval, Duration::from_millis(500));
    assert_eq!(config.nats.prefix, "rouse");
    assert_eq!(echo.readiness.probe(), Probe::HttpGet("/healthz".into()));
}

#[test]
fn typo_names_file_line_and_key() {
    let source = VALID.replace("max_replicas: 3", "max_replica: 3");
    let found = issues(&source);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, Some(14));
    assert!(found[0].reason.contains("max_replica"), "{}", found[0]);
    assert!(found[0].reason.starts_with("unknown field"), "{}", found[0]);
    let text = found[0].to_string();
    assert!(text.starts_with("rouse.yaml:14: "), "{text}");
}

#[test]
fn bad_duration_names_its_key_and_line() {
    let source = VALID.replace("scale_to_zero_after: 2s", "scale_to_zero_after: 5x");
    let found = issues(&source);
    assert_eq!(found[0].key, "services[0].scaling.scale_to_zero_after");
    assert_eq!(found[0].line, Some(15));
}

#[test]
fn shared_host_is_rejected_on_the_second_service() {
    let source = format!(
        "{VALID}  - name: other\n    hosts: [echo.localhost]\n    backend:\n      process:\n        command: [x]\n"
    );
    let found = issues(&source);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "services[1].hosts");
    assert_eq!(found[0].line, Some(19));
    assert!(found[0].reason.contains("echo"), "{}", found[0]);
}

#[test]
fn semantic_errors_are_all_reported() {
    let source = VALID
        .replace("name: echo", "name: Echo_1")
        .replace("max_replicas: 3", "max_replicas: 0");
    let found = issues(&source);
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"services[0].name"), "{keys:?}");
    assert!(
        keys.contains(&"services[0].scaling.max_replicas"),
        "{keys:?}"
    );
}

#[test]
fn two_backends_is_an_error() {
    let source = VALID.replace(
        "    readiness:",
        "      docker: {image: x, port: 80}\n    readiness:",
    );
    let found = issues(&source);
    assert!(found[0].key.starts_with("services[0].backend"), "{found:?}");
}

#[test]
fn unreadable_file_is_a_read_error() {
    let err = Config::load(Path::new("/nonexistent/rouse.yaml")).expect_err("missing");
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[test]
fn absurd_values_are_rejected() {
    let source = VALID
        .replace("timeout: 5s", "timeout: 5s\n      max_requests: 0")
        .replace("scale_to_zero_after: 2s", "scale_to_zero_after: 400days");
    let found = issues(&source);
    let keys: Vec<_> = found.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"services[0].hold.max_requests"), "{keys:?}");
    assert!(
        keys.contains(&"services[0].scaling.scale_to_zero_after"),
        "{keys:?}"
    );
}

#[test]
fn panic_window_defaults_to_a_tenth_of_the_stable_window() {
    let config = Config::parse(Path::new("rouse.yaml"), VALID).expect("valid");
    let scaling = &config.service("echo").expect("echo").scaling;
    assert_eq!(scaling.panic_window(), Duration::from_secs(6));

    // A short stable window alone is valid: the panic window follows it.
    let short = VALID.replace(
        "max_replicas: 3",
        "max_replicas: 3\n      stable_window: 1s",
    );
    let config = Config::parse(Path::new("rouse.yaml"), &short).expect("valid");
    let scaling = &config.service("echo").expect("echo").scaling;
    assert_eq!(scaling.panic_window(), Duration::from_millis(100));

    // Set explicitly, it is taken as is, and must fit the stable window.
    let set = short.replace(
        "stable_window: 1s",
        "stable_window: 1s\n      panic_window: 300ms",
    );
    let config = Config::parse(Path::new("rouse.yaml"), &set).expect("valid");
    let scaling = &config.service("echo").expect("echo").scaling;
    assert_eq!(scaling.panic_window(), Duration::from_millis(300));
    let too_long = short.replace(
        "stable_window: 1s",
        "stable_window: 1s\n      panic_window: 2s",
    );
    let found = issues(&too_long);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "services[0].scaling.panic_window");
    assert_eq!(found[0].line, Some(16));
}

fn with_kubernetes(backend: &str) -> String {
    let source = VALID.replace(
        "process:\n        command: [rouse-echo, --port, \"{port}\"]",
        &format!("kubernetes: {backend}"),
    );
    assert_ne!(source, VALID, "the fixture names a process backend");
    source
}

#[test]
fn a_kubernetes_deployment_is_a_scale_target_with_defaults() {
    let source = with_kubernetes("{deployment: echo, service: echo-svc, port: 80}");
    let config = Config::parse(Path::new("rouse.yaml"), &source).expect("valid");
    let Some(Backend::Kubernetes(k)) = config.services[0].backend.selected() else {
        panic!("kubernetes backend expected");
    };
    assert_eq!(k.namespace, "default");
    assert_eq!(k.port, Some(PortRef::Number(80)));
    let target = k.scale_target().expect("target");
    assert_eq!(
        (
            target.kind.as_str(),
            target.name.as_str(),
            target.api_version()
        ),
        ("Deployment", "echo", Some("apps/v1"))
    );
    let named = with_kubernetes(
        "{target: {kind: StatefulSet, name: db}, service: db, port: http, namespace: apps}",
    );
    let config = Config::parse(Path::new("rouse.yaml"), &named).expect("valid");
    let Some(Backend::Kubernetes(k)) = config.services[0].backend.selected() else {
        panic!("kubernetes backend expected");
    };
    assert_eq!(k.port, Some(PortRef::Name("http".into())));
    assert_eq!(
        k.scale_target()
            .and_then(|t| t.api_version().map(String::from))
            .as_deref(),
        Some("apps/v1")
    );
}

#[test]
fn kubernetes_mistakes_name_their_key() {
    let cases = [
        (
            "{service: echo}",
            "services[0].backend.kubernetes",
            "needs `deployment` or `target`",
        ),
        (
            "{deployment: a, target: {kind: Deployment, name: b}, service: echo}",
            "services[0].backend.kubernetes",
            "choose one",
        ),
        (
            "{target: {kind: Rollout, name: web}, service: echo}",
            "services[0].backend.kubernetes.target.api_version",
            "needed for kind `Rollout`",
        ),
        (
            "{deployment: Echo, service: echo}",
            "services[0].backend.kubernetes.deployment",
            "not a Deployment name",
        ),
        (
            "{deployment: echo, service: echo, port: 0}",
            "services[0].backend.kubernetes.port",
            "1 to 65535",
        ),
        (
            "{deployment: echo, service: echo, namespace: a_b}",
            "services[0].backend.kubernetes.namespace",
            "not a namespace",
        ),
    ];
    for (backend, key, reason) in cases {
        let found = issues(&with_kubernetes(backend));
        assert!(
            found
                .iter()
                .any(|i| i.key == key && i.reason.contains(reason)),
            "{backend}: {found:?}"
        );
        assert!(
            found.iter().all(|i| i.line.is_some()),
            "{backend}: {found:?}"
        );
    }
}

#[test]
fn the_keda_driver_needs_kubernetes_and_a_listen_address() {
    let process = VALID.replace("max_replicas: 3", "max_replicas: 3\n      driver: keda");
    let found = issues(&process);
    assert!(
        found.iter().any(|i| i.key == "services[0].scaling.driver"),
        "{found:?}"
    );
    let keda = with_kubernetes("{deployment: echo, service: echo}")
        .replace("max_replicas: 3", "max_replicas: 3\n      driver: keda");
    let found = issues(&keda);
    assert!(
        found.iter().any(|i| i.key == "controller.keda_listen"),
        "{found:?}"
    );
    let listening = format!("controller:\n  keda_listen: 127.0.0.1:9095\n{keda}");
    let config = Config::parse(Path::new("rouse.yaml"), &listening).expect("valid");
    assert_eq!(config.services[0].scaling.driver, ScalingDriver::Keda);
}

#[test]
fn leader_election_timing_is_checked() {
    let source = format!(
        "controller:\n  leader_election: {{lease: nats, duration: 2s, retry_period: 2s}}\n{VALID}"
    );
    let found = issues(&source);
    assert!(
        found
            .iter()
            .any(|i| i.key == "controller.leader_election.duration"),
        "{found:?}"
    );
    let good = format!("controller:\n  leader_election: {{lease: kubernetes}}\n{VALID}");
    let config = Config::parse(Path::new("rouse.yaml"), &good).expect("valid");
    let election = config.controller.leader_election.expect("set");
    assert_eq!(election.lease, LeaseKind::Kubernetes);
    assert_eq!(election.duration, Duration::from_secs(10));
    assert_eq!(election.name, "rouse-controller");
}

/// The fixture with its process backend replaced by `docker` lines.
fn with_docker(lines: &str) -> String {
    let source = VALID.replace(
        "process:\n        command: [rouse-echo, --port, \"{port}\"]",
        &format!("docker:\n{lines}"),
    );
    assert_ne!(source, VALID, "the fixture names a process backend");
    source
}

#[test]
fn a_docker_backend_parses_with_docker_run_defaults() {
    let source = with_docker(
        "        image: rouse:dev\n        port: 8080\n        memory: 256MiB\n        cpus: 0.5",
    );
    let config = Config::parse(Path::new("rouse.yaml"), &source).expect("valid");
    let Some(Backend::Docker(docker)) = config.services[0].backend.selected() else {
        panic!("docker backend expected");
    };
    assert_eq!(docker.image, "rouse:dev");
    assert_eq!(docker.memory.map(|m| m.as_u64()), Some(256 * 1024 * 1024));
    assert_eq!(docker.cpus, Some(0.5));
    assert_eq!(docker.network, "rouse");
    assert_eq!(docker.address, DockerAddress::Published);
    assert_eq!(docker.pull, PullPolicy::IfNotPresent);
    assert!(docker.healthcheck);
    assert_eq!(config.controller.id, "rouse");
}

#[test]
fn bad_docker_keys_name_file_line_and_key() {
    let source = with_docker(
        "        image: rouse:dev\n        port: 0\n        cpus: -1\n        memory: 1MiB\n        labels: {rouse.service: x}",
    );
    let found = issues(&source);
    let at = |key: &str| {
        found
            .iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no issue for {key}: {found:?}"))
    };
    let port = at("services[0].backend.docker.port");
    let line = source
        .lines()
        .position(|l| l.contains("port: 0"))
        .map(|i| i + 1);
    assert_eq!(port.line, line, "{port:?}");
    at("services[0].backend.docker.cpus");
    at("services[0].backend.docker.memory");
    at("services[0].backend.docker.labels.rouse.service");

    let bad_pull = with_docker("        image: x\n        port: 80\n        pull: sometimes");
    let found = issues(&bad_pull);
    assert!(
        found
            .iter()
            .any(|i| i.key.ends_with("pull") && i.reason.contains("if_not_present")),
        "{found:?}"
    );
}

#[test]
fn scaling_signals_and_behavior_parse_with_their_defaults() {
    let config = Config::parse(
        Path::new("rouse.yaml"),
        "
services:
  - name: api
    hosts: [api.localhost]
    backend:
      process: {command: [app]}
    resources: {cpus: 0.5, memory: 256MiB}
    scaling:
      target_rps: 10
      metrics:
        - {type: cpu, target: 50}
        - {type: memory, target: 70}
      behavior:
        scale_down:
          policies: [{type: pods, value: 1, period: 10s}]
  - name: worker
    backend:
      process: {command: [app]}
    scaling:
      metrics: [{type: queue, stream: JOBS, consumer: workers, target: 100}]
",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let api = &config.services[0].scaling;
    assert_eq!(api.tolerance, 0.1);
    assert_eq!(
        api.signals(),
        vec![
            MetricSpec::Cpu { target: 50.0 },
            MetricSpec::Memory { target: 70.0 },
            MetricSpec::Rps { target: 10.0 },
        ],
        "a listed metric replaces the concurrency default; target_rps adds to it"
    );
    let down = api.behavior.scale_down.as_ref().expect("scale_down");
    assert_eq!(down.stabilization_window, Duration::ZERO);
    assert_eq!(down.select, SelectPolicy::Max);
    assert!(api.behavior.scale_up.is_none());
    let worker = &config.services[1];
    assert!(worker.hosts.is_empty());
    assert_eq!(worker.scaling.queue(), Some(("JOBS", "workers", 100.0)));
}

#[test]
fn bad_signals_and_behavior_name_their_key_and_line() {
    let source = "
services:
  - name: api
    backend:
      process: {command: [app]}
    scaling:
      metrics:
        - {type: memory, target: 70}
        - {type: cpu, target: 0}
        - {type: cpu, target: 50}
        - {type: queue, stream: 'a.b', consumer: c, target: 1}
      tolerance: 1.5
      behavior:
        scale_down:
          stabilization_window: 2h
          policies: [{type: pods, value: 0, period: 0s}]
";
    let Err(ConfigError::Invalid(issues)) = Config::parse(Path::new("rouse.yaml"), source) else {
        panic!("accepted");
    };
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "services[0].scaling.metrics[0].type",
        "services[0].scaling.metrics[1].target",
        "services[0].scaling.metrics[2].type",
        "services[0].scaling.metrics[3].stream",
        "services[0].scaling.tolerance",
        "services[0].scaling.behavior.scale_down.stabilization_window",
        "services[0].scaling.behavior.scale_down.policies[0].value",
        "services[0].scaling.behavior.scale_down.policies[0].period",
    ] {
        assert!(keys.contains(&key), "{key} missing from {issues:#?}");
    }
    let memory = issues
        .iter()
        .find(|i| i.key == "services[0].scaling.metrics[0].type")
        .expect("memory issue");
    assert!(
        memory.reason.contains("resources.memory"),
        "{}",
        memory.reason
    );
    assert!(memory.line.is_some(), "{memory:?}");
    // An unknown metric type is a parse error at its line.
    let Err(ConfigError::Invalid(issues)) = Config::parse(
        Path::new("rouse.yaml"),
        "
services:
  - name: api
    hosts: [a.localhost]
    backend:
      process: {command: [app]}
    scaling:
      metrics: [{type: gpu, target: 1}]
",
    ) else {
        panic!("accepted");
    };
    assert!(
        issues[0].key.starts_with("services[0].scaling.metrics"),
        "{issues:?}"
    );
    assert!(issues[0].reason.contains("gpu"), "{issues:?}");
}

#[test]
fn pools_need_one_backend_each_and_distinct_names() {
    let Err(ConfigError::Invalid(issues)) = Config::parse(
        Path::new("rouse.yaml"),
        "
services:
  - name: api
    hosts: [a.localhost]
    backend:
      process: {command: [app]}
      pools:
        - {name: onprem, max_replicas: 2, process: {command: [app]}}
        - {name: onprem, max_replicas: 0}
",
    ) else {
        panic!("accepted");
    };
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "services[0].backend",
        "services[0].backend.pools[1].name",
        "services[0].backend.pools[1].max_replicas",
        "services[0].backend.pools[1]",
    ] {
        assert!(keys.contains(&key), "{key} missing from {issues:#?}");
    }
}

#[test]
fn edge_limits_default_to_a_trusted_edge_and_are_checked() {
    let config = Config::parse(Path::new("rouse.yaml"), VALID).expect("valid");
    let limits = &config.proxy.limits;
    assert_eq!(limits.max_header_bytes.as_u64(), 64 * 1024);
    assert_eq!(limits.max_headers, 100);
    assert_eq!(limits.body_buffer.as_u64(), 64 * 1024);
    let echo = config.service("echo").expect("echo");
    assert_eq!(echo.hold.per_client_limit(), 2_500);
    assert_eq!(echo.max_body, None);

    let source = VALID
        .replace(
            "  report_interval: 500ms\n",
            "  report_interval: 500ms\n  limits: {max_header_bytes: 1KiB, max_headers: 0, max_request_line: 1MiB}\n",
        )
        .replace("      timeout: 5s\n", "      timeout: 5s\n      max_requests: 10\n      max_requests_per_client: 11\n");
    let found = issues(&source);
    let at = |key: &str| {
        found
            .iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no issue for {key}: {found:?}"))
    };
    assert!(at("proxy.limits.max_header_bytes").reason.contains("8192"));
    assert_eq!(at("proxy.limits.max_header_bytes").line, Some(6));
    assert!(at("proxy.limits.max_headers").reason.contains("at least 1"));
    assert!(at("proxy.limits.max_request_line").reason.contains("65534"));
    let share = at("services[0].hold.max_requests_per_client");
    assert!(
        share.reason.contains("more than hold.max_requests"),
        "{share}"
    );
    assert_eq!(share.line, Some(20));
}

#[test]
fn browser_page_defaults_off_and_is_checked() {
    let config = Config::parse(Path::new("rouse.yaml"), VALID).expect("valid");
    assert!(!config.service("echo").expect("echo").hold.browser_page);

    let on = VALID.replace(
        "      timeout: 5s\n",
        "      timeout: 5s\n      browser_page: true\n",
    );
    let config = Config::parse(Path::new("rouse.yaml"), &on).expect("valid");
    assert!(config.service("echo").expect("echo").hold.browser_page);

    let not_bool = issues(&VALID.replace(
        "      timeout: 5s\n",
        "      timeout: 5s\n      browser_page: sometimes\n",
    ));
    assert_eq!(not_bool.len(), 1, "{not_bool:?}");
    assert_eq!(not_bool[0].key, "services[0].hold.browser_page");
    assert_eq!(not_bool[0].line, Some(18));

    let reserved = issues(&on.replace(
        "    hosts: [echo.localhost]\n",
        "    hosts: [echo.localhost]\n    paths: [/, /__rouse/x]\n",
    ));
    assert_eq!(reserved.len(), 1, "{reserved:?}");
    assert_eq!(reserved[0].key, "services[0].hold.browser_page");
    assert!(reserved[0].reason.contains("/__rouse/x"), "{}", reserved[0]);
    // Only a whole segment is reserved, and only with browser_page on.
    let near = on.replace(
        "    hosts: [echo.localhost]\n",
        "    hosts: [echo.localhost]\n    paths: [/__rousex]\n",
    );
    assert!(Config::parse(Path::new("rouse.yaml"), &near).is_ok());
    let off = VALID.replace(
        "    hosts: [echo.localhost]\n",
        "    hosts: [echo.localhost]\n    paths: [/__rouse]\n",
    );
    assert!(Config::parse(Path::new("rouse.yaml"), &off).is_ok());
}

#[test]
fn max_body_reads_sizes() {
    let source = VALID.replace("    hold:\n", "    max_body: 1MiB\n    hold:\n");
    let config = Config::parse(Path::new("rouse.yaml"), &source).expect("valid");
    let echo = config.service("echo").expect("echo");
    assert_eq!(echo.max_body.map(|b| b.as_u64()), Some(1024 * 1024));
    let bad = issues(&VALID.replace("    hold:\n", "    max_body: lots\n    hold:\n"));
    assert_eq!(bad[0].key, "services[0].max_body");
}

#[test]
fn an_unreadable_admin_token_file_names_its_key() {
    let source = VALID.replace(
        "  report_interval: 500ms\n",
        "  report_interval: 500ms\ncontroller:\n  admin_token_file: /nonexistent/rouse-token\n",
    );
    let found = issues(&source);
    assert_eq!(found[0].key, "controller.admin_token_file");
    assert_eq!(found[0].line, Some(7));
    assert!(
        found[0].reason.contains("/nonexistent/rouse-token"),
        "{}",
        found[0]
    );
}

#[test]
fn backend_protocol_defaults_to_http1_and_names_a_bad_value() {
    let config = Config::parse(Path::new("rouse.yaml"), VALID).expect("valid");
    let echo = config.service("echo").expect("echo");
    assert_eq!(echo.backend.protocol, BackendProtocol::Http1);
    for (text, protocol) in [
        ("h2c", BackendProtocol::H2c),
        ("auto", BackendProtocol::Auto),
    ] {
        let source = VALID.replace(
            "    backend:\n",
            &format!("    backend:\n      protocol: {text}\n"),
        );
        let config = Config::parse(Path::new("rouse.yaml"), &source).expect("valid");
        assert_eq!(config.services[0].backend.protocol, protocol);
    }
    let source = VALID.replace("    backend:\n", "    backend:\n      protocol: h3\n");
    let found = issues(&source);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].line, Some(10), "{}", found[0]);
    assert!(found[0].reason.contains("h3"), "{}", found[0]);
}

#[test]
fn a_file_only_the_lenient_parser_reads_still_names_lines() {
    // Found by the `config` fuzz target: `--check` printed no line here.
    let source =
        "services:\n  - name: Bad\n    hosts: [a]\n    backend: {process: {command: [\"x\ny\"]}}\n";
    let found = issues(source);
    assert!(
        found
            .iter()
            .any(|i| i.key == "services[0].name" && i.line == Some(2)),
        "{found:?}"
    );
}

#[test]
fn nats_url_takes_a_comma_separated_list_of_servers() {
    let source = VALID.replace(
        "url: nats://127.0.0.1:4222",
        "url: nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224",
    );
    let config = Config::parse(Path::new("rouse.yaml"), &source).expect("valid");
    let servers = config.nats.servers().expect("servers");
    let ports: Vec<u16> = servers.iter().map(|s| s.port()).collect();
    assert_eq!(ports, vec![4222, 4223, 4224]);
    assert!(servers.iter().all(|s| s.host() == "127.0.0.1"));
    assert_eq!(config.nats.replicas, 1, "one replica unless asked");
}

#[test]
fn a_bad_server_in_the_list_names_the_key_and_the_entry() {
    for (url, says) in [
        (
            "nats://127.0.0.1:4222,http://127.0.0.1:4223",
            "http://127.0.0.1:4223",
        ),
        ("nats://127.0.0.1:4222,,nats://127.0.0.1:4224", "entry 2"),
        ("nats://127.0.0.1:4222,", "entry 2"),
        ("nats://127.0.0.1:99999", "127.0.0.1:99999"),
        ("\"\"", "at least one"),
    ] {
        let source = VALID.replace("url: nats://127.0.0.1:4222", &format!("url: {url}"));
        let found = issues(&source);
        assert_eq!(found.len(), 1, "{url}: {found:?}");
        assert_eq!(found[0].key, "nats.url", "{url}");
        assert_eq!(found[0].line, Some(2), "{url}");
        assert!(found[0].reason.contains(says), "{url}: {}", found[0]);
    }
}

#[test]
fn nats_replicas_is_1_to_5() {
    for ok in [1, 3, 5] {
        let source = VALID.replace("nats:\n", &format!("nats:\n  replicas: {ok}\n"));
        let config = Config::parse(Path::new("rouse.yaml"), &source).expect("valid");
        assert_eq!(config.nats.replicas, ok);
    }
    for bad in ["0", "6"] {
        let source = VALID.replace("nats:\n", &format!("nats:\n  replicas: {bad}\n"));
        let found = issues(&source);
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
        assert_eq!(found[0].key, "nats.replicas");
        assert_eq!(found[0].line, Some(2));
        assert!(found[0].reason.contains("1 to 5"), "{}", found[0]);
    }
    let source = VALID.replace("nats:\n", "nats:\n  replicas: three\n");
    let found = issues(&source);
    assert_eq!(found[0].key, "nats.replicas", "{found:?}");
}
