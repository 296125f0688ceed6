//! Turning a manifest file into a deploy request: the manifest is checked, and the
//! component files it names are stored where the deploy will find them (this host's
//! blob store, a remote host's admin API, or a lattice's object store).

use std::collections::BTreeMap;
use std::path::Path;

use super::DeployRequest;
use super::blobs::{self, BlobStore};
use crate::apps::DeploySource;
use crate::manifest::Manifest;

/// Reads a manifest and the component files it names, storing each in `sink` (the
/// local blob store, or the admin API of a remote host), and returns the deploy
/// request. Manifest errors are reported here, before anything is sent.
pub async fn request_from_file(path: &Path, sink: &dyn BlobSink) -> anyhow::Result<DeployRequest> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read manifest: {e}", path.display()))?;
    let origin = path.display().to_string();
    let manifest = Manifest::parse(&text, &origin)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut sources = BTreeMap::new();
    for c in &manifest.components {
        if sources.contains_key(&c.source) {
            continue;
        }
        let file = base.join(&c.source);
        let bytes = std::fs::read(&file).map_err(|e| {
            anyhow::anyhow!(
                "{origin}: component {}: cannot read source {} ({e}); build the components first (just build)",
                c.name,
                file.display()
            )
        })?;
        let digest = blobs::digest_of(&bytes);
        if !sink.has(&digest).await? {
            sink.put(&digest, bytes).await.map_err(|e| {
                anyhow::anyhow!(
                    "{origin}: component {}: {} refused: {e:#}",
                    c.name,
                    file.display()
                )
            })?;
        }
        sources.insert(c.source.clone(), digest);
    }
    Ok(DeploySource {
        manifest: text,
        origin,
        sources,
        manifest_dir: std::fs::canonicalize(base).ok(),
        stopped: Default::default(),
    })
}

/// Where `request_from_file` puts component bytes.
#[async_trait::async_trait]
pub trait BlobSink: Send + Sync {
    /// Whether the blob is already there.
    async fn has(&self, digest: &str) -> anyhow::Result<bool>;
    /// Stores it.
    async fn put(&self, digest: &str, bytes: Vec<u8>) -> anyhow::Result<()>;
}

#[async_trait::async_trait]
impl BlobSink for BlobStore {
    async fn has(&self, digest: &str) -> anyhow::Result<bool> {
        Ok(self.contains(digest))
    }

    async fn put(&self, digest: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        BlobStore::put(self, digest, &bytes).map_err(anyhow::Error::msg)
    }
}

#[async_trait::async_trait]
impl BlobSink for crate::lattice::Store {
    async fn has(&self, digest: &str) -> anyhow::Result<bool> {
        Ok(self.has_blob(digest).await)
    }

    async fn put(&self, digest: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.put_blob(digest, &bytes).await
    }
}
