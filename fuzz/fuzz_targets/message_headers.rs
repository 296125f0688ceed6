//! NATS message headers into the messaging path: whatever headers a message arrives
//! with, the host reads its trace context and hands the guest a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmhive::telemetry::trace::TraceContext;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut message = wasmhive::bus::Message::new("orders.created", "body");
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            message.headers.push((k.to_string(), v.trim().to_string()));
        }
    }
    let trace = TraceContext::for_invocation(message.header("traceparent"));
    let header = trace.header_value();
    let shown = header.to_str().expect("ascii");
    assert_eq!(TraceContext::parse(shown), Some(trace), "{shown}");
    if let Some(parent) = message.header("traceparent").and_then(TraceContext::parse) {
        assert_eq!(parent.trace_id, trace.trace_id);
    }
    if message.check_headers().is_ok() {
        let _ = wasmhive::bus::nats::nats_headers(&message.headers);
    }
});
