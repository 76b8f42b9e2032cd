//! What runs a service's replicas.
//!
//! One small trait per the design: ensure N replicas, list them with their
//! state and address, stop one. The controller's reconcile loop owns every
//! decision (how many, which one to drain, when it is ready); a backend only
//! speaks its API.
//!
//! How each kind of backend maps onto it:
//!
//! | | `ensure(n)` | `list()` | `stop(id)` | readiness |
//! |---|---|---|---|---|
//! | process (here) | spawns the missing replicas, returns them | its own children and adopted pid files | SIGTERM, SIGKILL after the grace period | probed by the controller |
//! | docker | creates and starts the missing containers, returns them | containers labelled `rouse.service=<name>` and `rouse.controller=<id>` | engine stop with `stop_timeout`, then remove | probed; the image's HEALTHCHECK verdict ([`Readiness::Reported`]) once the engine has one |
//! | kubernetes | sets the target's `/scale` to `n`, returns nothing: the ReplicaSet picks the pods | pods of the service's EndpointSlices | marks the pod with the lowest deletion cost and lowers `/scale` by one | [`Readiness::Reported`] from the EndpointSlice conditions |
//!
//! A backend that cannot name its new replicas at once (the cluster creates
//! them) says how many are [`Started::pending`]; the loop counts those as
//! requested and adopts each one as `list()` shows it, so nothing is asked
//! for twice. `ensure` never removes replicas: scale-down always goes
//! through drain and `stop`, one replica at a time, so none is lost.
//!
//! A service with `backend.pools` gets a [`PooledBackend`]: the same trait
//! over one backend per pool, filling them in order (see [`pools`]).

mod docker;
mod kubernetes;
mod pools;
mod process;

pub use docker::{DockerBackend, Engine};
pub use kubernetes::{Cluster, KubernetesBackend};
pub use pools::{Pool, PoolInfo, PooledBackend};
pub use process::ProcessBackend;

use std::time::Duration;

use async_trait::async_trait;

/// One replica as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    /// `host:port` the proxies connect to.
    pub addr: String,
    pub health: Health,
    pub readiness: Readiness,
}

/// Whether the replica's process/container is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Running,
    /// Gone, with a reason for the operator (exit status, last log lines).
    Exited(String),
}

/// Who decides that a running replica can take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The controller probes it (`readiness.http_get` / `tcp`).
    Probe,
    /// The platform already probes it and says (the engine's health of an
    /// image with a HEALTHCHECK, Kubernetes' ready condition).
    Reported(bool),
}

/// What `ensure` set going.
#[derive(Debug, Default)]
pub struct Started {
    /// Replicas started that can be named now.
    pub replicas: Vec<Replica>,
    /// Replicas the platform will create that `list()` does not show yet,
    /// all of them (not only those this call asked for); 0 for backends
    /// that start replicas themselves.
    pub pending: usize,
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The container engine or API server refused a call, or could not be
    /// reached.
    #[error("{what}: {message}")]
    Engine { what: String, message: String },
    #[error("image `{image}` is not on the engine and `pull` is `never`")]
    ImageMissing { image: String },
    #[error("pulling image `{image}`: {message}")]
    Pull { image: String, message: String },
    /// The platform cannot tell this (e.g. no metrics API in the cluster).
    #[error("{what} is not available: {reason}")]
    Unsupported { what: &'static str, reason: String },
    /// A call to one pool of a pooled backend failed.
    #[error("pool `{pool}`: {source}")]
    Pool {
        pool: String,
        #[source]
        source: Box<BackendError>,
    },
    /// Replicas were needed, there was room only in pools that failed.
    #[error("no pool could start a replica: {reasons}")]
    NoPool { reasons: String },
}

/// What one replica uses, as its platform measures it: the input of
/// `cpu` and `memory` scaling targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub id: String,
    pub cpu: CpuUsage,
    /// Memory in use: a process group's resident set, a container's usage
    /// less its page cache, a pod's working set.
    pub memory_bytes: Option<u64>,
}

/// CPU as a platform reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuUsage {
    /// CPU time used since the replica started, a counter: the controller
    /// takes rates between samples (processes, containers).
    Total(Duration),
    /// Cores in use, already averaged by the platform (metrics.k8s.io).
    Cores(f64),
    Unknown,
}

/// A port the kernel just handed out on loopback; released before use, which
/// leaves a small window for another process to take it (the replica then
/// fails to bind and is replaced).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The backend of one service.
#[async_trait]
pub trait Backend: Send + Sync {
    /// `process`, `docker` or `kubernetes`, for the status API.
    fn kind(&self) -> &'static str;

    /// How long a replica may take to become ready before it is replaced.
    fn startup_timeout(&self) -> Duration;

    /// [`Backend::startup_timeout`] of one replica (a pooled backend's pools
    /// may each have their own).
    fn startup_timeout_of(&self, _id: &str) -> Duration {
        self.startup_timeout()
    }

    /// Most replicas the backend can run now, if it is bounded (a pooled
    /// backend: the pools' `max_replicas`, less the room of pools that are
    /// backing off after a failure). The loop asks for no more.
    fn capacity(&self) -> Option<u32> {
        None
    }

    /// Makes `n` replicas exist (running ones count; exited ones do not).
    async fn ensure(&self, n: usize) -> Result<Started, BackendError>;

    /// Every replica this backend knows, running or exited.
    async fn list(&self) -> Result<Vec<Replica>, BackendError>;

    /// Stops one replica: a polite signal, then force after the grace period.
    /// Unknown ids are not an error.
    async fn stop(&self, id: &str) -> Result<(), BackendError>;

    /// Orders scale-down candidates (oldest first on entry) so that the
    /// last is the one to remove: a platform that picks the victim itself
    /// (a StatefulSet takes its highest ordinal) must get that one drained.
    fn removal_order(&self, _ids: &mut [String]) {}

    /// Whether the platform removes the replica last in
    /// [`Backend::removal_order`] whichever one `stop` names (a StatefulSet
    /// lowered by one removes its highest ordinal). Scale-down then takes
    /// replicas strictly from the end of that order, starting or ready.
    fn picks_its_victim(&self) -> bool {
        false
    }

    /// The replicas belong to a platform that runs them without rouse (a
    /// cluster): a stopping controller leaves them, whatever
    /// `controller.on_shutdown` says.
    fn keeps_replicas_on_shutdown(&self) -> bool {
        false
    }

    /// [`Backend::keeps_replicas_on_shutdown`] of one replica (a pooled
    /// backend may mix a cluster's pods with local processes).
    fn keeps_on_shutdown(&self, _id: &str) -> bool {
        self.keeps_replicas_on_shutdown()
    }

    /// The pools of a pooled backend, in priority order; none otherwise.
    fn pools(&self) -> Vec<PoolInfo> {
        Vec::new()
    }

    /// The rank (index into [`Backend::pools`]) of the pool running `id`.
    fn pool_of(&self, _id: &str) -> Option<usize> {
        None
    }

    /// What each running replica uses now. Called about once a second for
    /// services with a `cpu` or `memory` target.
    async fn usage(&self) -> Result<Vec<Usage>, BackendError> {
        Err(BackendError::Unsupported {
            what: "resource usage",
            reason: format!("the {} backend does not measure it", self.kind()),
        })
    }
}
