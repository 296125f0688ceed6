//! Route patterns as written in manifests, and request paths against them: parsing,
//! conflicts and lookups never panic, and a match's parameters come from the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmhive::routes::{RouteMatch, RouteTable, parse_route};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines before an empty line are routes; the rest are "METHOD path" lookups.
    let (routes, lookups) = text.split_once("\n\n").unwrap_or((text, "/"));
    let mut table = RouteTable::default();
    for (i, line) in routes.lines().enumerate() {
        if let Ok(route) = parse_route(line) {
            let _ = table.insert(route.method, &route.path, "fuzz", i);
        }
    }
    for line in lookups.lines() {
        let (method, path) = line.split_once(' ').unwrap_or(("GET", line));
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        if let RouteMatch::Found { params, .. } = table.lookup(&method, path) {
            for (_, value) in params {
                assert!(path.contains(value), "{value:?} not in {path:?}");
            }
        }
    }
});
