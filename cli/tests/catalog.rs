//! `rouse deploy`, `remove`, `scale` and `routes` against a real
//! nats-server: what each writes to the buckets (read back as a controller
//! would), its table and JSON output, and each refusal with its exit code.

mod support;

use rouse_nats::catalog::{self, Source};
use rouse_nats::config::{Backend, Probe};
use support::{echo_spec, run, Nats};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_writes_the_definition_then_updates_it_and_knows_when_nothing_changed() {
    let nats = Nats::start().await;
    let url = nats.url();
    let created = run(
        &url,
        &[
            "deploy",
            "web",
            "--host",
            "web.localhost",
            "--host",
            "*.web.localhost",
            "--path",
            "/",
            "--path",
            "/api",
            "--min",
            "1",
            "--max",
            "4",
            "--target-concurrency",
            "5",
            "--target-rps",
            "50",
            "--scale-to-zero-after",
            "90s",
            "--hold-timeout",
            "5s",
            "--readiness",
            "/healthz",
            "--env",
            "MODE=demo",
            // Everything after --command is the command, flags included.
            "--command",
            "rouse-echo",
            "--port",
            "{port}",
            "--id",
            "x",
        ],
    )
    .await
    .expect_code(0);
    assert_eq!(created.stdout, "service web created (revision 1)\n");

    let (revision, record) = nats.record("web").await.expect("written");
    assert_eq!(revision, 1);
    assert_eq!(record.source, Source::Api);
    assert!(
        record.updated_by.starts_with("rouse@"),
        "{}",
        record.updated_by
    );
    let spec = &record.spec;
    assert_eq!(spec.hosts, ["web.localhost", "*.web.localhost"]);
    assert_eq!(spec.paths, ["/", "/api"]);
    let Some(Backend::Process(process)) = spec.backend.selected() else {
        panic!("a process backend: {:?}", spec.backend);
    };
    assert_eq!(
        process.command,
        ["rouse-echo", "--port", "{port}", "--id", "x"]
    );
    assert_eq!(process.env.get("MODE").map(String::as_str), Some("demo"));
    assert_eq!(spec.readiness.probe(), Probe::HttpGet("/healthz".into()));
    assert_eq!(spec.scaling.min_replicas, 1);
    assert_eq!(spec.scaling.max_replicas, 4);
    assert_eq!(spec.scaling.target_concurrency, 5.0);
    assert_eq!(spec.scaling.target_rps, Some(50.0));
    assert_eq!(spec.scaling.scale_to_zero_after.as_secs(), 90);
    assert_eq!(spec.hold.timeout.as_secs(), 5);
    // Keys not given take the file's defaults.
    assert_eq!(spec.scaling.drain_timeout.as_secs(), 30);
    assert!(catalog::check_service(spec).is_ok());

    let docker = [
        "deploy",
        "web",
        "--host",
        "web.localhost",
        "--image",
        "rouse-echo:dev",
        "--port",
        "8080",
    ];
    let again: Vec<&str> = docker.iter().copied().chain(["-o", "json"]).collect();
    let updated = run(&url, &again).await.expect_code(0);
    let doc = updated.json();
    assert_eq!(doc["action"], "updated", "{doc}");
    assert_eq!(doc["service"], "web");
    let (revision, record) = nats.record("web").await.expect("still there");
    assert_eq!(doc["revision"], revision);
    let Some(Backend::Docker(docker_backend)) = record.spec.backend.selected() else {
        panic!("a docker backend now: {:?}", record.spec.backend);
    };
    assert_eq!(
        (docker_backend.image.as_str(), docker_backend.port),
        ("rouse-echo:dev", 8080)
    );
    assert_eq!(
        record.spec.scaling.min_replicas, 0,
        "a deploy replaces the whole definition"
    );

    let same = run(&url, &docker).await.expect_code(0);
    assert_eq!(
        same.stdout,
        format!("service web unchanged (revision {revision})\n")
    );
    assert_eq!(
        nats.record("web").await.map(|(r, _)| r),
        Some(revision),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_a_file_service_and_a_taken_route_with_exit_3() {
    let nats = Nats::start().await;
    let url = nats.url();
    let seeded = nats
        .put_record(Source::File, echo_spec("echo", "echo.localhost"))
        .await;

    let owned = run(
        &url,
        &[
            "deploy",
            "echo",
            "--host",
            "other.localhost",
            "--command",
            "x",
        ],
    )
    .await
    .expect_code(3);
    assert!(
        owned
            .stderr
            .contains("service `echo` is defined in the config file; change it there"),
        "{owned:#?}"
    );
    let clash = run(
        &url,
        &[
            "deploy",
            "web",
            "--host",
            "ECHO.localhost",
            "--command",
            "x",
        ],
    )
    .await
    .expect_code(3);
    assert!(
        clash
            .stderr
            .contains("host `ECHO.localhost` with path `/` is already routed to service `echo`"),
        "{clash:#?}"
    );
    assert!(
        nats.record("web").await.is_none(),
        "nothing written for the clash"
    );
    let removed = run(&url, &["remove", "echo"]).await.expect_code(3);
    assert!(
        removed
            .stderr
            .contains("defined in the config file; remove it there"),
        "{removed:#?}"
    );
    assert_eq!(
        nats.record("echo").await.map(|(r, _)| r),
        Some(seeded),
        "the file's record stays"
    );

    // Another path on the same host is a different route.
    run(
        &url,
        &[
            "deploy",
            "web",
            "--host",
            "echo.localhost",
            "--path",
            "/web",
            "--command",
            "x",
        ],
    )
    .await
    .expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_definitions_and_flags_are_exit_2_naming_the_key_and_the_flag() {
    let nats = Nats::start().await;
    let url = nats.url();
    let invalid = run(
        &url,
        &[
            "deploy",
            "web",
            "--host",
            "web.localhost",
            "--path",
            "api",
            "--max",
            "0",
            "--command",
            "x",
        ],
    )
    .await
    .expect_code(2);
    assert!(
        invalid.stderr.contains("invalid service `web`"),
        "{invalid:#?}"
    );
    assert!(invalid.stderr.contains("key `paths[0]`"), "{invalid:#?}");
    assert!(invalid.stderr.contains("(--path)"), "{invalid:#?}");
    assert!(
        invalid.stderr.contains("key `scaling.max_replicas`"),
        "{invalid:#?}"
    );
    assert!(invalid.stderr.contains("(--max)"), "{invalid:#?}");

    for (args, says) in [
        (
            &["deploy", "web", "--host", "h", "--image", "i"][..],
            "--port",
        ),
        (&["deploy", "web", "--command", "x"][..], "--host"),
        (&["deploy", "web", "--host", "h"][..], "--image"),
        (
            &["deploy", "Web", "--host", "h", "--command", "x"][..],
            "not a service name",
        ),
        (
            &[
                "deploy",
                "web",
                "--host",
                "h",
                "--readiness",
                "http",
                "--command",
                "x",
            ][..],
            "tcp",
        ),
        (
            &[
                "deploy",
                "web",
                "--host",
                "h",
                "--hold-timeout",
                "soon",
                "--command",
                "x",
            ][..],
            "duration",
        ),
        (&["scale", "web"][..], "--pin"),
        (
            &["scale", "web", "--pin", "1", "--unpin"][..],
            "cannot be used with",
        ),
    ] {
        let refused = run(&url, args).await.expect_code(2);
        assert!(refused.stderr.contains(says), "{args:?}: {refused:#?}");
    }
    assert!(nats.record("web").await.is_none(), "nothing was written");
}

/// Eight deploys of one new name at once: exactly one creates it; each
/// other one either updated what it read (exit 0) or lost the race and
/// says so (exit 3): never two creations, never a silent overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deploys_never_both_create() {
    let nats = Nats::start().await;
    let url = nats.url();
    let runs = futures::future::join_all((0..8).map(|i| {
        let url = url.clone();
        async move {
            let target = i.to_string();
            run(
                &url,
                &[
                    "deploy",
                    "race",
                    "--host",
                    "race.localhost",
                    "--max",
                    &(i + 1).to_string(),
                    "--command",
                    "rouse-echo",
                    &target,
                ],
            )
            .await
        }
    }))
    .await;
    let mut created = 0;
    for run in &runs {
        match run.code {
            0 if run.stdout.contains("created") => created += 1,
            0 => assert!(run.stdout.contains("updated"), "{run:#?}"),
            3 => assert!(
                run.stderr.contains("changed by another writer meanwhile"),
                "{run:#?}"
            ),
            _ => panic!("unexpected outcome: {run:#?}"),
        }
    }
    assert_eq!(created, 1, "{runs:#?}");
    let (revision, _) = nats.record("race").await.expect("written");
    let writes = runs.iter().filter(|r| r.code == 0).count() as u64;
    assert_eq!(
        revision, writes,
        "every successful deploy is one revision: {runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_pins_and_unpins_and_remove_takes_the_pin_along() {
    let nats = Nats::start().await;
    let url = nats.url();
    nats.put_record(Source::File, echo_spec("echo", "echo.localhost"))
        .await;

    let pinned = run(&url, &["scale", "echo", "--pin", "3"])
        .await
        .expect_code(0);
    assert_eq!(pinned.stdout, "service echo pinned at 3 replicas\n");
    let pins = nats.pins().await;
    let pin = pins.get("echo").await.expect("read pin").expect("a pin");
    let pin = catalog::decode_pin(&pin).expect("decodes");
    assert_eq!(pin.replicas, 3);
    assert!(pin.by.starts_with("rouse@"), "{pin:?}");

    let note = run(&url, &["scale", "echo", "--pin", "11"])
        .await
        .expect_code(0);
    assert!(
        note.stderr.contains("above `echo`'s max_replicas (10)"),
        "{note:#?}"
    );

    let unpinned = run(&url, &["scale", "echo", "--unpin", "-o", "json"])
        .await
        .expect_code(0);
    assert_eq!(
        unpinned.json(),
        serde_json::json!({"service": "echo", "pinned": null, "changed": true})
    );
    assert!(pins.get("echo").await.expect("read pin").is_none());
    let again = run(&url, &["scale", "echo", "--unpin"])
        .await
        .expect_code(0);
    assert_eq!(again.stdout, "service echo was not pinned\n");

    let unknown = run(&url, &["scale", "nope", "--pin", "1"])
        .await
        .expect_code(2);
    assert!(
        unknown.stderr.contains("no service named `nope`"),
        "{unknown:#?}"
    );
    assert!(pins.get("nope").await.expect("read pin").is_none());

    run(
        &url,
        &["deploy", "web", "--host", "web.localhost", "--command", "x"],
    )
    .await
    .expect_code(0);
    run(&url, &["scale", "web", "--pin", "2"])
        .await
        .expect_code(0);
    let removed = run(&url, &["remove", "web"]).await.expect_code(0);
    assert_eq!(removed.stdout, "service web removed (and its pin)\n");
    assert!(nats.record("web").await.is_none());
    assert!(pins.get("web").await.expect("read pin").is_none());
    let gone = run(&url, &["remove", "web"]).await.expect_code(2);
    assert!(
        gone.stderr
            .contains("no service named `web` in the catalog"),
        "{gone:#?}"
    );
    // A name can be deployed again after a remove.
    run(
        &url,
        &["deploy", "web", "--host", "web.localhost", "--command", "x"],
    )
    .await
    .expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_lists_each_host_and_path_with_its_source_and_the_rejected_apart() {
    let nats = Nats::start().await;
    let url = nats.url();
    let empty = run(&url, &["routes"]).await.expect_code(0);
    assert_eq!(empty.stdout, "HOST  PATH  SERVICE  SOURCE\n");

    nats.put_record(Source::File, echo_spec("echo", "echo.localhost"))
        .await;
    run(
        &url,
        &[
            "deploy",
            "api",
            "--host",
            "api.localhost",
            "--path",
            "/v2",
            "--path",
            "/v1",
            "--command",
            "x",
        ],
    )
    .await
    .expect_code(0);
    // Written behind the CLI's back, as a second writer racing on a route
    // would: the older definition keeps it.
    nats.put_record(Source::Api, echo_spec("late", "echo.localhost"))
        .await;

    let table = run(&url, &["routes"]).await.expect_code(0);
    assert_eq!(
        table.stdout,
        "HOST            PATH  SERVICE  SOURCE\n\
         api.localhost   /v1   api      api\n\
         api.localhost   /v2   api      api\n\
         echo.localhost  /     echo     file\n\
         late: rejected: host `echo.localhost` with path `/` is already routed to service `echo`\n"
    );
    let doc = run(&url, &["routes", "-o", "json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(doc["routes"].as_array().map(Vec::len), Some(3), "{doc}");
    assert_eq!(
        doc["routes"][2],
        serde_json::json!({"host": "echo.localhost", "path": "/", "service": "echo", "source": "file"})
    );
    assert_eq!(doc["rejected"][0]["service"], "late");
}

/// With NATS down, every command that needs it fails fast with exit 1,
/// naming the URL; it never hangs on the client's reconnect loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_is_exit_1_naming_the_url() {
    let mut nats = Nats::start().await;
    let url = nats.url();
    nats.server.stop().await;
    for args in [
        &["deploy", "web", "--host", "h", "--command", "x"][..],
        &["remove", "web"][..],
        &["scale", "web", "--pin", "1"][..],
        &["routes"][..],
        &["events"][..],
    ] {
        // Global flags go first: everything after --command is the command.
        let args: Vec<&str> = ["--connect-timeout", "1s"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let down = run(&url, &args).await.expect_code(1);
        assert!(
            down.stderr.contains(&format!(
                "cannot reach NATS at {url}: not connected within 1s"
            )),
            "{args:?}: {down:#?}"
        );
        assert!(down.stdout.is_empty(), "{args:?}: {down:#?}");
    }
}

/// `--wait` with no controller to answer: the definition is written, then
/// the wait runs out (exit 4) saying what it last saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_wait_without_a_controller_times_out_with_exit_4() {
    let nats = Nats::start().await;
    let url = nats.url();
    let waited = run(
        &url,
        &[
            "deploy",
            "web",
            "--host",
            "web.localhost",
            "--wait",
            "--timeout",
            "2s",
            "--command",
            "x",
        ],
    )
    .await
    .expect_code(4);
    assert_eq!(waited.stdout, "service web created (revision 1)\n");
    assert!(
        waited.stderr.contains("timed out after 2s waiting for `web`: web: the controller: cannot reach the controller at http://127.0.0.1:9"),
        "{waited:#?}"
    );
    assert!(nats.record("web").await.is_some());
}
