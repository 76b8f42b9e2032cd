//! Replicas as Docker containers, through the Engine API (bollard).
//!
//! The engine is the source of truth: `list()` takes the containers
//! labelled with this service from the engine's list of this controller's
//! (`controller.id`) containers, shared by its services (see `engine`), so a
//! restarted controller finds the containers it left (and the loop removes
//! the exited ones) with nothing kept on disk. `ensure` creates and starts
//! the missing containers in parallel, after making sure the network exists
//! and the image is there (`pull`). `stop` is the engine's stop with the
//! service's `stop_timeout`, then remove. `usage` asks the engine for one
//! stats sample of each running container, all at once ([`stats`]).
//!
//! An engine that is down is an error of the call that needed it; nothing
//! here panics or blocks, so the loop keeps the replicas it has published
//! and warm traffic keeps flowing.

mod engine;
mod spec;
mod stats;
#[cfg(test)]
mod usage_tests;

pub use engine::Engine;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, LogsOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use rouse_nats::config::{DockerBackend as DockerConfig, PullPolicy};
use tokio::sync::OnceCell;

use super::{Backend, BackendError, CpuUsage, Health, Replica, Started, Usage};
use engine::is_not_found;
use spec::{Listed, Owner, HOST_NETWORK};

/// Lines of a dead container's output put into its exit reason.
const LOG_TAIL_LINES: &str = "5";

/// How long the engine may take for one container's stats: `usage` is
/// called about once a second, and a slow engine must not hold its caller
/// much longer than that.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// The containers of one service.
pub struct DockerBackend {
    owner: Owner,
    config: DockerConfig,
    engine: Arc<Engine>,
    /// Set once the service's network is known to exist.
    network_ready: OnceCell<()>,
    /// Why each exited replica's container stopped, asked of the engine once.
    exit_reasons: Mutex<HashMap<String, String>>,
}

impl DockerBackend {
    /// A backend for `service`; contacts the engine only when first used.
    pub fn new(service: &str, controller: &str, config: DockerConfig, engine: Arc<Engine>) -> Self {
        Self {
            owner: Owner {
                service: service.to_string(),
                controller: controller.to_string(),
                pool: None,
            },
            config,
            engine,
            network_ready: OnceCell::new(),
            exit_reasons: Mutex::new(HashMap::new()),
        }
    }

    /// The backend of pool `pool` of the service: its containers carry
    /// `rouse.pool=<pool>` and ids `<service>-<pool>-…`.
    pub fn in_pool(mut self, pool: &str) -> Self {
        self.owner.pool = Some(pool.to_string());
        self
    }

    /// This service's containers, from the engine's shared list.
    async fn listed(&self) -> Result<Vec<Listed>, BackendError> {
        let containers = self.engine.containers().await?;
        Ok(containers
            .iter()
            .filter(|s| self.owner.owns(s))
            .filter_map(|s| spec::replica_of(&self.config, s))
            .collect())
    }

    /// The user network the containers join, created when missing.
    async fn prepare_network(&self, docker: &Docker) -> Result<(), BackendError> {
        let network = &self.config.network;
        if network == HOST_NETWORK || network == "bridge" {
            return Ok(());
        }
        self.network_ready
            .get_or_try_init(|| async {
                match docker.inspect_network(network, None).await {
                    Ok(_) => return Ok(()),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(self.engine.error("inspecting the network", e)),
                }
                let request = NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(
                        spec::CONTROLLER_LABEL.to_string(),
                        self.owner.controller.clone(),
                    )])),
                    ..Default::default()
                };
                match docker.create_network(request).await {
                    Ok(_) => {
                        tracing::info!(%network, "created docker network");
                        Ok(())
                    }
                    // Another service's backend created it meanwhile.
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 409,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(self
                        .engine
                        .error(&format!("creating the network `{network}`"), e)),
                }
            })
            .await
            .map(|_| ())
    }

    /// The image, as `pull` says: checked, pulled when missing, or pulled.
    async fn prepare_image(&self, docker: &Docker) -> Result<(), BackendError> {
        let image = &self.config.image;
        if self.config.pull != PullPolicy::Always {
            match docker.inspect_image(image).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => {
                    if self.config.pull == PullPolicy::Never {
                        return Err(BackendError::ImageMissing {
                            image: image.clone(),
                        });
                    }
                }
                Err(e) => return Err(self.engine.error("inspecting the image", e)),
            }
        }
        self.pull(docker).await
    }

    async fn pull(&self, docker: &Docker) -> Result<(), BackendError> {
        let image = &self.config.image;
        let (name, tag) = spec::split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(name.to_string()),
            tag: (!tag.is_empty()).then(|| tag.to_string()),
            ..Default::default()
        };
        tracing::info!(%image, "pulling image");
        let mut progress = docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            let message = match step {
                Ok(info) => match info.error_detail.and_then(|d| d.message) {
                    Some(message) => message,
                    None => continue,
                },
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => message,
                Err(bollard::errors::Error::DockerStreamError { error }) => error,
                Err(e) => return Err(self.engine.error(&format!("pulling image `{image}`"), e)),
            };
            return Err(BackendError::Pull {
                image: image.clone(),
                message,
            });
        }
        Ok(())
    }

    /// Creates and starts one container; removes it again if it cannot start.
    async fn start_one(&self, docker: &Docker) -> Result<Replica, BackendError> {
        let id = format!("{}-{:08x}", self.owner.prefix(), fastrand::u32(..));
        let port = if self.config.network == HOST_NETWORK {
            super::free_port().map_err(|source| BackendError::Io {
                what: "finding a free port".into(),
                source,
            })?
        } else {
            self.config.port
        };
        let name = Owner::container_name(&id);
        let body = spec::create_body(&self.config, &self.owner, &id, port);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| {
                self.engine.error(
                    &format!("creating a container of `{}`", self.config.image),
                    e,
                )
            })?;
        self.engine.changed();
        let started = docker.start_container(&created.id, None).await;
        // Whatever the answer, the container changed: the next list is fresh.
        self.engine.changed();
        if let Err(e) = started {
            // A port already taken, a bad mount: the engine says which.
            let err = self.engine.error(&format!("starting container {name}"), e);
            self.remove(docker, &created.id).await;
            return Err(err);
        }
        tracing::info!(service = %self.owner.service, replica = %id, container = %created.id, "started container");
        let listed = self.listed().await?;
        let replica = listed
            .into_iter()
            .map(|l| l.replica)
            .find(|r| r.id == id)
            .unwrap_or(Replica {
                id,
                addr: String::new(),
                health: Health::Exited("container vanished right after its start".into()),
                readiness: super::Readiness::Probe,
            });
        Ok(replica)
    }

    async fn remove(&self, docker: &Docker, container: &str) {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let removed = docker.remove_container(container, Some(options)).await;
        self.engine.changed();
        match removed {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(%container, error = %e, "removing container failed")
            }
        }
    }

    /// The engine's word on why `listed` stopped, with its last output.
    async fn exit_reason(&self, docker: &Docker, listed: &Listed) -> String {
        let cached = self.lock_reasons().get(&listed.replica.id).cloned();
        if let Some(reason) = cached {
            return reason;
        }
        let mut reason = match docker
            .inspect_container(&listed.container, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
        {
            Some(state) if state.oom_killed == Some(true) => {
                "killed: out of memory (the container's `memory` limit)".to_string()
            }
            Some(state) => {
                let code = state.exit_code.unwrap_or(-1);
                match state.error.filter(|e| !e.is_empty()) {
                    Some(error) => format!("exited with code {code}: {error}"),
                    None => format!("exited with code {code}"),
                }
            }
            None => match &listed.replica.health {
                Health::Exited(why) => why.clone(),
                Health::Running => "exited".into(),
            },
        };
        let tail = self.log_tail(docker, &listed.container).await;
        if !tail.is_empty() {
            reason = format!("{reason}; last output: {tail}");
        }
        self.lock_reasons()
            .insert(listed.replica.id.clone(), reason.clone());
        reason
    }

    async fn log_tail(&self, docker: &Docker, container: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_TAIL_LINES.into(),
            ..Default::default()
        };
        let chunks: Vec<_> = docker
            .logs(container, Some(options))
            .take(64)
            .collect()
            .await;
        let text: String = chunks
            .into_iter()
            .filter_map(Result::ok)
            .map(|chunk| chunk.to_string())
            .collect();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        lines.join(" | ")
    }

    /// One stats sample of a running container; `Ok(None)` when the engine
    /// no longer has it (removed since it was listed).
    async fn stats_of(
        &self,
        docker: &Docker,
        listed: &Listed,
    ) -> Result<Option<Usage>, BackendError> {
        let id = &listed.replica.id;
        // one_shot: a single sample now, instead of the two a second apart
        // the engine otherwise takes for its own CPU percentage.
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut answers = docker.stats(&listed.container, Some(options));
        let what = || format!("reading the stats of replica {id}");
        match tokio::time::timeout(STATS_TIMEOUT, answers.next()).await {
            Err(_) => Err(BackendError::Engine {
                what: what(),
                message: format!("no answer within {STATS_TIMEOUT:?}"),
            }),
            Ok(None) => Err(BackendError::Engine {
                what: what(),
                message: "the engine closed the stats stream without a sample".into(),
            }),
            Ok(Some(Err(e))) if is_not_found(&e) => Ok(None),
            Ok(Some(Err(e))) => Err(self.engine.error(&what(), e)),
            Ok(Some(Ok(stats))) => Ok(Some(stats::usage_of(id.clone(), &stats))),
        }
    }

    fn lock_reasons(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.exit_reasons.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn startup_timeout(&self) -> Duration {
        self.config.startup_timeout
    }

    async fn ensure(&self, n: usize) -> Result<Started, BackendError> {
        let docker = self.engine.client().await?;
        self.prepare_network(docker).await?;
        let running = self.listed().await?.iter().filter(|l| !l.exited).count();
        if running >= n {
            return Ok(Started::default());
        }
        self.prepare_image(docker).await?;
        let starts = (running..n).map(|_| self.start_one(docker));
        let mut started = Vec::new();
        let mut first_error = None;
        for result in futures::future::join_all(starts).await {
            match result {
                Ok(replica) => started.push(replica),
                Err(err) => {
                    tracing::warn!(service = %self.owner.service, error = %err, "container start failed");
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            // Report what did start; the next call fails at once and
            // surfaces the error.
            Some(err) if started.is_empty() => Err(err),
            _ => Ok(Started {
                replicas: started,
                pending: 0,
            }),
        }
    }

    async fn list(&self) -> Result<Vec<Replica>, BackendError> {
        let docker = self.engine.client().await?;
        let listed = self.listed().await?;
        let mut replicas = Vec::with_capacity(listed.len());
        for entry in listed {
            let mut replica = entry.replica.clone();
            if entry.exited {
                replica.health = Health::Exited(self.exit_reason(docker, &entry).await);
            }
            replicas.push(replica);
        }
        Ok(replicas)
    }

    async fn stop(&self, id: &str) -> Result<(), BackendError> {
        let docker = self.engine.client().await?;
        let name = Owner::container_name(id);
        let options = StopContainerOptions {
            t: Some(self.config.stop_timeout.as_secs().min(i32::MAX as u64) as i32),
            ..Default::default()
        };
        let stopped = docker.stop_container(&name, Some(options)).await;
        self.engine.changed();
        match stopped {
            Ok(()) => {}
            // 304: it had stopped by itself; removed below.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(self.engine.error(&format!("stopping replica {id}"), e)),
        }
        self.remove(docker, &name).await;
        self.lock_reasons().remove(id);
        tracing::info!(service = %self.owner.service, replica = %id, "stopped and removed container");
        Ok(())
    }

    /// Every running container's stats, asked for concurrently. One that
    /// fails is Unknown; only when all fail is the call an error (the
    /// engine, not a container, is the problem then).
    async fn usage(&self) -> Result<Vec<Usage>, BackendError> {
        let docker = self.engine.client().await?;
        let running: Vec<Listed> = self
            .listed()
            .await?
            .into_iter()
            .filter(|l| !l.exited)
            .collect();
        let answers =
            futures::future::join_all(running.iter().map(|l| self.stats_of(docker, l))).await;
        let mut usages = Vec::with_capacity(running.len());
        let mut first_error = None;
        let mut answered = 0;
        for (listed, answer) in running.iter().zip(answers) {
            match answer {
                Ok(Some(usage)) => {
                    answered += 1;
                    usages.push(usage);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(service = %self.owner.service, error = %err, "container stats");
                    usages.push(Usage {
                        id: listed.replica.id.clone(),
                        cpu: CpuUsage::Unknown,
                        memory_bytes: None,
                    });
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) if answered == 0 => Err(err),
            _ => Ok(usages),
        }
    }
}
