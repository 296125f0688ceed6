//! The desired state: deployed apps, their components, and the live route table.
//!
//! The registry is an immutable [`Snapshot`] behind an atomic pointer. Requests load the
//! current snapshot once and keep their `Arc`s, so a deploy that swaps in a new
//! snapshot never disturbs requests in flight: they finish on the version they
//! started with, and new requests see the new version. Writers (deploy, undeploy) are
//! serialized by a mutex and build the next snapshot completely (including the route
//! table, which refuses conflicts) before swapping it in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::ids::ComponentId;
use crate::manifest::{ComponentSpec, Manifest};
use crate::routes::{RouteMatch, RouteTable};
use crate::runtime::{HttpFlavor, LoadInfo};
use crate::scaler::Scaler;

/// One deployed component version.
pub struct DeployedComponent {
    /// App, component, version.
    pub id: ComponentId,
    /// The manifest section it was deployed from.
    pub spec: ComponentSpec,
    /// sha256 of the component bytes (`sha256:<hex>`).
    pub digest: String,
    /// Which HTTP handler it exports, if any.
    pub flavor: Option<HttpFlavor>,
    /// Its export names (which triggers it can serve: see [`crate::trigger::serves`]).
    pub exports: Vec<String>,
    /// How it was loaded at deploy time (cache hit or compile).
    pub load: LoadInfo,
    /// Admission and lifecycle; hands out the loaded component.
    pub scaler: Scaler,
    /// Deadline of one invocation (from its grants).
    pub timeout: std::time::Duration,
    /// Live instances (stores) of this component right now.
    pub instances: Arc<std::sync::atomic::AtomicU32>,
    /// Counters shown in status.
    pub stats: ComponentStats,
    /// Its request series in the host's metrics.
    pub series: crate::telemetry::metrics::ComponentSeries,
    /// Who may call its routes (`None`: public).
    pub auth: Option<Arc<crate::auth::Policy>>,
    /// Its rate limit and whose requests count together.
    pub rate_limit: Option<(Arc<crate::limit::Limiter>, crate::limit::RateKey)>,
    /// Where it runs in a lattice.
    pub placement: Placement,
}

/// Where a component runs in a lattice, as this host computed it from the live hosts
/// (`crate::lattice::placement`). A host alone runs everything: the default.
pub struct Placement {
    here: std::sync::atomic::AtomicBool,
    eligible: std::sync::atomic::AtomicBool,
    hosts: ArcSwap<Vec<String>>,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            here: true.into(),
            eligible: true.into(),
            hosts: Default::default(),
        }
    }
}

impl Placement {
    /// Whether this host runs it.
    pub fn here(&self) -> bool {
        self.here.load(Ordering::Relaxed)
    }

    /// Whether this host's labels allow it to run it (it serves an invocation itself
    /// when no host running it answers).
    pub fn eligible(&self) -> bool {
        self.eligible.load(Ordering::Relaxed)
    }

    /// Names of the hosts that run it (empty alone, or when no host can).
    pub fn hosts(&self) -> Arc<Vec<String>> {
        self.hosts.load_full()
    }

    /// Records a new placement; returns whether `here` changed.
    pub fn set(&self, here: bool, eligible: bool, hosts: Vec<String>) -> bool {
        self.eligible.store(eligible, Ordering::Relaxed);
        self.hosts.store(Arc::new(hosts));
        self.here.swap(here, Ordering::Relaxed) != here
    }
}

/// Per-component counters.
#[derive(Default)]
pub struct ComponentStats {
    /// Invocations started.
    pub invocations: AtomicU64,
    /// Invocations that failed (trap, timeout, error).
    pub failures: AtomicU64,
    /// Unix milliseconds of the last invocation start (0 = never).
    pub last_invocation_ms: AtomicU64,
    /// Service calls to it served on the caller's host.
    pub calls_local: AtomicU64,
    /// Service calls to it forwarded to another host of the lattice.
    pub calls_remote: AtomicU64,
    /// Invocations that ended with a status of 500 or more (a guest's own 5xx
    /// included), for rollout analysis.
    pub server_errors: AtomicU64,
    /// How long invocations took, for rollout analysis.
    pub latency: LatencyBuckets,
}

/// Invocation times in doubling buckets from 100 µs (the last one holds the rest):
/// enough to bound a percentile within a factor of two, with no lock.
#[derive(Default)]
pub struct LatencyBuckets([AtomicU64; LATENCY_BUCKETS]);

/// Buckets of [`LatencyBuckets`]: up to ~14 minutes.
pub const LATENCY_BUCKETS: usize = 24;

impl LatencyBuckets {
    /// The upper bound of bucket `i`.
    pub fn bound(i: usize) -> std::time::Duration {
        std::time::Duration::from_micros(100u64 << i.min(LATENCY_BUCKETS - 1))
    }

    /// Records one invocation of `seconds`.
    pub fn record(&self, seconds: f64) {
        let micros = (seconds * 1e6) as u64;
        let i = (0..LATENCY_BUCKETS - 1)
            .find(|i| micros <= 100u64 << i)
            .unwrap_or(LATENCY_BUCKETS - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn counts(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    /// The upper bound of the bucket holding the `q` quantile (0..1) of `counts`.
    pub fn quantile(counts: &[u64; LATENCY_BUCKETS], q: f64) -> Option<std::time::Duration> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::bound(i));
            }
        }
        Some(Self::bound(LATENCY_BUCKETS - 1))
    }
}

impl ComponentStats {
    /// Records the start of an invocation.
    pub fn started(&self) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_invocation_ms.store(now, Ordering::Relaxed);
    }

    /// Records a failed invocation.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a deployment was made from, kept so the host can restore it after a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeploySource {
    /// The manifest text.
    pub manifest: String,
    /// Where the manifest came from (shown in errors).
    pub origin: String,
    /// `source` as written in the manifest → content digest of the uploaded bytes.
    pub sources: BTreeMap<String, String>,
    /// The manifest's directory (absolute), when it was deployed from this machine:
    /// relative secret files resolve against it, and by default only its tree may be
    /// read. The admin API drops it from deploys that arrive from other machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_dir: Option<std::path::PathBuf>,
    /// In a lattice: components stopped with `wasmhive stop` (on every host, until
    /// `wasmhive start`). Alone, stopping is not recorded.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub stopped: std::collections::BTreeSet<String>,
}

/// One deployed app version.
pub struct App {
    /// The manifest it came from.
    pub manifest: Manifest,
    /// Its components, in name order.
    pub components: Vec<Arc<DeployedComponent>>,
    /// When it was deployed.
    pub deployed_at: SystemTime,
    /// How to deploy it again.
    pub source: DeploySource,
}

impl App {
    /// The app's name.
    pub fn name(&self) -> &str {
        &self.manifest.app.name
    }
}

/// A new version of an app loaded beside the serving one during a rollout: HTTP
/// requests to the app's routes go to it by weight (canary) or by preview header.
pub struct Candidate {
    /// The new version.
    pub app: Arc<App>,
    /// Its share of requests, per-mille (0 for blue-green: preview only).
    pub weight: std::sync::atomic::AtomicU32,
    /// The header (lowercase) whose value, equal to the new version, selects it.
    pub preview_header: http::HeaderName,
}

impl Candidate {
    /// Whether a request with `headers`, from `client` (if known), goes to the new
    /// version: by preview header, else by weight (by the caller's key when
    /// `sticky`, so one caller sees one version within a step).
    pub fn takes(&self, headers: &http::HeaderMap, client: Option<std::net::IpAddr>) -> bool {
        if headers
            .get(&self.preview_header)
            .is_some_and(|v| v.as_bytes() == self.app.manifest.app.version.as_bytes())
        {
            return true;
        }
        let weight = self.weight.load(Ordering::Relaxed);
        if weight == 0 {
            return false;
        }
        use crate::manifest::rollout::Sticky;
        let ip = || client.map(|ip| ip.to_string().into_bytes());
        let key: Option<Vec<u8>> = match &self.app.manifest.rollout.sticky {
            None => None,
            Some(Sticky::ClientIp) => ip(),
            Some(Sticky::Subject) => headers
                .get(crate::headers::AUTH_SUBJECT)
                .map(|v| v.as_bytes().to_vec())
                .or_else(ip),
            Some(Sticky::Header(name)) => headers
                .get(name.as_str())
                .map(|v| v.as_bytes().to_vec())
                .or_else(ip),
        };
        let bucket = match key {
            Some(key) => bucket_of(&key),
            None => rand::random_range(0..1000),
        };
        bucket < weight
    }

    /// The new version's component named like `component`, if it has one.
    pub fn component(&self, component: &DeployedComponent) -> Option<&Arc<DeployedComponent>> {
        self.app
            .components
            .iter()
            .find(|c| c.id.component == component.id.component)
    }
}

/// A caller's key as a stable bucket in 0..1000 (FNV-1a).
fn bucket_of(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % 1000) as u32
}

/// An immutable view of everything deployed.
#[derive(Default)]
pub struct Snapshot {
    /// Apps by name.
    pub apps: BTreeMap<String, Arc<App>>,
    /// The live route table.
    pub routes: RouteTable<Arc<DeployedComponent>>,
    /// New versions loaded beside the serving ones (rollouts), by app.
    pub candidates: BTreeMap<String, Arc<Candidate>>,
}

impl Snapshot {
    /// Builds a snapshot from apps, refusing route conflicts between them.
    pub fn build(apps: BTreeMap<String, Arc<App>>) -> Result<Snapshot, String> {
        let mut routes = RouteTable::default();
        for app in apps.values() {
            for c in &app.components {
                let owner = format!("app {}, component {}", app.name(), c.id.component);
                for r in &c.spec.triggers.http.routes {
                    routes.insert(r.method.clone(), &r.path, &owner, c.clone())?;
                }
            }
        }
        Ok(Snapshot {
            apps,
            routes,
            candidates: BTreeMap::new(),
        })
    }

    /// The component `target` of `app` that serves a service call from a component at
    /// `caller_version`: during a rollout, a caller of the new version calls the new
    /// version's components, other callers reach it by weight or preview header, as
    /// requests do.
    pub fn callee(
        &self,
        app: &str,
        target: &str,
        caller_version: &str,
        headers: &http::HeaderMap,
    ) -> Option<Arc<DeployedComponent>> {
        let serving = self
            .apps
            .get(app)
            .and_then(|a| a.components.iter().find(|c| &*c.id.component == target));
        let Some(candidate) = self.candidates.get(app) else {
            return serving.cloned();
        };
        let new = candidate
            .app
            .components
            .iter()
            .find(|c| &*c.id.component == target);
        let serving_version = self.apps.get(app).map(|a| a.manifest.app.version.as_str());
        let from_new = candidate.app.manifest.app.version == caller_version
            && serving_version != Some(caller_version);
        if from_new || candidate.takes(headers, None) {
            new.or(serving).cloned()
        } else {
            serving.cloned()
        }
    }

    /// The candidate (rollout) of `app`, if it has one.
    pub fn candidate(&self, app: &str) -> Option<&Arc<Candidate>> {
        if self.candidates.is_empty() {
            return None;
        }
        self.candidates.get(app)
    }

    /// Every deployed component, app by app.
    pub fn components(&self) -> impl Iterator<Item = &Arc<DeployedComponent>> {
        self.apps.values().flat_map(|a| a.components.iter())
    }

    /// Finds the component serving `method path`.
    pub fn route<'a>(
        &'a self,
        method: &http::Method,
        path: &'a str,
    ) -> RouteMatch<'a, Arc<DeployedComponent>> {
        self.routes.lookup(method, path)
    }
}

/// The registry of deployed apps.
#[derive(Default)]
pub struct Apps {
    current: ArcSwap<Snapshot>,
    writer: tokio::sync::Mutex<()>,
}

impl Apps {
    /// The current snapshot. Cheap; hold it for the duration of one request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces (or adds) `app`. `commit` runs after the new snapshot is built and
    /// before it is published (persistence); if either fails nothing changes. Returns
    /// the version that was replaced, if any.
    pub async fn put(
        &self,
        app: Arc<App>,
        commit: impl FnOnce(&App) -> Result<(), String>,
    ) -> Result<Option<Arc<App>>, String> {
        let _w = self.writer.lock().await;
        let current = self.current.load_full();
        let mut apps = current.apps.clone();
        let name = app.name().to_string();
        let previous = apps.insert(name.clone(), app.clone());
        let mut next = Snapshot::build(apps)?;
        next.candidates = current.candidates.clone();
        next.candidates.remove(&name);
        commit(&app)?;
        self.current.store(Arc::new(next));
        Ok(previous)
    }

    /// Removes the app called `name`; `commit` runs before publishing. Returns it, or
    /// `None` if no such app is deployed.
    pub async fn remove(
        &self,
        name: &str,
        commit: impl FnOnce() -> Result<(), String>,
    ) -> Result<Option<Arc<App>>, String> {
        let _w = self.writer.lock().await;
        let current = self.current.load_full();
        if !current.apps.contains_key(name) {
            return Ok(None);
        }
        let mut apps = current.apps.clone();
        let removed = apps.remove(name);
        let mut next = Snapshot::build(apps)?;
        next.candidates = current.candidates.clone();
        next.candidates.remove(name);
        commit()?;
        self.current.store(Arc::new(next));
        Ok(removed)
    }
}

impl Apps {
    /// Loads `candidate` beside its app's serving version (replacing an earlier
    /// candidate of that app).
    pub async fn stage(&self, candidate: Arc<Candidate>) {
        self.with_candidates(|c| {
            c.insert(candidate.app.name().to_string(), candidate);
        })
        .await;
    }

    /// Drops the candidate of `app`, if any; returns it.
    pub async fn unstage(&self, app: &str) -> Option<Arc<Candidate>> {
        let mut removed = None;
        self.with_candidates(|c| removed = c.remove(app)).await;
        removed
    }

    async fn with_candidates(&self, change: impl FnOnce(&mut BTreeMap<String, Arc<Candidate>>)) {
        let _w = self.writer.lock().await;
        let current = self.current.load_full();
        let mut candidates = current.candidates.clone();
        change(&mut candidates);
        // The serving apps' routes did not conflict a moment ago: they still do not.
        let Ok(mut next) = Snapshot::build(current.apps.clone()) else {
            return;
        };
        next.candidates = candidates;
        self.current.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_are_bucket_bounds() {
        let b = LatencyBuckets::default();
        for _ in 0..98 {
            b.record(0.000_05);
        }
        b.record(0.030);
        b.record(0.030);
        let counts = b.counts();
        assert_eq!(
            LatencyBuckets::quantile(&counts, 0.5),
            Some(LatencyBuckets::bound(0))
        );
        // 30 ms falls in the bucket up to 51.2 ms.
        assert_eq!(
            LatencyBuckets::quantile(&counts, 0.99),
            Some(std::time::Duration::from_micros(51_200))
        );
        assert_eq!(LatencyBuckets::quantile(&[0; LATENCY_BUCKETS], 0.99), None);
    }

    #[test]
    fn sticky_buckets_are_stable() {
        assert_eq!(bucket_of(b"user-1"), bucket_of(b"user-1"));
        assert!(bucket_of(b"user-1") < 1000);
    }
}
