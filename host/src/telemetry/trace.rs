//! W3C trace context (`traceparent`) carried across HTTP and NATS.
//!
//! Each invocation gets a span: its trace id comes from the trigger's `traceparent`
//! (an HTTP request header or a NATS message header), or is new when there is none.
//! The guest sees the invocation's `traceparent` on its request; what the guest sends
//! out (outgoing HTTP requests, published messages and requests) carries it too,
//! unless the guest set its own. Log lines of the invocation name the trace id.

use rand::Rng;

/// A new `x-request-id` value: 32 random hex digits.
pub fn new_request_id() -> http::HeaderValue {
    http::HeaderValue::from_bytes(hex128(random_u128()).as_bytes())
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// A position in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id (never zero).
    pub trace_id: u128,
    /// 64-bit span id (never zero).
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

/// A random non-zero u64 from the thread's cryptographically secure generator
/// (`rand`'s `ThreadRng`: ChaCha12 seeded from the OS and reseeded every 64 KiB), so ids
/// neither repeat nor can be predicted from ids seen before (a guest or an upstream
/// sees some). It produces a block of output at a time, which makes an id much cheaper
/// than hashing a counter per id.
fn random_u64() -> u64 {
    let mut rng = rand::rng();
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

/// A random non-zero u128 (a trace id, or a request id in hex).
pub fn random_u128() -> u128 {
    (u128::from(random_u64()) << 64) | u128::from(random_u64())
}

/// Writes `value` as `out.len()` lowercase hex digits (the low bits, zero-padded).
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// `value` as 32 lowercase hex digits.
pub fn hex128(value: u128) -> String {
    let mut buf = [0u8; 32];
    write_hex(&mut buf, value);
    // Only ASCII hex digits were written.
    String::from_utf8(buf.to_vec()).unwrap_or_default()
}

impl TraceContext {
    /// Parses a `traceparent` value (version 00); `None` if malformed or all-zero.
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return None;
        };
        if version.len() != 2
            || *version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace (sampled).
    pub fn root() -> Self {
        TraceContext {
            trace_id: random_u128(),
            span_id: random_u64(),
            flags: 1,
        }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: random_u64(),
            ..*self
        }
    }

    /// The span of an invocation whose trigger carried `parent` (if any).
    pub fn for_invocation(parent: Option<&str>) -> Self {
        parent
            .and_then(TraceContext::parse)
            .map(|p| p.child())
            .unwrap_or_else(TraceContext::root)
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        // Only ASCII is written.
        String::from_utf8(self.header_bytes().to_vec()).unwrap_or_default()
    }

    /// The `traceparent` header value, ready for a header map (one allocation; a
    /// clone shares it).
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.header_bytes())
            .unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }

    fn header_bytes(&self) -> [u8; 55] {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut buf[3..35], self.trace_id);
        write_hex(&mut buf[36..52], u128::from(self.span_id));
        write_hex(&mut buf[53..55], u128::from(self.flags));
        buf
    }

    /// The trace id as 32 hex digits (for logs).
    pub fn trace_id_hex(&self) -> String {
        hex128(self.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_children() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(h).unwrap();
        assert_eq!(t.header(), h);
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
        assert_eq!(TraceContext::for_invocation(Some(h)).trace_id, t.trace_id);
        assert_ne!(TraceContext::root().trace_id, TraceContext::root().trace_id);
        let t = TraceContext {
            trace_id: 0xab,
            span_id: 0xcd,
            flags: 0,
        };
        assert_eq!(
            t.header(),
            "00-000000000000000000000000000000ab-00000000000000cd-00"
        );
        assert_eq!(t.trace_id_hex(), format!("{:032x}", 0xab));
    }

    #[test]
    fn ids_differ_across_threads() {
        let here: Vec<u64> = (0..4).map(|_| random_u64()).collect();
        let there = std::thread::spawn(|| (0..4).map(|_| random_u64()).collect::<Vec<_>>())
            .join()
            .unwrap();
        assert!(here.iter().all(|v| *v != 0 && !there.contains(v)));
        let unique: std::collections::BTreeSet<_> = here.iter().collect();
        assert_eq!(unique.len(), 4);
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in [
            "",
            "00-0000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }
}
