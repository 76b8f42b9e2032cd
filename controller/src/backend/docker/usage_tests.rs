//! `usage()` against a real engine: Debian's dockerd, private to the test
//! and loopback-only (`rouse_stack::DockerEngine`), running `rouse-echo`
//! from an image assembled offline from this workspace's binary (nothing
//! can be pulled). The container is on the host network, so the test
//! reaches it on 127.0.0.1 only.

use std::sync::Arc;
use std::time::Duration;

use rouse_stack::DockerEngine;

use super::{DockerBackend, Engine};
use crate::backend::process::tests::{
    burn_until_grown, echo_bin, holding_64_mib_shows, start_ready,
};
use crate::backend::Backend;

const IMAGE: &str = "rouse-usage-echo:test";

/// A `FROM scratch` image of `rouse-echo` and the libraries it loads, made
/// the way the rouse image is (`scripts/image-rootfs`), without the proxy
/// and controller the full image needs built.
fn build_echo_image(engine: &DockerEngine) {
    let root = rouse_stack::workspace_root();
    let context = engine.dir().join("echo-image");
    let rootfs = context.join("rootfs");
    let out = std::process::Command::new(root.join("scripts/image-rootfs"))
        .arg(&rootfs)
        .arg(echo_bin())
        .output()
        .expect("running scripts/image-rootfs");
    assert!(
        out.status.success(),
        "scripts/image-rootfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENV PATH=/usr/local/bin\nUSER 65532:65532\n",
    )
    .expect("writing the Dockerfile");
    let context = context.to_string_lossy();
    engine
        .cli_ok(&["build", "--tag", IMAGE, &context])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", rouse_stack::tail(&engine.logs(), 30)));
}

fn backend(engine: &DockerEngine) -> DockerBackend {
    let config = serde_norway::from_str(&format!(
        "{{image: '{IMAGE}', command: [rouse-echo], args: [--bind, 127.0.0.1, --port, '{{port}}'],
          port: 8080, network: host, pull: never, stop_timeout: 5s, healthcheck: false}}"
    ))
    .expect("docker config");
    let engine = Engine::at(&engine.host(), "usage-test").expect("engine");
    DockerBackend::new("use", "usage-test", config, Arc::new(engine))
}

/// Whether dockerd is installed; a note on stderr when not.
fn dockerd_present() -> bool {
    match rouse_stack::dockerd_bin() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping the docker usage test: {e:#}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reads_a_containers_cpu_and_memory_from_the_engine() {
    if !dockerd_present() {
        return;
    }
    // Dropped last: removes every container and stops the engine.
    let engine = DockerEngine::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    build_echo_image(&engine);
    let backend = backend(&engine);
    let (id, addr) = start_ready(&backend).await;

    let grown = burn_until_grown(&backend, &id, addr, Duration::from_millis(500)).await;
    assert!(grown >= Duration::from_millis(500), "{grown:?}");
    holding_64_mib_shows(&backend, &id, addr).await;

    backend.stop(&id).await.expect("stop");
    assert!(backend.usage().await.expect("usage").is_empty());
}

#[tokio::test]
async fn an_engine_that_is_not_there_is_an_engine_error() {
    let engine = Engine::at("unix:///nonexistent/rouse-usage/docker.sock", "t").expect("engine");
    let config = serde_norway::from_str("{image: x, port: 8080}").expect("config");
    let backend = DockerBackend::new("svc", "t", config, Arc::new(engine));
    let err = backend.usage().await.expect_err("no engine");
    assert!(
        matches!(err, crate::backend::BackendError::Engine { .. }),
        "{err:?}"
    );
}
