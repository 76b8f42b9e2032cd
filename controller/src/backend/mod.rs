//! What runs a service's replicas.
//!
//! One small trait per the design: ensure N replicas, list them with their
//! state and address, stop one. The controller's reconcile loop owns every
//! decision (how many, which one to drain, when it is ready); a backend only
//! speaks its API (spawning processes, the Docker Engine, Kubernetes).

pub mod process;

use async_trait::async_trait;

/// One replica as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    /// `host:port` the proxies connect to.
    pub addr: String,
    pub health: Health,
}

/// Whether the replica's process/container is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Running,
    /// Gone, with a reason for the operator (exit status, last log lines).
    Exited(String),
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
    #[error("the {0} backend is not available in this build")]
    Unsupported(&'static str),
}

/// The backend of one service.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Starts replicas until `n` exist (running ones count; exited ones do
    /// not). Returns the replicas it started.
    async fn ensure(&self, n: usize) -> Result<Vec<Replica>, BackendError>;

    /// Every replica this backend knows, running or exited.
    async fn list(&self) -> Result<Vec<Replica>, BackendError>;

    /// Stops one replica: a polite signal, then force after the grace period.
    /// Unknown ids are not an error.
    async fn stop(&self, id: &str) -> Result<(), BackendError>;
}
