//! `rouse-controller import`: the KEDA HTTP add-on's HTTPScaledObjects as
//! rouse services.
//!
//! The fixtures are shaped like the add-on's own examples and CRD (current,
//! pre-0.6, a `kubectl get -o json` List, mixed manifests, fields rouse has
//! no equivalent for). Each test checks the mapping field by field, the
//! warnings by the field they name, and that the output is a config rouse
//! accepts: it is fed through `rouse_nats::Config::parse`, behind the
//! nats/proxy/controller sections a real config would have, and the parsed
//! services are checked again. The binary is run for what only it does:
//! exit codes, stdout against stderr, stdin, `--strict`, `--namespace`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rouse_controller::import::{self, Import, ImportError, Options, Port, Target};
use rouse_nats::config::{Backend, PortRef, ScaleTarget};
use rouse_nats::Config;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn import_fixture(name: &str, options: &Options) -> Import {
    let objects = import::parse_documents(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    import::import(&objects, options).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The warnings' fields, in order.
fn warned_fields(import: &Import) -> Vec<&str> {
    import.warnings.iter().map(|w| w.field.as_str()).collect()
}

fn warning<'a>(import: &'a Import, field: &str) -> &'a str {
    import
        .warnings
        .iter()
        .find(|w| w.field == field)
        .map(|w| w.message.as_str())
        .unwrap_or_else(|| panic!("no warning for {field}: {:#?}", import.warnings))
}

/// The output pasted into a config with the usual sections: parsed and
/// validated by rouse itself.
fn as_config(import: &Import) -> Config {
    let yaml = import.to_yaml().expect("yaml");
    let config = format!(
        "nats:\n  url: nats://nats:4222\nproxy:\n  listen: 0.0.0.0:8080\n  admin_listen: 0.0.0.0:9090\n\
         controller:\n  admin_listen: 0.0.0.0:9091\n{yaml}"
    );
    import.check().expect("check");
    Config::parse(Path::new("imported.yaml"), &config)
        .unwrap_or_else(|e| panic!("rouse refuses the output:\n{e}\n---\n{config}"))
}

#[test]
fn request_rate_maps_field_by_field() {
    let import = import_fixture("request-rate.yaml", &Options::default());
    assert_eq!(import.services.len(), 1);
    let imported = &import.services[0];
    assert_eq!(imported.object, "shop/catalog");
    let s = &imported.service;
    assert_eq!(s.name, "catalog");
    assert_eq!(s.hosts, ["catalog.example.com", "*.catalog.example.com"]);
    assert_eq!(
        s.paths.as_deref(),
        Some(&["/api".to_string(), "/static".into()][..])
    );
    let k = &s.backend.kubernetes;
    assert_eq!(k.namespace.as_deref(), Some("shop"));
    assert_eq!(k.deployment.as_deref(), Some("catalog-web"));
    assert_eq!(k.target, None);
    assert_eq!(k.service, "catalog-svc");
    assert_eq!(k.port, Some(Port::Number(8081)));
    assert_eq!(s.scaling.min_replicas, Some(1));
    assert_eq!(s.scaling.max_replicas, Some(20));
    // 600 per 1m granularity = 10 per second.
    assert_eq!(s.scaling.target_rps, Some(10.0));
    assert_eq!(s.scaling.target_concurrency, None);
    assert_eq!(
        s.scaling.scale_to_zero_after,
        Some(Duration::from_secs(120))
    );
    assert_eq!(s.scaling.stable_window, Some(Duration::from_secs(120)));
    assert_eq!(s.hold.timeout, None);
    assert_eq!(s.response_timeout, None);
    // Rate alone scales differently in rouse: said so.
    assert_eq!(warned_fields(&import), ["spec.scalingMetric.requestRate"]);
    assert!(warning(&import, "spec.scalingMetric.requestRate").contains("target_concurrency"));

    let config = as_config(&import);
    let service = config.service("catalog").expect("service catalog");
    assert_eq!(service.paths, ["/api", "/static"]);
    assert_eq!(service.scaling.min_replicas, 1);
    assert_eq!(service.scaling.max_replicas, 20);
    assert_eq!(service.scaling.target_rps, Some(10.0));
    assert_eq!(
        service.scaling.scale_to_zero_after,
        Duration::from_secs(120)
    );
    assert_eq!(service.scaling.stable_window, Duration::from_secs(120));
    // rouse's own defaults fill in what the object did not set.
    assert_eq!(service.scaling.target_concurrency, 10.0);
    assert_eq!(service.hold.timeout, Duration::from_secs(30));
    let Some(Backend::Kubernetes(k)) = service.backend.selected() else {
        panic!("not a kubernetes backend: {:?}", service.backend);
    };
    assert_eq!(k.namespace, "shop");
    assert_eq!(k.service, "catalog-svc");
    assert_eq!(k.port, Some(PortRef::Number(8081)));
    assert_eq!(
        k.scale_target(),
        Some(ScaleTarget {
            kind: "Deployment".into(),
            name: "catalog-web".into(),
            api_version: Some("apps/v1".into()),
            plural: None,
        })
    );
}

#[test]
fn only_keys_with_a_value_are_written() {
    let import = import_fixture("request-rate.yaml", &Options::default());
    let yaml = import.to_yaml().expect("yaml");
    for absent in [
        "target_concurrency",
        "hold",
        "response_timeout",
        "readiness",
        "drain_timeout",
        "null",
    ] {
        assert!(!yaml.contains(absent), "`{absent}` in\n{yaml}");
    }
    assert!(
        yaml.contains("# from HTTPScaledObject shop/catalog"),
        "{yaml}"
    );
    assert!(
        yaml.contains("target_rps: 10\n"),
        "a whole number, not 10.0:\n{yaml}"
    );
    assert!(yaml.contains("scale_to_zero_after: 2m\n"), "{yaml}");
}

#[test]
fn old_style_objects_map_too() {
    let import = import_fixture("old-style.yaml", &Options::default());
    let s = &import.services[0].service;
    assert_eq!(import.services[0].object, "default/blog");
    assert_eq!(s.name, "blog");
    // The single `host` of add-on versions before 0.6.
    assert_eq!(s.hosts, ["blog.example.org"]);
    assert_eq!(s.paths, None);
    let k = &s.backend.kubernetes;
    // `scaleTargetRef.deployment`, removed in 0.9.
    assert_eq!(k.deployment.as_deref(), Some("blog"));
    // No namespace in the object: rouse's default (`default`) applies.
    assert_eq!(k.namespace, None);
    assert_eq!(k.port, Some(Port::Number(80)));
    assert_eq!(s.scaling.min_replicas, Some(0));
    assert_eq!(s.scaling.max_replicas, Some(4));
    // The deprecated `targetPendingRequests`, with no scalingMetric.
    assert_eq!(s.scaling.target_concurrency, Some(25.0));
    assert!(import.warnings.is_empty(), "{:#?}", import.warnings);

    let config = as_config(&import);
    let service = config.service("blog").expect("blog");
    assert_eq!(service.scaling.target_concurrency, 25.0);
    let Some(Backend::Kubernetes(k)) = service.backend.selected() else {
        panic!("not a kubernetes backend");
    };
    assert_eq!(k.namespace, "default");
    assert_eq!(k.deployment.as_deref(), Some("blog"));
}

#[test]
fn namespace_option_fills_in_objects_without_one() {
    let options = Options {
        default_namespace: Some("blogs".into()),
    };
    let import = import_fixture("old-style.yaml", &options);
    assert_eq!(import.services[0].object, "blogs/blog");
    assert_eq!(
        import.services[0]
            .service
            .backend
            .kubernetes
            .namespace
            .as_deref(),
        Some("blogs")
    );
    // An object that names its namespace keeps it.
    let import = import_fixture("request-rate.yaml", &options);
    assert_eq!(
        import.services[0]
            .service
            .backend
            .kubernetes
            .namespace
            .as_deref(),
        Some("shop")
    );
}

#[test]
fn every_unsupported_field_is_named() {
    let import = import_fixture("unsupported.yaml", &Options::default());
    assert_eq!(
        warned_fields(&import),
        [
            "metadata.annotations.httpscaledobject.keda.sh/skip-scaledobject-creation",
            "spec.hosts[0]",
            "spec.headers",
            "spec.scaleTargetRef.portName",
            "spec.targetPendingRequests",
            "spec.initialCooldownPeriod",
            "spec.coldStartTimeoutFailoverRef",
            "spec.fancyNewField",
            "metadata.name",
        ]
    );
    for w in &import.warnings {
        assert_eq!(w.object, "shop/checkout.v2");
    }
    assert!(warning(&import, "spec.headers").contains("rouse does not route on headers; ignored"));
    assert!(warning(&import, "spec.headers").contains("x-canary: true, x-tenant"));
    assert!(warning(&import, "spec.coldStartTimeoutFailoverRef").contains("checkout-fallback"));
    assert!(warning(&import, "spec.initialCooldownPeriod").contains("600"));
    assert!(warning(&import, "spec.fancyNewField").contains("ignored"));
    assert!(warning(&import, "metadata.name").contains("named `checkout-v2`"));
    assert!(warning(&import, "spec.hosts[0]").contains("checkout.example.com:8443"));
    // The exact text a user sees.
    assert_eq!(
        import.warnings[2].to_string(),
        "shop/checkout.v2: spec.headers: rouse does not route on headers; ignored \
         (x-canary: true, x-tenant): every request to the hosts and paths reaches this service"
    );
    // Labels and other annotations are bookkeeping: not reported.
    assert!(!import
        .warnings
        .iter()
        .any(|w| w.field.contains("labels") || w.field.contains("example.com/owner")));

    // What could be carried over was.
    let s = &import.services[0].service;
    assert_eq!(s.name, "checkout-v2");
    assert_eq!(s.hosts, ["checkout.example.com"]);
    assert_eq!(s.paths.as_deref(), Some(&["/pay".to_string()][..]));
    assert_eq!(s.backend.kubernetes.port, Some(Port::Number(8080)));
    // scalingMetric wins over targetPendingRequests, as in the add-on.
    assert_eq!(s.scaling.target_concurrency, Some(20.0));
    // The failover's timeoutSeconds overrides conditionWait, as in the add-on.
    assert_eq!(s.hold.timeout, Some(Duration::from_secs(45)));
    assert_eq!(s.response_timeout, Some(Duration::from_secs(90)));
    let config = as_config(&import);
    let service = config.service("checkout-v2").expect("checkout-v2");
    assert_eq!(service.response_timeout, Some(Duration::from_secs(90)));
    assert_eq!(service.hold.timeout, Duration::from_secs(45));
}

#[test]
fn mixed_manifests_skip_other_kinds_and_keep_names_unique() {
    let import = import_fixture("mixed.yaml", &Options::default());
    assert_eq!(import.warnings.len(), 2, "{:#?}", import.warnings);
    assert_eq!(import.warnings[0].object, "Deployment team-a/api");
    assert!(import.warnings[0].message.contains("skipped"));
    assert_eq!(import.warnings[1].object, "team-b/api");
    assert_eq!(import.warnings[1].field, "metadata.name");
    assert!(import.warnings[1].message.contains("`api-team-b`"));

    let [a, b] = &import.services[..] else {
        panic!("two services: {:#?}", import.services);
    };
    assert_eq!(
        (a.object.as_str(), a.service.name.as_str()),
        ("team-a/api", "api")
    );
    assert_eq!(a.service.scaling.target_concurrency, Some(15.0));
    assert_eq!(a.service.hold.timeout, Some(Duration::from_secs(45)));
    assert_eq!(
        (b.object.as_str(), b.service.name.as_str()),
        ("team-b/api", "api-team-b")
    );
    let k = &b.service.backend.kubernetes;
    assert_eq!(k.deployment, None);
    assert_eq!(
        k.target,
        Some(Target {
            kind: "StatefulSet".into(),
            name: "api-store".into(),
            api_version: Some("apps/v1".into()),
        })
    );
    assert_eq!(k.port, Some(Port::Name("web".into())));
    assert_eq!(b.service.scaling.max_replicas, Some(3));
    // `concurrency: {}`: the CRD's default target, 100.
    assert_eq!(b.service.scaling.target_concurrency, Some(100.0));

    let config = as_config(&import);
    let Some(Backend::Kubernetes(k)) = config.service("api-team-b").expect("b").backend.selected()
    else {
        panic!("not a kubernetes backend");
    };
    assert_eq!(k.port, Some(PortRef::Name("web".into())));
    assert_eq!(k.scale_target().map(|t| t.kind), Some("StatefulSet".into()));
}

#[test]
fn lists_from_kubectl_are_opened() {
    let import = import_fixture("list.json", &Options::default());
    let [search, everything] = &import.services[..] else {
        panic!("two services: {:#?}", import.services);
    };
    // status, uid, timestamps, managed annotations: not configuration.
    assert_eq!(warned_fields(&import), ["spec.scalingMetric.requestRate"]);
    let k = &search.service.backend.kubernetes;
    assert_eq!(
        k.target,
        Some(Target {
            kind: "Rollout".into(),
            name: "search".into(),
            api_version: Some("argoproj.io/v1alpha1".into()),
        })
    );
    assert_eq!(search.service.scaling.target_rps, Some(40.0));
    // window 1m, written because the object has it (the API server fills
    // in the CRD's default).
    assert_eq!(
        search.service.scaling.stable_window,
        Some(Duration::from_secs(60))
    );
    // No hosts: every host, as in the add-on.
    assert_eq!(everything.service.hosts, ["*"]);
    assert_eq!(
        everything.service.backend.kubernetes.deployment.as_deref(),
        Some("fallback")
    );
    as_config(&import);
}

#[test]
fn typed_lists_are_opened_too() {
    // What `kubectl get httpso -o yaml` prints for one namespace's objects
    // when asked by kind: an HTTPScaledObjectList, itself in a List.
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: http.keda.sh/v1alpha1\n  \
        kind: HTTPScaledObjectList\n  items:\n  - apiVersion: http.keda.sh/v1alpha1\n    \
        kind: HTTPScaledObject\n    metadata: {name: inner, namespace: n}\n    \
        spec: {scaleTargetRef: {name: a, service: a, port: 80}}\n";
    let objects = import::parse_documents(text).expect("yaml");
    let import = import::import(&objects, &Options::default()).expect("import");
    assert_eq!(import.services.len(), 1);
    assert_eq!(import.services[0].object, "n/inner");
    let broken = import::parse_documents("kind: HTTPScaledObjectList\nitems: 3\n").expect("yaml");
    assert!(matches!(
        import::import(&broken, &Options::default()),
        Err(ImportError::Invalid { ref field, .. }) if field == "items"
    ));
}

#[test]
fn routes_rouse_cannot_tell_apart_are_refused_naming_the_object() {
    let import = import_fixture("conflict.yaml", &Options::default());
    let problems = import.check().expect_err("the same host and path twice");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("web/canary (service `canary`): "),
        "{}",
        problems[0]
    );
    assert!(
        problems[0].contains("already routed to service `stable`"),
        "{}",
        problems[0]
    );
}

#[test]
fn input_that_is_not_objects_is_an_error() {
    let syntax = import::parse_documents(&read("garbage.txt")).expect_err("garbage");
    assert!(
        matches!(
            syntax,
            ImportError::Syntax {
                document: 1,
                line: Some(2),
                ..
            }
        ),
        "{syntax:?}"
    );
    assert_eq!(
        import::parse_documents("just some words\n"),
        Err(ImportError::NotAnObject {
            document: 1,
            found: "a string"
        })
    );
    assert_eq!(
        import::parse_documents("kind: HTTPScaledObject\n---\n- a\n- b\n"),
        Err(ImportError::NotAnObject {
            document: 2,
            found: "a list"
        })
    );
    assert_eq!(
        import::parse_documents("---\n---\n"),
        Err(ImportError::Nothing { skipped: 0 })
    );
    let only_others =
        import::parse_documents("kind: Service\napiVersion: v1\nmetadata: {name: x}\n")
            .expect("a document");
    assert_eq!(
        import::import(&only_others, &Options::default()),
        Err(ImportError::Nothing { skipped: 1 })
    );
}

#[test]
fn objects_that_break_the_addons_schema_are_errors() {
    let cases = [
        // scaleTargetRef.service is required by the CRD.
        (
            "spec: {scaleTargetRef: {name: a, port: 80}}",
            "spec.scaleTargetRef.service",
            "missing",
        ),
        (
            "spec: {scaleTargetRef: {service: a, port: 80}}",
            "spec.scaleTargetRef.name",
            "missing",
        ),
        (
            "spec: {scaleTargetRef: {name: a, service: a, port: 70000}}",
            "spec.scaleTargetRef.port",
            "65535",
        ),
        (
            "spec: {scaleTargetRef: {name: a, service: a}, replicas: {min: -1}}",
            "spec.replicas.min",
            "integer",
        ),
        (
            "spec: {scaleTargetRef: {name: a, service: a}, hosts: example.com}",
            "spec.hosts",
            "expected a list",
        ),
        (
            "spec: {scaleTargetRef: {name: a, service: a}, timeouts: {conditionWait: soon}}",
            "spec.timeouts.conditionWait",
            "not a duration",
        ),
        (
            "spec: {scaleTargetRef: {name: a, deployment: b, service: a}}",
            "spec.scaleTargetRef",
            "differ",
        ),
        (
            "metadata: {namespace: x}\nspec: {}",
            "metadata.name",
            "missing",
        ),
    ];
    for (spec, field, reason) in cases {
        let text = format!("kind: HTTPScaledObject\napiVersion: http.keda.sh/v1alpha1\nmetadata: {{name: a}}\n{spec}\n");
        // The last case replaces metadata: YAML keeps the later key.
        let text = if spec.starts_with("metadata") {
            format!("kind: HTTPScaledObject\n{spec}\n")
        } else {
            text
        };
        let objects = import::parse_documents(&text).expect("yaml");
        match import::import(&objects, &Options::default()) {
            Err(ImportError::Invalid {
                field: f,
                reason: r,
                ..
            }) => {
                assert_eq!(f, field, "{spec}");
                assert!(r.contains(reason), "{spec}: {r}");
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_scaling_metric_leaves_target_pending_requests_in_force() {
    let text = "kind: HTTPScaledObject\napiVersion: http.keda.sh/v1alpha1\nmetadata: {name: a}\n\
        spec:\n  scaleTargetRef: {name: a, service: a, port: 80}\n  scalingMetric: {}\n  \
        targetPendingRequests: 7\n";
    let objects = import::parse_documents(text).expect("yaml");
    let import = import::import(&objects, &Options::default()).expect("import");
    assert_eq!(
        import.services[0].service.scaling.target_concurrency,
        Some(7.0)
    );
    assert!(import.warnings.is_empty(), "{:#?}", import.warnings);
}

#[test]
fn both_metrics_are_imported_with_a_warning() {
    let text =
        "kind: HTTPScaledObject\napiVersion: http.keda.sh/v1alpha1\nmetadata: {name: both}\n\
        spec:\n  scaleTargetRef: {name: a, service: a, port: 80}\n  scalingMetric:\n    \
        concurrency: {targetValue: 5}\n    requestRate: {targetValue: 30, granularity: 500ms}\n";
    let objects = import::parse_documents(text).expect("yaml");
    let import = import::import(&objects, &Options::default()).expect("import");
    let s = &import.services[0].service;
    assert_eq!(s.scaling.target_concurrency, Some(5.0));
    // 30 per 500ms = 60 per second.
    assert_eq!(s.scaling.target_rps, Some(60.0));
    assert_eq!(warned_fields(&import), ["spec.scalingMetric"]);
    as_config(&import);
}

// --- the binary ---------------------------------------------------------------

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rouse-controller"))
        .args(args)
        .env_remove("ROUSE_CONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rouse-controller");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_prints_services_on_stdout_and_warnings_on_stderr() {
    let path = fixture("unsupported.yaml");
    let out = run(&["import", path.to_str().expect("utf-8 path")], None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("services:\n"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    assert!(
        stderr.contains(
            "warning: shop/checkout.v2: spec.headers: rouse does not route on headers; ignored"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("warning: ").count(), 9, "{stderr}");
    // stdout is a config rouse accepts as it is.
    let config = Config::parse(Path::new("stdout"), &stdout).expect("valid config");
    assert_eq!(config.services[0].name, "checkout-v2");
}

#[test]
fn cli_strict_fails_on_warnings_and_writes_nothing() {
    let path = fixture("unsupported.yaml");
    let out = run(
        &["import", "--strict", path.to_str().expect("utf-8 path")],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("with --strict"),
        "{}",
        text(&out.stderr)
    );
    // Without warnings, --strict passes.
    let path = fixture("old-style.yaml");
    let out = run(
        &["import", "--strict", path.to_str().expect("utf-8 path")],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn cli_reads_stdin_and_takes_a_namespace() {
    let out = run(
        &["import", "-", "--namespace", "blogs"],
        Some(&read("old-style.yaml")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = Config::parse(Path::new("stdout"), &text(&out.stdout)).expect("valid config");
    let Some(Backend::Kubernetes(k)) = config.services[0].backend.selected() else {
        panic!("not a kubernetes backend");
    };
    assert_eq!(k.namespace, "blogs");
    assert!(
        text(&out.stderr).contains("from stdin"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cli_exits_2_on_garbage_naming_file_and_reason() {
    let path = fixture("garbage.txt");
    let path = path.to_str().expect("utf-8 path");
    let out = run(&["import", path], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: {path}: document 1, line 2: not YAML or JSON: "
        )),
        "{stderr}"
    );
    let out = run(&["import", "-"], Some("hello\n"));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: stdin: document 1: a string, not a Kubernetes object (a mapping with \
         `apiVersion` and `kind`)\n"
    );
    let out = run(&["import", "/nonexistent/objects.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: /nonexistent/objects.yaml: cannot read: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cli_refuses_services_rouse_would_refuse() {
    let path = fixture("conflict.yaml");
    let out = run(&["import", path.to_str().expect("utf-8 path")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: web/canary (service `canary`)"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing written"), "{stderr}");
}

#[test]
fn cli_keeps_the_controllers_own_flags() {
    // No subcommand: --config is required, as before.
    let out = run(&[], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config <CONFIG>"),
        "{}",
        text(&out.stderr)
    );
    // --check still works.
    let dir = std::env::temp_dir().join(format!("rouse-import-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("rouse.yaml");
    std::fs::write(&config, "services: []\n").expect("write config");
    let out = run(
        &["--config", config.to_str().expect("utf-8"), "--check"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // import needs a file or --cluster, and not both.
    assert_eq!(run(&["import"], None).status.code(), Some(2));
    assert_eq!(
        run(&["import", "x.yaml", "--cluster"], None).status.code(),
        Some(2)
    );
    // And the controller's flags do not mix with it.
    let out = run(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "import",
            "x.yaml",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
