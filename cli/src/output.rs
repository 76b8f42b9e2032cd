//! `--output table|json`: who reads stdout, a person or a script.
//!
//! JSON output is a contract of its own (README lists its shape): each
//! command serialises its own types, never the controller's document as it
//! comes, so a new field in the controller does not change what scripts see.

use std::io::Write;

use serde::Serialize;

use crate::exit::{Code, OrExit, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// Stable JSON for scripts (one document; a stream of events is one
    /// JSON object per line).
    Json,
}

/// `value` as pretty JSON on stdout.
pub fn json<T: Serialize>(value: &T) -> Outcome {
    let text = serde_json::to_string_pretty(value).or_exit(Code::Unreachable)?;
    print(&format!("{text}\n"))
}

/// `value` as one line of JSON on stdout (streams: events, `status --watch`).
pub fn json_line<T: Serialize>(value: &T) -> Outcome {
    let text = serde_json::to_string(value).or_exit(Code::Unreachable)?;
    print(&format!("{text}\n"))
}

/// `text` on stdout, flushed: a watcher piping us sees each update at once.
/// A closed pipe (`rouse events -f | head`) is an error, which ends the
/// command instead of a panic.
pub fn print(text: &str) -> Outcome {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .or_exit(Code::Unreachable)
}
