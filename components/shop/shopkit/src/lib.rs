//! shopkit: what every service of the shop app (docs/SHOP.md) shares, so that each
//! service is mostly its own business rules.
//!
//! - [`http`]: serve a request as JSON in, JSON out ([`http::serve`]), with errors as
//!   `{"error": "..."}` ([`Error`]) and routing by method and path segments;
//! - [`client`]: calls to other services through the mesh (`http://NAME/v1/...`), one
//!   at a time or several in parallel ([`client::fetch_all`]);
//! - [`kv`]: JSON values in a key-value bucket, compare-and-swap updates
//!   ([`kv::Bucket::update`]), claims ([`kv::Bucket::insert_new`]) and counters;
//! - [`events`]: publish JSON events, and the [`export_message_handler!`] macro that
//!   turns a [`events::MessageHandler`] into the component's
//!   `wasmcloud:messaging/handler` export;
//! - [`saga`]: the order as it travels in events, and the subjects of the saga;
//! - [`config`] and [`log`]: `wasi:config` values and `wasi:logging` lines.
//!
//! # How the bindings fit together
//!
//! HTTP (incoming and outgoing) uses the raw `wasi:http@0.2` bindings of the `wasip2`
//! crate, through the `support` crate the fixtures use too; a service exports its
//! handler with `support::wasip2::http::proxy::export!(Service with_types_in
//! support::wasip2)`.
//!
//! Everything else the host offers (key-value, CAS, messaging, config, logging) is
//! generated here by `wit-bindgen` from the world `wasmhive:service/imports` in
//! `wit/` ([`bindings`]). None of those interfaces mentions a `wasi:http` or `wasi:io`
//! type, so the two sets of bindings sit side by side without mapping anything.
//!
//! The message handler is an *export*, and a world's exports must be implemented by
//! every component that links its bindings. So it is not generated here (an
//! HTTP-only service would then have to export it too): a service with subscriptions
//! calls [`export_message_handler!`], which generates a world with only that export
//! in the service's own crate, reusing this crate's `wasmcloud:messaging/types`
//! (`with` mapping). A service with both routes and subscriptions thus exports both
//! `wasi:http/incoming-handler` and `wasmcloud:messaging/handler` (the shape of the
//! world `wasmhive:service/service`), and one with only routes exports only the first.
//!
//! # Tests
//!
//! The bindings compile for the host target too (calling an import there panics), so
//! pure logic is unit-tested natively: `cd components && cargo test -p shopkit -p
//! inventory -p order-view -p order-details`.

pub mod client;
pub mod config;
pub mod events;
pub mod http;
pub mod kv;
pub mod log;
pub mod saga;

pub use serde;
pub use serde_json;
pub use support;
pub use wit_bindgen;

/// Bindings for the host's imports other than wasi:http (see the crate docs).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "wasmhive:service/imports",
        generate_all,
    });
}

/// An error a service answers with: an HTTP status and a message, sent as
/// `{"error": "<message>"}`. A message handler returning one has the message
/// redelivered (durable subscriptions) after logging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The HTTP status to answer with (4xx or 5xx).
    pub status: u16,
    /// What went wrong, for the client.
    pub message: String,
}

impl Error {
    /// An error with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(400, message)
    }

    /// 404: no such resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(404, message)
    }

    /// 422: well-formed, but refers to something that does not exist.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Error::new(422, message)
    }

    /// 500: this service failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(500, message)
    }

    /// 503: a service this one depends on failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(503, message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

/// A `Result` whose error is an [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses JSON `bytes` as `T`; a malformed body is a 400 naming what is wrong.
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::bad_request(format!("invalid JSON: {e}")))
}

/// `value` as JSON bytes.
pub fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data (structs, maps with string keys, numbers, strings)
    // cannot fail; an empty body would show a bug rather than hide it in a trap.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Cents as a decimal amount: `125000` → `"1250.00"`.
pub fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// What [`valid_sku`] accepts, for error messages.
pub const SKU_RULE: &str = "a sku is 1-64 letters, digits, '-' or '_'";

/// Whether `sku` is 1–64 ASCII letters, digits, `-` or `_`.
pub fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Percent-encodes `s` for use as one path segment (everything but ASCII letters,
/// digits and `-._~`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Orders ids like `o2` before `o10`: shorter first, then by text.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(125_000), "1250.00");
    }

    #[test]
    fn skus_are_short_words() {
        assert!(valid_sku("book"));
        assert!(valid_sku("red_mug-2"));
        assert!(!valid_sku(""));
        assert!(!valid_sku("a b"));
        assert!(!valid_sku("a/b"));
        assert!(!valid_sku(&"x".repeat(65)));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("u1"), "u1");
        assert_eq!(encode_segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(support::percent_decode(&encode_segment("ü/ß")), "ü/ß");
    }

    #[test]
    fn ids_sort_by_number() {
        let mut ids = vec!["o10", "o2", "o1"];
        ids.sort_by(|a, b| id_order(a, b));
        assert_eq!(ids, ["o1", "o2", "o10"]);
    }
}
