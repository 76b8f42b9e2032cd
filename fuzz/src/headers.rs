//! Request heads for the header rules: header maps weighted towards the
//! names with a rule (hop-by-hop, `Host`, `X-Forwarded-*`), URIs in every
//! request-target form, any HTTP version and client address.

use std::net::IpAddr;
use std::ops::ControlFlow;

use arbitrary::{Result, Unstructured};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// Names with a rule in the proxy, then a few without one.
pub const NAMES: &[&str] = &[
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "content-length",
    "forwarded",
    "x-custom",
    "x-app",
];

/// Values that mean something to one of the names above.
pub const VALUES: &[&str] = &[
    "upgrade",
    "Upgrade",
    "keep-alive",
    "close",
    "websocket",
    "h2c",
    "trailers",
    "chunked",
    "timeout=5",
    "10.0.0.1",
    "::1",
    "echo.localhost",
    "echo.localhost:8080",
    "[::1]:8080",
    "https",
    "",
];

/// The hop-by-hop names of RFC 9110 §7.6.1 and the proxies before it,
/// written out again so the targets check against the RFC, not the code.
/// `Trailer` is not one of them since RFC 9110 (RFC 2616 listed it): it
/// announces the message's trailers, which go end to end.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn pick<'a>(u: &mut Unstructured<'_>, from: &[&'a str]) -> Result<&'a str> {
    Ok(from[u.choose_index(from.len())?])
}

fn name(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    if u.ratio(1, 5)? {
        return u.arbitrary();
    }
    let name = pick(u, NAMES)?;
    // Names are case-insensitive; `HeaderName` lowercases what it parses.
    if u.ratio(1, 4)? {
        Ok(name.to_ascii_uppercase().into_bytes())
    } else {
        Ok(name.as_bytes().to_vec())
    }
}

/// A value: raw bytes, one known value, or a comma list of known names and
/// values with odd spacing (as `Connection` carries them).
fn value(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    match u.int_in_range(0..=3)? {
        0 => u.arbitrary(),
        1 => {
            let mut list = String::new();
            u.arbitrary_loop(Some(1), Some(6), |u| {
                if !list.is_empty() || u.ratio(1, 8)? {
                    list.push_str(pick(u, &[",", ", ", " ,", ",,", "\t,"])?);
                }
                let item = if u.arbitrary()? {
                    pick(u, NAMES)?
                } else {
                    pick(u, VALUES)?
                };
                list.push_str(item);
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(list.into_bytes())
        }
        _ => Ok(pick(u, VALUES)?.as_bytes().to_vec()),
    }
}

/// Up to 24 headers, repeated names allowed; pairs that are not a valid
/// name or value are left out, as hyper would have refused them.
pub fn header_map(u: &mut Unstructured<'_>) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    u.arbitrary_loop(None, Some(24), |u| {
        let (name, value) = (name(u)?, value(u)?);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(&value),
        ) {
            map.append(name, value);
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(map)
}

/// A request target in origin, absolute, authority or asterisk form, or
/// whatever raw bytes `Uri` accepts.
pub fn uri(u: &mut Unstructured<'_>) -> Result<Uri> {
    let path = || -> &'static [&'static str] { &["/", "/a/b", "/ws", "/a?b=c", "/?", "/%2F"] };
    let text = match u.int_in_range(0..=4)? {
        0 => {
            let raw: Vec<u8> = u.arbitrary()?;
            return Ok(Uri::try_from(raw).unwrap_or_else(|_| Uri::from_static("/")));
        }
        1 => pick(u, path())?.to_string(),
        2 => format!(
            "{}://{}{}",
            pick(u, &["http", "https"])?,
            pick(
                u,
                &["echo.localhost", "Echo.Localhost:8080", "[::1]:80", "a.b."]
            )?,
            pick(u, &["", "/", "/a/b", "/ws?x=1"])?
        ),
        3 => pick(u, &["echo.localhost:443", "[::1]:80"])?.to_string(),
        _ => "*".to_string(),
    };
    Ok(Uri::try_from(text).unwrap_or_else(|_| Uri::from_static("/")))
}

/// Any version hyper may hand over.
pub fn version(u: &mut Unstructured<'_>) -> Result<Version> {
    Ok(*u.choose(&[
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
    ])?)
}

/// The client address as the handler renders it, once per connection.
pub fn client_ip(u: &mut Unstructured<'_>) -> Result<HeaderValue> {
    let ip: IpAddr = u.arbitrary()?;
    // An address always renders to a valid value; fall back all the same.
    Ok(HeaderValue::from_str(&ip.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1")))
}

/// A whole request head.
pub fn request_parts(u: &mut Unstructured<'_>) -> Result<http::request::Parts> {
    let method = u.choose(&[Method::GET, Method::POST, Method::CONNECT, Method::OPTIONS])?;
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri(u)?;
    *request.version_mut() = version(u)?;
    *request.headers_mut() = header_map(u)?;
    Ok(request.into_parts().0)
}

/// The names listed in `Connection` values, read byte by byte as a
/// recipient would: comma-separated, optional whitespace around each.
pub fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

/// Whether `name` is hop-by-hop by the RFC's list.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}
