//! What can go wrong in a reconcile pass, and the one policy that decides
//! what each failure does.
//!
//! The loop never stops on an error: every failure is logged, some are
//! counted in `rouse_backend_errors_total` and shown as the service's
//! `last_error`, and failed starts delay the next start on the
//! [`RESTART`](rouse_nats::backoff::RESTART) schedule so a broken command or
//! image is not respawned in a tight loop.

use std::time::Duration;

use crate::backend::BackendError;

/// A failure seen by a service's reconcile loop.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("listing replicas: {0}")]
    List(#[source] BackendError),
    #[error("{0}")]
    Start(#[source] BackendError),
    #[error("replica {id} failed: {reason}")]
    ReplicaFailed { id: String, reason: String },
    #[error("replica {id} failed: not ready within {timeout:?}")]
    StartupTimeout { id: String, timeout: Duration },
    #[error("{missing} requested replica(s) did not appear within {timeout:?}")]
    NotListed { missing: u32, timeout: Duration },
    #[error("replica {id} failed {failures} readiness probes in a row")]
    Unready { id: String, failures: u32 },
    #[error("replica {id} is unhealthy (its platform's health check says so)")]
    Unhealthy { id: String },
    #[error("stopping replica {id}: {source}")]
    Stop {
        id: String,
        #[source]
        source: BackendError,
    },
    #[error("endpoint set not published: {0}")]
    Publish(#[source] PublishError),
}

/// Why the endpoint set could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct PublishError {
    pub what: &'static str,
    pub message: String,
}

/// What a failure does. Decided in one place ([`ReconcileError::policy`]) so
/// that every call site treats the same failure the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Counted in `rouse_backend_errors_total`, logged as an error and shown
    /// as `last_error`; otherwise only logged as a warning.
    pub counted: bool,
    /// Delays the next replica start (the failure was a start that did not
    /// take). Everything else is retried on the next pass.
    pub back_off: bool,
}

impl ReconcileError {
    pub fn policy(&self) -> Policy {
        use ReconcileError::*;
        match self {
            Start(_) | ReplicaFailed { .. } | StartupTimeout { .. } | NotListed { .. } => Policy {
                counted: true,
                back_off: true,
            },
            List(_) | Unready { .. } | Unhealthy { .. } => Policy {
                counted: true,
                back_off: false,
            },
            // A replica that will not stop is killed by the backend's grace
            // period, and an unpublished set is retried on the next pass:
            // neither is the operator's to fix.
            Stop { .. } | Publish(_) => Policy {
                counted: false,
                back_off: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> BackendError {
        BackendError::Io {
            what: "x".into(),
            source: std::io::Error::other("boom"),
        }
    }

    #[test]
    fn failed_starts_back_off_and_are_counted() {
        for err in [
            ReconcileError::Start(io_error()),
            ReconcileError::ReplicaFailed {
                id: "r".into(),
                reason: "exited".into(),
            },
            ReconcileError::StartupTimeout {
                id: "r".into(),
                timeout: Duration::from_secs(1),
            },
            ReconcileError::NotListed {
                missing: 1,
                timeout: Duration::from_secs(1),
            },
        ] {
            assert_eq!(
                err.policy(),
                Policy {
                    counted: true,
                    back_off: true
                },
                "{err}"
            );
        }
    }

    #[test]
    fn other_failures_retry_on_the_next_pass() {
        assert!(!ReconcileError::List(io_error()).policy().back_off);
        assert!(ReconcileError::List(io_error()).policy().counted);
        let unready = ReconcileError::Unready {
            id: "r".into(),
            failures: 3,
        };
        assert!(unready.policy().counted && !unready.policy().back_off);
        let publish = ReconcileError::Publish(PublishError {
            what: "put",
            message: "down".into(),
        });
        assert!(!publish.policy().counted && !publish.policy().back_off);
    }

    #[test]
    fn messages_name_the_replica_and_the_reason() {
        let err = ReconcileError::StartupTimeout {
            id: "echo-1".into(),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(
            err.to_string(),
            "replica echo-1 failed: not ready within 2s"
        );
    }
}
