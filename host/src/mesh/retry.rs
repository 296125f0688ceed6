//! Retries: which requests may be retried, how long to wait, and a budget so retries
//! cannot multiply load on a struggling service.
//!
//! Only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) or requests carrying an
//! `Idempotency-Key` header are retried: a POST without one is sent exactly once.

use std::time::Duration;

use crate::capability::http::RetryPolicy;

/// Whether a request may be sent more than once.
pub fn retryable(method: &http::Method, headers: &http::HeaderMap) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || headers.contains_key("idempotency-key")
}

/// The delay before retry number `retry` (1 = the first retry): exponential from
/// `backoff`, capped at `max_backoff`, with "equal jitter" (half fixed, half random).
pub fn delay(policy: &RetryPolicy, retry: u32) -> Duration {
    let exp = policy
        .backoff
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(policy.max_backoff);
    let half = exp / 2;
    half + half.mul_f64(jitter())
}

/// A random fraction in `[0, 1)` (the thread's generator: no shared state between
/// callers).
fn jitter() -> f64 {
    rand::random::<f64>()
}

/// A retry budget: each call earns a fraction of a retry, each retry spends one, so
/// retries stay a bounded share of calls (plus a small reserve for low traffic).
#[derive(Debug)]
pub struct Budget {
    tokens: f64,
}

/// Retries earned per call.
const EARN: f64 = 0.2;
/// The reserve (and cap).
const RESERVE: f64 = 10.0;

impl Default for Budget {
    fn default() -> Self {
        Budget { tokens: RESERVE }
    }
}

impl Budget {
    /// Records a call.
    pub fn deposit(&mut self) {
        self.tokens = (self.tokens + EARN).min(RESERVE);
    }

    /// Takes one retry if the budget allows.
    pub fn withdraw(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_requests_retry() {
        let none = http::HeaderMap::new();
        assert!(retryable(&http::Method::GET, &none));
        assert!(retryable(&http::Method::PUT, &none));
        assert!(!retryable(&http::Method::POST, &none));
        let mut key = http::HeaderMap::new();
        key.insert("idempotency-key", "abc".parse().unwrap());
        assert!(retryable(&http::Method::POST, &key));
    }

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
        };
        assert!(
            delay(&p, 1) >= Duration::from_millis(50) && delay(&p, 1) <= Duration::from_millis(100)
        );
        assert!(
            delay(&p, 2) >= Duration::from_millis(100)
                && delay(&p, 2) <= Duration::from_millis(200)
        );
        assert!(delay(&p, 5) <= Duration::from_millis(300));
    }

    #[test]
    fn the_budget_limits_retries() {
        let mut b = Budget::default();
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        assert!(retries < 40, "{retries}");
    }
}
