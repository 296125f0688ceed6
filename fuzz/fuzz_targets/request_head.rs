//! A client's request head as the gateway sees it: parsed as HTTP/1.1 (what hyper
//! accepts), routed, rewritten for the guest. Never a panic; a client's `wasmhive-*`
//! header never survives; the guest always gets an absolute URI, a trace context
//! and a request id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmhive::routes::{RouteMatch, RouteTable, parse_route};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut builder = http::Request::builder().method(method).uri(path);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let mut table = RouteTable::default();
    for (i, route) in ["GET /hello", "/users/{id}", "POST /files/{*path}", "/"]
        .into_iter()
        .enumerate()
    {
        let r = parse_route(route).expect("valid route");
        table.insert(r.method, &r.path, "fuzz", i).expect("no conflict");
    }
    let path = parts.uri.path().to_string();
    let (pattern, params) = match table.lookup(&parts.method, &path) {
        RouteMatch::Found {
            pattern, params, ..
        } => (pattern.to_string(), params),
        _ => return,
    };
    let client_trace = parts
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let trace = wasmhive::telemetry::trace::TraceContext::for_invocation(client_trace.as_deref());
    let forged: Vec<String> = parts
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("wasmhive-"))
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    let local = "127.0.0.1:8080".parse().expect("address");
    if wasmhive::gateway::rewrite_head(&mut parts, local, &pattern, &params, trace.header_value())
        .is_err()
    {
        return;
    }
    assert!(parts.uri.scheme().is_some() && parts.uri.authority().is_some());
    assert!(parts.headers.contains_key("traceparent"));
    assert!(parts.headers.contains_key("x-request-id"));
    for (k, v) in &parts.headers {
        if k.as_str().starts_with("wasmhive-") {
            let ours = k == "wasmhive-route" || k.as_str().starts_with("wasmhive-param-");
            assert!(ours, "client header {k}={v:?} survived (forged: {forged:?})");
        }
    }
});
