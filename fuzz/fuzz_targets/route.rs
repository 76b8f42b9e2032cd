//! The route matcher (`proxy/src/route.rs`): arbitrary tables of valid
//! config hosts and paths, arbitrary lookups. Never panics, agrees with
//! the reference model in `rouse_fuzz::route`, ignores the case and the
//! port of a Host value, and routing a whole request never picks another
//! service than its Host and path would.

#![no_main]

use std::ops::ControlFlow;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rouse_fuzz::route::{self, Model, Route};
use rouse_proxy::fuzzing::{find, route, RouteTable};

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mut routes: Vec<Route> = Vec::new();
    u.arbitrary_loop(Some(1), Some(16), |u| {
        routes.push((route::config_host(u)?, route::config_path(u)?));
        Ok(ControlFlow::Continue(()))
    })?;
    let mut table = RouteTable::default();
    for (index, (host, path)) in routes.iter().enumerate() {
        table.insert(host, path, index);
    }
    let model = Model::new(&routes);
    u.arbitrary_loop(Some(1), Some(16), |u| {
        let (host, path) = (route::request_host(u)?, route::request_path(u)?);
        check(&table, &model, &routes, &host, &path);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(())
}

fn check(table: &RouteTable<usize>, model: &Model, routes: &[Route], host: &str, path: &str) {
    let found = find(table, host, path).copied();
    let expected = model.lookup(host, path);
    assert_eq!(
        found, expected,
        "host {host:?} path {path:?}: table chose {found:?}, the rules {expected:?}; routes {routes:?}"
    );
    assert_eq!(
        find(table, &host.to_ascii_uppercase(), path).copied(),
        found,
        "case of {host:?} changed the route"
    );
    if !host.contains([':', '[']) {
        assert_eq!(
            find(table, &format!("{host}:8080"), path).copied(),
            found,
            "a port on {host:?} changed the route"
        );
    }
    // A whole request: only the path part of its target is routed; a
    // request the matcher refuses (invalid Host, say) is a 404, never
    // another service.
    let target = format!("http://{host}{path}");
    if let Ok(request) = http::Request::get(target.as_str()).body(()) {
        if let (Some(authority), Some(chosen)) = (request.uri().authority(), route(table, &request))
        {
            assert_eq!(
                Some(chosen),
                find(table, authority.as_str(), request.uri().path()).copied(),
                "request {target:?}"
            );
        }
    }
    if let Ok(request) = http::Request::get(path).header("host", host).body(()) {
        if let Some(chosen) = route(table, &request) {
            assert_eq!(
                Some(chosen),
                find(table, host, request.uri().path()).copied(),
                "request for {path:?} with Host {host:?}"
            );
        }
    }
}
