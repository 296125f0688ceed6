//! Progressive rollouts (`[rollout]`, `deploy --strategy`): a new version of an app
//! loaded beside the serving one, taking HTTP requests by weight (canary, analysed
//! step by step) or by preview header (blue-green, until promoted).
//!
//! State machine (one rollout per app, on this host):
//!
//! ```text
//! deploy (canary) ─► step 1 (weight w1) ─► … ─► step n ─► promoted (the swap of a deploy)
//!                      │ analysis fails          │
//!                      └──────────► aborted ◄────┘ (also `abort`, a newer deploy --force)
//! deploy (blue-green) ─► preview only ─► promote ─► promoted
//! ```
//!
//! A step lasts `step_interval`; it is analysed once the new version has had
//! `min_requests` requests in it (until then it is extended by another interval): more
//! than `max_error_rate` of them failed (status 500 or more, traps and timeouts
//! included) aborts. Aborting drops the new version (requests it is serving finish);
//! promoting swaps it in as a deploy does. Nothing of a rollout is persisted: a host
//! restarted mid-rollout comes back on the old version (its record), and the rollout
//! is gone. HTTP requests and service calls are split (a call from the new version
//! stays in the new version); messages and jobs stay with the serving version until
//! promotion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ControlPlane, DeployError, DeployReport, DeployRequest};
use crate::apps::{App, Candidate, LATENCY_BUCKETS, LatencyBuckets};
use crate::manifest::rollout::Strategy;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Taking traffic by weight or preview.
    Running,
    /// The new version serves everything.
    Promoted,
    /// Back on the old version.
    Aborted,
}

/// The analysis of one canary step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's share of requests, percent.
    pub weight_percent: f64,
    /// Requests the new version served in the step.
    pub requests: u64,
    /// Of them, failed (5xx, trap, timeout).
    pub failed: u64,
    /// Their p99 latency, as the upper bound of a doubling bucket (within 2x).
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// `passed` or why not.
    pub verdict: String,
}

/// `wasmhive rollout status APP`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The app.
    pub app: String,
    /// `canary` or `blue-green`.
    pub strategy: String,
    /// The version serving before.
    pub from: String,
    /// The new version.
    pub to: String,
    /// Where it is.
    pub phase: Phase,
    /// The new version's share of requests now, percent.
    pub weight_percent: f64,
    /// Canary: the step now (1-based; 0 for blue-green).
    pub step: usize,
    /// Canary: steps in all.
    pub steps: usize,
    /// The header that previews the new version (`HEADER: VERSION`).
    pub preview_header: String,
    /// Why it was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each analysed step.
    pub analysis: Vec<StepReport>,
}

/// Labels of the rollout series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AppLabel {
    app: String,
}

/// `wasmhive_rollout_step`, `_weight` and `_aborts_total`, by app.
#[derive(Default)]
pub(crate) struct RolloutMetrics {
    step: prometheus_client::metrics::family::Family<
        AppLabel,
        prometheus_client::metrics::gauge::Gauge,
    >,
    weight: prometheus_client::metrics::family::Family<
        AppLabel,
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    >,
    aborts: prometheus_client::metrics::family::Family<
        AppLabel,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl RolloutMetrics {
    /// Adds the families to `registry`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "wasmhive_rollout_step",
            "The running canary's step (1-based; 0: no rollout running)",
            self.step.clone(),
        );
        registry.register(
            "wasmhive_rollout_weight",
            "The new version's share of requests in the app's rollout (0 to 1)",
            self.weight.clone(),
        );
        registry.register(
            "wasmhive_rollout_aborts",
            "Rollouts aborted, by analysis or by hand",
            self.aborts.clone(),
        );
    }

    fn set(&self, app: &str, step: usize, weight_per_mille: u32) {
        let label = AppLabel { app: app.into() };
        self.step.get_or_create(&label).set(step as i64);
        self.weight
            .get_or_create(&label)
            .set(f64::from(weight_per_mille) / 1000.0);
    }
}

/// A rollout on this host.
pub(crate) struct Rollout {
    status: std::sync::Mutex<RolloutStatus>,
    candidate: Arc<Candidate>,
    /// Ends the canary's driver (abort, promote, a newer deploy).
    stop: CancellationToken,
}

impl Rollout {
    fn status(&self) -> RolloutStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut RolloutStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// How a deploy goes live.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeployOptions {
    /// Overrides the manifest's `[rollout] strategy`.
    pub strategy: Option<Strategy>,
    /// Replace a running rollout with an immediate deploy.
    pub force: bool,
}

/// Invocations, failures and latency buckets of a version's components so far.
fn counts(app: &App) -> (u64, u64, [u64; LATENCY_BUCKETS]) {
    let mut latency = [0; LATENCY_BUCKETS];
    let (mut n, mut f) = (0, 0);
    for c in &app.components {
        n += c.stats.invocations.load(Ordering::Relaxed);
        f += c.stats.server_errors.load(Ordering::Relaxed);
        for (sum, add) in latency.iter_mut().zip(c.stats.latency.counts()) {
            *sum += add;
        }
    }
    (n, f, latency)
}

impl ControlPlane {
    fn lock_rollouts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Rollout>>> {
        self.rollouts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deploys `request` as its manifest's `[rollout]` (or `options`) says.
    pub async fn deploy_with(
        self: &Arc<Self>,
        request: DeployRequest,
        options: DeployOptions,
    ) -> Result<DeployReport, DeployError> {
        // Deploys, promotions, aborts and undeploys of rollouts happen one at a time.
        let _one = self.rollout_lock.lock().await;
        let manifest = crate::manifest::Manifest::parse(&request.manifest, &request.origin)?;
        let strategy = options.strategy.unwrap_or(manifest.rollout.strategy);
        let name = manifest.app.name.clone();
        let running = self.lock_rollouts().get(&name).cloned();
        if let Some(r) = running.filter(|r| r.status().phase == Phase::Running) {
            if !options.force {
                return Err(DeployError::Invalid(format!(
                    "a {} rollout of {name} to {} is in progress: promote or abort it first \
                     (`wasmhive promote {name}`, `wasmhive abort {name}`), or deploy --force",
                    r.status().strategy,
                    r.status().to
                )));
            }
            self.end_locked(&r, Phase::Aborted, "replaced by a forced deploy")
                .await;
        }
        let serving = self.apps.snapshot().apps.get(&name).cloned();
        let Some(serving) = serving.filter(|_| strategy != Strategy::Immediate) else {
            return self.deploy(request).await;
        };
        if self.lattice().is_some() {
            return Err(DeployError::Invalid(format!(
                "{} rollouts run on a host alone for now; in a lattice deploy with --strategy immediate",
                strategy.as_str()
            )));
        }
        self.refuse_while_joining()?;
        if manifest.app.version == serving.manifest.app.version {
            return Err(DeployError::Invalid(format!(
                "{name} {} is serving already: a rollout needs a new version label (the preview header and the metrics tell versions apart by it)",
                serving.manifest.app.version
            )));
        }
        let app = Arc::new(self.build(request).await?);
        let spec = app.manifest.rollout.clone();
        let weight = match strategy {
            Strategy::Canary => spec.steps[0],
            _ => 0,
        };
        let preview_header = http::HeaderName::from_bytes(spec.preview_header.as_bytes())
            .map_err(|e| DeployError::Invalid(format!("rollout.preview_header: {e}")))?;
        let candidate = Arc::new(Candidate {
            app: app.clone(),
            weight: std::sync::atomic::AtomicU32::new(weight),
            preview_header,
        });
        let rollout = Arc::new(Rollout {
            status: std::sync::Mutex::new(RolloutStatus {
                app: name.clone(),
                strategy: strategy.as_str().into(),
                from: serving.manifest.app.version.clone(),
                to: app.manifest.app.version.clone(),
                phase: Phase::Running,
                weight_percent: f64::from(weight) / 10.0,
                step: usize::from(strategy == Strategy::Canary),
                steps: if strategy == Strategy::Canary {
                    spec.steps.len()
                } else {
                    0
                },
                preview_header: spec.preview_header.clone(),
                reason: None,
                analysis: Vec::new(),
            }),
            candidate: candidate.clone(),
            stop: self.shutdown.child_token(),
        });
        self.apps.stage(candidate).await;
        self.lock_rollouts().insert(name.clone(), rollout.clone());
        self.rollout_metrics
            .set(&name, usize::from(strategy == Strategy::Canary), weight);
        if strategy == Strategy::Canary {
            tokio::spawn(self.clone().drive(rollout.clone()));
        }
        tracing::info!(app = %name, from = %serving.manifest.app.version, to = %app.manifest.app.version, strategy = strategy.as_str(), "rollout started");
        let mut report = super::report_of(&app, Some(serving.manifest.app.version.clone()));
        report.rollout = Some(strategy.as_str().to_string());
        Ok(report)
    }

    /// Drives canary `rollout` through its steps, then promotes it (or aborts).
    async fn drive(self: Arc<Self>, rollout: Arc<Rollout>) {
        let app = rollout.status().app;
        let spec = rollout.candidate.app.manifest.rollout.clone();
        let mut index = 0;
        while index < spec.steps.len() {
            let weight = spec.steps[index];
            rollout.candidate.weight.store(weight, Ordering::Relaxed);
            self.rollout_metrics.set(&app, index + 1, weight);
            rollout.update(|s| {
                s.step = index + 1;
                s.weight_percent = f64::from(weight) / 10.0;
            });
            let (start_n, start_f, start_l) = counts(&rollout.candidate.app);
            // The step, extended until it has enough requests to judge.
            let (requests, failed, latency) = loop {
                tokio::select! {
                    _ = rollout.stop.cancelled() => return,
                    _ = tokio::time::sleep(spec.step_interval) => {}
                }
                let (n, f, l) = counts(&rollout.candidate.app);
                let (requests, failed) = (n - start_n, f - start_f);
                if requests >= spec.min_requests {
                    let latency: [u64; LATENCY_BUCKETS] =
                        std::array::from_fn(|i| l[i].saturating_sub(start_l[i]));
                    break (requests, failed, latency);
                }
            };
            let rate = failed * 1000 / requests.max(1);
            let p99 = LatencyBuckets::quantile(&latency, 0.99);
            let verdict = if rate > u64::from(spec.max_error_rate) {
                format!(
                    "{failed} of {requests} requests failed ({:.1}%, at most {:.1}% allowed)",
                    rate as f64 / 10.0,
                    f64::from(spec.max_error_rate) / 10.0
                )
            } else if let (Some(max), Some(p99)) = (spec.max_p99, p99)
                && p99 > max
            {
                format!("p99 up to {p99:?} (at most {max:?} allowed)")
            } else {
                "passed".to_string()
            };
            let passed = verdict == "passed";
            tracing::info!(%app, step = index + 1, requests, failed, %verdict, "rollout step analysed");
            rollout.update(|s| {
                s.analysis.push(StepReport {
                    weight_percent: f64::from(weight) / 10.0,
                    requests,
                    failed,
                    p99_ms: p99.map(|d| d.as_secs_f64() * 1000.0),
                    verdict: verdict.clone(),
                })
            });
            if !passed {
                let _one = self.rollout_lock.lock().await;
                self.end_locked(&rollout, Phase::Aborted, &verdict).await;
                return;
            }
            index += 1;
        }
        let _one = self.rollout_lock.lock().await;
        if let Err(e) = self.promote_locked(&rollout).await {
            tracing::warn!(%app, error = %e, "cannot promote the rollout");
        }
    }

    /// The rollout of `app` (running, or the last one that ended).
    pub fn rollout_status(&self, app: &str) -> Result<RolloutStatus, DeployError> {
        self.lock_rollouts()
            .get(app)
            .map(|r| r.status())
            .ok_or_else(|| DeployError::Missing(format!("{app} has had no rollout on this host")))
    }

    /// Sends all traffic to the new version now: the swap of a deploy.
    pub async fn promote(&self, app: &str) -> Result<DeployReport, DeployError> {
        let _one = self.rollout_lock.lock().await;
        let rollout = self.running_rollout(app)?;
        self.promote_locked(&rollout).await
    }

    /// Promotes `rollout` if it is still the app's running one (the rollout lock held).
    async fn promote_locked(&self, rollout: &Arc<Rollout>) -> Result<DeployReport, DeployError> {
        let status = rollout.status();
        let current = self.lock_rollouts().get(&status.app).cloned();
        if status.phase != Phase::Running || !current.is_some_and(|c| Arc::ptr_eq(&c, rollout)) {
            return Err(DeployError::Missing(format!(
                "the rollout of {} to {} is not running any more",
                status.app, status.to
            )));
        }
        match self
            .activate_as(
                rollout.candidate.app.clone(),
                &format!("rollout from {}", status.from),
            )
            .await
        {
            Ok(report) => {
                rollout.stop.cancel();
                rollout.update(|s| {
                    s.phase = Phase::Promoted;
                    s.weight_percent = 100.0;
                });
                self.rollout_metrics.set(&status.app, 0, 0);
                tracing::info!(app = %status.app, to = %status.to, "rollout promoted");
                Ok(report)
            }
            Err(e) => {
                self.end_locked(rollout, Phase::Aborted, &format!("promotion failed: {e}"))
                    .await;
                Err(e)
            }
        }
    }

    /// Sends all traffic back to the serving version and drops the new one.
    pub async fn abort(&self, app: &str) -> Result<RolloutStatus, DeployError> {
        let _one = self.rollout_lock.lock().await;
        let rollout = self.running_rollout(app)?;
        self.end_locked(&rollout, Phase::Aborted, "aborted by an operator")
            .await;
        self.rollout_status(app)
    }

    /// Whether `app` has a rollout running (a rollback waits for it to end).
    pub(crate) fn rollout_running(&self, app: &str) -> bool {
        self.running_rollout(app).is_ok()
    }

    fn running_rollout(&self, app: &str) -> Result<Arc<Rollout>, DeployError> {
        self.lock_rollouts()
            .get(app)
            .filter(|r| r.status().phase == Phase::Running)
            .cloned()
            .ok_or_else(|| DeployError::Missing(format!("no rollout of {app} is in progress")))
    }

    /// Ends the running rollout of `app`, if any (undeploy).
    pub(crate) async fn end_rollout(&self, app: &str, phase: Phase, reason: &str) {
        let _one = self.rollout_lock.lock().await;
        if let Ok(rollout) = self.running_rollout(app) {
            self.end_locked(&rollout, phase, reason).await;
        }
    }

    /// Ends `rollout` if it is still the app's running one (the rollout lock held).
    async fn end_locked(&self, rollout: &Arc<Rollout>, phase: Phase, reason: &str) {
        let app = rollout.status().app;
        let app = app.as_str();
        let current = self.lock_rollouts().get(app).cloned();
        if rollout.status().phase != Phase::Running
            || !current.is_some_and(|c| Arc::ptr_eq(&c, rollout))
        {
            return;
        }
        rollout.stop.cancel();
        rollout.candidate.weight.store(0, Ordering::Relaxed);
        self.apps.unstage(app).await;
        let was_running = rollout.status().phase == Phase::Running;
        rollout.update(|s| {
            s.phase = phase;
            s.weight_percent = 0.0;
            s.reason = Some(reason.to_string());
        });
        self.rollout_metrics.set(app, 0, 0);
        if was_running && phase == Phase::Aborted {
            self.rollout_metrics
                .aborts
                .get_or_create(&AppLabel { app: app.into() })
                .inc();
        }
        tracing::warn!(%app, to = %rollout.status().to, %reason, "rollout aborted");
    }
}
