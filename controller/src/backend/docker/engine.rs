//! The connection to the Docker Engine, shared by every docker-backed
//! service of a controller, and the one list of that controller's
//! containers they share.
//!
//! Every service's loop lists its replicas on every pass; asking the engine
//! once per service would cost it `services / tick` calls a second. So the
//! engine is asked for all of this controller's containers at once, and a
//! list up to [`SNAPSHOT_MAX_AGE`] old is handed to the next service that
//! asks, unless this controller created, started or stopped a container
//! since (then the next one asks again: a loop always sees its own changes).
//! Concurrent askers wait for the one list in flight.
//!
//! The API version is negotiated on first use, not at start-up: a controller
//! must start (and keep warm traffic flowing) while the engine is down, and
//! engines as old as Debian's dockerd 20.10 (API 1.41) reject clients newer
//! than themselves. Until negotiation succeeds each call tries again, so an
//! engine that comes up later is found.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptions;
use bollard::Docker;
use tokio::sync::{Mutex, OnceCell};

use super::spec;
use crate::backend::BackendError;

/// How old a shared list of containers may be when handed out again:
/// well under a reconcile tick, so exits are seen about as soon as before.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(250);

/// Where the engine listens when `DOCKER_HOST` is not set.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// A lazily negotiated engine client.
pub struct Engine {
    host: String,
    negotiated: OnceCell<Docker>,
    /// `controller.id`: whose containers [`Engine::containers`] lists.
    controller: String,
    snapshot: Mutex<Option<Snapshot>>,
    /// Bumped by every change this controller makes to its containers.
    changes: AtomicU64,
}

/// One list of the controller's containers.
struct Snapshot {
    taken: Instant,
    /// [`Engine::changes`] when the list was asked for.
    changes: u64,
    containers: Arc<Vec<ContainerSummary>>,
}

impl Engine {
    /// The engine at `DOCKER_HOST` (unix socket or `tcp://`) as controller
    /// `controller` sees it; not yet contacted.
    pub fn from_env(controller: &str) -> Result<Self, BackendError> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Self::at(&host, controller)
    }

    /// An engine at `host`, not yet contacted. A host bollard cannot use at
    /// all is an error now; a unix socket that is not there yet is not (the
    /// engine may start after the controller).
    pub fn at(host: &str, controller: &str) -> Result<Self, BackendError> {
        if !host.starts_with("unix://") {
            Self::connect(host)?;
        }
        Ok(Self {
            host: host.to_string(),
            negotiated: OnceCell::new(),
            controller: controller.to_string(),
            snapshot: Mutex::new(None),
            changes: AtomicU64::new(0),
        })
    }

    /// Every container (running or not) labelled with this controller's id,
    /// from the shared list (see the module docs).
    pub async fn containers(&self) -> Result<Arc<Vec<ContainerSummary>>, BackendError> {
        let docker = self.client().await?;
        let mut snapshot = self.snapshot.lock().await;
        let changes = self.changes.load(Ordering::Acquire);
        if let Some(taken) = snapshot.as_ref() {
            if taken.changes == changes && taken.taken.elapsed() < SNAPSHOT_MAX_AGE {
                return Ok(Arc::clone(&taken.containers));
            }
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(spec::controller_filters(&self.controller)),
            ..Default::default()
        };
        let containers = Arc::new(
            docker
                .list_containers(Some(options))
                .await
                .map_err(|e| self.error("listing containers", e))?,
        );
        *snapshot = Some(Snapshot {
            taken: Instant::now(),
            changes,
            containers: Arc::clone(&containers),
        });
        Ok(containers)
    }

    /// This controller changed a container: the next list is fresh.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    fn connect(host: &str) -> Result<Docker, BackendError> {
        Docker::connect_with_host(host).map_err(|source| BackendError::Engine {
            what: format!("cannot reach the docker engine at {host}"),
            message: describe(&source),
        })
    }

    /// The client, at an API version the engine speaks.
    pub async fn client(&self) -> Result<&Docker, BackendError> {
        self.negotiated
            .get_or_try_init(|| async {
                let client = Self::connect(&self.host)?
                    .negotiate_version()
                    .await
                    .map_err(|e| self.error("negotiating the API version", e))?;
                let version = client.client_version();
                tracing::info!(host = %self.host, api = %version, "connected to the docker engine");
                Ok(client)
            })
            .await
    }

    /// `err` from doing `what`, worded for `last_error`: the engine's own
    /// message when it answered, "cannot reach" when it did not.
    pub fn error(&self, what: &str, err: bollard::errors::Error) -> BackendError {
        match err {
            bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            } => BackendError::Engine {
                what: what.to_string(),
                message: format!("{message} (HTTP {status_code})"),
            },
            other => BackendError::Engine {
                what: format!("{what}: cannot reach the docker engine at {}", self.host),
                message: describe(&other),
            },
        }
    }
}

/// `err` and its sources, outermost first: bollard's own message alone
/// ("client error (Connect)") does not say what failed.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

/// Whether `err` is the engine saying "no such thing" (a container already
/// removed, an image not present).
pub fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_engine_that_is_not_there_is_named_in_the_error() {
        let engine = Engine::at("unix:///nonexistent/rouse-test/docker.sock", "test")
            .expect("a missing socket is not an error before first use");
        let err = engine.client().await.expect_err("no engine there");
        let text = err.to_string();
        assert!(
            text.contains(
                "cannot reach the docker engine at unix:///nonexistent/rouse-test/docker.sock"
            ),
            "{text}"
        );
        // Not negotiated: the next call tries again.
        assert!(engine.negotiated.get().is_none());
    }
}
