//! Content-addressed storage of uploaded component bytes under `DATA/blobs/`.
//!
//! Deploys reference components by digest (`sha256:<hex>`), so an unchanged component
//! is never uploaded, stored or compiled twice.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The digest of `bytes`, as `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks a digest's form and returns its hex part.
pub fn parse_digest(digest: &str) -> Result<&str, String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest {digest:?} must start with \"sha256:\""))?;
    if hex.len() != 64
        || !hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    {
        return Err(format!(
            "digest {digest:?} must be sha256: and 64 lowercase hex digits"
        ));
    }
    Ok(hex)
}

/// The blob directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir)?;
        Ok(BlobStore { dir })
    }

    fn path(&self, digest: &str) -> Result<PathBuf, String> {
        Ok(self.dir.join(format!("{}.wasm", parse_digest(digest)?)))
    }

    /// Whether the blob is stored.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores `bytes`, which must hash to `digest`.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.path(digest)?;
        let actual = digest_of(bytes);
        if actual != digest {
            return Err(format!("uploaded bytes hash to {actual}, not {digest}"));
        }
        if path.is_file() {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot store blob {digest}: {e}"))
    }

    /// Reads a stored blob.
    pub fn read(&self, digest: &str) -> std::io::Result<Vec<u8>> {
        let path = self
            .path(digest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        std::fs::read(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_checks_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = digest_of(b"abc");
        assert!(store.put(&digest_of(b"other"), b"abc").is_err());
        store.put(&d, b"abc").unwrap();
        assert!(store.contains(&d));
        assert_eq!(store.read(&d).unwrap(), b"abc");
        assert!(parse_digest("md5:abc").is_err());
    }
}
