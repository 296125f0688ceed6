//! The control plane in a lattice: publishing deploys to the lattice, converging to
//! its records, placing components on the live hosts, and serving the invocations
//! other hosts forward here.
//!
//! Convergence: every host watches the apps bucket and applies each record in
//! revision order (one at a time, under `applied`): fetch the component bytes it
//! lacks from the object store, check and build the version exactly as a deploy
//! does, swap it in. A record this host cannot apply is refused with its reason in
//! `status`, and the version it had keeps serving. A deleted record undeploys the
//! app.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use http::{Request, Response};

use std::path::PathBuf;

use super::{ControlPlane, DeployError, DeployReport, DeployRequest, request_from_file, status};
use crate::apps::{App, DeployedComponent};
use crate::body::Body;
use crate::envelope::{self, Admission, Context, HttpCall};
use crate::lattice::wire::{Kind, Outcome};
use crate::lattice::{Lattice, forward, placement};
use crate::manifest::Manifest;

/// How often a host checks that it has applied the lattice's latest records (the
/// watch is the fast path; this catches what a watch lost, e.g. while a NATS node
/// died and the bucket's leader moved).
const RESYNC: Duration = Duration::from_secs(5);

/// Refused records are tried again every this many resync periods (30 s).
const RETRY_REFUSED_TICKS: u64 = 6;

/// Converges to the lattice's records now, then keeps watching them and the host
/// set in the background (until shutdown).
pub(super) async fn start(control: Arc<ControlPlane>, lattice: Arc<Lattice>) {
    tracing::debug!("lattice: watching the apps bucket");
    let mut changes = lattice.hosts().changes();
    let watch = lattice.apps().watch_all().await;
    // What is there now, before the host reports ready.
    tracing::debug!("lattice: reading the apps bucket");
    control.resync(&lattice).await;
    // Hosts that joined or left while the records were applied.
    control.replace().await;
    lattice.hosts().set_ready();
    tracing::debug!("lattice: converged to the apps bucket");
    let shutdown = control.shutdown.clone();
    match watch {
        Ok(mut watch) => {
            let control = control.clone();
            let lattice = lattice.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        entry = watch.next() => match entry {
                            Some(Ok(entry)) => control.converge(&entry).await,
                            other => {
                                if let Some(Err(e)) = other {
                                    tracing::warn!(error = %e, "watching the lattice's apps failed; watching again");
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                match lattice.apps().watch_all().await {
                                    Ok(w) => {
                                        watch = w;
                                        // A new watch sees only what comes after it.
                                        control.resync(&lattice).await;
                                    }
                                    Err(e) => tracing::warn!(error = %e, "cannot watch the lattice's apps"),
                                }
                            }
                        }
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the lattice's apps: this host will not see new deploys")
        }
    }
    // Catch up on whatever the watch lost.
    {
        let (control, lattice, shutdown) = (control.clone(), lattice.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESYNC);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        ticks += 1;
                        let seen = control.seen_revision.load(std::sync::atomic::Ordering::Relaxed);
                        let last = lattice.store().last_revision().await;
                        tracing::trace!(seen, last = ?last.as_ref().ok(), "lattice: checking for missed records");
                        let retry = ticks.is_multiple_of(RETRY_REFUSED_TICKS) && !control.lock_refused().is_empty();
                        match last {
                            Ok(last) if last > seen || retry => control.resync(&lattice).await,
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot check the lattice's apps"),
                        }
                    }
                }
            }
        });
    }
    // Re-place components whenever a host joins or leaves.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    control.replace().await;
                }
            }
        }
    });
}

impl ControlPlane {
    /// Deploys a manifest given to `wasmhive up`. In a lattice that already has a
    /// record of the app, the record wins: a host that restarts with its start-up
    /// manifests does not roll the lattice back to the files' version.
    pub async fn deploy_startup(
        &self,
        request: DeployRequest,
    ) -> Result<Option<DeployReport>, DeployError> {
        if let Some(lattice) = self.lattice() {
            let manifest = Manifest::parse(&request.manifest, &request.origin)?;
            let name = &manifest.app.name;
            if let Ok(Some(_)) = lattice.apps().get(name.clone()).await {
                tracing::info!(app = %name, origin = %request.origin, "the lattice already has this app: its record wins over the start-up manifest (deploy the file to change it)");
                return Ok(None);
            }
        }
        self.deploy(request).await.map(Some)
    }

    /// Writes a component's stopped state into its app's record (compare-and-set on
    /// the record's revision, retried when another write came first).
    pub(super) async fn record_stopped(
        &self,
        lattice: &crate::lattice::Lattice,
        app: &str,
        component: &str,
        stop: bool,
    ) -> Result<(), DeployError> {
        let storage = |e: String| DeployError::Storage(e);
        for _ in 0..10 {
            let entry = lattice
                .apps()
                .entry(app)
                .await
                .map_err(|e| storage(e.to_string()))?
                .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
                .ok_or_else(|| DeployError::NotFound(app.to_string()))?;
            let mut record: DeployRequest = serde_json::from_slice(&entry.value)
                .map_err(|e| storage(format!("unreadable app record: {e}")))?;
            let changed = if stop {
                record.stopped.insert(component.to_string())
            } else {
                record.stopped.remove(component)
            };
            if !changed {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&record).map_err(|e| storage(e.to_string()))?;
            match lattice
                .apps()
                .update(app, bytes.into(), entry.revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => tracing::debug!(error = %e, "app record changed meanwhile; again"),
            }
        }
        Err(storage(format!(
            "the record of {app} kept changing; try again"
        )))
    }

    /// Joins `lattice` after start-up (the NATS the host was given was not reachable
    /// then): deploys the start-up `manifests` to the lattice, then converges to the
    /// lattice's records (apps this host had that the lattice no longer has are
    /// removed).
    pub async fn join_late(
        self: &Arc<Self>,
        lattice: Arc<crate::lattice::Lattice>,
        manifests: &[PathBuf],
    ) {
        if self.lattice.set(lattice.clone()).is_err() {
            return;
        }
        tracing::info!(lattice = %lattice.name(), "joined the lattice");
        for path in manifests {
            let result = async {
                let request = request_from_file(path, &self.blobs).await?;
                Ok::<_, anyhow::Error>(self.deploy_startup(request).await?)
            }
            .await;
            if let Err(e) = result {
                tracing::error!(manifest = %path.display(), error = %format!("{e:#}"), "cannot deploy a start-up manifest to the lattice");
            }
        }
        start(self.clone(), lattice).await;
        // What ran alone now runs by placement, with forwarding.
        self.replace().await;
        self.joining
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// The lattice's live hosts and the components none of them may run (`None`:
    /// this host is alone).
    pub fn hosts(&self) -> Option<status::Hosts> {
        let lattice = self.lattice()?;
        let unplaced = self
            .apps
            .snapshot()
            .components()
            .filter(|c| c.placement.hosts().is_empty())
            .map(|c| format!("{}/{}", c.id.app, c.id.component))
            .collect();
        Some(status::Hosts {
            lattice: lattice.name().to_string(),
            hosts: lattice.hosts().list(),
            unplaced,
        })
    }

    /// Applies every record of the lattice this host has not applied, and removes
    /// apps the lattice no longer has.
    pub(super) async fn resync(&self, lattice: &Lattice) {
        let last = lattice.store().last_revision().await.ok();
        tracing::debug!(?last, "lattice: listing the apps");
        let Some(names) = lattice.store().app_names().await else {
            tracing::warn!("cannot list the lattice's apps; trying again later");
            return;
        };
        for name in &names {
            if let Ok(Some(entry)) = lattice.apps().entry(name.clone()).await {
                self.converge(&entry).await;
            }
        }
        // Under the lock deploys hold while they activate, and checked once more, so
        // an app deployed since the listing is not taken for a removed one.
        let _applying = self.applied.lock().await;
        let here: Vec<String> = self.apps.snapshot().apps.keys().cloned().collect();
        for app in here.into_iter().filter(|a| !names.contains(a)) {
            if let Ok(None) = lattice.apps().get(app.clone()).await {
                tracing::info!(%app, "not in the lattice: removed");
                let _ = self.remove_local(&app).await;
            }
        }
        if let Some(last) = last {
            self.seen_revision
                .fetch_max(last, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes a built app to the lattice: its component bytes to the object store
    /// (those not there yet), then its record. Returns the record's revision.
    pub(super) async fn publish_record(
        &self,
        lattice: &Lattice,
        source: &DeployRequest,
    ) -> Result<u64, DeployError> {
        let storage = |e: anyhow::Error| DeployError::Storage(format!("{e:#}"));
        for digest in source.sources.values() {
            if lattice.store().has_blob(digest).await {
                continue;
            }
            let bytes = self
                .blobs
                .read(digest)
                .map_err(|e| DeployError::Storage(format!("cannot read {digest}: {e}")))?;
            lattice
                .store()
                .put_blob(digest, &bytes)
                .await
                .map_err(storage)?;
        }
        // The deploying machine's directory means nothing to other hosts, but secret
        // files are resolved against it: keep it for hosts that share the path.
        lattice.store().put_record(source).await.map_err(storage)
    }

    /// Applies one entry of the apps bucket, unless this host already applied that
    /// revision or a later one.
    async fn converge(&self, entry: &async_nats::jetstream::kv::Entry) {
        use async_nats::jetstream::kv::Operation;
        self.seen_revision
            .fetch_max(entry.revision, std::sync::atomic::Ordering::Relaxed);
        let mut applied = self.applied.lock().await;
        if applied
            .get(&entry.key)
            .is_some_and(|r| *r >= entry.revision)
        {
            return;
        }
        let before = applied.insert(entry.key.clone(), entry.revision);
        if entry.operation != Operation::Put {
            self.lock_refused().remove(&entry.key);
            match self.remove_local(&entry.key).await {
                Ok(()) | Err(DeployError::NotFound(_)) => {}
                Err(e) => {
                    tracing::error!(app = %entry.key, error = %e, "cannot remove an undeployed app")
                }
            }
            return;
        }
        let result = async {
            let mut request: DeployRequest = serde_json::from_slice(&entry.value)
                .map_err(|e| DeployError::Storage(format!("unreadable app record: {e}")))?;
            // Whoever may write the lattice's records could name any directory
            // here, and by default a deploy may read files under it: only with
            // `[secrets] dirs` (which bound every read) is it kept.
            if self.config.access.secret_dirs.is_empty() {
                request.manifest_dir = None;
            }
            if let Some(running) = self.running(&request) {
                // This host runs exactly that already (it deployed it, or had it):
                // only which of its components are stopped may have changed.
                self.apply_stopped(&running, &request.stopped);
                return Ok(super::report_of(&running, None));
            }
            self.fetch_blobs(&request).await?;
            let stopped = request.stopped.clone();
            let app = self.build(request).await?;
            let report = self.activate(app).await?;
            if let Some(app) = self.apps.snapshot().apps.get(&report.app) {
                self.apply_stopped(app, &stopped);
            }
            Ok::<_, DeployError>(report)
        }
        .await;
        match result {
            Ok(report) => {
                self.lock_refused().remove(&entry.key);
                tracing::info!(app = %report.app, version = %report.version, revision = entry.revision, "converged to the lattice's record");
            }
            Err(e) => {
                tracing::error!(app = %entry.key, revision = entry.revision, error = %e, "refused the lattice's app record; the version this host had keeps serving");
                self.lock_refused().insert(entry.key.clone(), e.to_string());
                // Not applied: the periodic resync tries it again (a blob fetch or a
                // subscription may fail only while NATS moves a leader).
                match before {
                    Some(r) => applied.insert(entry.key.clone(), r),
                    None => applied.remove(&entry.key),
                };
            }
        }
    }

    /// Stops the components of `app` in `stopped` and starts the others.
    pub(super) fn apply_stopped(&self, app: &App, stopped: &BTreeSet<String>) {
        for c in &app.components {
            let stop = stopped.contains(&*c.id.component);
            if c.scaler.set_stopped(stop) {
                tracing::info!(component = %c.id, "{} (the lattice's record)", if stop { "stopped" } else { "started" });
            }
        }
    }

    /// Copies the component bytes a record names and this host lacks from the
    /// lattice's object store.
    async fn fetch_blobs(&self, request: &DeployRequest) -> Result<(), DeployError> {
        let Some(lattice) = self.lattice() else {
            return Ok(());
        };
        for (source, digest) in &request.sources {
            if self.blobs.contains(digest) || self.runtime.is_cached(digest) {
                continue;
            }
            let bytes = lattice
                .store()
                .get_blob(digest)
                .await
                .map_err(|e| DeployError::Storage(format!("source {source:?}: {e:#}")))?;
            self.blobs
                .put(digest, &bytes)
                .map_err(|e| DeployError::Storage(format!("source {source:?}: {e}")))?;
        }
        Ok(())
    }

    /// Computes where each component of `app` runs from the live hosts, records it
    /// on the components, and returns the names of those placed on this host (all
    /// of them when the host is alone).
    pub(super) fn place(&self, app: &App) -> BTreeSet<String> {
        let Some(lattice) = self.lattice() else {
            return app
                .components
                .iter()
                .map(|c| c.id.component.to_string())
                .collect();
        };
        let live = lattice.hosts().live();
        let me = lattice.hosts().me();
        // Hosts still converging (this one too, at start-up) are not placed on: they
        // would get a component before they have compiled it, and every host must
        // compute from the same set.
        let candidates: Vec<placement::Candidate> = live
            .values()
            .filter(|h| h.ready)
            .map(|h| placement::Candidate {
                id: h.id.clone(),
                labels: h.labels.clone(),
            })
            .collect();
        let mut here = BTreeSet::new();
        for c in &app.components {
            let spec = &c.spec.placement;
            let ids = placement::assign(app.name(), &c.id.component, spec, &candidates);
            let on_me = ids.contains(&me.id);
            let mut names: Vec<String> = ids
                .iter()
                .filter_map(|id| live.get(id).map(|h| h.name.clone()))
                .collect();
            names.sort();
            c.placement
                .set(on_me, placement::eligible(spec, &me.labels), names);
            if on_me {
                here.insert(c.id.component.to_string());
            }
        }
        here
    }

    /// Re-places every app after the host set changed; apps whose components moved
    /// to or from this host are subscribed anew.
    pub(super) async fn replace(&self) {
        let _applying = self.applied.lock().await;
        let snapshot = self.apps.snapshot();
        for app in snapshot.apps.values() {
            let placed = self.place(app);
            let forwarding = self.lattice().is_some();
            let same = self
                .lock_subscriptions()
                .get(app.name())
                .is_some_and(|s| s.placed == placed && s.forwarding == forwarding);
            if same {
                continue;
            }
            match self.subscribe(app, &placed).await {
                Ok(stop) => {
                    // Undeployed or replaced meanwhile: these subscriptions belong to
                    // nobody.
                    let current = self
                        .apps
                        .snapshot()
                        .apps
                        .get(app.name())
                        .is_some_and(|a| Arc::ptr_eq(a, app));
                    if !current {
                        stop.cancel();
                        continue;
                    }
                    tracing::info!(app = %app.name(), here = ?placed, "placement changed");
                    if let Some(old) = self.lock_subscriptions().insert(
                        app.name().to_string(),
                        super::Subscribed {
                            stop,
                            placed,
                            forwarding,
                        },
                    ) {
                        old.stop.cancel();
                    }
                }
                Err(e) => {
                    tracing::error!(app = %app.name(), error = %e, "cannot subscribe after a placement change")
                }
            }
        }
    }

    /// Serves the invocations other hosts forward to `component` on `subject` until
    /// `stop`.
    pub(super) async fn serve_forwarded(
        &self,
        lattice: &Lattice,
        component: &DeployedComponent,
        subject: String,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        let (app, name) = (
            component.id.app.to_string(),
            component.id.component.to_string(),
        );
        let apps = self.apps.clone();
        let metrics = self.requests.clone();
        let handler: forward::Handler = Arc::new(move |kind, request| {
            let (apps, metrics, app, name) =
                (apps.clone(), metrics.clone(), app.clone(), name.clone());
            async move {
                let target = apps
                    .snapshot()
                    .apps
                    .get(&app)
                    .and_then(|a| a.components.iter().find(|c| *c.id.component == *name))
                    .cloned();
                match target {
                    Some(target) => invoke_forwarded(&target, &metrics, kind, request).await,
                    None => (
                        Outcome::Unavailable,
                        crate::body::text(
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("{app}/{name} is not deployed on this host"),
                        ),
                    ),
                }
            }
            .boxed()
        });
        forward::serve(
            lattice.client().clone(),
            subject,
            lattice.rpc_queue(),
            handler,
            stop,
        )
        .await
    }
}

/// Runs a forwarded invocation through the envelope as the trigger it came from.
/// The forwarding host already routed, authenticated and rewrote the request.
async fn invoke_forwarded(
    target: &Arc<DeployedComponent>,
    metrics: &Arc<crate::telemetry::metrics::RequestMetrics>,
    kind: Kind,
    request: Request<Body>,
) -> (Outcome, Response<Body>) {
    let trace = request
        .headers()
        .get(&crate::headers::TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::telemetry::trace::TraceContext::parse)
        .unwrap_or_else(crate::telemetry::trace::TraceContext::root);
    let what = format!("{} {} (forwarded)", request.method(), request.uri().path());
    let cx = Context {
        component: target,
        metrics,
        trace: &trace,
        what: &what,
    };
    let result = match kind {
        Kind::Http => {
            envelope::invoke(
                cx,
                Admission::Admit,
                HttpCall::<crate::trigger::http::HttpTrigger>::new(request),
            )
            .await
        }
        Kind::Mesh => {
            envelope::invoke(
                cx,
                Admission::Admit,
                HttpCall::<crate::trigger::mesh::MeshTrigger>::new(request),
            )
            .await
        }
    };
    match result {
        Ok(response) => (Outcome::Answered, response),
        Err(e) => {
            let outcome = match e.status() {
                http::StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
                http::StatusCode::GATEWAY_TIMEOUT => Outcome::Timeout,
                _ => Outcome::Answered,
            };
            (outcome, envelope::failure::respond(&e))
        }
    }
}
