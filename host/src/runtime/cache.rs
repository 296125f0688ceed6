//! The on-disk compile cache: precompiled components keyed by content and engine.
//!
//! A component is compiled once per (sha256 of its bytes, engine compatibility hash):
//! each of the host's engines (sync and concurrent, see `engine`) has its own directory.
//! The artifact lives at `DATA/cache/<engine>/<sha256>.cwasm`, written by this host
//! (temporary file + rename, so a crash never leaves a torn artifact). Only files in
//! this directory are ever deserialized: `Component::deserialize_file` trusts its input,
//! and these are the only artifacts the host made itself. A restart, a scale-from-zero
//! or a redeploy of unchanged bytes loads from here instead of recompiling.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileOrigin {
    /// Already in memory, loaded for another deployment of the same bytes.
    Memory,
    /// Deserialized from the on-disk cache.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

/// What loading a component cost.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    /// Cache hit or fresh compile.
    pub origin: CompileOrigin,
    /// Wall time spent.
    pub took: Duration,
}

/// The cache directory for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

impl CompileCache {
    /// Opens (creating) the cache under `data_dir` for `engine`'s configuration.
    pub fn open(data_dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        let dir = data_dir.join("cache").join(engine_key(engine));
        std::fs::create_dir_all(&dir)?;
        Ok(CompileCache { dir })
    }

    fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.cwasm"))
    }

    /// Whether an artifact for `digest` exists.
    pub fn contains(&self, digest: &str) -> bool {
        self.path_for(digest).is_file()
    }

    /// The cached artifact for `digest`, if there is a readable one (an unreadable
    /// one is deleted). Blocking: call from a blocking thread.
    pub fn load_cached(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path_for(digest);
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file is in our cache directory, written by `compile` below from
        // `Engine::precompile_component` output of this engine configuration (the
        // directory name is the engine's compatibility hash). Wasmtime also checks the
        // header and rejects artifacts from another configuration.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unreadable compile cache entry");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Compiles `wasm` (whose sha256 is `digest`) with `engine` and stores the
    /// artifact. Blocking: call from a blocking thread.
    pub fn compile(
        &self,
        engine: &Engine,
        digest: &str,
        wasm: &[u8],
    ) -> Result<Component, CompileFailure> {
        let path = self.path_for(digest);
        let artifact = engine
            .precompile_component(wasm)
            .map_err(|e| CompileFailure::Refused(format!("{e:#}")))?;
        self.store(&path, &artifact)
            .map_err(|e| CompileFailure::Cache(format!("cannot write {}: {e}", path.display())))?;
        drop(artifact);
        // SAFETY: the artifact was produced just now by this engine and written by us.
        // Loading it from the file (rather than the buffer) maps the code file-backed,
        // so idle code pages can be shared and reclaimed by the kernel.
        unsafe { Component::deserialize_file(engine, &path) }
            .map_err(|e| CompileFailure::Cache(format!("cannot load {}: {e:#}", path.display())))
    }

    fn store(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        // A name of its own per write: two loads of the same digest at once must not
        // write one temporary file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        std::fs::write(&tmp, artifact)?;
        std::fs::rename(&tmp, path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Why [`CompileCache::compile`] produced no component.
#[derive(Debug)]
pub enum CompileFailure {
    /// The engine refused the bytes (not a component, invalid, or a feature this
    /// engine lacks).
    Refused(String),
    /// Compiled, but the artifact could not be written or mapped back.
    Cache(String),
}

/// A stable directory name for the engine's compatibility hash.
fn engine_key(engine: &Engine) -> String {
    // SipHash with fixed keys: stable for a given build of the host, which is all a
    // cache key needs (a different build may compile differently anyway).
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}
