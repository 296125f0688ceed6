//! `[rollout]`: how a new version of the app takes over.
//!
//! - `strategy = "immediate"` (the default): the atomic swap of every deploy.
//! - `strategy = "canary"`: the new version is loaded beside the old and gets `steps`
//!   of the HTTP traffic in turn (`["5%", "25%", "50%"]`, then 100%); after each
//!   `step_interval` the host analyses the step (at least `min_requests` requests to
//!   the new version, at most `max_error_rate` of them failed: 5xx, traps, timeouts)
//!   and promotes it to the next step, or aborts (all traffic back to the old version);
//!   `max_p99` adds a latency gate; `sticky` keeps one caller on one version.
//! - `strategy = "blue-green"`: the new version is loaded beside the old and reached
//!   only by requests whose `preview_header` says its version, until `wasmhive promote`.

use std::time::Duration;

use crate::section::{ManifestError, Table};

/// How a new version takes over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// All at once (the default).
    #[default]
    Immediate,
    /// In weighted steps, analysed.
    Canary,
    /// Beside the old version, by preview header, until promoted.
    BlueGreen,
}

impl Strategy {
    /// Parses `immediate`, `canary` or `blue-green`.
    pub fn parse(text: &str) -> Result<Strategy, String> {
        match text {
            "immediate" => Ok(Strategy::Immediate),
            "canary" => Ok(Strategy::Canary),
            "blue-green" => Ok(Strategy::BlueGreen),
            _ => Err("expected \"immediate\", \"canary\" or \"blue-green\"".into()),
        }
    }

    /// Its name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Immediate => "immediate",
            Strategy::Canary => "canary",
            Strategy::BlueGreen => "blue-green",
        }
    }
}

/// `[rollout]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    /// The strategy.
    pub strategy: Strategy,
    /// Canary: the new version's share of requests at each step, in per-mille.
    pub steps: Vec<u32>,
    /// Canary: time at each step before it is analysed.
    pub step_interval: Duration,
    /// Canary: requests to the new version a step needs before it can be promoted.
    pub min_requests: u64,
    /// Canary: the largest share of failed requests (per-mille) a step may have.
    pub max_error_rate: u32,
    /// The header whose value, equal to the new version's, sends a request to it.
    pub preview_header: String,
    /// Keeps one caller on one version within a step.
    pub sticky: Option<Sticky>,
    /// Canary: the largest p99 latency a step may have (none: not checked).
    pub max_p99: Option<Duration>,
}

/// What identifies a caller for sticky routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The verified caller (`wasmhive-auth-subject`), else the client's address.
    Subject,
    /// A request header's value (lowercase name), else the client's address.
    Header(String),
    /// The client's address.
    ClientIp,
}

impl Sticky {
    fn parse(text: &str) -> Result<Sticky, String> {
        match text {
            "subject" => Ok(Sticky::Subject),
            "client_ip" => Ok(Sticky::ClientIp),
            _ => match text.strip_prefix("header:") {
                Some(h) => http::HeaderName::from_bytes(h.as_bytes())
                    .map(|n| Sticky::Header(n.as_str().to_string()))
                    .map_err(|_| format!("{h:?} is not a header name")),
                None => Err("expected \"subject\", \"client_ip\" or \"header:NAME\"".into()),
            },
        }
    }
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: Strategy::Immediate,
            steps: vec![50, 250, 500],
            step_interval: Duration::from_secs(30),
            min_requests: 50,
            max_error_rate: 10,
            preview_header: "x-preview".into(),
            sticky: None,
            max_p99: None,
        }
    }
}

/// `"5%"` or `"0.5%"` as per-mille (5% → 50).
fn percent(text: &str) -> Result<u32, String> {
    let n = text
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| (0.0..=100.0).contains(n))
        .ok_or_else(|| format!("expected a percentage such as \"5%\", found {text:?}"))?;
    Ok((n * 10.0).round() as u32)
}

/// Reads `[rollout]` (absent: immediate).
pub fn read(doc: &mut Table<'_>) -> Result<RolloutSpec, ManifestError> {
    let Some(t) = doc.table("rollout")? else {
        return Ok(RolloutSpec::default());
    };
    let defaults = RolloutSpec::default();
    let span = t.span();
    let spec = RolloutSpec {
        strategy: t.parsed("strategy", Strategy::parse)?.unwrap_or_default(),
        steps: {
            let steps = t.list("steps", |s| {
                percent(s).and_then(|p| {
                    if p == 0 || p >= 1000 {
                        Err("a step is more than 0% and less than 100%".into())
                    } else {
                        Ok(p)
                    }
                })
            })?;
            if steps.is_empty() {
                defaults.steps
            } else {
                steps
            }
        },
        step_interval: t
            .duration("step_interval")?
            .unwrap_or(defaults.step_interval),
        min_requests: u64::from(t.count("min_requests", 0, 1_000_000)?.unwrap_or(50)),
        max_error_rate: t
            .parsed("max_error_rate", percent)?
            .unwrap_or(defaults.max_error_rate),
        preview_header: t
            .parsed("preview_header", |h| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .map(|n| n.as_str().to_string())
                    .map_err(|_| format!("{h:?} is not a header name"))
            })?
            .unwrap_or(defaults.preview_header),
        sticky: t.parsed("sticky", Sticky::parse)?,
        max_p99: t.duration("max_p99")?,
    };
    if spec.steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(t.invalid(span, "steps", "steps must grow"));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentages_are_per_mille() {
        assert_eq!(super::percent("5%"), Ok(50));
        assert_eq!(super::percent("0.5%"), Ok(5));
        assert!(super::percent("5").is_err());
        assert!(super::percent("150%").is_err());
    }
}
