//! Circuit breaker: closed → open after `failures` failures within `window`; open
//! calls fail fast for `open_for`; then half-open lets `half_open_probes` calls
//! through: a success closes it, a failure opens it again.

use std::collections::VecDeque;
use std::time::Instant;

use crate::capability::http::BreakerPolicy;

/// Where a breaker is.
#[derive(Debug)]
enum State {
    Closed { failures: VecDeque<Instant> },
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

/// One caller→target breaker.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: State,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            state: State::Closed {
                failures: VecDeque::new(),
            },
        }
    }

    /// Whether a call may go through now (and counts it as a probe when half-open).
    pub fn allow(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Closed { .. } => true,
            State::Open { until } => {
                if now >= *until {
                    self.state = State::HalfOpen { probes: 1 };
                    true
                } else {
                    false
                }
            }
            State::HalfOpen { probes } => {
                if *probes < self.policy.half_open_probes {
                    *probes += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Records how an allowed call ended.
    pub fn record(&mut self, success: bool, now: Instant) {
        let open = State::Open {
            until: now + self.policy.open_for,
        };
        match &mut self.state {
            State::Closed { failures } => {
                if success {
                    return;
                }
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.policy.window)
                {
                    failures.pop_front();
                }
                if failures.len() as u32 >= self.policy.failures {
                    self.state = open;
                }
            }
            State::HalfOpen { .. } => {
                self.state = if success {
                    State::Closed {
                        failures: VecDeque::new(),
                    }
                } else {
                    open
                };
            }
            // A call that started before the circuit opened.
            State::Open { .. } => {}
        }
    }

    /// `closed`, `open` or `half-open`.
    pub fn state(&self, now: Instant) -> &'static str {
        match &self.state {
            State::Closed { .. } => "closed",
            State::Open { until } if now >= *until => "half-open",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        for _ in 0..3 {
            assert!(b.allow(t0));
            b.record(false, t0);
        }
        assert_eq!(b.state(t0), "open");
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        let later = t0 + Duration::from_secs(6);
        assert!(b.allow(later), "one probe after open_for");
        assert!(!b.allow(later), "only one probe at a time");
        b.record(true, later);
        assert_eq!(b.state(later), "closed");
    }

    #[test]
    fn a_failed_probe_reopens_and_old_failures_expire() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy());
        b.record(false, t0);
        b.record(false, t0);
        b.record(false, t0 + Duration::from_secs(11));
        assert_eq!(
            b.state(t0 + Duration::from_secs(11)),
            "closed",
            "two failures fell out of the window"
        );
        b.record(false, t0 + Duration::from_secs(11));
        b.record(false, t0 + Duration::from_secs(11));
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.state(t1), "open");
        let t2 = t1 + Duration::from_secs(6);
        assert!(b.allow(t2));
        b.record(false, t2);
        assert_eq!(b.state(t2), "open");
    }
}
