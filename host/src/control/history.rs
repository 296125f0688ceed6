//! Each app's deploy history and rollback (`wasmhive history APP`, `wasmhive
//! rollback APP [--to VERSION]`).
//!
//! Every version that goes live is appended to the app's history: its version label,
//! when, the sha256 of its manifest text, and the deploy request itself (manifest text
//! and component digests), so a rollback redeploys it with no upload and no compile:
//! the component bytes are in the blob store (never removed today) and their compiled
//! code in the compile cache. The last [`KEEP`] versions are kept, in the host's
//! key-value backend (redb alone; JetStream in a lattice, where every host that
//! applies a version appends it once: an entry equal to the latest is not repeated),
//! under a namespace no component can open (`#deploys` is not a component name).

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{ControlPlane, DeployError, DeployReport, DeployRequest};
use crate::apps::App;
use crate::state::{KvStore, Namespace};

/// Versions kept per app.
pub const KEEP: usize = 10;

/// One version that went live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its version label.
    pub version: String,
    /// When it went live, Unix milliseconds.
    pub deployed_at_ms: u64,
    /// `sha256:<hex>` of its manifest text.
    pub manifest_digest: String,
    /// How it came: `deploy`, or `rollback` (from which version).
    pub how: String,
    /// What was deployed (the manifest text and component digests).
    pub source: DeployRequest,
}

/// `wasmhive history APP`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    /// The app.
    pub app: String,
    /// The version running now, if the app is deployed.
    pub current: Option<String>,
    /// Its versions, newest first (without their manifests).
    pub versions: Vec<HistoryEntry>,
}

fn ns(app: &str) -> Namespace {
    Namespace::new(app, "#deploys", "versions")
}

fn storage(e: impl std::fmt::Display) -> DeployError {
    DeployError::Storage(e.to_string())
}

/// Whether two deploys are the same version (same manifest, same bytes).
fn same(a: &DeployRequest, b: &DeployRequest) -> bool {
    a.manifest == b.manifest && a.sources == b.sources
}

async fn read(
    kv: &dyn KvStore,
    app: &str,
) -> Result<(Option<Vec<u8>>, Vec<HistoryEntry>), DeployError> {
    let raw = kv.get(&ns(app), "versions").await.map_err(storage)?;
    let entries = match &raw {
        Some(bytes) => serde_json::from_slice(bytes).map_err(storage)?,
        None => Vec::new(),
    };
    Ok((raw, entries))
}

impl ControlPlane {
    fn history_store(&self) -> Result<&dyn KvStore, DeployError> {
        self.services
            .kv
            .as_deref()
            .ok_or_else(|| storage("this host has no key-value storage for the deploy history"))
    }

    /// Appends `app` (just gone live) to its history, unless it is the latest entry
    /// already; `how` says how it came. Failures are logged, not returned: the deploy
    /// itself succeeded.
    pub(crate) async fn record_version(&self, app: &App, how: &str) {
        let result = async {
            let kv = self.history_store()?;
            let mut source = app.source.clone();
            source.stopped.clear();
            for _ in 0..8 {
                let (raw, mut entries) = read(kv, app.name()).await?;
                if entries.last().is_some_and(|e| same(&e.source, &source)) {
                    return Ok(());
                }
                entries.push(HistoryEntry {
                    version: app.manifest.app.version.clone(),
                    deployed_at_ms: crate::jobs::history::now_ms(),
                    manifest_digest: format!(
                        "sha256:{}",
                        hex::encode(sha2::Sha256::digest(source.manifest.as_bytes()))
                    ),
                    how: how.to_string(),
                    source: source.clone(),
                });
                let over = entries.len().saturating_sub(KEEP);
                entries.drain(..over);
                let json = serde_json::to_vec(&entries).map_err(storage)?;
                if kv
                    .compare_and_swap(&ns(app.name()), "versions", raw, json)
                    .await
                    .map_err(storage)?
                {
                    return Ok(());
                }
            }
            Err(storage("the deploy history changed too often to update"))
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(app = %app.name(), error = %e, "cannot record the version in the deploy history");
        }
    }

    /// The history of `app`, newest first, without the manifests' text.
    pub async fn history(&self, app: &str) -> Result<History, DeployError> {
        let (_, entries) = read(self.history_store()?, app).await?;
        let current = self
            .apps
            .snapshot()
            .apps
            .get(app)
            .map(|a| a.manifest.app.version.clone());
        if entries.is_empty() && current.is_none() {
            return Err(DeployError::NotFound(app.to_string()));
        }
        let versions = entries
            .into_iter()
            .rev()
            .map(|mut e| {
                e.source.manifest.clear();
                e
            })
            .collect();
        Ok(History {
            app: app.to_string(),
            current,
            versions,
        })
    }

    /// Deploys an earlier version of `app` again: `to` (the latest entry with that
    /// version label), or the version before the one running.
    pub async fn rollback(&self, app: &str, to: Option<&str>) -> Result<DeployReport, DeployError> {
        let (_, entries) = read(self.history_store()?, app).await?;
        let running = self.apps.snapshot().apps.get(app).cloned();
        let Some(running) = running else {
            return Err(DeployError::NotFound(app.to_string()));
        };
        let target = match to {
            Some(v) => entries
                .iter()
                .rev()
                .find(|e| e.version == v)
                .ok_or_else(|| {
                    DeployError::Missing(format!(
                        "{app} has no version {v:?} in its history (kept: {})",
                        entries
                            .iter()
                            .map(|e| e.version.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
            None => entries
                .iter()
                .rev()
                .find(|e| !same(&e.source, &running.source))
                .ok_or_else(|| {
                    DeployError::Missing(format!(
                        "{app} has no earlier version in its history to roll back to"
                    ))
                })?,
        };
        if self.rollout_running(app) {
            return Err(DeployError::Invalid(format!(
                "a rollout of {app} is in progress: promote or abort it before rolling back"
            )));
        }
        let mut request = target.source.clone();
        // A lattice keeps its stopped components stopped across versions.
        request.stopped = running.source.stopped.clone();
        // A directory named in the lattice's history is not trusted to be this
        // machine's (as for records applied from the lattice).
        if self.lattice().is_some() {
            request.manifest_dir = None;
        }
        let from = running.manifest.app.version.clone();
        tracing::info!(%app, from = %from, to = %target.version, "rolling back");
        self.deploy_as(request, &format!("rollback from {from}"))
            .await
    }
}

impl History {
    /// A human-readable listing, newest first.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: running {}\n",
            self.app,
            self.current.as_deref().unwrap_or("nothing (undeployed)")
        );
        for e in &self.versions {
            let when = chrono::DateTime::from_timestamp_millis(e.deployed_at_ms as i64)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<16} {when}  {:<28} {}\n",
                e.version,
                e.how,
                &e.manifest_digest[..e.manifest_digest.len().min(19)]
            ));
        }
        out
    }
}
