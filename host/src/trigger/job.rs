//! The job trigger: runs of a component's `wasi:cli/run` export, on a schedule, on
//! demand (`wasmhive run`) and once per message.
//!
//! Manifest (`[components.NAME.job]`): `schedule` (a cron expression with seconds,
//! `"0 0 7 * * *"`, or `"@every 30s"`), `timezone` (IANA name, default `UTC`), `args`
//! (argv after the program name), `on_message` (subjects: one run per message, the
//! body on stdin and the subject in `WASMHIVE_SUBJECT`), `concurrency` (`forbid`,
//! `allow`, `replace`), `timeout` (the run's deadline; `limits.timeout` otherwise),
//! `retries = { attempts, backoff }`, `keep_runs` (history kept) and `catch_up` (run
//! one missed tick at start). The section's presence makes the component a job: it
//! must then export `wasi:cli/run@0.2.x`. The source of its invocations is
//! `crate::jobs`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::Trigger;
use crate::capability;
use crate::section::{ManifestError, Table};

/// The trigger.
pub struct JobTrigger;

/// When a scheduled job runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression with seconds, as written.
    Cron(Box<cron::Schedule>),
    /// Every so long, on multiples of the period since the Unix epoch (so every host
    /// of a lattice computes the same ticks).
    Every(Duration),
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Schedule::Cron(a), Schedule::Cron(b)) => a.source() == b.source(),
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Schedule {}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Cron(c) => f.write_str(c.source()),
            Schedule::Every(d) => write!(f, "@every {}", humantime::format_duration(*d)),
        }
    }
}

/// Shortest `@every` period.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl Schedule {
    /// Parses `"@every 30s"` or a cron expression with seconds (6 or 7 fields, or a
    /// shorthand such as `@daily`).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Some(period) = text.strip_prefix("@every") {
            let d = crate::section::parse_duration(period)?;
            if d < MIN_EVERY || d.subsec_millis() != 0 && d < Duration::from_secs(60) {
                return Err(format!(
                    "@every needs a period of at least {MIN_EVERY:?} in whole seconds below a minute"
                ));
            }
            return Ok(Schedule::Every(d));
        }
        cron::Schedule::from_str(text)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| {
                // The crate's message repeats the expression with a caret under it.
                let e = e.to_string();
                let e = e.lines().last().unwrap_or_default().trim().to_string();
                format!(
                    "invalid cron expression {text:?} ({e}); write six fields with seconds first, \
                     e.g. \"0 0 7 * * *\" (07:00:00 daily), or \"@every 30s\""
                )
            })
    }

    /// The first tick strictly after `after`, in `tz` (cron) or on the epoch grid.
    pub fn next_after(&self, after: DateTime<Utc>, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(c) => c
                .after(&after.with_timezone(&tz))
                .next()
                .map(|t| t.with_timezone(&Utc)),
            Schedule::Every(d) => {
                let period = d.as_millis().max(1) as i64;
                let now = after.timestamp_millis();
                let next = (now.div_euclid(period) + 1) * period;
                Utc.timestamp_millis_opt(next).single()
            }
        }
    }
}

/// What a tick does while a run of the job is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// Skip the tick (recorded in the history as skipped).
    #[default]
    Forbid,
    /// Start another run beside it.
    Allow,
    /// Stop the running one, then start.
    Replace,
}

impl Concurrency {
    fn parse(text: &str) -> Result<Concurrency, String> {
        match text {
            "forbid" => Ok(Concurrency::Forbid),
            "allow" => Ok(Concurrency::Allow),
            "replace" => Ok(Concurrency::Replace),
            _ => Err("expected \"forbid\", \"allow\" or \"replace\"".into()),
        }
    }

    /// Its name in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Forbid => "forbid",
            Concurrency::Allow => "allow",
            Concurrency::Replace => "replace",
        }
    }
}

/// Retries of a failed run (non-zero exit or trap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retries {
    /// Runs in all, the first included (1: no retry).
    pub attempts: u32,
    /// Wait between attempts.
    pub backoff: Duration,
}

/// Runs kept per job when `keep_runs` is not set.
pub const DEFAULT_KEEP_RUNS: u32 = 50;
/// The most `keep_runs` may say.
pub const MAX_KEEP_RUNS: u32 = 1000;

/// The `[job]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSpec {
    /// The section is present: the component runs as a job.
    pub enabled: bool,
    /// When it runs by itself, if at all.
    pub schedule: Option<Schedule>,
    /// The time zone cron expressions are read in.
    pub timezone: Tz,
    /// argv after the program name.
    pub args: Vec<String>,
    /// Subjects whose messages each start one run.
    pub on_message: Vec<String>,
    /// What a tick does while a run is going.
    pub concurrency: Concurrency,
    /// The run's deadline (the component's `limits.timeout` otherwise).
    pub timeout: Option<Duration>,
    /// Retries after a non-zero exit or a trap.
    pub retries: Retries,
    /// Runs kept in the history.
    pub keep_runs: u32,
    /// At start, run once if a tick was missed while no host ran the job.
    pub catch_up: bool,
}

/// An IANA time zone (default UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tz(pub chrono_tz::Tz);

impl Default for Tz {
    fn default() -> Self {
        Tz(chrono_tz::UTC)
    }
}

impl JobSpec {
    /// The first tick after `after`, if the job has a schedule.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.as_ref()?.next_after(after, self.timezone.0)
    }
}

/// The longest `job.timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest `retries.backoff`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// A duration of at most `max`.
fn bounded(
    t: &mut Table<'_>,
    key: &'static str,
    max: Duration,
) -> Result<Option<Duration>, ManifestError> {
    t.parsed(key, |text| {
        let d = crate::section::parse_duration(text)?;
        if d > max {
            return Err(format!("at most {}", humantime::format_duration(max)));
        }
        Ok(d)
    })
}

fn retries(job: &mut Table<'_>) -> Result<Retries, ManifestError> {
    let Some(r) = job.table("retries")? else {
        return Ok(Retries {
            attempts: 1,
            backoff: Duration::ZERO,
        });
    };
    let attempts = r.count("attempts", 1, 100)?.unwrap_or(1);
    let backoff = bounded(r, "backoff", MAX_BACKOFF)?.unwrap_or(Duration::from_secs(1));
    Ok(Retries { attempts, backoff })
}

impl Trigger for JobTrigger {
    const NAME: &'static str = "job";
    const EXPORTS: &'static [&'static str] = &["wasi:cli/run@0.2"];
    const HANDLER: &'static str = "command (wasi:cli/run@0.2.x)";
    const FAILED: &'static str = "job run failed";
    const TAG: &'static str = "job";
    type Spec = JobSpec;

    fn spec(component: &mut Table<'_>) -> Result<JobSpec, ManifestError> {
        let Some(job) = component.table("job")? else {
            return Ok(JobSpec::default());
        };
        let spec = JobSpec {
            enabled: true,
            schedule: job.parsed("schedule", Schedule::parse)?,
            timezone: job
                .parsed("timezone", |t| {
                    chrono_tz::Tz::from_str(t).map(Tz).map_err(|_| {
                        format!("unknown time zone {t:?}: use an IANA name such as \"UTC\" or \"Europe/Berlin\"")
                    })
                })?
                .unwrap_or_default(),
            args: job.take_or_default("args")?,
            on_message: job.list("on_message", capability::messaging::subject_pattern)?,
            concurrency: job
                .parsed("concurrency", Concurrency::parse)?
                .unwrap_or_default(),
            timeout: bounded(job, "timeout", MAX_TIMEOUT)?,
            retries: retries(job)?,
            keep_runs: job
                .count("keep_runs", 1, MAX_KEEP_RUNS as i64)?
                .unwrap_or(DEFAULT_KEEP_RUNS),
            catch_up: job.take("catch_up")?.unwrap_or(false),
        };
        if spec.catch_up && spec.schedule.is_none() {
            return Err(job.invalid(job.span(), "catch_up", "catch_up needs a schedule"));
        }
        Ok(spec)
    }

    fn wanted(spec: &JobSpec, _caps: &capability::Specs) -> Option<&'static str> {
        spec.enabled.then_some("job is set")
    }

    fn describe(spec: &JobSpec, _caps: &capability::Specs) -> Option<String> {
        if !spec.enabled {
            return None;
        }
        let mut parts = Vec::new();
        if let Some(s) = &spec.schedule {
            let tz = spec.timezone.0;
            parts.push(if tz == chrono_tz::UTC {
                format!("schedule {s}")
            } else {
                format!("schedule {s} ({tz})")
            });
        }
        if !spec.on_message.is_empty() {
            parts.push(format!("on message {}", spec.on_message.join(", ")));
        }
        if parts.is_empty() {
            parts.push("on demand".into());
        }
        Some(format!("job: {}", parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_with_seconds_in_a_time_zone() {
        let s = Schedule::parse("0 0 7 * * *").unwrap();
        let next = s
            .next_after(at("2026-12-08T06:59:59Z"), chrono_tz::UTC)
            .unwrap();
        assert_eq!(next, at("2026-12-08T07:00:00Z"));
        // 07:00 in Berlin is 06:00 UTC in winter.
        let next = s
            .next_after(at("2026-12-08T05:00:00Z"), chrono_tz::Europe::Berlin)
            .unwrap();
        assert_eq!(next, at("2026-12-08T06:00:00Z"));
    }

    #[test]
    fn every_is_on_the_epoch_grid() {
        let s = Schedule::parse("@every 30s").unwrap();
        assert_eq!(
            s.next_after(at("2026-12-08T00:00:10Z"), chrono_tz::UTC),
            Some(at("2026-12-08T00:00:30Z"))
        );
        assert_eq!(
            s.next_after(at("2026-12-08T00:00:30Z"), chrono_tz::UTC),
            Some(at("2026-12-08T00:01:00Z"))
        );
        assert_eq!(s.to_string(), "@every 30s");
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        let e = Schedule::parse("every day").unwrap_err();
        assert!(e.contains("six fields"), "{e}");
        let e = Schedule::parse("@every 0s").unwrap_err();
        assert!(e.contains("duration") || e.contains("@every"), "{e}");
        let e = Schedule::parse("@every 1500ms").unwrap_err();
        assert!(e.contains("whole seconds"), "{e}");
    }
}
