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
pub mod output;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
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
use crate::trigger::job::{Concurrency, JobTrigger};
pub use history::{History, Outcome, RunRecord, RunTrigger};
pub use output::{Chunk, Output, Stream};

/// How long a `replace` tick waits for the run it stopped to end.
const REPLACE_WAIT: Duration = Duration::from_secs(30);

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
    /// Its record once it has ended.
    pub done: oneshot::Receiver<RunRecord>,
}

/// A run going on this host.
struct LiveRun {
    cancel: CancellationToken,
    ended: tokio::sync::watch::Receiver<bool>,
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
    requests: Arc<RequestMetrics>,
    metrics: JobMetrics,
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
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
            requests,
            metrics: JobMetrics::default(),
            live: Mutex::default(),
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

    /// Waits (up to `timeout`) for the runs going on this host (retries wait no
    /// more), then stops the ones
    /// still going (recorded as `stopped`) and waits for their records.
    pub async fn drain(&self, timeout: Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let live: Vec<_> = self
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
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
    pub fn start_run(
        self: &Arc<Self>,
        component: Arc<DeployedComponent>,
        request: RunRequest,
    ) -> Result<Started, JobError> {
        if !crate::trigger::serves::<JobTrigger>(&component.exports) {
            return Err(JobError::NotACommand(component.id.to_string()));
        }
        let history = self.history(&component.id.app, &component.id.component)?;
        let id = history::new_id(history::now_ms());
        let output = Arc::new(Output::default());
        let follow = output.follow();
        let (tx, done) = oneshot::channel();
        let this = self.clone();
        let run_id = id.clone();
        self.tracker.spawn(async move {
            let record = this
                .execute(&component, &history, &request, run_id, output, 1)
                .await;
            let _ = tx.send(record);
        });
        Ok(Started { id, follow, done })
    }

    /// Stops the run `id` if it is going on this host; returns whether it was.
    pub fn stop_run(&self, id: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(id) {
            Some(run) => {
                run.cancel.cancel();
                true
            }
            None => false,
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

    /// Runs `component`'s ticks until `stop`.
    async fn schedule_loop(
        self: Arc<Self>,
        component: Arc<DeployedComponent>,
        history: History,
        stop: CancellationToken,
    ) {
        let spec = &component.spec.triggers.job;
        if spec.catch_up {
            self.catch_up(&component, &history).await;
        }
        let mut after = Utc::now();
        loop {
            let Some(next) = spec.next_tick(after) else {
                tracing::info!(component = %component.id, "the job's schedule has no more ticks");
                return;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            after = next;
            if component.scaler.is_stopped() {
                continue;
            }
            match history.claim_tick(millis(next)).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(component = %component.id, error = %e, "cannot claim the job's tick; skipping it");
                    continue;
                }
            }
            let (this, c, h) = (self.clone(), component.clone(), history.clone());
            self.tracker
                .spawn(async move { this.tick(&c, &h, (millis(next), false)).await });
        }
    }

    /// Runs the latest tick missed since the last one claimed, once.
    async fn catch_up(&self, component: &Arc<DeployedComponent>, history: &History) {
        let spec = &component.spec.triggers.job;
        let Ok(Some(last)) = history.last_tick().await else {
            return;
        };
        let Some(last) = Utc.timestamp_millis_opt(last as i64).single() else {
            return;
        };
        let now = Utc::now();
        let mut missed = None;
        let mut t = last;
        // The latest tick before now, bounded in steps.
        for _ in 0..100_000 {
            match spec.next_tick(t) {
                Some(n) if n <= now => {
                    missed = Some(n);
                    t = n;
                }
                _ => break,
            }
        }
        let Some(missed) = missed else { return };
        if let Ok(true) = history.claim_tick(millis(missed)).await {
            tracing::info!(component = %component.id, tick = %missed, "catching up a missed tick");
            self.tick(component, history, (millis(missed), true)).await;
        }
    }

    /// One claimed tick: decides by the job's concurrency, then runs (with retries).
    async fn tick(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        (tick_ms, caught_up): (u64, bool),
    ) {
        let spec = &component.spec.triggers.job;
        let request = RunRequest {
            tick_ms: Some(tick_ms),
            caught_up,
            ..RunRequest::of(RunTrigger::Schedule)
        };
        let id = history::new_id(history::now_ms());
        if spec.concurrency != Concurrency::Allow {
            match history.lease().await {
                Ok(Some(lease)) if spec.concurrency == Concurrency::Forbid => {
                    tracing::info!(component = %component.id, running = %lease.run, "tick skipped: a run is still going (concurrency = \"forbid\")");
                    self.record_skipped(component, (history, &request), &id, &lease.run)
                        .await;
                    return;
                }
                Ok(Some(lease)) => {
                    // replace
                    if lease.host == self.host {
                        self.stop_and_wait(&lease.run).await;
                    } else {
                        tracing::warn!(component = %component.id, running = %lease.run, host = %lease.host, "the run to replace is on another host; starting beside it");
                    }
                    let _ = history.release_lease(&lease.run).await;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(component = %component.id, error = %e, "cannot read the job's lease; running the tick");
                }
            }
            let retries = spec.retries;
            let timeout = spec.timeout.unwrap_or(component.timeout);
            let budget = (timeout + retries.backoff) * retries.attempts + Duration::from_secs(5);
            let lease = history::Lease {
                run: id.clone(),
                host: self.host.clone(),
                until_ms: history::now_ms() + budget.as_millis() as u64,
            };
            match history.take_lease(&lease).await {
                Ok(true) => {}
                Ok(false) if spec.concurrency == Concurrency::Forbid => {
                    self.record_skipped(component, (history, &request), &id, "another run")
                        .await;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(component = %component.id, error = %e, "cannot take the job's lease; running the tick");
                }
            }
        }
        self.run_with_retries(component, history, &request, id.clone())
            .await;
        if spec.concurrency != Concurrency::Allow {
            let _ = history.release_lease(&id).await;
        }
    }

    /// Stops a run going here and waits (bounded) for its end.
    async fn stop_and_wait(&self, id: &str) {
        let run = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(run) = run {
            run.cancel.cancel();
            let mut ended = run.ended.clone();
            let _ = tokio::time::timeout(REPLACE_WAIT, ended.wait_for(|e| *e)).await;
        }
    }

    /// Records a tick skipped because `running` was still going.
    async fn record_skipped(
        &self,
        component: &DeployedComponent,
        (history, request): (&History, &RunRequest),
        id: &str,
        running: &str,
    ) {
        let mut record = self.new_record(component, request, id, 1);
        record.outcome = Outcome::Skipped;
        record.duration_ms = Some(0);
        record.error = Some(format!("run {running} was still going"));
        self.count(&record);
        if let Err(e) = history.put(&record).await {
            tracing::warn!(component = %component.id, error = %e, "cannot record the skipped tick");
        }
        let _ = history
            .prune(component.spec.triggers.job.keep_runs as usize)
            .await;
    }

    /// Runs `request`, again after a retryable failure, up to the job's attempts; the
    /// first attempt has id `id`.
    async fn run_with_retries(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        request: &RunRequest,
        id: String,
    ) -> RunRecord {
        let retries = component.spec.triggers.job.retries;
        let mut id = id;
        let mut attempt = 1;
        loop {
            let output = Arc::new(Output::default());
            let record = self
                .execute(component, history, request, id, output, attempt)
                .await;
            if attempt >= retries.attempts.max(1) || !record.retryable() {
                return record;
            }
            tracing::info!(component = %component.id, run = %record.id, attempt, retry_in = ?retries.backoff, "job run failed; retrying");
            tokio::select! {
                _ = self.shutdown.cancelled() => return record,
                _ = tokio::time::sleep(retries.backoff) => {}
            }
            attempt += 1;
            id = history::new_id(history::now_ms());
        }
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

    /// Runs `request` once through the envelope and records it.
    async fn execute(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        request: &RunRequest,
        id: String,
        output: Arc<Output>,
        attempt: u32,
    ) -> RunRecord {
        self.execute_admitted(component, history, request, (id, output, attempt), None)
            .await
    }

    /// [`Jobs::execute`] with the slot the run may already hold.
    async fn execute_admitted(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        request: &RunRequest,
        (id, output, attempt): (String, Arc<Output>, u32),
        permit: Option<Permit>,
    ) -> RunRecord {
        let spec = &component.spec.triggers.job;
        let mut record = self.new_record(component, request, &id, attempt);
        if let Err(e) = history.put(&record).await {
            tracing::warn!(component = %component.id, run = %id, error = %e, "cannot record the run's start");
        }
        let cancel = CancellationToken::new();
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            Arc::new(LiveRun {
                cancel: cancel.clone(),
                ended,
            }),
        );
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
            stdout: output.sink(Stream::Stdout),
            stderr: output.sink(Stream::Stderr),
        };
        let trace = TraceContext::for_invocation(None);
        let call = JobCall(CommandRun {
            io: Arc::new(io),
            timeout: spec.timeout,
            cancel,
            traceparent: Some(trace.header_value()),
        });
        let what = format!("run {id}");
        let cx = Context {
            component,
            metrics: &self.requests,
            trace: &trace,
            what: &what,
        };
        let started = std::time::Instant::now();
        // Manual runs answer at once when the component cannot take them; scheduled
        // and message runs wait for a slot, as messages do.
        let admission = match (permit, request.trigger) {
            (Some(p), _) => Admission::Admitted(p),
            (None, RunTrigger::Manual) => Admission::Admit,
            (None, _) => Admission::Admitted(component.scaler.admit_wait().await),
        };
        let result = envelope::invoke(cx, admission, call).await;
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
                    other => brief(&other.to_string()),
                });
            }
        }
        let (stdout, stderr) = output.tails();
        record.set_output(&stdout, &stderr);
        if let Err(e) = history.put(&record).await {
            tracing::warn!(component = %component.id, run = %id, error = %e, "cannot record the run");
        }
        if let Err(e) = history.prune(spec.keep_runs as usize).await {
            tracing::warn!(component = %component.id, error = %e, "cannot prune the job's history");
        }
        self.count(&record);
        if let Some(run) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            drop(run);
        }
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

    /// Subscribes the job's `on_message` subjects durably (JetStream): one run per
    /// message, retried by redelivery, then dead-lettered.
    async fn subscribe(
        self: Arc<Self>,
        component: Arc<DeployedComponent>,
        history: History,
        bus: Arc<dyn Bus>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let spec = &component.spec.triggers.job;
        let Some(nats) = bus.as_nats() else {
            anyhow::bail!(
                "job.on_message needs NATS with JetStream (runs per message are durable); this host runs the in-process bus"
            );
        };
        let delivery = crate::subscriber::durable::Delivery {
            subjects: spec.on_message.clone(),
            group: format!("{}.{}.job", component.id.app, component.id.component),
            max_deliver: spec.retries.attempts.max(1),
            backoff: vec![spec.retries.backoff],
            ack_wait: spec.timeout.unwrap_or(component.timeout)
                + crate::subscriber::durable::ACK_MARGIN,
        };
        let handler: crate::subscriber::durable::Handler = {
            let (this, component) = (self.clone(), component.clone());
            Arc::new(move |message, permit| {
                let (this, component, history) = (this.clone(), component.clone(), history.clone());
                Box::pin(async move {
                    this.message_run(&component, &history, message, permit)
                        .await
                })
            })
        };
        crate::subscriber::durable::start_with(
            component.clone(),
            delivery,
            handler,
            nats.clone(),
            stop,
            self.tracker.clone(),
        )
        .await
    }

    /// One run for one message; a failed run fails the delivery.
    async fn message_run(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        message: crate::bus::Message,
        permit: Permit,
    ) -> Result<(), Failure> {
        let request = RunRequest {
            trigger: RunTrigger::Message,
            args: None,
            env: Vec::new(),
            stdin: message.body.clone(),
            subject: Some(message.subject.clone()),
            tick_ms: None,
            caught_up: false,
        };
        let id = history::new_id(history::now_ms());
        let attempt = 1;
        let record = self
            .execute_admitted(
                component,
                history,
                &request,
                (id, Arc::new(Output::default()), attempt),
                Some(permit),
            )
            .await;
        if record.succeeded() {
            Ok(())
        } else {
            Err(Failure::Invoke(InvokeError::Handler(format!(
                "run {} ended: {}",
                record.id,
                describe(&record)
            ))))
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
