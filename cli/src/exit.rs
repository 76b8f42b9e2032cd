//! Exit codes and the one error type every subcommand returns.
//!
//! Scripts branch on the exit code, so each failure carries the code that
//! says what kind of failure it was, decided where it happens (the place
//! that knows whether a refusal is a conflict or a typo); `main` only prints
//! the message and exits with the code.

use std::fmt;
use std::process::ExitCode;

/// Why a command failed; the numbers are documented in `--help` and README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// NATS or the controller could not be reached, or answered an error.
    Unreachable = 1,
    /// Bad flags, an invalid service definition, an unknown service.
    Usage = 2,
    /// The name is the config file's, the route is another service's, or
    /// another writer changed the key first.
    Conflict = 3,
    /// `--wait` ran out of `--timeout`.
    TimedOut = 4,
}

/// The `--help` text that lists the codes.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  NATS or the controller unreachable, or it answered an error
  2  usage: bad flags, an invalid service definition, an unknown service
  3  conflict: the name is defined in the config file, a host+path is another
     service's, or another writer changed the service first
  4  timed out waiting (--wait)";

/// A failed command: what to print, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn new(code: Code, error: anyhow::Error) -> Self {
        Self { code, error }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code as u8)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// What every command returns.
pub type Outcome<T = ()> = Result<T, Failure>;

/// `Result<_, E>` → `Outcome<_>` with the code the caller decides.
pub trait OrExit<T> {
    fn or_exit(self, code: Code) -> Outcome<T>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: Code) -> Outcome<T> {
        self.map_err(|e| Failure::new(code, e.into()))
    }
}

/// A failure with a message made on the spot.
pub fn fail(code: Code, message: impl fmt::Display) -> Failure {
    Failure::new(code, anyhow::anyhow!("{message}"))
}
