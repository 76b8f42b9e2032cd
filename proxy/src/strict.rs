//! Between stage 1 (`server`) and stage 2 (`route`): refuse what a trusted
//! edge refuses, before the request can be routed, held or forwarded.
//!
//! hyper parses the message and enforces the byte and count limits of the
//! head (431). What it accepts but an edge must not pass on is checked here:
//! RFC 9112 §3.2 asks for 400 on an HTTP/1.1 request with no Host, with more
//! than one, or with an invalid one; RFC 9113 §8.3.1 treats an HTTP/2 Host
//! that names another authority than `:authority` as malformed. Without
//! these a request could be routed by one Host and served by a replica that
//! reads the other. (A body framed both by Transfer-Encoding and by
//! Content-Length, the other smuggling vector, hyper already reads as
//! chunked and drops the Content-Length, RFC 9112 §6.3.) An over-long
//! target gets 414, a declared body over the
//! service's limit 413 (the body itself is checked as it streams, in
//! `request_body`).
//!
//! A request in absolute form (`GET http://a.example/`) is routed by its
//! authority, which replaces Host (RFC 9112 §3.2.2): `route` and `headers`
//! both read [`authority`].

use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{Method, Request, Version};

use crate::error::ProxyError;

/// The limits of `proxy.limits` this stage enforces.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Longest request target, in bytes.
    pub max_request_line: u64,
}

impl From<&rouse_nats::config::LimitsConfig> for RequestLimits {
    fn from(limits: &rouse_nats::config::LimitsConfig) -> Self {
        Self {
            max_request_line: limits.max_request_line.as_u64(),
        }
    }
}

/// Checks the head of `request`; `Ok` means it may be routed.
pub fn check<B>(request: &Request<B>, limits: &RequestLimits) -> Result<(), ProxyError<'static>> {
    let target_len = target_len(request.uri());
    if target_len > limits.max_request_line {
        return Err(ProxyError::UriTooLong {
            limit: limits.max_request_line,
        });
    }
    let uri = request.uri();
    if uri.authority().is_some()
        && target_authority(uri).is_none()
        && request.method() != Method::CONNECT
    {
        return Err(ProxyError::BadRequest {
            reason: "the target is neither a path nor an http(s) URL",
        });
    }
    check_host(request.headers(), target_authority(uri), request.version())
        .map_err(|reason| ProxyError::BadRequest { reason })
}

/// What routes the request: the target's authority (absolute form, or
/// HTTP/2's `:authority`), else the Host header.
pub fn authority<B>(request: &Request<B>) -> Option<&str> {
    match target_authority(request.uri()) {
        Some(authority) => Some(authority.as_str()),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok()),
    }
}

/// The authority of an absolute-form target (HTTP/2's `:authority` comes
/// with a `:scheme`, so it is one too). An authority-form target
/// (`GET a.example:80`) names no authority to route by: it is only for
/// CONNECT, and refused for anything else in [`check`].
pub fn target_authority(uri: &http::Uri) -> Option<&Authority> {
    // `://a` parses with an empty scheme; only http and https name an
    // origin this proxy serves.
    match uri.scheme_str() {
        Some(scheme)
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            uri.authority()
        }
        _ => None,
    }
}

/// The request target as it was on the request line (or in HTTP/2's
/// pseudo-headers), without allocating.
fn target_len(uri: &http::Uri) -> u64 {
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    (scheme + authority + path) as u64
}

/// The Host rules; the reason is the 400's message.
pub fn check_host(
    headers: &HeaderMap,
    target_authority: Option<&Authority>,
    version: Version,
) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let Some(host) = host else {
        // HTTP/2 and HTTP/3 name the authority in a pseudo-header; HTTP/1.0
        // predates Host.
        let needs_host = version == Version::HTTP_11 || version >= Version::HTTP_2;
        return match (needs_host, target_authority) {
            (false, _) | (_, Some(_)) => Ok(()),
            (true, None) if version == Version::HTTP_11 => Err("HTTP/1.1 request without Host"),
            (true, None) => Err("HTTP/2 request without :authority or Host"),
        };
    };
    // An empty Host is what a client sends for a target without an
    // authority (RFC 9112 §3.2); it routes to no host but `*`.
    if host.is_empty() {
        return Ok(());
    }
    let parsed = match Authority::try_from(host.as_bytes()) {
        Ok(parsed) if valid_host(&parsed, host.as_bytes()) => parsed,
        _ => return Err("Host is not a valid host[:port]"),
    };
    match target_authority {
        // HTTP/1.1 absolute form: the target wins and Host is replaced.
        Some(_) if version < Version::HTTP_2 => Ok(()),
        Some(target) if !same_authority(target, &parsed) => {
            Err("Host names another authority than :authority")
        }
        _ => Ok(()),
    }
}

/// An authority parses with user info and any digits as a port; a Host
/// may carry neither.
fn valid_host(parsed: &Authority, raw: &[u8]) -> bool {
    let port = &parsed.as_str()[parsed.host().len()..];
    // `:` alone is an empty port, which RFC 3986 allows.
    !raw.contains(&b'@') && (port.len() <= 1 || parsed.port_u16().is_some())
}

fn same_authority(a: &Authority, b: &Authority) -> bool {
    a.host().eq_ignore_ascii_case(b.host()) && a.port_u16() == b.port_u16()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).expect("request")
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_request_line: 64,
    };

    fn verdict(request: &Request<()>) -> Result<(), u16> {
        check(request, &LIMITS).map_err(|e| e.status().as_u16())
    }

    #[test]
    fn one_valid_host_passes() {
        let ok = request(Version::HTTP_11, "/a?b", &["echo.localhost:8080"]);
        assert_eq!(verdict(&ok), Ok(()));
        assert_eq!(authority(&ok), Some("echo.localhost:8080"));
        let ipv6 = request(Version::HTTP_11, "/", &["[::1]:80"]);
        assert_eq!(verdict(&ipv6), Ok(()));
        let empty = request(Version::HTTP_11, "/", &[""]);
        assert_eq!(verdict(&empty), Ok(()));
    }

    #[test]
    fn duplicate_missing_or_invalid_host_is_400() {
        for (version, hosts) in [
            (Version::HTTP_11, &["a.test", "b.test"][..]),
            (Version::HTTP_11, &["a.test", "a.test"][..]),
            (Version::HTTP_10, &["a.test", "b.test"][..]),
            (Version::HTTP_11, &[][..]),
            (Version::HTTP_11, &["user@a.test"][..]),
            (Version::HTTP_11, &["a test"][..]),
            (Version::HTTP_11, &["a.test:99999"][..]),
            (Version::HTTP_11, &["a.test/x"][..]),
        ] {
            let r = request(version, "/", hosts);
            assert_eq!(verdict(&r), Err(400), "{version:?} {hosts:?}");
        }
        // HTTP/1.0 predates Host.
        assert_eq!(verdict(&request(Version::HTTP_10, "/", &[])), Ok(()));
    }

    #[test]
    fn absolute_form_routes_by_its_authority() {
        let r = request(
            Version::HTTP_11,
            "http://other.example/x",
            &["echo.localhost"],
        );
        assert_eq!(verdict(&r), Ok(()));
        assert_eq!(authority(&r), Some("other.example"));
        let bare = request(Version::HTTP_11, "http://other.example/x", &[]);
        assert_eq!(verdict(&bare), Ok(()));
    }

    #[test]
    fn h2_host_must_agree_with_authority() {
        let agree = request(Version::HTTP_2, "http://a.test/", &["A.test"]);
        assert_eq!(verdict(&agree), Ok(()));
        let differ = request(Version::HTTP_2, "http://a.test/", &["b.test"]);
        assert_eq!(verdict(&differ), Err(400));
        let port = request(Version::HTTP_2, "http://a.test:81/", &["a.test:82"]);
        assert_eq!(verdict(&port), Err(400));
        let host_only = request(Version::HTTP_2, "/", &["a.test"]);
        assert_eq!(verdict(&host_only), Ok(()));
        assert_eq!(verdict(&request(Version::HTTP_2, "/", &[])), Err(400));
    }

    #[test]
    fn an_authority_form_target_routes_nothing() {
        // Found by the `route` fuzz target: `GET dd` parsed as authority `dd`.
        let r = request(Version::HTTP_11, "dd", &["b.test"]);
        assert_eq!(authority(&r), Some("b.test"));
        assert_eq!(verdict(&r), Err(400));
        // Found by the same target: `://a` parses with an empty scheme.
        let r = request(Version::HTTP_11, "://a/x", &["b.test"]);
        assert_eq!(authority(&r), Some("b.test"));
        assert_eq!(verdict(&r), Err(400));
    }

    #[test]
    fn long_target_is_414() {
        let long = format!("/{}", "a".repeat(64));
        let r = request(Version::HTTP_11, &long, &["a.test"]);
        assert_eq!(verdict(&r), Err(414));
        let fits = format!("/{}", "a".repeat(63));
        let r = request(Version::HTTP_11, &fits, &["a.test"]);
        assert_eq!(verdict(&r), Ok(()));
    }
}
