//! rouse-nats: everything that crosses NATS between rouse's proxies and its
//! controller (subjects, message types, the KV bucket and the events stream,
//! how to connect) and the configuration file both of them read.

pub mod admin;
pub mod backoff;
pub mod bus;
pub mod cli;
pub mod config;
pub mod messages;
pub mod process;
pub mod runtime;
pub mod subjects;

pub use config::Config;
pub use subjects::Subjects;
