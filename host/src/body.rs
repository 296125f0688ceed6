//! The one HTTP body type responses carry, whether a guest streams it or the host
//! writes it, and helpers to build host-written bodies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed, streaming body (the same type wasi:http produces).
pub type Body = wasmtime_wasi_http::WasiBody;

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A response with a status and a short text body.
pub fn text(status: http::StatusCode, message: impl Into<String>) -> http::Response<Body> {
    let mut message = message.into();
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let mut r = http::Response::new(full(message));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A response with a status and a JSON body.
pub fn json<T: serde::Serialize>(status: http::StatusCode, value: &T) -> http::Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(bytes) => {
            let mut r = http::Response::new(full(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode response: {e}"),
        ),
    }
}
