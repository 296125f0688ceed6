//! The control plane: deploy, undeploy, status, and restoring deployments at start-up.
//!
//! A deploy is checked completely before it touches the running version: the
//! manifest, every component's bytes (valid wasm, compiles, imports only what the host
//! provides, exports a handler), limits against the host's pool, and routes against
//! every other app. Only then is the new version persisted and swapped in atomically
//! (see [`crate::apps`]). A refused deploy changes nothing and says why.
//!
//! Served over HTTP by [`api`]; the CLI talks to it with [`client`].

pub mod api;
pub mod blobs;
pub mod client;
mod converge;
pub mod history;
pub mod jobs;
pub mod kv;
pub mod metrics;
mod prepare;
mod request;
pub mod rollout;
pub mod status;
mod stop;
pub mod token;

pub use prepare::{app_auth, check_component, policy_for, resolve};
pub use request::{BlobSink, request_from_file};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use crate::apps::{App, Apps, DeploySource};
use crate::bus::Bus;
use crate::capability::Services;
use crate::config::HostConfig;
use crate::ids::ComponentId;
use crate::manifest::{Manifest, ManifestError};
use crate::runtime::{Runtime, RuntimeError};
use crate::scaler::HostCapacity;
use crate::telemetry::metrics::RequestMetrics;
use blobs::BlobStore;
use tokio_util::sync::CancellationToken;

/// Why a deploy or undeploy was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A component's `source` was not uploaded with the deploy.
    #[error("component {component}: source {source_path:?} was not uploaded with the deploy")]
    MissingSource {
        /// Component name.
        component: String,
        /// `source` as written.
        source_path: String,
    },
    /// A component failed to compile, link or pass the import/export checks.
    #[error("component {component}: {error}")]
    Component {
        /// Component name.
        component: String,
        /// What is wrong.
        error: RuntimeError,
    },
    /// A capability cannot grant what the manifest asks (an unset variable, an
    /// unreadable secret file).
    #[error("component {component}: {message}")]
    Grant {
        /// Component name.
        component: String,
        /// What is wrong (names the field, never a secret's value).
        message: String,
    },
    /// The app's `[auth]` keys cannot be read or used.
    #[error("{location}: {message}")]
    Auth {
        /// Where `[auth]` is written.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A manifest value exceeds what this host allows.
    #[error("component {component}: {message}")]
    Limit {
        /// Component name.
        component: String,
        /// What is wrong.
        message: String,
    },
    /// Routes conflict with another app's.
    #[error("app {app}: {message}")]
    Routes {
        /// App name.
        app: String,
        /// The conflict.
        message: String,
    },
    /// No app by that name is deployed.
    #[error("no app named {0:?} is deployed")]
    NotFound(String),
    /// Something else named is not there (a component of an app, a bucket).
    #[error("{0}")]
    Missing(String),
    /// Persisting the deployment failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A request is malformed (400).
    #[error("{0}")]
    Invalid(String),
    /// The host has not joined its lattice yet (NATS was not reachable): a deploy
    /// now would reach this host only.
    #[error(
        "this host has not joined lattice {0} yet (NATS is not reachable); try again when /readyz says ready"
    )]
    Joining(String),
}

/// A deploy as sent by the CLI: the manifest text and the digests of uploaded sources.
pub type DeployRequest = DeploySource;

/// The outcome of a successful deploy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeployReport {
    /// App name.
    pub app: String,
    /// The version now serving.
    pub version: String,
    /// The version it replaced, if any.
    pub replaced: Option<String>,
    /// Set when the version did not take over at once but started a rollout
    /// (`canary`, `blue-green`): `replaced` keeps serving meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Per component: name, digest, flavor, routes, and whether it came from the cache.
    pub components: Vec<status::ComponentStatus>,
}

/// `POST /v1/publish`: a message from a user without a NATS client.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PublishRequest {
    /// Subject (no wildcards).
    pub subject: String,
    /// Payload (UTF-8 text).
    #[serde(default)]
    pub data: String,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Wait for a reply (request/reply) for at most this long, in milliseconds.
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
}

/// The answer to a [`PublishRequest`] sent as a request.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PublishReply {
    /// The reply's subject.
    pub subject: String,
    /// The reply's payload (lossy UTF-8).
    pub data: String,
    /// The reply's headers.
    pub headers: Vec<(String, String)>,
}

/// The host's control plane.
pub struct ControlPlane {
    runtime: Arc<Runtime>,
    apps: Arc<Apps>,
    blobs: BlobStore,
    config: HostConfig,
    capacity: HostCapacity,
    records: PathBuf,
    ready: AtomicBool,
    started: Instant,
    requests: Arc<RequestMetrics>,
    registry: prometheus_client::registry::Registry,
    bus: Arc<dyn Bus>,
    /// What capabilities back their grants with.
    services: Services,
    mesh: Arc<crate::mesh::MeshRouter>,
    /// Message handlers running now (waited for at shutdown).
    handlers: tokio_util::task::TaskTracker,
    /// Job runs, schedules and history.
    jobs: Arc<crate::jobs::Jobs>,
    /// Rollouts, running or last ended, by app.
    rollouts: std::sync::Mutex<BTreeMap<String, Arc<rollout::Rollout>>>,
    rollout_metrics: rollout::RolloutMetrics,
    /// Serialises rollout starts, promotions, aborts and their ends.
    rollout_lock: tokio::sync::Mutex<()>,
    /// Stops the message subscriptions of each deployed app version.
    subscriptions: std::sync::Mutex<BTreeMap<String, Subscribed>>,
    shutdown: CancellationToken,
    /// The lattice this host belongs to, once joined.
    lattice: crate::lattice::Slot,
    /// In a lattice: the revision of each app's record this host applied (or
    /// refused), held while applying so records apply one at a time, in order.
    applied: tokio::sync::Mutex<BTreeMap<String, u64>>,
    /// In a lattice: records this host refused, with the reason.
    refused: std::sync::Mutex<BTreeMap<String, String>>,
    /// In a lattice: the latest revision of the apps bucket this host has seen.
    seen_revision: std::sync::atomic::AtomicU64,
    /// Set while the host waits to join its lattice (after start-up).
    joining: AtomicBool,
}

/// The subscriptions of one deployed app version and which of its components they
/// cover.
struct Subscribed {
    stop: CancellationToken,
    placed: BTreeSet<String>,
    /// Whether they include the lattice's forwarding subscriptions.
    forwarding: bool,
}

/// The report of a deploy of `app`.
fn report_of(app: &App, replaced: Option<String>) -> DeployReport {
    DeployReport {
        app: app.name().to_string(),
        version: app.manifest.app.version.clone(),
        replaced,
        rollout: None,
        components: app
            .components
            .iter()
            .map(|c| status::ComponentStatus::of(c))
            .collect(),
    }
}

impl ControlPlane {
    /// Opens the blob store and deployment records under the data dir.
    /// Messages flow through `bus`, key-value data lives in `kv`; subscriptions end at
    /// `shutdown`.
    pub fn new(
        runtime: Arc<Runtime>,
        apps: Arc<Apps>,
        config: HostConfig,
        bus: Arc<dyn Bus>,
        kv: Arc<dyn crate::state::KvStore>,
        lattice: crate::lattice::Slot,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let blobs = BlobStore::open(&config.data_dir)?;
        let records = config.data_dir.join("apps");
        std::fs::create_dir_all(&records)?;
        let requests = Arc::new(RequestMetrics::default());
        let mesh = crate::mesh::MeshRouter::new(apps.clone(), requests.clone(), lattice.clone());
        let mut registry = metrics::registry(
            apps.clone(),
            &requests,
            runtime.host_memory().clone(),
            mesh.clone(),
        );
        let jobs = crate::jobs::Jobs::new(
            Some(kv.clone()),
            config
                .lattice
                .host_name
                .clone()
                .unwrap_or_else(crate::lattice::hosts::machine_name),
            requests.clone(),
        );
        jobs.register(&mut registry);
        let rollout_metrics = rollout::RolloutMetrics::default();
        rollout_metrics.register(&mut registry);
        Ok(ControlPlane {
            runtime,
            apps,
            requests,
            registry,
            services: Services {
                bus: Some(bus.clone()),
                kv: Some(kv),
                mesh: Some(mesh.clone()),
            },
            bus,
            mesh,
            handlers: tokio_util::task::TaskTracker::new(),
            jobs,
            rollouts: Default::default(),
            rollout_metrics,
            rollout_lock: Default::default(),
            subscriptions: Default::default(),
            shutdown,
            lattice,
            applied: Default::default(),
            refused: Default::default(),
            seen_revision: Default::default(),
            joining: AtomicBool::new(false),
            blobs,
            capacity: HostCapacity::new(config.pool.instances),
            config,
            records,
            ready: AtomicBool::new(false),
            started: Instant::now(),
        })
    }

    /// The lattice this host belongs to, once joined.
    pub fn lattice(&self) -> Option<&Arc<crate::lattice::Lattice>> {
        self.lattice.get()
    }

    /// The blob store (for uploads and local deploys).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Where the gateway records answered requests.
    pub fn request_metrics(&self) -> &Arc<RequestMetrics> {
        &self.requests
    }

    /// Prometheus text for `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        metrics::encode(&self.registry)
    }

    /// Marks the host as waiting to join its lattice: changes through the admin API
    /// are refused (they would reach this host only) and `/readyz` says so, until
    /// [`ControlPlane::join_late`] is done.
    pub fn set_joining(&self) {
        self.joining.store(true, Ordering::Release);
    }

    /// The lattice this host waits to join, if it is waiting.
    pub fn joining(&self) -> Option<&str> {
        self.joining
            .load(Ordering::Acquire)
            .then_some(self.config.lattice.name.as_str())
    }

    fn refuse_while_joining(&self) -> Result<(), DeployError> {
        match (self.joining(), self.lattice()) {
            (Some(name), None) => Err(DeployError::Joining(name.to_string())),
            _ => Ok(()),
        }
    }

    /// Marks start-up complete (`/readyz` turns 200).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether start-up is complete.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Checks and deploys an app; swaps it in atomically only if everything passes.
    /// In a lattice the app is also written to the lattice (component bytes first,
    /// then the record naming them), and every host converges to it.
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        self.deploy_as(request, "deploy").await
    }

    /// [`ControlPlane::deploy`], saying in the deploy history how the version came
    /// (`deploy`, `rollback from 0.2.0`).
    pub(crate) async fn deploy_as(
        &self,
        request: DeployRequest,
        how: &str,
    ) -> Result<DeployReport, DeployError> {
        self.refuse_while_joining()?;
        let Some(lattice) = self.lattice().cloned() else {
            let app = self.build(request).await?;
            return self.activate_as(Arc::new(app), how).await;
        };
        // What runs here already is only written to the lattice, not built again.
        if let Some(running) = self.running(&request) {
            let revision = self.publish_record(&lattice, &request).await?;
            self.apply_stopped(&running, &request.stopped);
            let mut applied = self.applied.lock().await;
            let at = applied.entry(running.name().to_string()).or_default();
            *at = (*at).max(revision);
            self.lock_refused().remove(running.name());
            return Ok(report_of(&running, None));
        }
        let app = self.build(request).await?;
        let revision = self.publish_record(&lattice, &app.source).await?;
        let mut applied = self.applied.lock().await;
        if applied.get(app.name()).is_some_and(|r| *r >= revision) {
            // The watcher applied this very record first.
            return Ok(report_of(&app, None));
        }
        let report = self.activate_as(Arc::new(app), how).await?;
        applied.insert(report.app.clone(), revision);
        self.lock_refused().remove(&report.app);
        Ok(report)
    }

    /// The app version running here that was deployed from exactly `request`'s
    /// manifest and component bytes, if any.
    fn running(&self, request: &DeployRequest) -> Option<Arc<App>> {
        self.apps
            .snapshot()
            .apps
            .values()
            .find(|a| a.source.manifest == request.manifest && a.source.sources == request.sources)
            .cloned()
    }

    /// Checks everything about a deploy and builds the app version, touching nothing
    /// that runs.
    pub(crate) async fn build(&self, request: DeployRequest) -> Result<App, DeployError> {
        let manifest = Manifest::parse(&request.manifest, &request.origin)?;
        let app_auth = app_auth(&manifest, &self.config, request.manifest_dir.as_deref()).await?;
        let mut components = Vec::with_capacity(manifest.components.len());
        for spec in &manifest.components {
            components.push(Arc::new(
                self.prepare(&manifest, spec, &request, app_auth.as_ref())
                    .await?,
            ));
        }
        Ok(App {
            manifest,
            components,
            deployed_at: SystemTime::now(),
            source: request,
        })
    }

    /// Swaps a built app version in: places it (in a lattice), subscribes what runs
    /// here, persists it (alone), and publishes the new snapshot.
    pub(crate) async fn activate(&self, app: App) -> Result<DeployReport, DeployError> {
        self.activate_as(Arc::new(app), "deploy").await
    }

    /// [`ControlPlane::activate`], recording the version in the deploy history as
    /// come by `how`.
    pub(crate) async fn activate_as(
        &self,
        app: Arc<App>,
        how: &str,
    ) -> Result<DeployReport, DeployError> {
        let name = app.name().to_string();
        let version = app.manifest.app.version.clone();
        let placed = self.place(&app);
        // Subscribe the new version before it takes over, so no message falls between
        // the versions (both are in the same queue group for a moment).
        let subscriptions = self.subscribe(&app, &placed).await?;
        let mut report = report_of(&app, None);
        let recorded = app.clone();
        let previous = self
            .apps
            .put(app, |app| {
                // Alone, the record is the desired state; in a lattice it is a cache
                // that lets a host restarted while NATS is away serve what it had.
                self.persist(app)?;
                // Under the registry's writer lock, so concurrent deploys of one app
                // swap subscriptions in the same order as versions.
                if let Some(old) = self.lock_subscriptions().insert(
                    name.clone(),
                    Subscribed {
                        stop: subscriptions.clone(),
                        placed,
                        forwarding: self.lattice().is_some(),
                    },
                ) {
                    old.stop.cancel();
                }
                Ok(())
            })
            .await
            .map_err(|message| {
                subscriptions.cancel();
                DeployError::Routes {
                    app: name.clone(),
                    message,
                }
            })?;
        report.replaced = previous.as_ref().map(|p| p.manifest.app.version.clone());
        tracing::info!(app = %name, %version, replaced = ?report.replaced, "deployed");
        self.record_version(&recorded, how).await;
        Ok(report)
    }

    /// Starts the message subscriptions (and, in a lattice, the forwarding
    /// subscriptions) of the components of `app` in `placed` (all of them alone),
    /// under one token that stops them all.
    pub(crate) async fn subscribe(
        &self,
        app: &App,
        placed: &BTreeSet<String>,
    ) -> Result<CancellationToken, DeployError> {
        let subscriptions = self.shutdown.child_token();
        for c in &app.components {
            if let Some(l) = self.lattice()
                && !placed.contains(&*c.id.component)
            {
                // Not placed here: only on standby for its requests, if it may run here.
                if c.flavor.is_some() && c.placement.eligible() {
                    let subject = l.standby_subject(&c.id.app, &c.id.component);
                    if let Err(e) = self
                        .serve_forwarded(l, c, subject, subscriptions.clone())
                        .await
                    {
                        subscriptions.cancel();
                        return Err(DeployError::Component {
                            component: c.spec.name.clone(),
                            error: RuntimeError::Imports(format!("cannot subscribe: {e}")),
                        });
                    }
                }
                continue;
            }
            let started = async {
                crate::subscriber::start(
                    c.clone(),
                    self.bus.clone(),
                    self.requests.clone(),
                    subscriptions.clone(),
                    self.handlers.clone(),
                )
                .await?;
                self.jobs
                    .start(c.clone(), self.bus.clone(), subscriptions.clone())
                    .await?;
                if let Some(l) = self.lattice()
                    && c.flavor.is_some()
                {
                    let subject = l.rpc_subject(&c.id.app, &c.id.component);
                    self.serve_forwarded(l, c, subject, subscriptions.clone())
                        .await?;
                }
                Ok::<_, anyhow::Error>(())
            };
            if let Err(e) = started.await {
                subscriptions.cancel();
                return Err(DeployError::Component {
                    component: c.spec.name.clone(),
                    error: RuntimeError::Imports(format!("cannot subscribe: {e}")),
                });
            }
        }
        Ok(subscriptions)
    }

    /// Scales idle components to zero and drops idle reusable instances; called
    /// periodically. Returns how many components it unloaded.
    pub fn reap(&self) -> usize {
        let mut unloaded = 0;
        for c in self.apps.snapshot().components() {
            if let Some(p) = c.scaler.loaded() {
                p.prune_idle();
            }
            if c.scaler.reap() {
                tracing::debug!(component = %c.id, "scaled to zero");
                unloaded += 1;
            }
        }
        unloaded
    }

    /// Removes an app; its routes answer 404 from now on. In a lattice its record
    /// is deleted and every host removes it.
    pub async fn undeploy(&self, name: &str) -> Result<(), DeployError> {
        self.refuse_while_joining()?;
        self.end_rollout(name, rollout::Phase::Aborted, "the app was undeployed")
            .await;
        if let Some(lattice) = self.lattice() {
            let exists = lattice
                .apps()
                .get(name)
                .await
                .map_err(|e| DeployError::Storage(e.to_string()))?
                .is_some();
            if !exists && !self.apps.snapshot().apps.contains_key(name) {
                return Err(DeployError::NotFound(name.to_string()));
            }
            lattice
                .apps()
                .delete(name)
                .await
                .map_err(|e| DeployError::Storage(format!("cannot delete the app record: {e}")))?;
            self.lock_refused().remove(name);
            return match self.remove_local(name).await {
                Ok(()) | Err(DeployError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            };
        }
        self.remove_local(name).await
    }

    /// Removes an app from this host.
    pub(crate) async fn remove_local(&self, name: &str) -> Result<(), DeployError> {
        let record = self.record_path(name);
        let removed = self
            .apps
            .remove(name, || {
                match std::fs::remove_file(&record) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot remove {}: {e}", record.display())),
                }
                if let Some(subs) = self.lock_subscriptions().remove(name) {
                    subs.stop.cancel();
                }
                Ok(())
            })
            .await
            .map_err(DeployError::Storage)?;
        match removed {
            Some(app) => {
                tracing::info!(app = %name, version = %app.manifest.app.version, "undeployed");
                Ok(())
            }
            None => Err(DeployError::NotFound(name.to_string())),
        }
    }

    fn lock_subscriptions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Subscribed>> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_refused(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a user's message on the bus, or sends it as a request and returns
    /// the reply.
    pub async fn publish(
        &self,
        request: PublishRequest,
    ) -> Result<Option<PublishReply>, crate::bus::BusError> {
        let message = crate::bus::Message {
            subject: request.subject,
            reply_to: None,
            headers: request.headers,
            body: request.data.into(),
        };
        match request.request_timeout_ms {
            None => self.bus.publish(message).await.map(|()| None),
            Some(ms) => {
                let reply = self
                    .bus
                    .request(message, std::time::Duration::from_millis(ms.max(1)))
                    .await?;
                Ok(Some(PublishReply {
                    subject: reply.subject,
                    data: String::from_utf8_lossy(&reply.body).into_owned(),
                    headers: reply.headers,
                }))
            }
        }
    }

    /// Waits (at most `timeout`) for message handlers still running; call after
    /// shutdown stopped the subscriptions.
    pub async fn drain(&self, timeout: std::time::Duration) {
        self.handlers.close();
        let (_, handlers) = tokio::join!(
            self.jobs.drain(timeout),
            tokio::time::timeout(timeout, self.handlers.wait())
        );
        if handlers.is_err() {
            tracing::warn!(
                running = self.handlers.len(),
                "message handlers still running after the drain timeout; stopping them"
            );
        }
    }

    /// The bus this host's components publish to and subscribe on.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Everything deployed, for `wasmhive status`.
    pub fn status(&self) -> status::HostStatus {
        let mut st = status::HostStatus::collect(
            &self.apps.snapshot(),
            &self.config,
            self.started.elapsed(),
        );
        st.bus = status::BusStatus {
            kind: self.bus.kind().to_string(),
            describe: self.bus.describe(),
            connected: self.bus.connected(),
        };
        for app in &mut st.apps {
            for c in &mut app.components {
                c.circuits = self.mesh.circuits(&ComponentId {
                    app: app.name.as_str().into(),
                    component: c.name.as_str().into(),
                    version: app.version.as_str().into(),
                });
            }
        }
        if let Some(l) = self.lattice() {
            let me = l.hosts().me();
            st.lattice = Some(status::LatticeStatus {
                name: l.name().to_string(),
                host_id: me.id.clone(),
                host_name: me.name.clone(),
                hosts: l.hosts().live().len(),
            });
            st.refused = self
                .lock_refused()
                .iter()
                .map(|(app, reason)| status::Refused {
                    app: app.clone(),
                    reason: reason.clone(),
                })
                .collect();
        }
        st
    }

    /// Re-deploys the apps persisted in the data dir (after a restart), or in a
    /// lattice, converges to the lattice's records and keeps converging. Failures are
    /// logged and skipped: one broken record does not keep the others down.
    pub async fn restore(self: &Arc<Self>) {
        if let Some(lattice) = self.lattice().cloned() {
            converge::start(self.clone(), lattice).await;
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.records) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let request = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<DeployRequest>(&b).map_err(|e| e.to_string())
                });
            match request {
                Ok(request) => {
                    if let Err(e) = self.deploy(request).await {
                        tracing::error!(record = %path.display(), error = %e, "cannot restore deployment");
                    }
                }
                Err(e) => {
                    tracing::error!(record = %path.display(), error = %e, "unreadable deployment record")
                }
            }
        }
    }

    fn record_path(&self, app: &str) -> PathBuf {
        self.records.join(format!("{app}.json"))
    }

    fn persist(&self, app: &App) -> Result<(), String> {
        let path = self.record_path(app.name());
        let bytes = serde_json::to_vec_pretty(&app.source).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot persist deployment to {}: {e}", path.display()))
    }
}
