//! Content-addressed storage of uploaded component bytes under `DATA/blobs/`.
//!
//! Deploys reference components by digest (`sha256:<hex>`), so an unchanged component
//! is never uploaded, stored or compiled twice.
//!
//! An upload ([`Upload`]) is streamed to a private file under `DATA/blobs/uploads/`,
//! hashed and size-checked as it arrives (the host never holds it in memory), and
//! enters the store only once its digest matches and it validates as a WebAssembly
//! component. Leftovers of uploads cut short are removed when the store opens.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// More bytes than the limit.
    #[error("uploads are limited to {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Not a WebAssembly component (wrong preamble, or invalid).
    #[error("not a WebAssembly component: {0}")]
    NotComponent(String),
    /// The bytes hash to another digest, or the digest is malformed.
    #[error("{0}")]
    Digest(String),
    /// The client's body ended with an error (it went away mid-upload).
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// The disk failed.
    #[error("cannot store the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// The 8-byte preamble of a component (`\0asm`, version 0x0d, layer 1).
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

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
    /// Opens (creating) the store under `data_dir`, removing leftovers of uploads
    /// cut short.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&dir)?;
        let store = BlobStore { dir };
        let uploads = store.uploads_dir();
        let _ = std::fs::remove_dir_all(&uploads);
        std::fs::create_dir_all(&uploads)?;
        Ok(store)
    }

    fn uploads_dir(&self) -> PathBuf {
        self.dir.with_file_name("uploads")
    }

    /// Starts an upload of at most `limit` bytes that must hash to `digest`.
    pub async fn upload(&self, digest: &str, limit: u64) -> Result<Upload, UploadError> {
        let target = self.path(digest).map_err(UploadError::Digest)?;
        let mut name = [0u8; 16];
        rand::fill(&mut name);
        let path = self
            .uploads_dir()
            .join(format!("{}.part", hex::encode(name)));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let file = options.open(&path).await?;
        Ok(Upload {
            file: Some(file),
            path,
            target,
            digest: digest.to_string(),
            hasher: Sha256::new(),
            len: 0,
            limit,
            head: Vec::with_capacity(COMPONENT_PREAMBLE.len()),
        })
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

/// An upload in progress; dropped unfinished, its file is removed.
pub struct Upload {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    target: PathBuf,
    digest: String,
    hasher: Sha256,
    len: u64,
    limit: u64,
    head: Vec<u8>,
}

impl Upload {
    /// Takes the next piece: refused at once past the limit or when the first bytes
    /// are not a component's preamble.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        self.len += chunk.len() as u64;
        if self.len > self.limit {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        if self.head.len() < COMPONENT_PREAMBLE.len() {
            let take = (COMPONENT_PREAMBLE.len() - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            check_preamble(&self.head)?;
        }
        self.hasher.update(chunk);
        let file = self.file.as_mut().ok_or_else(closed)?;
        file.write_all(chunk).await?;
        Ok(())
    }

    /// Ends the upload: the digest must match and the bytes validate as a component;
    /// then the blob is in the store.
    pub async fn finish(mut self) -> Result<(), UploadError> {
        let mut file = self.file.take().ok_or_else(closed)?;
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        if self.head.len() < COMPONENT_PREAMBLE.len() {
            return Err(UploadError::NotComponent(format!(
                "{} bytes is too short to be one",
                self.len
            )));
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.digest {
            return Err(UploadError::Digest(format!(
                "uploaded bytes hash to {actual}, not {}",
                self.digest
            )));
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || validate_component(&path))
            .await
            .map_err(|e| UploadError::Io(std::io::Error::other(e)))?
            .map_err(UploadError::NotComponent)?;
        tokio::fs::rename(&self.path, &self.target).await?;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // After a successful `finish` the file has moved and this does nothing.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn closed() -> UploadError {
    UploadError::Io(std::io::Error::other("upload already finished"))
}

/// Checks the first bytes seen so far against a component's preamble.
fn check_preamble(head: &[u8]) -> Result<(), UploadError> {
    if COMPONENT_PREAMBLE.starts_with(head) {
        return Ok(());
    }
    let what = if head.len() >= 8 && head[..4] == COMPONENT_PREAMBLE[..4] && head[4] == 1 {
        "this is a core WebAssembly module; wrap it into a component (e.g. `wasm-tools component new`)"
    } else {
        "it does not start with the WebAssembly component preamble"
    };
    Err(UploadError::NotComponent(what.into()))
}

/// Validates the component in `path` (its structure, types and every function body)
/// without reading it into the heap: the file is mapped read-only.
fn validate_component(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let map = Mapped::new(&file).map_err(|e| e.to_string())?;
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    validator
        .validate_all(map.bytes())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A read-only memory map of a whole file.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh private read-only mapping of an open file; the pointer is
        // checked for MAP_FAILED and unmapped exactly once, in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`;
        // the file is the host's private upload file, which nothing writes while it
        // is mapped (the upload's writer is closed before validation).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped only here.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
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

    #[tokio::test]
    async fn uploads_are_checked_as_they_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let leftovers = || std::fs::read_dir(store.uploads_dir()).unwrap().count();
        // Not a component: refused at the first bytes.
        let text = b"#!/bin/sh\necho hi\n";
        let mut u = store.upload(&digest_of(text), 1 << 20).await.unwrap();
        let e = u.write(text).await.unwrap_err();
        assert!(matches!(e, UploadError::NotComponent(_)), "{e}");
        drop(u);
        // Over the limit: refused when the limit is crossed.
        let big = [COMPONENT_PREAMBLE.as_slice(), &[0u8; 100]].concat();
        let mut u = store.upload(&digest_of(&big), 50).await.unwrap();
        assert!(matches!(
            u.write(&big).await.unwrap_err(),
            UploadError::TooLarge { limit: 50 }
        ));
        drop(u);
        // The right preamble, but not a valid component.
        let mut u = store.upload(&digest_of(&big), 1 << 20).await.unwrap();
        u.write(&big).await.unwrap();
        let e = u.finish().await.unwrap_err();
        assert!(matches!(e, UploadError::NotComponent(_)), "{e}");
        assert!(!store.contains(&digest_of(&big)));
        // A valid (empty) component, in pieces.
        let empty = COMPONENT_PREAMBLE;
        let d = digest_of(&empty);
        let mut u = store.upload(&d, 1 << 20).await.unwrap();
        for b in empty.chunks(3) {
            u.write(b).await.unwrap();
        }
        u.finish().await.unwrap();
        assert!(store.contains(&d));
        assert_eq!(leftovers(), 0, "no upload file is left behind");
    }
}
