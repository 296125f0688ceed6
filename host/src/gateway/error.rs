//! The one place invocation failures become HTTP status codes.
//!
//! Clients get a short generic body; the log gets the detail, once, with the
//! component and invocation id.
//!
//! | failure | status |
//! | --- | --- |
//! | instance pool exhausted | 503 + Retry-After |
//! | deadline exceeded | 504 |
//! | trap, memory limit, guest error, no response, instantiation | 500 |

use http::{HeaderValue, Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::runtime::{ComponentId, InvokeError};

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The status for an invocation failure.
pub fn status_of(e: &InvokeError) -> StatusCode {
    match e {
        InvokeError::PoolExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
        InvokeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs `e` once and builds the client's response.
pub fn respond(
    e: &InvokeError,
    component: &ComponentId,
    invocation: u64,
    method: &Method,
    path: &str,
) -> Response<Body> {
    let status = status_of(e);
    tracing::warn!(
        invocation,
        component = %component,
        %method,
        path,
        status = status.as_u16(),
        error = %e,
        "invocation failed"
    );
    let message = match status {
        StatusCode::SERVICE_UNAVAILABLE => "service overloaded, retry later",
        StatusCode::GATEWAY_TIMEOUT => "the service did not answer in time",
        _ => "the service failed to handle the request",
    };
    let mut r = body::text(status, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(RETRY_AFTER_SECS),
        );
    }
    r
}
