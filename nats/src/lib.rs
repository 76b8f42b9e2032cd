//! rouse-nats: everything that crosses NATS between rouse's proxies and its
//! controller, the configuration file both of them read, and the process
//! plumbing every rouse binary shares.
//!
//! The contract, in the order a binary meets it:
//! - [`config`]: the YAML file, validated with file, line and key per problem;
//! - [`cli`]: `--config`, `--check`, `--log-format`, logging set-up;
//! - [`bus`]: connecting to NATS, the KV bucket and the events stream;
//! - [`subjects`] and [`messages`]: what is published where, and its shape;
//! - [`catalog`]: service definitions kept in KV beside the file.
//!
//! Shared plumbing:
//! - [`process`]: `main` of both binaries, SIGTERM/SIGINT;
//! - [`runtime`]: tokio runtimes and exit codes, for every binary;
//! - [`admin`]: the admin HTTP server, `/metrics` encoding, the service label;
//! - [`backoff`]: every retry schedule.

pub mod admin;
pub mod backoff;
pub mod bus;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod messages;
pub mod process;
pub mod runtime;
pub mod snapshot;
pub mod subjects;

pub use config::Config;
pub use subjects::Subjects;
