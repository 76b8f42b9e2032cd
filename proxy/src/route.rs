//! Stage 2 of the data path: which service does a request belong to?
//!
//! The host is the request target's authority (absolute form, HTTP/2's
//! `:authority`), else Host (see `strict`). Hosts match exactly first, then the longest `*.suffix`, then `*`; within a
//! host the longest segment-aware path prefix wins (`/api` matches `/api` and
//! `/api/x`, never `/apix`). A host tier with no matching path falls through to
//! the next tier: a 404 that names the host. The table is immutable; a new
//! config builds a new table that is swapped in atomically by the owner.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::sync::Arc;

use http::Request;

use crate::error::ProxyError;
use crate::strict;

/// Routes of one host: `(prefix, target)` ordered longest prefix first.
#[derive(Debug)]
struct PathRoutes<T> {
    routes: Vec<(String, T)>,
}

impl<T> Default for PathRoutes<T> {
    fn default() -> Self {
        Self { routes: Vec::new() }
    }
}

impl<T> PathRoutes<T> {
    fn insert(&mut self, prefix: &str, target: T) {
        let prefix = normalise_prefix(prefix);
        self.routes.push((prefix, target));
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    }

    fn find(&self, path: &str) -> Option<&T> {
        self.routes
            .iter()
            .find(|(prefix, _)| segment_prefix_match(prefix, path))
            .map(|(_, target)| target)
    }
}

fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// `prefix` has no trailing slash (except the root `/`).
fn segment_prefix_match(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// Host and path → target (a service), built once per config.
#[derive(Debug)]
pub struct RouteTable<T> {
    exact: HashMap<String, PathRoutes<T>, RandomState>,
    /// `".example.com"` (from `*.example.com`) → its routes; a lookup tries
    /// the host's own suffixes, longest first, so thousands of wildcard
    /// hosts cost no more than one.
    suffixes: HashMap<String, PathRoutes<T>, RandomState>,
    any: PathRoutes<T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::default(),
            suffixes: HashMap::default(),
            any: PathRoutes::default(),
        }
    }
}

impl<T: Clone> RouteTable<T> {
    /// Adds `host` (`name`, `*.suffix` or `*`) with `path` for `target`.
    pub fn insert(&mut self, host: &str, path: &str, target: T) {
        let host = host.to_ascii_lowercase();
        if host == "*" {
            self.any.insert(path, target);
        } else if let Some(suffix) = host.strip_prefix('*') {
            self.suffixes
                .entry(suffix.to_string())
                .or_default()
                .insert(path, target);
        } else {
            self.exact.entry(host).or_default().insert(path, target);
        }
    }

    /// The target of `request`, or the 404 naming its host.
    pub(crate) fn route<'r, B>(&self, request: &'r Request<B>) -> Result<T, ProxyError<'r>> {
        let path = request.uri().path();
        let host = strict::authority(request);
        match host.and_then(|host| self.find(host, path)) {
            Some(target) => Ok(target.clone()),
            None => Err(ProxyError::NoRoute {
                host: host.unwrap_or(""),
                path,
            }),
        }
    }

    /// The target for a Host header value (port allowed) and a request path.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&T> {
        let host = strip_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Some(found) = self.exact.get(host).and_then(|r| r.find(path)) {
            return Some(found);
        }
        if !self.suffixes.is_empty() {
            // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`:
            // each needs at least one character before it.
            let dots = host
                .match_indices('.')
                .map(|(at, _)| at)
                .filter(|at| *at > 0);
            for at in dots {
                if let Some(found) = self.suffixes.get(&host[at..]).and_then(|r| r.find(path)) {
                    return Some(found);
                }
            }
        }
        self.any.find(path)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A route table of shared services.
pub type Routes<S> = RouteTable<Arc<S>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable<&'static str> {
        let mut t = RouteTable::default();
        t.insert("api.example.com", "/", "api-root");
        t.insert("api.example.com", "/v2/", "api-v2");
        t.insert("*.example.com", "/", "wild");
        t.insert("*.deep.example.com", "/", "deep");
        t.insert("*", "/static", "static");
        t.insert("Only.Path", "/x", "only-x");
        t
    }

    #[test]
    fn exact_host_then_longest_path() {
        let t = table();
        assert_eq!(t.find("api.example.com", "/"), Some(&"api-root"));
        assert_eq!(t.find("api.example.com", "/v2"), Some(&"api-v2"));
        assert_eq!(t.find("api.example.com", "/v2/users"), Some(&"api-v2"));
        assert_eq!(t.find("api.example.com", "/v2x"), Some(&"api-root"));
        assert_eq!(t.find("API.Example.com:8080", "/v2?q=1"), Some(&"api-v2"));
        assert_eq!(t.find("api.example.com.", "/"), Some(&"api-root"));
    }

    #[test]
    fn wildcards_longest_suffix_then_catch_all() {
        let t = table();
        assert_eq!(t.find("www.example.com", "/a"), Some(&"wild"));
        assert_eq!(t.find("a.b.example.com", "/a"), Some(&"wild"));
        assert_eq!(t.find("x.deep.example.com", "/"), Some(&"deep"));
        assert_eq!(t.find("example.com", "/"), None);
        assert_eq!(t.find("other.org", "/static/app.js"), Some(&"static"));
        assert_eq!(t.find("other.org", "/staticky"), None);
    }

    #[test]
    fn thousands_of_wildcard_hosts_each_find_their_own() {
        let mut t = RouteTable::default();
        for i in 0..10_000 {
            t.insert(&format!("*.tenant{i}.example.com"), "/", i);
        }
        t.insert("*.example.com", "/", 10_000);
        assert_eq!(t.find("a.tenant0.example.com", "/"), Some(&0));
        assert_eq!(t.find("x.y.tenant9999.example.com", "/x"), Some(&9999));
        assert_eq!(t.find("tenant5.example.com", "/"), Some(&10_000));
        assert_eq!(t.find("example.com", "/"), None);
    }

    #[test]
    fn host_without_matching_path_falls_through() {
        let t = table();
        assert_eq!(t.find("only.path", "/x/1"), Some(&"only-x"));
        assert_eq!(t.find("only.path", "/static"), Some(&"static"));
        assert_eq!(t.find("only.path", "/y"), None);
    }

    #[test]
    fn ports_and_ipv6_are_stripped() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
    }
}
