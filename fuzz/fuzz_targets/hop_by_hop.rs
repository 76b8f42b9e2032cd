//! `strip_hop_by_hop` (`proxy/src/headers.rs`) as the responses use it: a
//! replica's response headers, and a 101 that keeps what the client needs
//! to switch. Never panics; afterwards no hop-by-hop header is left (but
//! `Upgrade` and `Connection: upgrade` for a 101), nor any header that
//! `Connection` named, and every other header is as it came.

#![no_main]

use arbitrary::{Result, Unstructured};
use http::header;
use libfuzzer_sys::fuzz_target;
use rouse_fuzz::headers::{self, connection_tokens, is_hop_by_hop};
use rouse_proxy::fuzzing::strip_hop_by_hop;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let before = headers::header_map(u)?;
    let upgrade: bool = u.arbitrary()?;
    let mut after = before.clone();
    strip_hop_by_hop(&mut after, upgrade);
    let listed = connection_tokens(&before);

    for name in after.keys() {
        let kept_for_upgrade = upgrade && (name == header::UPGRADE || name == header::CONNECTION);
        assert!(
            !is_hop_by_hop(name) || kept_for_upgrade,
            "hop-by-hop {name} left in {after:?}"
        );
        assert!(
            !listed.contains(name)
                || (upgrade && (name == header::UPGRADE || name == header::CONNECTION)),
            "{name}, listed in Connection, left in {after:?} from {before:?}"
        );
    }
    if upgrade {
        assert_eq!(
            after.get_all(header::CONNECTION).iter().collect::<Vec<_>>(),
            ["upgrade"]
        );
    }
    for name in before.keys() {
        if !is_hop_by_hop(name) && !listed.contains(name) {
            assert_eq!(
                after.get_all(name).iter().collect::<Vec<_>>(),
                before.get_all(name).iter().collect::<Vec<_>>(),
                "{name} changed"
            );
        }
    }
    Ok(())
}
