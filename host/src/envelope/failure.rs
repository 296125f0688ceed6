//! The failure table: the one place an invocation's failure becomes a status, whatever
//! the trigger.
//!
//! | failure | status | HTTP caller | durable message |
//! | --- | --- | --- | --- |
//! | shed: all instances busy and queue full, queue timeout, host instance pool full, stopped | 503 | 503 + Retry-After | not taken: waits for a slot (flow control) |
//! | instance pool exhausted, host memory budget exhausted | 503 | 503 + Retry-After | nak, redelivered after `backoff` |
//! | deadline exceeded | 504 | 504 | nak, redelivered after `backoff` |
//! | trap, memory limit, guest error, no response, instantiation, load from zero | 500 | 500 | nak, redelivered after `backoff` |
//!
//! Any failed delivery of a durable message that was its `max_deliver`-th is
//! dead-lettered instead ([`settle`]); a core (at-most-once) message is not retried.
//! HTTP clients get a short generic body ([`respond`]); a mesh caller a proxy's answer
//! (the mesh maps 503 and 504 to its own); the log gets the detail, once, from the
//! envelope.

use std::time::Duration;

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

/// What happens to a durable message whose delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Nak it: the server redelivers it after this delay.
    Redeliver(Duration),
    /// Its last delivery: publish it to the dead-letter subject and terminate it.
    DeadLetter,
}

/// Delay before a redelivery when the manifest gives no `backoff`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);

/// The disposition of a durable message whose `delivered`-th delivery (1-based)
/// failed, under `max_deliver` and the `backoff` delays (the n-th after the n-th
/// failure; the last repeats; none: [`DEFAULT_BACKOFF`]).
pub fn settle(delivered: u32, max_deliver: u32, backoff: &[Duration]) -> Settle {
    if delivered >= max_deliver {
        return Settle::DeadLetter;
    }
    let delay = backoff
        .get(delivered.max(1) as usize - 1)
        .or(backoff.last())
        .copied()
        .unwrap_or(DEFAULT_BACKOFF);
    Settle::Redeliver(delay)
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
    fn durable_failures_back_off_then_dead_letter() {
        let backoff = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(
            settle(1, 3, &backoff),
            Settle::Redeliver(Duration::from_secs(1))
        );
        assert_eq!(
            settle(2, 3, &backoff),
            Settle::Redeliver(Duration::from_secs(5))
        );
        assert_eq!(settle(3, 3, &backoff), Settle::DeadLetter);
        assert_eq!(
            settle(2, 9, &backoff[..1]),
            Settle::Redeliver(Duration::from_secs(1))
        );
        assert_eq!(settle(1, 2, &[]), Settle::Redeliver(DEFAULT_BACKOFF));
    }

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
