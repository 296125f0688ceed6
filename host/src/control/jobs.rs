//! Jobs through the control plane: `wasmhive run` (start a run, follow its output),
//! `wasmhive jobs` (each job's schedule, next run and last runs) and `wasmhive jobs
//! logs RUN_ID` (a finished run's output).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{ControlPlane, DeployError};
use crate::jobs::{JobError, RunRecord, RunRequest, RunTrigger, Started};

/// Runs listed per job by `wasmhive jobs`.
pub const LISTED_RUNS: usize = 10;
/// Runs listed at most by `GET …/runs`.
pub const MAX_LISTED_RUNS: usize = 1000;
/// Largest stdin a run request may carry (the admin API's request limit bounds it).
pub const MAX_STDIN: usize = 1 << 20;

/// `POST /v1/apps/{app}/components/{c}/runs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunBody {
    /// argv after the program name (`None`: the job's `args`).
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Variables added to the component's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its stdin, base64.
    #[serde(default)]
    pub stdin: String,
}

/// One job in `wasmhive jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    /// App.
    pub app: String,
    /// Component.
    pub component: String,
    /// Its schedule as written (none: on demand or per message only).
    pub schedule: Option<String>,
    /// The zone the schedule is read in.
    pub timezone: String,
    /// The next tick, Unix milliseconds.
    pub next_run_ms: Option<u64>,
    /// Subjects that start runs.
    pub on_message: Vec<String>,
    /// `forbid`, `allow` or `replace`.
    pub concurrency: String,
    /// Whether this host runs its ticks (a lattice places it on some hosts).
    pub placed_here: bool,
    /// The latest runs, newest first, without output.
    pub runs: Vec<RunRecord>,
    /// Why the history could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
}

/// `wasmhive jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    /// The jobs, by app and component.
    pub jobs: Vec<JobStatus>,
}

fn job_error(e: JobError) -> DeployError {
    match e {
        JobError::NotACommand(_) => DeployError::Missing(e.to_string()),
        JobError::NoStorage | JobError::Storage(_) => DeployError::Storage(e.to_string()),
    }
}

fn storage(e: impl std::fmt::Display) -> DeployError {
    DeployError::Storage(e.to_string())
}

impl ControlPlane {
    /// The host's jobs.
    pub fn jobs(&self) -> &Arc<crate::jobs::Jobs> {
        &self.jobs
    }

    /// Starts a run of `app/component` on this host.
    pub async fn start_run(
        &self,
        app: &str,
        component: &str,
        body: RunBody,
    ) -> Result<Started, DeployError> {
        let c = self.component(app, component)?;
        let stdin = base64::engine::general_purpose::STANDARD
            .decode(body.stdin.as_bytes())
            .map_err(|e| DeployError::Invalid(format!("stdin is not base64: {e}")))?;
        if stdin.len() > MAX_STDIN {
            return Err(DeployError::Invalid(format!(
                "stdin is limited to {MAX_STDIN} bytes"
            )));
        }
        for name in body.env.keys() {
            if name.is_empty()
                || name.starts_with(|c: char| c.is_ascii_digit())
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(DeployError::Invalid(format!(
                    "invalid environment variable name {name:?}"
                )));
            }
        }
        let request = RunRequest {
            trigger: RunTrigger::Manual,
            args: body.args,
            env: body.env.into_iter().collect(),
            stdin: stdin.into(),
            subject: None,
            tick_ms: None,
            caught_up: false,
        };
        self.jobs.start_run(c, request).await.map_err(job_error)
    }

    /// The runs of `app/component`, newest first (at most `limit`).
    pub async fn runs(
        &self,
        app: &str,
        component: &str,
        limit: usize,
    ) -> Result<Vec<RunRecord>, DeployError> {
        let c = self.component(app, component)?;
        let history = self.jobs.history(app, component).map_err(job_error)?;
        history
            .list(c.spec.triggers.job.keep_runs, limit.min(MAX_LISTED_RUNS))
            .await
            .map_err(storage)
    }

    /// The run `id` of `app/component`, with its output.
    pub async fn run(
        &self,
        app: &str,
        component: &str,
        id: &str,
    ) -> Result<RunRecord, DeployError> {
        self.component(app, component)?;
        let history = self.jobs.history(app, component).map_err(job_error)?;
        history
            .get(id)
            .await
            .map_err(storage)?
            .ok_or_else(|| DeployError::Missing(format!("no run {id} of {app}/{component}")))
    }

    /// The run `id` of any deployed job, with its output.
    pub async fn find_run(&self, id: &str) -> Result<RunRecord, DeployError> {
        for c in self.apps.snapshot().components() {
            if !crate::trigger::serves::<crate::trigger::job::JobTrigger>(&c.exports) {
                continue;
            }
            let history = self
                .jobs
                .history(&c.id.app, &c.id.component)
                .map_err(job_error)?;
            if let Some(r) = history.get(id).await.map_err(storage)? {
                return Ok(r);
            }
        }
        Err(DeployError::Missing(format!(
            "no run {id} among the deployed jobs' histories"
        )))
    }

    /// Stops run `id` of `app/component` if it is going on this host.
    pub fn stop_run(&self, app: &str, component: &str, id: &str) -> Result<bool, DeployError> {
        self.component(app, component)?;
        Ok(self.jobs.stop_run(app, component, id))
    }

    /// Every job (a component with a `[job]` section or a `wasi:cli/run` export) of
    /// `app` (all apps: `None`), with its latest runs.
    pub async fn job_list(&self, app: Option<&str>) -> Result<JobList, DeployError> {
        let snapshot = self.apps.snapshot();
        if let Some(app) = app
            && !snapshot.apps.contains_key(app)
        {
            return Err(DeployError::NotFound(app.to_string()));
        }
        let now = chrono::Utc::now();
        let mut jobs = Vec::new();
        for c in snapshot.components() {
            if app.is_some_and(|a| a != &*c.id.app)
                || !crate::trigger::serves::<crate::trigger::job::JobTrigger>(&c.exports)
            {
                continue;
            }
            let spec = &c.spec.triggers.job;
            let (runs, history_error) = match self.jobs.history(&c.id.app, &c.id.component) {
                Ok(h) => match h.list(spec.keep_runs, LISTED_RUNS).await {
                    Ok(r) => (r, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                },
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            jobs.push(JobStatus {
                app: c.id.app.to_string(),
                component: c.id.component.to_string(),
                schedule: spec.schedule.as_ref().map(|s| s.to_string()),
                timezone: spec.timezone.0.name().to_string(),
                next_run_ms: spec
                    .next_tick(now)
                    .map(|t| t.timestamp_millis().max(0) as u64),
                on_message: spec.on_message.clone(),
                concurrency: spec.concurrency.as_str().to_string(),
                placed_here: c.placement.here(),
                runs,
                history_error,
            });
        }
        Ok(JobList { jobs })
    }
}

/// A Unix-millisecond time as `YYYY-MM-DD HH:MM:SS` UTC.
fn utc(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns.
fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(indent);
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

impl JobList {
    /// A human-readable listing: one line per job, then its latest runs.
    pub fn render(&self) -> String {
        if self.jobs.is_empty() {
            return "no jobs deployed (a component with a [job] section or a wasi:cli/run export)\n".into();
        }
        let mut out = String::new();
        for job in &self.jobs {
            let when = match (&job.schedule, job.on_message.is_empty()) {
                (Some(s), _) if job.timezone != "UTC" => format!("{s} ({})", job.timezone),
                (Some(s), _) => s.clone(),
                (None, false) => format!("on message {}", job.on_message.join(", ")),
                (None, true) => "on demand".into(),
            };
            let header = vec![
                vec![
                    "APP".to_string(),
                    "COMPONENT".into(),
                    "SCHEDULE".into(),
                    "NEXT RUN (UTC)".into(),
                    "CONCURRENCY".into(),
                ],
                vec![
                    job.app.clone(),
                    job.component.clone(),
                    when,
                    job.next_run_ms.map(utc).unwrap_or_else(|| "-".into()),
                    job.concurrency.clone(),
                ],
            ];
            out.push_str(&columns(&header, ""));
            if let Some(e) = &job.history_error {
                out.push_str(&format!("  history unavailable: {e}\n"));
            } else if job.runs.is_empty() {
                out.push_str("  no runs yet\n");
            } else {
                let mut rows = vec![vec![
                    "RUN".to_string(),
                    "TRIGGER".into(),
                    "STARTED (UTC)".into(),
                    "DURATION".into(),
                    "RESULT".into(),
                    "OUTPUT".into(),
                ]];
                for r in &job.runs {
                    rows.push(vec![
                        r.id.clone(),
                        r.trigger.as_str().into(),
                        utc(r.started_ms),
                        r.duration_ms
                            .map(|d| format!("{:.2}s", d as f64 / 1000.0))
                            .unwrap_or_else(|| "-".into()),
                        crate::jobs::describe(r),
                        format!("{} B", r.stdout_bytes + r.stderr_bytes),
                    ]);
                }
                out.push_str(&columns(&rows, "  "));
            }
            out.push('\n');
        }
        out
    }
}
