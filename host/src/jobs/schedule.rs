//! Scheduled runs: the tick loop of each job placed on this host, the lattice-wide
//! claim of each tick, catch-up, concurrency (`forbid`, `allow`, `replace`) and
//! retries.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use tokio_util::sync::CancellationToken;

use super::history::{self, History, Lease, Outcome, RunRecord, RunTrigger};
use super::{Attempt, Jobs, LEASE_MARGIN, LiveRun, Output, RunRequest, lock, millis};
use crate::apps::DeployedComponent;
use crate::trigger::job::{Concurrency, Schedule};

/// How long a `replace` tick waits for the run it stopped to end.
const REPLACE_WAIT: Duration = Duration::from_secs(30);

/// A tick this late (the machine slept, the clock stepped) is not run: missed ticks
/// are not caught up.
const LATE: Duration = Duration::from_secs(5);

impl Jobs {
    /// Runs `component`'s ticks until `stop`.
    pub(super) async fn schedule_loop(
        self: Arc<Self>,
        component: Arc<DeployedComponent>,
        history: History,
        stop: CancellationToken,
    ) {
        let spec = &component.spec.triggers.job;
        if spec.catch_up && !component.scaler.is_stopped() {
            self.catch_up(&component, &history, &stop).await;
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
            let late = (Utc::now() - next).to_std().unwrap_or_default();
            if late > LATE {
                tracing::warn!(component = %component.id, tick = %next, late = ?late, "the clock jumped or the host slept: skipping the ticks missed meanwhile");
                after = Utc::now();
                continue;
            }
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
            let (this, c, h, s) = (
                self.clone(),
                component.clone(),
                history.clone(),
                stop.clone(),
            );
            self.tracker
                .spawn(async move { this.tick(&c, &h, (millis(next), false), &s).await });
        }
    }

    /// Starts a run for the latest tick missed since the last one claimed (if another
    /// host has not claimed it first).
    async fn catch_up(
        self: &Arc<Self>,
        component: &Arc<DeployedComponent>,
        history: &History,
        stop: &CancellationToken,
    ) {
        let spec = &component.spec.triggers.job;
        let Ok(Some(last)) = history.last_tick().await else {
            return;
        };
        let now = Utc::now();
        let missed = match spec.schedule.as_ref() {
            Some(Schedule::Every(d)) => {
                let period = d.as_millis().max(1) as u64;
                Some(millis(now) / period * period)
            }
            Some(Schedule::Cron(c)) => c
                .after(&now.with_timezone(&spec.timezone.0))
                .next_back()
                .map(|t| millis(t.with_timezone(&Utc))),
            None => None,
        };
        let Some(missed) = missed.filter(|m| *m > last) else {
            return;
        };
        if let Ok(true) = history.claim_tick(missed).await {
            let tick = Utc.timestamp_millis_opt(missed as i64).single();
            tracing::info!(component = %component.id, tick = ?tick, "catching up a missed tick");
            let (this, c, h, s) = (
                self.clone(),
                component.clone(),
                history.clone(),
                stop.clone(),
            );
            self.tracker
                .spawn(async move { this.tick(&c, &h, (missed, true), &s).await });
        }
    }

    /// One claimed tick: decides by the job's concurrency, then runs (with retries).
    async fn tick(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        (tick_ms, caught_up): (u64, bool),
        stop: &CancellationToken,
    ) {
        let spec = &component.spec.triggers.job;
        let request = RunRequest {
            tick_ms: Some(tick_ms),
            caught_up,
            ..RunRequest::of(RunTrigger::Schedule)
        };
        let id = match history.new_id(history::now_ms(), spec.keep_runs).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(component = %component.id, error = %e, "cannot start the job's tick: its history is unavailable");
                return;
            }
        };
        let leased = spec.concurrency != Concurrency::Allow;
        if leased {
            match history.lease().await {
                Ok(Some(lease)) if spec.concurrency == Concurrency::Forbid => {
                    tracing::info!(component = %component.id, running = %lease.run, "tick skipped: a run is still going (concurrency = \"forbid\")");
                    self.record_skipped(component, (history, &request), &id, &lease.run)
                        .await;
                    return;
                }
                Ok(Some(lease)) => {
                    // replace
                    if lease.owner == self.owner {
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
            // Until the first attempt has a slot (then renewed per attempt).
            let timeout = spec.timeout.unwrap_or(component.timeout);
            let lease = Lease {
                run: id.clone(),
                host: self.host.clone(),
                owner: self.owner.clone(),
                until_ms: history::now_ms()
                    .saturating_add(timeout.saturating_add(LEASE_MARGIN).as_millis() as u64),
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
        // The tick's attempts share one token: `replace` stops whichever is going, or
        // the wait before the next.
        let cancel = CancellationToken::new();
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        lock(&self.ticks).insert(
            id.clone(),
            Arc::new(LiveRun {
                app: component.id.app.to_string(),
                component: component.id.component.to_string(),
                cancel: cancel.clone(),
                ended,
            }),
        );
        self.run_with_retries(
            component,
            history,
            &request,
            (id.clone(), leased),
            (&cancel, stop),
        )
        .await;
        lock(&self.ticks).remove(&id);
        let _ = ended_tx.send(true);
        if leased {
            let _ = history.release_lease(&id).await;
        }
    }

    /// Stops a tick going here (its run, or its wait for a retry) and waits (bounded)
    /// for its end.
    async fn stop_and_wait(&self, id: &str) {
        let tick = lock(&self.ticks).get(id).cloned();
        if let Some(tick) = tick {
            tick.cancel.cancel();
            let mut ended = tick.ended.clone();
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
    }

    /// Runs `request`, again after a retryable failure, up to the job's attempts; the
    /// first attempt has id `id` (the tick's lease, when `leased`). `cancel` stops the
    /// tick; `stop` (the component version's end) and shutdown end it between attempts.
    async fn run_with_retries(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        request: &RunRequest,
        (id, leased): (String, bool),
        (cancel, stop): (&CancellationToken, &CancellationToken),
    ) -> Option<RunRecord> {
        let spec = &component.spec.triggers.job;
        let retries = spec.retries;
        let lease = leased.then(|| id.clone());
        let mut id = id;
        let mut number = 1;
        loop {
            let attempt = Attempt {
                id: id.clone(),
                number,
                output: Arc::new(Output::default()),
                cancel: cancel.child_token(),
                stop: Some(stop.clone()),
                permit: None,
                lease: lease.clone(),
            };
            let record = self.execute(component, history, request, attempt).await;
            if number >= retries.attempts.max(1) || !record.retryable() {
                return Some(record);
            }
            tracing::info!(component = %component.id, run = %record.id, attempt = number, retry_in = ?retries.backoff, "job run failed; retrying");
            tokio::select! {
                _ = self.shutdown.cancelled() => return Some(record),
                _ = stop.cancelled() => return Some(record),
                _ = cancel.cancelled() => return Some(record),
                _ = tokio::time::sleep(retries.backoff) => {}
            }
            number += 1;
            id = match history.new_id(history::now_ms(), spec.keep_runs).await {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(component = %component.id, error = %e, "cannot retry the job's run: its history is unavailable");
                    return Some(record);
                }
            };
        }
    }
}
