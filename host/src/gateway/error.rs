//! The one place invocation failures become HTTP status codes.
//!
//! Clients get a short generic body; the log gets the detail, once, with the
//! component and invocation id.
//!
//! | failure | status |
//! | --- | --- |
//! | shed: all instances busy and queue full, queue timeout, host instance pool full | 503 + Retry-After |
//! | instance pool exhausted, host memory budget exhausted | 503 + Retry-After |
//! | deadline exceeded | 504 |
//! | trap, memory limit, guest error, no response, instantiation, load from zero | 500 |

use http::{HeaderValue, Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::runtime::{ComponentId, InvokeError, RuntimeError};
use crate::scaler::Shed;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Why a request to a component was not answered by the component.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Not admitted (load shedding).
    #[error("shed: {0}")]
    Shed(#[from] Shed),
    /// The component was at zero and could not be loaded again.
    #[error("cannot load the component from zero: {0}")]
    Load(#[from] RuntimeError),
    /// Admitted and started, then failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

/// The status for a failure.
pub fn status_of(e: &Failure) -> StatusCode {
    match e {
        Failure::Shed(_)
        | Failure::Invoke(InvokeError::PoolExhausted(_))
        | Failure::Invoke(InvokeError::HostMemory(_)) => StatusCode::SERVICE_UNAVAILABLE,
        Failure::Invoke(InvokeError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Logs `e` once and builds the client's response.
pub fn respond(
    e: &Failure,
    component: &ComponentId,
    invocation: u64,
    trace_id: &str,
    method: &Method,
    path: &str,
) -> Response<Body> {
    let status = status_of(e);
    if let Failure::Shed(_) = e {
        // Shedding is the system working as configured: counted in status and
        // metrics; logging each one would flood the log exactly when it matters.
        tracing::debug!(invocation, trace_id, component = %component, %method, path, error = %e, "request shed");
    } else {
        tracing::warn!(
            invocation,
            trace_id,
            component = %component,
            %method,
            path,
            status = status.as_u16(),
            error = %e,
            "invocation failed"
        );
    }
    let message = match (e, status) {
        (Failure::Shed(Shed::Stopped), _) => "the service is stopped",
        (_, s) => match s {
            StatusCode::SERVICE_UNAVAILABLE => "service overloaded, retry later",
            StatusCode::GATEWAY_TIMEOUT => "the service did not answer in time",
            _ => "the service failed to handle the request",
        },
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
