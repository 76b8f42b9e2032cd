//! The header rules of a proxy, for both directions.
//!
//! Hop-by-hop headers describe one connection, not the message, so they are
//! dropped both ways; `Host` is preserved; `X-Forwarded-For/-Host/-Proto`
//! tell the replica who asked. An upgrade keeps the two headers the next hop
//! needs to switch protocols. Used by stage 5 (`forward`) for requests and
//! responses and by stage 6 (`upgrade`) for a 101, so it lives apart from
//! both.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, Version};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// `Trailer` is not one (RFC 9110 §6.6.2): it names the trailer fields, and
/// hyper sends HTTP/1.1 trailers only when it is present. `TE` is, but
/// `te: trailers` goes on to the replica again (`keep_te_trailers`).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether an HTTP/1.1 request asks to switch protocols (e.g. WebSocket).
pub fn is_upgrade(headers: &HeaderMap, version: Version) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The options a `Connection` header lists, byte by byte: a value with a
/// non-ASCII byte somewhere still names the others (a recipient reads
/// them so; skipping the whole value forwarded what it named).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Removes hop-by-hop headers; an upgrade keeps `Upgrade` and
/// `Connection: upgrade`, which the next hop needs to switch protocols.
/// `false` when the message carried none (so nothing was removed); `true`
/// when any header may have gone, e.g. one its `Connection` named.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) -> bool {
    // Most messages carry none: one pass over the names avoids a lookup per
    // hop-by-hop header on the hot path.
    let any = headers
        .keys()
        .any(|name| *name == header::UPGRADE || HOP_BY_HOP.contains(name));
    if !any {
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return false;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in listed {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    true
}

/// Rewrites an inbound request's head for a replica.
///
/// `client_ip` is the peer address, pre-rendered once per connection, and
/// `proto` the scheme it connected with (`http`, `https`).
/// `X-Forwarded-For` gets it appended; `X-Forwarded-Host` and
/// `X-Forwarded-Proto` are set when absent and kept when an ingress in front
/// already set them.
pub fn prepare_head(
    parts: &mut http::request::Parts,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    upgrade: bool,
) {
    // The target's authority replaces Host (RFC 9112 §3.2.2); `strict`
    // routed the request by it. A Host header that named it already stays
    // as it is (the common case: no second lookup and insert), unless
    // stripping removed it (a `Connection` that names `host`) or it came
    // twice.
    let authority_value = |a: &http::uri::Authority| HeaderValue::from_str(a.as_str()).ok();
    let (host, replace_host) = match crate::strict::target_authority(&parts.uri) {
        Some(authority) => (authority_value(authority), true),
        None => {
            let mut hosts = parts.headers.get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(host), None) => (Some(host.clone()), false),
                // `strict` refuses a second Host; should one come this far,
                // the first is the one that stays.
                (Some(host), Some(_)) => (Some(host.clone()), true),
                (None, _) => (parts.uri.authority().and_then(authority_value), true),
            }
        }
    };
    let stripped = strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(host) = host {
        if replace_host || stripped {
            parts.headers.insert(header::HOST, host.clone());
        }
        // Kept when an ingress in front already set it.
        parts.headers.entry(&X_FORWARDED_HOST).or_insert(host);
    }
    append_forwarded_for(&mut parts.headers, client_ip);
    parts
        .headers
        .entry(&X_FORWARDED_PROTO)
        .or_insert_with(|| proto.clone());
    // The replica gets the origin form (`/path?query`); an HTTP/2 request
    // arrives in absolute form, its authority already moved to `Host`.
    if parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
}

/// Whether the client accepts trailers (`TE: trailers`; gRPC clients
/// always send it). Read before `prepare_head` strips `TE`.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let coding = t.split(';').next().unwrap_or_default();
            coding.trim().eq_ignore_ascii_case("trailers")
        })
}

/// Tells the replica, after `prepare_head`, that trailers are accepted:
/// the proxy passes them on (gRPC servers require `te: trailers`; it is the
/// only `TE` that HTTP/2 allows, RFC 9113 §8.2.2). On HTTP/1.1 `TE` is
/// hop-by-hop, so it is listed in `Connection` too (RFC 9110 §10.1.4).
pub fn keep_te_trailers(headers: &mut HeaderMap, version: Version) {
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if version != Version::HTTP_2 {
        headers.append(header::CONNECTION, HeaderValue::from_static("te"));
    }
}

/// Turns a head `prepare_head` rewrote for HTTP/1.1 (without an upgrade,
/// so no connection-specific header is left) into an HTTP/2 one: absolute
/// form, its authority the `Host` (else `replica`), which hyper sends as
/// `:authority`. `Host` stays as well, equal to it (RFC 9113 §8.3.1), for
/// replicas that read it.
pub fn into_h2(parts: &mut http::request::Parts, replica: &Authority) {
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| replica.clone());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(path);
    if let Ok(uri) = Uri::from_parts(uri) {
        parts.uri = uri;
    }
    parts.version = Version::HTTP_2;
}

fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let mut existing = match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(vacant) => {
            vacant.insert(client_ip.clone());
            return;
        }
        header::Entry::Occupied(existing) => existing,
    };
    // Several lines of a header are one list (RFC 9110 §5.3): every address
    // that came is kept, in order; blank lines add none.
    let mut joined = Vec::new();
    for line in existing.iter() {
        if !line.as_bytes().trim_ascii().is_empty() {
            joined.extend_from_slice(line.as_bytes());
            joined.extend_from_slice(b", ");
        }
    }
    joined.extend_from_slice(client_ip.as_bytes());
    let value = HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone());
    // Replaces every line with the one joined list.
    existing.insert(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn request(headers: &[(&str, &str)], uri: &str) -> http::request::Parts {
        let mut builder = Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).expect("request").into_parts().0
    }

    /// A `Connection` that names `host` makes stripping drop the Host
    /// header; the replica still gets exactly one.
    #[test]
    fn a_host_named_in_connection_is_set_again() {
        let mut parts = request(&[("host", "echo.localhost"), ("connection", "host")], "/");
        let ip = HeaderValue::from_static("127.0.0.1");
        prepare_head(&mut parts, &ip, &HeaderValue::from_static("http"), false);
        let hosts: Vec<_> = parts.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["echo.localhost"]);
        assert_eq!(parts.headers["x-forwarded-host"], "echo.localhost");
    }

    /// `strict` refuses a second Host; `prepare_head` on its own still
    /// sends one.
    #[test]
    fn two_hosts_go_out_as_the_first() {
        let mut parts = request(&[("host", "a.localhost"), ("host", "b.localhost")], "/");
        let ip = HeaderValue::from_static("127.0.0.1");
        prepare_head(&mut parts, &ip, &HeaderValue::from_static("http"), false);
        let hosts: Vec<_> = parts.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["a.localhost"]);
    }

    #[test]
    fn rewrites_head_for_the_replica() {
        let mut parts = request(
            &[
                ("host", "echo.localhost"),
                ("connection", "keep-alive, x-custom"),
                ("x-custom", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-app", "kept"),
            ],
            "/a/b?c=d",
        );
        let ip = HeaderValue::from_static("127.0.0.1");
        prepare_head(&mut parts, &ip, &HeaderValue::from_static("http"), false);
        assert_eq!(parts.uri, "/a/b?c=d");
        assert_eq!(parts.headers["host"], "echo.localhost");
        assert_eq!(parts.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(parts.headers["x-forwarded-host"], "echo.localhost");
        assert_eq!(parts.headers["x-forwarded-proto"], "http");
        assert_eq!(parts.headers["x-app"], "kept");
        for gone in ["connection", "x-custom", "keep-alive", "te"] {
            assert!(!parts.headers.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn h2_authority_becomes_host_and_upgrade_survives() {
        let mut parts = request(
            &[("connection", "Upgrade"), ("upgrade", "websocket")],
            "http://echo.localhost/ws",
        );
        assert!(is_upgrade(&parts.headers, Version::HTTP_11));
        let ip = HeaderValue::from_static("::1");
        prepare_head(&mut parts, &ip, &HeaderValue::from_static("https"), true);
        assert_eq!(parts.uri, "/ws");
        assert_eq!(parts.headers["host"], "echo.localhost");
        assert_eq!(parts.headers["upgrade"], "websocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["x-forwarded-for"], "::1");
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarded_proto_from_an_ingress_is_kept() {
        let mut parts = request(&[("x-forwarded-proto", "https")], "/");
        let ip = HeaderValue::from_static("127.0.0.1");
        prepare_head(&mut parts, &ip, &HeaderValue::from_static("http"), false);
        assert_eq!(parts.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn every_forwarded_for_line_is_kept() {
        // Found by the `headers` fuzz target: only the first line was kept.
        let mut parts = request(
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", " "),
                ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ],
            "/",
        );
        let ip = HeaderValue::from_static("127.0.0.1");
        prepare_head(&mut parts, &ip, &HeaderValue::from_static("http"), false);
        let all: Vec<_> = parts.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]);
    }

    #[test]
    fn connection_with_a_non_ascii_byte_still_names_its_headers() {
        // Found by the `hop_by_hop` fuzz target: the whole value was skipped.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-custom, \xf7").expect("obs-text is a valid value"),
        );
        headers.insert("x-custom", HeaderValue::from_static("1"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key("x-custom"), "{headers:?}");
        assert_eq!(headers["x-app"], "kept");
    }

    #[test]
    fn plain_request_is_not_an_upgrade() {
        let parts = request(&[("upgrade", "websocket")], "/");
        assert!(!is_upgrade(&parts.headers, Version::HTTP_11));
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, false);
        assert!(!headers.contains_key("upgrade"));
    }

    #[test]
    fn te_trailers_is_found_among_codings() {
        let accepts = |te: &str| accepts_trailers(&request(&[("te", te)], "/").headers);
        assert!(accepts("trailers"));
        assert!(accepts("gzip;q=0.5, Trailers"));
        assert!(!accepts("gzip"));
        assert!(!accepts_trailers(&request(&[], "/").headers));
    }

    #[test]
    fn h2_head_has_authority_and_no_connection_headers() {
        let mut parts = request(
            &[
                ("host", "grpc.localhost"),
                ("connection", "keep-alive, te"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("trailer", "grpc-status"),
            ],
            "/pkg.Svc/Method",
        );
        let wants = accepts_trailers(&parts.headers);
        prepare_head(
            &mut parts,
            &HeaderValue::from_static("::1"),
            &HeaderValue::from_static("http"),
            false,
        );
        keep_te_trailers(&mut parts.headers, Version::HTTP_2);
        into_h2(&mut parts, &Authority::from_static("127.0.0.1:9"));
        assert!(wants);
        assert_eq!(parts.version, Version::HTTP_2);
        assert_eq!(parts.uri, "http://grpc.localhost/pkg.Svc/Method");
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(parts.headers["trailer"], "grpc-status");
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!parts.headers.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn h1_te_trailers_is_listed_in_connection_and_h2_falls_back_to_the_replica() {
        let mut parts = request(&[("te", "trailers")], "/");
        prepare_head(
            &mut parts,
            &HeaderValue::from_static("::1"),
            &HeaderValue::from_static("http"),
            false,
        );
        keep_te_trailers(&mut parts.headers, Version::HTTP_11);
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(parts.headers["connection"], "te");
        assert_eq!(parts.version, Version::HTTP_11);

        let mut parts = request(&[], "/x");
        prepare_head(
            &mut parts,
            &HeaderValue::from_static("::1"),
            &HeaderValue::from_static("http"),
            false,
        );
        into_h2(&mut parts, &Authority::from_static("127.0.0.1:9"));
        assert_eq!(parts.uri, "http://127.0.0.1:9/x");
    }
}
