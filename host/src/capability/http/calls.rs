//! `[components.NAME.calls.TARGET]`: the components a component may call by name
//! (`http://TARGET/...`), each with the caller's policy for it. The mesh applies the
//! policy; this module reads and checks it.

use std::time::Duration;

use crate::section::{ManifestError, Table, check_name};

/// How calls to one target behave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallPolicy {
    /// Per-attempt deadline for the response head.
    pub timeout: Option<Duration>,
    /// Retries of idempotent requests.
    pub retries: Option<RetryPolicy>,
    /// Fail fast after repeated failures.
    pub circuit_breaker: Option<BreakerPolicy>,
    /// Answer given instead of a failure.
    pub fallback: Option<Fallback>,
    /// Pass the caller's verified identity (`wasmhive-auth-*`) on to the callee
    /// (`forward_identity`, default true).
    pub forward_identity: bool,
}

/// `retries = { attempts, backoff, max_backoff }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// First delay; doubles per retry, with jitter.
    pub backoff: Duration,
    /// Longest delay.
    pub max_backoff: Duration,
}

/// `circuit_breaker = { failures, window, open_for, half_open_probes }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures within `window` that open the circuit.
    pub failures: u32,
    /// The counting window.
    pub window: Duration,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
}

/// `fallback = { status, headers, body }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// Default first retry delay.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(50);
/// Default longest retry delay.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Default breaker counting window.
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
/// Default time a breaker stays open.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(5);

/// Reads `calls`: every target with its policy, in name order.
pub(super) fn read(component: &mut Table<'_>) -> Result<Vec<(String, CallPolicy)>, ManifestError> {
    let mut calls = Vec::new();
    for (target, mut t) in component.tables("calls")? {
        if check_name(target.get_ref()).is_err() {
            return Err(component.invalid(
                target.span(),
                &format!("calls.{}", target.get_ref()),
                "a call target is a component name: lowercase letters, digits and '-'",
            ));
        }
        let policy = policy(&mut t)?;
        t.finish()?;
        calls.push((target.into_inner(), policy));
    }
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(calls)
}

fn policy(t: &mut Table<'_>) -> Result<CallPolicy, ManifestError> {
    let mut policy = CallPolicy {
        timeout: t.duration("timeout")?,
        forward_identity: t.take("forward_identity")?.unwrap_or(true),
        ..Default::default()
    };
    if let Some(r) = t.table("retries")? {
        policy.retries = Some(RetryPolicy {
            attempts: r
                .count("attempts", 1, 10)?
                .ok_or_else(|| r.missing("attempts"))?,
            backoff: r.duration("backoff")?.unwrap_or(DEFAULT_BACKOFF),
            max_backoff: r.duration("max_backoff")?.unwrap_or(DEFAULT_MAX_BACKOFF),
        });
    }
    if let Some(b) = t.table("circuit_breaker")? {
        policy.circuit_breaker = Some(BreakerPolicy {
            failures: b
                .count("failures", 1, i64::from(u32::MAX))?
                .ok_or_else(|| b.missing("failures"))?,
            window: b.duration("window")?.unwrap_or(DEFAULT_BREAKER_WINDOW),
            open_for: b.duration("open_for")?.unwrap_or(DEFAULT_OPEN_FOR),
            half_open_probes: b
                .count("half_open_probes", 0, i64::from(u32::MAX))?
                .unwrap_or(1)
                .max(1),
        });
    }
    if let Some(f) = t.table("fallback")? {
        policy.fallback = Some(Fallback {
            status: f.count("status", 100, 599)?.map_or(200, |s| s as u16),
            headers: f
                .take_or_default::<std::collections::BTreeMap<String, String>>("headers")?
                .into_iter()
                .collect(),
            body: f.take_or_default("body")?,
        });
    }
    Ok(policy)
}
