//! Header names the host reads or writes on requests to guests, and the helpers that
//! set them. A leaf: the gateway, the mesh, the capabilities (outgoing-HTTP hooks,
//! messaging) and the runtime use these, and it imports nothing from the host.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header prefix reserved for the host; stripped from client requests (so guests can
/// trust every `wasmhive-*` header they see).
pub const RESERVED_PREFIX: &str = "wasmhive-";
/// Header identifying a request across every service it reaches.
pub const REQUEST_ID: &str = "x-request-id";
/// [`REQUEST_ID`] as a header name (no parsing per lookup).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// [`TRACEPARENT`] as a header name.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);
/// Header carrying the matched route pattern to the guest.
pub const ROUTE: &str = "wasmhive-route";
/// Prefix of headers carrying captured path parameters to the guest.
pub const PARAM_PREFIX: &str = "wasmhive-param-";
/// Marks a response the mesh made up from a call's `fallback`.
pub const FALLBACK: &str = "wasmhive-fallback";

/// Prefix of the headers carrying a verified caller's identity.
pub const AUTH_PREFIX: &str = "wasmhive-auth-";
/// `wasmhive-auth-subject`: present on every request that carries an identity.
pub const AUTH_SUBJECT: HeaderName = HeaderName::from_static("wasmhive-auth-subject");

/// The identity headers of a request (`wasmhive-auth-*`), as the gateway set them.
pub fn identity_of(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(AUTH_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Removes every `wasmhive-*` header (a client or a calling guest must not forge them).
pub fn strip_reserved(headers: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for k in reserved {
        headers.remove(k);
    }
}

/// Removes the headers a client's `Connection:` header names (hop-by-hop for this one
/// connection, RFC 9110 §7.6.1), and `Connection` itself. The standard hop-by-hop
/// names are also removed by the wasi:http hooks; a name listed here may be anything
/// (`Connection: close, x-internal`), so it is removed by name.
pub fn strip_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(http::header::CONNECTION);
}

/// Removes every `wasmhive-*` header except the identity ones (for a request the host
/// itself built from a guest's, after [`strip_reserved`]).
pub fn strip_reserved_but_identity(headers: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(RESERVED_PREFIX) && !k.as_str().starts_with(AUTH_PREFIX))
        .cloned()
        .collect();
    for k in reserved {
        headers.remove(k);
    }
}

/// Adds what the route matched to a request for the guest: one `wasmhive-param-NAME`
/// header per captured parameter and, when the pattern has parameters,
/// `wasmhive-route` with the pattern. A literal pattern is the path itself, so it is
/// not repeated: every header a guest receives costs it work on every request
/// (wasi:http lowers and the guest parses each one).
pub fn add_route(headers: &mut HeaderMap, pattern: &str, params: &[(&str, &str)]) {
    if params.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(pattern) {
        headers.insert(HeaderName::from_static(ROUTE), v);
    }
    for (name, value) in params {
        let header = HeaderName::from_bytes(
            format!("{PARAM_PREFIX}{}", name.to_ascii_lowercase()).as_bytes(),
        );
        if let (Ok(h), Ok(v)) = (header, HeaderValue::from_str(value)) {
            headers.insert(h, v);
        }
    }
}

/// The `traceparent` and `x-request-id` of a request (shared, not copied: a header
/// value's bytes are reference counted).
pub fn trace_pair(headers: &HeaderMap) -> (Option<HeaderValue>, Option<HeaderValue>) {
    (
        headers.get(&TRACEPARENT_HEADER).cloned(),
        headers.get(&REQUEST_ID_HEADER).cloned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_stripped_and_route_headers_added() {
        let mut h = HeaderMap::new();
        h.insert("wasmhive-route", HeaderValue::from_static("/forged"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_reserved(&mut h);
        assert!(h.get(ROUTE).is_none());
        add_route(&mut h, "/users/{id}", &[("id", "7")]);
        assert_eq!(h["wasmhive-route"], "/users/{id}");
        assert_eq!(h["wasmhive-param-id"], "7");
        assert_eq!(h["x-keep"], "1");
        let mut hop = HeaderMap::new();
        hop.append("connection", HeaderValue::from_static("close, X-Internal"));
        hop.append("connection", HeaderValue::from_static("x-other"));
        hop.insert("x-internal", HeaderValue::from_static("secret"));
        hop.insert("x-other", HeaderValue::from_static("1"));
        hop.insert("x-keep", HeaderValue::from_static("1"));
        strip_connection_named(&mut hop);
        assert_eq!(hop.len(), 1, "{hop:?}");
        assert_eq!(hop["x-keep"], "1");
        let mut literal = HeaderMap::new();
        add_route(&mut literal, "/hello", &[]);
        assert!(literal.is_empty());
    }
}
