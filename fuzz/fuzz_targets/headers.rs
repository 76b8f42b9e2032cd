//! The request-head rewrite for a replica (`prepare_head` and
//! `is_upgrade` in `proxy/src/headers.rs`) on arbitrary heads. Never
//! panics, and afterwards: no hop-by-hop header is left but the two an
//! upgrade needs, nor any header the client's `Connection` named; every
//! other header is as it came; `X-Forwarded-For` ends with the client's
//! address after every address that came before; one `Host`; the target
//! is in origin form; the version is HTTP/1.1.

#![no_main]

use arbitrary::{Result, Unstructured};
use http::header::{self, HeaderName, HeaderValue};
use http::Version;
use libfuzzer_sys::fuzz_target;
use rouse_fuzz::headers::{self, connection_tokens, is_hop_by_hop};
use rouse_proxy::fuzzing::{is_upgrade, prepare_head};

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

/// Set again by `prepare_head` after the hop-by-hop ones are gone.
const SET_AFTER: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mut parts = headers::request_parts(u)?;
    let ip = headers::client_ip(u)?;
    let before = parts.clone();
    let upgrade = is_upgrade(&parts.headers, parts.version);
    if upgrade {
        assert_eq!(before.version, Version::HTTP_11);
        assert!(before.headers.contains_key(header::UPGRADE));
    }
    let proto = HeaderValue::from_static(if u.arbitrary()? { "https" } else { "http" });
    prepare_head(&mut parts, &ip, &proto, upgrade);
    let after = &parts.headers;
    let listed = connection_tokens(&before.headers);

    for name in after.keys() {
        let kept_for_upgrade = upgrade && (name == header::UPGRADE || name == header::CONNECTION);
        assert!(
            !is_hop_by_hop(name) || kept_for_upgrade,
            "hop-by-hop {name} left in {after:?}"
        );
        assert!(
            !listed.contains(name)
                || SET_AFTER.contains(&name.as_str())
                || (upgrade && (name == header::UPGRADE || name == header::CONNECTION)),
            "{name}, listed in Connection, left in {after:?} from {:?}",
            before.headers
        );
    }
    if upgrade {
        assert_eq!(
            after.get_all(header::CONNECTION).iter().collect::<Vec<_>>(),
            ["upgrade"]
        );
        assert_eq!(
            after.get_all(header::UPGRADE).iter().collect::<Vec<_>>(),
            before
                .headers
                .get_all(header::UPGRADE)
                .iter()
                .collect::<Vec<_>>()
        );
    }
    for name in before.headers.keys() {
        let rewritten =
            is_hop_by_hop(name) || listed.contains(name) || SET_AFTER.contains(&name.as_str());
        if !rewritten {
            assert_eq!(
                after.get_all(name).iter().collect::<Vec<_>>(),
                before.headers.get_all(name).iter().collect::<Vec<_>>(),
                "{name} changed"
            );
        }
    }
    check_forwarded_for(&before.headers, after, &listed, &ip);

    let had_host = before.headers.contains_key(header::HOST) || before.uri.authority().is_some();
    assert_eq!(
        after.get_all(header::HOST).iter().count(),
        usize::from(had_host),
        "{after:?}"
    );
    if had_host {
        assert!(after.contains_key("x-forwarded-host"));
    }
    assert!(after.contains_key("x-forwarded-proto"));

    assert!(
        parts.uri.scheme().is_none() && parts.uri.authority().is_none(),
        "{}",
        parts.uri
    );
    if before.uri.authority().is_none() {
        assert_eq!(parts.uri, before.uri);
    } else {
        let expected = before.uri.path_and_query().map_or("/", |p| p.as_str());
        assert_eq!(
            parts.uri.path_and_query().map(|p| p.as_str()),
            Some(expected)
        );
    }
    assert_eq!(parts.version, Version::HTTP_11);
    Ok(())
}

/// Every address that came (in every `X-Forwarded-For` line, in order),
/// then the client's: unless the client named the header hop-by-hop.
fn check_forwarded_for(
    before: &http::HeaderMap,
    after: &http::HeaderMap,
    listed: &[HeaderName],
    ip: &HeaderValue,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let values: Vec<_> = after.get_all(&xff).iter().collect();
    assert_eq!(values.len(), 1, "{after:?}");
    let got = values[0].as_bytes();
    assert!(got.ends_with(ip.as_bytes()), "{got:?} lacks {ip:?}");
    if listed.contains(&xff) {
        return;
    }
    let mut expected: Vec<u8> = Vec::new();
    for value in before.get_all(&xff) {
        if value.as_bytes().trim_ascii().is_empty() {
            continue;
        }
        expected.extend_from_slice(value.as_bytes());
        expected.extend_from_slice(b", ");
    }
    expected.extend_from_slice(ip.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(&expected),
        "X-Forwarded-For lost an address"
    );
}
