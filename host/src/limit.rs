//! Rate limits (GCRA, the `governor` crate): a component's
//! `[components.NAME.rate_limit]` and the host-wide per-client limit of `[gateway]
//! rate_limit`, checked before a request is admitted. Over the limit: 429 with
//! `Retry-After` and the `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` headers (the IETF draft's names); an allowed request's response
//! carries the same three.
//!
//! Keyed state is bounded: keys whose bucket is full again are dropped when the map
//! passes [`MAX_KEYS`], and if it is still over (that many clients active at once),
//! new keys share one overflow bucket.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::section::{ManifestError, Table};

/// Keys one limiter keeps before it sheds those at rest.
pub const MAX_KEYS: usize = 100_000;

/// `RateLimit-Limit`.
pub const LIMIT_HEADER: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const REMAINING_HEADER: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RESET_HEADER: HeaderName = HeaderName::from_static("ratelimit-reset");

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// What a check decided, with the numbers for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The burst size.
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again (allowed) or the next request may go
    /// (refused).
    pub reset_secs: u64,
}

impl Decision {
    /// Adds `RateLimit-*` (and `Retry-After` when refused) to a response.
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        headers.insert(LIMIT_HEADER, HeaderValue::from(self.limit));
        headers.insert(REMAINING_HEADER, HeaderValue::from(self.remaining));
        headers.insert(RESET_HEADER, HeaderValue::from(self.reset_secs));
        if !self.allowed {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(self.reset_secs.max(1)),
            );
        }
    }
}

/// A keyed limiter: `requests` per `per`, with bursts of `burst`.
pub struct Limiter {
    keyed: Keyed,
    burst: u32,
    interval: Duration,
    clock: DefaultClock,
}

impl Limiter {
    /// A limiter allowing `requests` per `per` on average and `burst` at once.
    pub fn new(requests: u32, per: Duration, burst: u32) -> Limiter {
        let interval = (per / requests.max(1)).max(Duration::from_nanos(1));
        let burst = burst.max(1);
        let quota = Quota::with_period(interval)
            .expect("interval is not zero")
            .allow_burst(NonZeroU32::new(burst).expect("burst is not zero"));
        let clock = DefaultClock::default();
        Limiter {
            keyed: RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>(),
            burst,
            interval,
            clock,
        }
    }

    /// Counts one request for `key`.
    pub fn check(&self, key: &str) -> Decision {
        let key = self.bounded(key);
        match self.keyed.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let empty = u64::from(self.burst.saturating_sub(remaining));
                Decision {
                    allowed: true,
                    limit: self.burst,
                    remaining,
                    reset_secs: (self.interval * empty as u32).as_secs_f64().ceil() as u64,
                }
            }
            Err(not_until) => Decision {
                allowed: false,
                limit: self.burst,
                remaining: 0,
                reset_secs: not_until
                    .wait_time_from(self.clock.now())
                    .as_secs_f64()
                    .ceil() as u64,
            },
        }
    }

    /// `key`, or the overflow key once the limiter holds too many.
    fn bounded(&self, key: &str) -> String {
        if self.keyed.len() >= MAX_KEYS {
            self.keyed.retain_recent();
            if self.keyed.len() >= MAX_KEYS {
                return "\u{0}overflow".to_string();
            }
        }
        key.to_string()
    }
}

/// `[components.NAME.rate_limit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Requests allowed per `per`, sustained.
    pub requests: u32,
    /// The window `requests` is counted over.
    pub per: Duration,
    /// Requests allowed at once above the sustained rate (default: `requests`).
    pub burst: u32,
    /// Whose requests are counted together.
    pub key: RateKey,
}

/// `key` of a rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateKey {
    /// Each client address.
    ClientIp,
    /// Each authenticated subject; the client address when there is none.
    #[default]
    Subject,
    /// Everyone together.
    Global,
}

/// Reads `[components.NAME.rate_limit]`.
pub fn read_rate_limit(component: &mut Table<'_>) -> Result<Option<RateLimitSpec>, ManifestError> {
    let Some(t) = component.table("rate_limit")? else {
        return Ok(None);
    };
    let requests = t
        .count("requests", 1, i64::from(u32::MAX))?
        .ok_or_else(|| t.missing("requests"))?;
    let per = t.duration("per")?.unwrap_or(Duration::from_secs(1));
    if per.is_zero() {
        return Err(t.invalid(t.span(), "per", "must be longer than zero"));
    }
    let burst = t
        .count("burst", 1, i64::from(u32::MAX))?
        .unwrap_or(requests);
    let key: Option<toml::Spanned<String>> = t.take("key")?;
    let key = match key {
        None => RateKey::default(),
        Some(k) => match k.get_ref().as_str() {
            "client_ip" => RateKey::ClientIp,
            "subject" => RateKey::Subject,
            "global" => RateKey::Global,
            other => {
                return Err(t.invalid(
                    k.span(),
                    "key",
                    format!("{other:?}: expected \"client_ip\", \"subject\" or \"global\""),
                ));
            }
        },
    };
    Ok(Some(RateLimitSpec {
        requests,
        per,
        burst,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_with_headers() {
        let l = Limiter::new(1, Duration::from_secs(60), 3);
        for left in [2, 1, 0] {
            let d = l.check("a");
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let d = l.check("a");
        assert!(!d.allowed);
        assert!(d.reset_secs > 0 && d.reset_secs <= 60, "{d:?}");
        let mut h = HeaderMap::new();
        d.set_headers(&mut h);
        assert_eq!(h["ratelimit-limit"], "3");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert!(h.contains_key(http::header::RETRY_AFTER));
        // Another key has its own bucket.
        assert!(l.check("b").allowed);
    }
}
