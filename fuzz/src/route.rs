//! Route tables and lookups for the route matcher, and the reference model
//! it is held against: the rules of DESIGN.md ("Data flow", step 1) as one
//! ranking over every route, where the real table searches tier by tier.

use std::ops::ControlFlow;

use arbitrary::{Result, Unstructured};

/// Labels that overlap, so inserted hosts and looked-up hosts meet often.
const LABELS: &[&str] = &["a", "b", "api", "www", "example", "com", "x-y", "_s", "0"];
const SEGMENTS: &[&str] = &["api", "apix", "v2", "a", "static", "x", ""];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    Ok(from[u.choose_index(from.len())?])
}

fn labels(u: &mut Unstructured<'_>, min: u32, max: u32) -> Result<Vec<String>> {
    let mut out = Vec::new();
    u.arbitrary_loop(Some(min), Some(max), |u| {
        let label = pick(u, LABELS)?;
        out.push(if u.ratio(1, 4)? {
            label.to_ascii_uppercase()
        } else {
            label.to_string()
        });
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// A host as the config validator accepts it: a name, `*.suffix` or `*`.
pub fn config_host(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 => "*".to_string(),
        1 | 2 => format!("*.{}", labels(u, 1, 3)?.join(".")),
        _ => labels(u, 1, 4)?.join("."),
    })
}

/// A path as the config validator accepts it: anything from `/`.
pub fn config_path(u: &mut Unstructured<'_>) -> Result<String> {
    let mut path = String::new();
    u.arbitrary_loop(Some(0), Some(3), |u| {
        path.push('/');
        path.push_str(pick(u, SEGMENTS)?);
        Ok(ControlFlow::Continue(()))
    })?;
    if path.is_empty() || u.ratio(1, 4)? {
        path.push('/');
    }
    Ok(path)
}

/// A Host header value as a client may send it: names from the same
/// labels with a port, a trailing dot, IPv6 brackets, or raw text.
pub fn request_host(u: &mut Unstructured<'_>) -> Result<String> {
    let mut host = match u.int_in_range(0..=7)? {
        0 => return u.arbitrary(),
        1 => pick(u, &["[::1]", "[::1", "127.0.0.1", ""])?.to_string(),
        _ => labels(u, 1, 5)?.join("."),
    };
    if u.ratio(1, 5)? {
        host.push('.');
    }
    if u.ratio(1, 4)? {
        host.push_str(pick(u, &[":8080", ":", ":80x", ":0"])?);
    }
    Ok(host)
}

/// A request path: segments from the same pool, a query, or raw text.
pub fn request_path(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 6)? {
        return u.arbitrary();
    }
    let mut path = config_path(u)?;
    if u.ratio(1, 4)? {
        path.push_str(pick(u, &["x", "?q=1", "/", "?"])?);
    }
    Ok(path)
}

/// One inserted route: `(host, path)`, target = its index.
pub type Route = (String, String);

/// The rules, stated once per route rather than as a search.
pub struct Model {
    routes: Vec<Route>,
}

enum Host<'a> {
    Exact(String),
    /// `.example.com` of `*.example.com`.
    Suffix(&'a str),
    Any,
}

impl Model {
    pub fn new(routes: &[Route]) -> Self {
        Self {
            routes: routes.to_vec(),
        }
    }

    /// The index of the route a request for `host` and `path` goes to.
    ///
    /// Every matching route is ranked by (tier: exact > `*.suffix` > `*`,
    /// length of the suffix, length of the path prefix); the best wins,
    /// and of equals the first inserted.
    pub fn lookup(&self, host: &str, path: &str) -> Option<usize> {
        let host = lookup_host(host);
        let mut best: Option<((u8, usize, usize), usize)> = None;
        for (index, (pattern, prefix)) in self.routes.iter().enumerate() {
            let tier = match parse_pattern(pattern) {
                Host::Exact(name) if name == host => (2, 0),
                Host::Suffix(suffix)
                    if host.len() > suffix.len()
                        && host
                            .to_ascii_lowercase()
                            .ends_with(&suffix.to_ascii_lowercase()) =>
                {
                    (1, suffix.len())
                }
                Host::Any => (0, 0),
                _ => continue,
            };
            let prefix = normalise_prefix(prefix);
            if !segment_match(&prefix, path) {
                continue;
            }
            let rank = (tier.0, tier.1, prefix.len());
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, index));
            }
        }
        best.map(|(_, index)| index)
    }
}

fn parse_pattern(pattern: &str) -> Host<'_> {
    if pattern == "*" {
        Host::Any
    } else if let Some(rest) = pattern.strip_prefix('*') {
        Host::Suffix(rest)
    } else {
        Host::Exact(pattern.to_ascii_lowercase())
    }
}

/// Host values compare without their port, case or one trailing dot.
fn lookup_host(host: &str) -> String {
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(colon) if host[colon + 1..].chars().all(|c| c.is_ascii_digit()) => &host[..colon],
            _ => host,
        }
    };
    let lowered = without_port.to_ascii_lowercase();
    match lowered.strip_suffix('.') {
        Some(stripped) => stripped.to_string(),
        None => lowered,
    }
}

/// `/api/` and `/api` are the same prefix; `/` stays `/`.
fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// `/api` matches `/api`, `/api/…` and `/api?…`, never `/apix`.
fn segment_match(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || [format!("{prefix}/"), format!("{prefix}?")]
            .iter()
            .any(|p| path.starts_with(p.as_str()))
}
