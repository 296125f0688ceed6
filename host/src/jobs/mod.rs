//! The job trigger's source: runs of components' `wasi:cli/run` export on their
//! schedules, on demand (`wasmhive run`, the admin API) and once per message of their
//! `on_message` subjects, each through the invocation envelope (bulkhead, wake from
//! zero, metrics, the failure log) like every other invocation.
//!
//! - **A run** gets a fresh instance with its own argv (the component's name, then
//!   `args` or the run's own), the component's `env` plus the run's, its stdin, and its
//!   deadline (`job.timeout`, else `limits.timeout`). What it writes is kept (the last
//!   32 KiB of each stream) in its history entry and passed on as it is written to a
//!   follower ([`output`]).
//! - **History and claims** live in the key-value backend ([`history`]): every host of
//!   a lattice sees the same runs, and a scheduled tick runs once across the lattice:
//!   the host that moves the job's claimed tick forward (compare-and-swap) runs it.
//! - **Concurrency** (`forbid`, `allow`, `replace`) is decided per tick against the
//!   job's lease (the run in progress), lattice-wide.
//! - **Retries**: a scheduled run that exits non-zero, traps or runs out of time is run
//!   again after `backoff`, up to `attempts` runs in all. Message runs are retried by
//!   JetStream redelivery with the same numbers, then dead-lettered. Manual runs are
//!   not retried: their caller sees the exit code.
//! - **Missed ticks** (no host running the job at the time) are not caught up, unless
//!   `catch_up = true`: then a host starting the job runs the latest missed tick once.

pub mod history;
mod message;
pub mod output;
mod schedule;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::DeployedComponent;
use crate::bus::Bus;
use crate::capability::wasi::CommandIo;
use crate::envelope::{self, Admission, Call, Context, Failure};
use crate::runtime::{CommandRun, InvokeError, PreparedComponent};
use crate::scaler::{Permit, Shed};
use crate::state::KvStore;
use crate::telemetry::metrics::RequestMetrics;
use crate::telemetry::trace::TraceContext;
use crate::trigger::job::JobTrigger;
pub use history::{History, Outcome, RunRecord, RunTrigger};
pub use output::{Chunk, Output, Stream};

/// Added to a run's deadline for its lease.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The environment variable a message run finds its subject in.
pub const SUBJECT_ENV: &str = "WASMHIVE_SUBJECT";

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// What starts it.
    pub trigger: RunTrigger,
    /// argv after the program name (`None`: the job's `args`).
    pub args: Option<Vec<String>>,
    /// Variables added to the component's environment.
    pub env: Vec<(String, String)>,
    /// Its stdin.
    pub stdin: Bytes,
    /// The message's subject (trigger `message`).
    pub subject: Option<String>,
    /// The tick it runs for (trigger `schedule`), Unix milliseconds.
    pub tick_ms: Option<u64>,
    /// The tick was missed and is caught up.
    pub caught_up: bool,
}

impl RunRequest {
    fn of(trigger: RunTrigger) -> Self {
        RunRequest {
            trigger,
            args: None,
            env: Vec::new(),
            stdin: Bytes::new(),
            subject: None,
            tick_ms: None,
            caught_up: false,
        }
    }
}

/// A run started on this host.
pub struct Started {
    /// Its id.
    pub id: String,
    /// What it writes, from its start.
    pub follow: broadcast::Receiver<Chunk>,
    /// Its record once it has ended (dropped without one if the run's task failed).
    pub done: oneshot::Receiver<RunRecord>,
}

/// A run (or a tick's runs, retries included) going on this host, for stopping it.
struct LiveRun {
    app: String,
    component: String,
    cancel: CancellationToken,
    ended: tokio::sync::watch::Receiver<bool>,
}

/// One attempt of a run: its id, its output, what may stop it.
struct Attempt {
    id: String,
    number: u32,
    output: Arc<Output>,
    /// Stops this run (a parent token shared by a tick's attempts, for `replace`).
    cancel: CancellationToken,
    /// The end of the component version's triggers (undeploy, redeploy): a run still
    /// waiting for a slot then gives up. A run already going finishes.
    stop: Option<CancellationToken>,
    /// A slot the run holds already (message runs).
    permit: Option<Permit>,
    /// The lease of the tick it runs for, renewed once it has a slot.
    lease: Option<String>,
}

/// Labels of the run counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    app: String,
    component: String,
    trigger: &'static str,
    outcome: &'static str,
}

/// Labels of the per-job series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    app: String,
    component: String,
}

/// The jobs' metrics.
struct JobMetrics {
    runs: Family<RunLabels, Counter>,
    duration: Family<JobLabels, Histogram>,
    last_success: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            runs: Family::default(),
            // 10 ms .. ~3 h, quadrupling.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 4.0, 11))
            }),
            last_success: Family::default(),
        }
    }
}

/// The host's jobs: their runs here, their history, their metrics.
pub struct Jobs {
    kv: Option<Arc<dyn KvStore>>,
    /// This host's name, written in each run's record.
    host: String,
    /// This host process, unique: the owner of the leases it takes.
    owner: String,
    requests: Arc<RequestMetrics>,
    metrics: JobMetrics,
    /// Runs going here, by run id.
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    /// Ticks going here (their attempts and backoffs), by lease id.
    ticks: Mutex<HashMap<String, Arc<LiveRun>>>,
    /// Runs in progress (waited for at shutdown).
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Why a run could not be started or looked up.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The component does not export `wasi:cli/run`.
    #[error("{0} exports no wasi:cli/run: it cannot run as a job")]
    NotACommand(String),
    /// The host has no key-value backend for the history.
    #[error("this host keeps no job history (no key-value storage)")]
    NoStorage,
    /// The history could not be read or written.
    #[error("job history: {0}")]
    Storage(String),
}

fn millis(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Jobs {
    /// The jobs of this host (`host`: its name in run records).
    pub fn new(
        kv: Option<Arc<dyn KvStore>>,
        host: String,
        requests: Arc<RequestMetrics>,
    ) -> Arc<Self> {
        Arc::new(Jobs {
            kv,
            host,
            owner: format!("{:016x}", rand::random::<u64>()),
            requests,
            metrics: JobMetrics::default(),
            live: Mutex::default(),
            ticks: Mutex::default(),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Adds the job metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "wasmhive_job_runs",
            "Job runs ended, by component, trigger and outcome",
            self.metrics.runs.clone(),
        );
        registry.register(
            "wasmhive_job_duration_seconds",
            "How long job runs took, by component",
            self.metrics.duration.clone(),
        );
        registry.register(
            "wasmhive_job_last_success_timestamp_seconds",
            "When a run of the job last exited 0 on this host (Unix time)",
            self.metrics.last_success.clone(),
        );
    }

    /// The history of `app/component`.
    pub fn history(&self, app: &str, component: &str) -> Result<History, JobError> {
        let kv = self.kv.clone().ok_or(JobError::NoStorage)?;
        Ok(History::new(kv, app, component))
    }

    /// Waits (up to `timeout`) for the runs going on this host (retries and runs
    /// waiting for a slot give up at once), then stops the ones still going (recorded
    /// as `stopped`) and waits briefly for their records.
    pub async fn drain(&self, timeout: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let live: Vec<_> = lock(&self.live).values().cloned().collect();
            tracing::warn!(
                runs = live.len(),
                "job runs still going after the drain timeout; stopping them"
            );
            for run in live {
                run.cancel.cancel();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
    }

    /// Starts a run of `component` now (a manual run), on this host.
    pub async fn start_run(
        self: &Arc<Self>,
        component: Arc<DeployedComponent>,
        request: RunRequest,
    ) -> Result<Started, JobError> {
        if !crate::trigger::serves::<JobTrigger>(&component.exports) {
            return Err(JobError::NotACommand(component.id.to_string()));
        }
        let history = self.history(&component.id.app, &component.id.component)?;
        let id = history
            .new_id(history::now_ms(), component.spec.triggers.job.keep_runs)
            .await
            .map_err(|e| JobError::Storage(e.to_string()))?;
        let output = Arc::new(Output::default());
        let follow = output.follow();
        let (tx, done) = oneshot::channel();
        let this = self.clone();
        let attempt = Attempt {
            id: id.clone(),
            number: 1,
            output,
            cancel: CancellationToken::new(),
            stop: None,
            permit: None,
            lease: None,
        };
        self.tracker.spawn(async move {
            let record = this.execute(&component, &history, &request, attempt).await;
            let _ = tx.send(record);
        });
        Ok(Started { id, follow, done })
    }

    /// Stops the run `id` of `app/component` if it is going on this host; returns
    /// whether it was.
    pub fn stop_run(&self, app: &str, component: &str, id: &str) -> bool {
        match lock(&self.live).get(id) {
            Some(run) if run.app == app && run.component == component => {
                run.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Starts the schedule and the message runs of `component` (placed on this host),
    /// until `stop`. Fails if its `on_message` subscription cannot be made.
    pub async fn start(
        self: &Arc<Self>,
        component: Arc<DeployedComponent>,
        bus: Arc<dyn Bus>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let spec = &component.spec.triggers.job;
        if !spec.enabled {
            return Ok(());
        }
        let history = self.history(&component.id.app, &component.id.component)?;
        if !spec.on_message.is_empty() {
            self.clone()
                .subscribe(component.clone(), history.clone(), bus, stop.clone())
                .await?;
        }
        if spec.schedule.is_some() {
            tokio::spawn(self.clone().schedule_loop(component.clone(), history, stop));
        }
        Ok(())
    }

    fn new_record(
        &self,
        component: &DeployedComponent,
        request: &RunRequest,
        id: &str,
        attempt: u32,
    ) -> RunRecord {
        RunRecord {
            id: id.to_string(),
            app: component.id.app.to_string(),
            component: component.id.component.to_string(),
            version: component.id.version.to_string(),
            trigger: request.trigger,
            subject: request.subject.clone(),
            tick_ms: request.tick_ms,
            caught_up: request.caught_up,
            host: self.host.clone(),
            attempt,
            started_ms: history::now_ms(),
            duration_ms: None,
            outcome: Outcome::Running,
            exit_code: None,
            error: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    /// Waits for a slot for a scheduled or message run; `None` if the host stops
    /// meanwhile, or if the component's version ends (`stop`: a redeploy or undeploy)
    /// while the component is stopped, since nothing would start that version again. A
    /// version replaced while it is running keeps its capacity, so a run already
    /// waiting on it goes on, as requests in flight do.
    async fn admit(
        &self,
        component: &DeployedComponent,
        stop: Option<&CancellationToken>,
    ) -> Option<Permit> {
        let admit = component.scaler.admit_wait();
        tokio::pin!(admit);
        let mut ended = false;
        loop {
            let stopped = async {
                match stop {
                    Some(s) if !ended => s.cancelled().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                p = &mut admit => return Some(p),
                _ = self.shutdown.cancelled() => return None,
                _ = stopped => {
                    ended = true;
                    if component.scaler.is_stopped() {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs one attempt through the envelope and records it.
    async fn execute(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        request: &RunRequest,
        attempt: Attempt,
    ) -> RunRecord {
        let spec = &component.spec.triggers.job;
        let id = attempt.id.clone();
        let mut record = self.new_record(component, request, &id, attempt.number);
        if let Err(e) = history.put(&record).await {
            tracing::warn!(component = %component.id, run = %id, error = %e, "cannot record the run's start");
        }
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        lock(&self.live).insert(
            id.clone(),
            Arc::new(LiveRun {
                app: record.app.clone(),
                component: record.component.clone(),
                cancel: attempt.cancel.clone(),
                ended,
            }),
        );
        let timeout = spec.timeout.unwrap_or(component.timeout);
        // Manual runs answer at once when the component cannot take them; scheduled
        // and message runs wait for a slot, as messages do.
        let admission = match (attempt.permit, request.trigger) {
            (Some(p), _) => Some(Admission::Admitted(p)),
            (None, RunTrigger::Manual) => Some(Admission::Admit),
            (None, _) => self
                .admit(component, attempt.stop.as_ref())
                .await
                .map(Admission::Admitted),
        };
        let started = std::time::Instant::now();
        let result = match admission {
            None => Err(Failure::Invoke(InvokeError::Cancelled(
                "the job was undeployed, redeployed or the host stopped before the run got a slot"
                    .into(),
            ))),
            Some(admission) => {
                if let Some(lease) = &attempt.lease {
                    // The lease covers the run from now, not from the tick.
                    let until = history::now_ms()
                        .saturating_add(timeout.as_millis() as u64)
                        .saturating_add(LEASE_MARGIN.as_millis() as u64);
                    if let Err(e) = history.renew_lease(lease, until).await {
                        tracing::warn!(component = %component.id, error = %e, "cannot renew the job's lease");
                    }
                }
                let mut args = vec![component.id.component.to_string()];
                args.extend(request.args.clone().unwrap_or_else(|| spec.args.clone()));
                let mut env = request.env.clone();
                if let Some(subject) = &request.subject {
                    env.push((SUBJECT_ENV.to_string(), subject.clone()));
                }
                let io = CommandIo {
                    args,
                    env,
                    stdin: request.stdin.clone(),
                    stdout: attempt.output.sink(Stream::Stdout),
                    stderr: attempt.output.sink(Stream::Stderr),
                };
                let trace = TraceContext::for_invocation(None);
                let call = JobCall(CommandRun {
                    io: Arc::new(io),
                    timeout: Some(timeout),
                    cancel: attempt.cancel.clone(),
                    traceparent: Some(trace.header_value()),
                });
                let what = format!("run {id}");
                let cx = Context {
                    component,
                    metrics: &self.requests,
                    trace: &trace,
                    what: &what,
                };
                envelope::invoke(cx, admission, call).await
            }
        };
        record.duration_ms = Some(started.elapsed().as_millis() as u64);
        match result {
            Ok(code) => {
                record.outcome = Outcome::Exit;
                record.exit_code = Some(code);
            }
            Err(e) => {
                record.outcome = match &e {
                    Failure::Invoke(InvokeError::Timeout(_)) => Outcome::Timeout,
                    Failure::Invoke(InvokeError::Cancelled(_)) => Outcome::Stopped,
                    Failure::Invoke(InvokeError::Trap(_) | InvokeError::MemoryLimit { .. }) => {
                        Outcome::Trap
                    }
                    _ => Outcome::Failed,
                };
                record.error = Some(match &e {
                    Failure::Shed(Shed::Stopped) => "the component is stopped".to_string(),
                    Failure::Invoke(InvokeError::Cancelled(why)) => why.clone(),
                    other => brief(&other.to_string()),
                });
            }
        }
        let (stdout, stderr) = attempt.output.tails();
        record.set_output(&stdout, &stderr);
        if let Err(e) = history.put(&record).await {
            tracing::warn!(component = %component.id, run = %id, error = %e, "cannot record the run");
        }
        self.count(&record);
        lock(&self.live).remove(&id);
        let _ = ended_tx.send(true);
        tracing::info!(
            component = %component.id,
            run = %id,
            trigger = record.trigger.as_str(),
            outcome = record.outcome.as_str(),
            exit_code = ?record.exit_code,
            duration_ms = ?record.duration_ms,
            "job run ended"
        );
        record
    }

    fn count(&self, record: &RunRecord) {
        let job = JobLabels {
            app: record.app.clone(),
            component: record.component.clone(),
        };
        self.metrics
            .runs
            .get_or_create(&RunLabels {
                app: record.app.clone(),
                component: record.component.clone(),
                trigger: record.trigger.as_str(),
                outcome: if record.succeeded() {
                    "success"
                } else {
                    record.outcome.as_str()
                },
            })
            .inc();
        if let Some(ms) = record.duration_ms
            && record.outcome != Outcome::Skipped
        {
            self.metrics
                .duration
                .get_or_create(&job)
                .observe(ms as f64 / 1000.0);
        }
        if record.succeeded() {
            let end = record.started_ms + record.duration_ms.unwrap_or(0);
            self.metrics
                .last_success
                .get_or_create(&job)
                .set(end as f64 / 1000.0);
        }
    }
}

/// An error without the wasm backtrace wasmtime puts in a trap's message (the host
/// log has it): `guest trapped: wasm trap: wasm `unreachable` instruction executed`.
fn brief(error: &str) -> String {
    let Some((head, _)) = error.split_once("error while executing at wasm backtrace:") else {
        return error.to_string();
    };
    let last = error.lines().last().unwrap_or_default();
    let reason = last.rsplit_once(">: ").map_or(last, |(_, r)| r).trim();
    format!("{}{reason}", head.trim_end()).replace(":wasm", ": wasm")
}

/// How a run ended, in words.
pub fn describe(record: &RunRecord) -> String {
    match record.outcome {
        Outcome::Exit => format!("exit code {}", record.exit_code.unwrap_or(1)),
        Outcome::Running => "running".into(),
        other => match &record.error {
            Some(e) => format!("{}: {e}", other.as_str()),
            None => other.as_str().into(),
        },
    }
}

/// A call of the component's `wasi:cli/run`.
struct JobCall(CommandRun);

impl Call for JobCall {
    type Trigger = JobTrigger;
    type Output = i32;

    async fn call(self, prepared: PreparedComponent, permit: Permit) -> Result<i32, InvokeError> {
        prepared.run_command(self.0, permit).await
    }

    fn status(code: &i32) -> u16 {
        if *code == 0 { 200 } else { 500 }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trap_messages_lose_their_backtrace() {
        let e = "guest trapped: error while executing at wasm backtrace:\n    0:   0xb6ac - <unknown>!<wasm function 228>\n   16:   0x136c - <unknown>!<wasm function 31>: wasm trap: wasm `unreachable` instruction executed";
        assert_eq!(
            super::brief(e),
            "guest trapped: wasm trap: wasm `unreachable` instruction executed"
        );
        assert_eq!(
            super::brief("deadline of 1s exceeded"),
            "deadline of 1s exceeded"
        );
    }
}
