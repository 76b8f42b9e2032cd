//! What the proxy accepts from a client before a byte reaches a replica.
//!
//! rouse holds requests, so every byte it accepts from a client may sit in
//! memory for a whole cold start, thousands of requests at once. These
//! limits bound that cost per request; the per-client share of a wait queue
//! (`hold.max_requests_per_client`) bounds it per client. Defaults are those
//! of trusted edges: Envoy allows 60 KiB of headers and 100 of them, nginx
//! buffers request bodies before forwarding.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// `proxy.limits`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The request line and every header together; more → 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Header fields per request; more → 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Method, target and version of an HTTP/1 request line, or the path
    /// of an HTTP/2 request; longer → 414.
    #[serde(default = "default_max_request_line")]
    pub max_request_line: ByteSize,
    /// How much of a chunked request body is read before the request is
    /// forwarded: a body that ends within it and is malformed gets 400 with
    /// nothing forwarded, one over `max_body` gets 413. Longer bodies stream
    /// on from there. 0 streams every body from its first byte.
    #[serde(default = "default_body_buffer")]
    pub body_buffer: ByteSize,
    /// Default request body limit of every service (`services[].max_body`
    /// overrides it); unset allows any size.
    #[serde(default)]
    pub max_body: Option<ByteSize>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_request_line: default_max_request_line(),
            body_buffer: default_body_buffer(),
            max_body: None,
        }
    }
}

/// hyper's read buffer cannot be smaller than this, so neither can the
/// header limit (it is the same buffer).
pub const MIN_HEADER_BYTES: u64 = 8192;
/// hyper refuses request targets from 64 KiB on by itself.
pub const MAX_REQUEST_LINE: u64 = 65_534;

fn default_max_header_bytes() -> ByteSize {
    ByteSize::kib(64)
}
fn default_max_headers() -> usize {
    100
}
fn default_max_request_line() -> ByteSize {
    ByteSize::kib(16)
}
fn default_body_buffer() -> ByteSize {
    ByteSize::kib(64)
}
