//! The failure table: the one place an invocation's failure becomes a status, whatever
//! the trigger.
//!
//! | failure | status | HTTP caller | message |
//! | --- | --- | --- | --- |
//! | shed: all instances busy and queue full, queue timeout, host instance pool full, stopped | 503 | 503 + Retry-After | waits (flow control) |
//! | instance pool exhausted, host memory budget exhausted | 503 | 503 + Retry-After | nak, redelivered |
//! | deadline exceeded | 504 | 504 | nak, redelivered |
//! | trap, memory limit, guest error, no response, instantiation, load from zero | 500 | 500 | nak, redelivered; dead letter after `max_deliver` |
//!
//! HTTP clients get a short generic body ([`respond`]); the log gets the detail, once,
//! from the envelope.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::runtime::{InvokeError, RuntimeError};
use crate::scaler::Shed;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Why an invocation was not answered by the component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Not admitted (load shedding, or the component is stopped).
    #[error("shed: {0}")]
    Shed(#[from] Shed),
    /// The component was at zero and could not be loaded again.
    #[error("cannot load the component from zero: {0}")]
    Load(#[from] RuntimeError),
    /// Admitted and started, then failed.
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

impl Failure {
    /// The status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Shed(_)
            | Failure::Invoke(InvokeError::PoolExhausted(_))
            | Failure::Invoke(InvokeError::HostMemory(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Invoke(InvokeError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether the component was asked at all (shedding is the system working as
    /// configured, not the component failing).
    pub fn is_shed(&self) -> bool {
        matches!(self, Failure::Shed(_))
    }
}

/// The response an HTTP client gets for `e` (logged already by the envelope).
pub fn respond(e: &Failure) -> Response<Body> {
    let status = e.status();
    let message = match (e, status) {
        (Failure::Shed(Shed::Stopped), _) => "the service is stopped",
        (_, StatusCode::SERVICE_UNAVAILABLE) => "service overloaded, retry later",
        (_, StatusCode::GATEWAY_TIMEOUT) => "the service did not answer in time",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_table() {
        let cases = [
            (Failure::Shed(Shed::QueueFull(4)), 503),
            (Failure::Invoke(InvokeError::HostMemory("x".into())), 503),
            (
                Failure::Invoke(InvokeError::Timeout(Duration::from_secs(1))),
                504,
            ),
            (Failure::Invoke(InvokeError::Trap("x".into())), 500),
            (Failure::Load(RuntimeError::Cache("x".into())), 500),
        ];
        for (f, status) in cases {
            assert_eq!(f.status().as_u16(), status, "{f}");
            let r = respond(&f);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(
                r.headers().contains_key(http::header::RETRY_AFTER),
                status == 503
            );
        }
    }
}
