//! The wasm runtime: the engines (sync for WASI 0.2, concurrent for WASI 0.3), their
//! linkers and compile caches, and invocation of prepared components.
//!
//! This module narrows wasmtime for the rest of the host. It compiles a component once
//! per content hash (cached on disk), pre-instantiates it once per deployed version
//! ([`PreparedComponent`]), and runs each invocation in a fresh or reused `Store`
//! with the component's [`Grants`] (what its capabilities allow) and [`Limits`]. It
//! knows nothing about routes, subjects, apps or scaling; callers hand it a request
//! or a message and get a response or an [`InvokeError`].

mod cache;
mod engine;
mod fair;
mod http;
mod inspect;
mod invoke;
mod message;
mod p3;
mod run;
mod state;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

pub use cache::{CompileOrigin, LoadInfo};
pub use inspect::{ComponentInterface, HttpFlavor};
pub use invoke::{InvokeError, PreparedComponent};
pub use run::CommandRun;
pub use state::{HostMemory, HostSide, InstanceState};

use crate::capability::Grants;
use crate::config::PoolConfig;

/// What the runtime enforces on one component version: resources and reuse
/// (resolved from its manifest and the host's defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory cap in bytes.
    pub memory: u64,
    /// Wall-clock deadline per invocation.
    pub timeout: Duration,
    /// Instance reuse.
    pub reuse: ReusePolicy,
}

/// How many invocations one instance may serve (`[components.X.instances]`), for
/// every trigger. Unset values take the defaults of `wasmtime serve`, which differ by
/// flavor: a WASI 0.2 component gets a fresh instance per invocation, a WASI 0.3 one
/// serves 128, 16 at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReusePolicy {
    /// Invocations one instance serves before it is dropped (1: fresh every time).
    pub max_requests: Option<u32>,
    /// Requests one instance serves at once (WASI 0.3 only).
    pub max_concurrent: Option<u32>,
    /// An idle reusable instance is dropped after this.
    pub idle_timeout: Duration,
    /// Instances of the component at most (its `scale.max_instances`).
    pub max_instances: u32,
}

impl ReusePolicy {
    /// `max_requests` with the flavor's default (a component without an HTTP
    /// handler counts as WASI 0.2).
    pub fn max_requests_for(&self, flavor: Option<HttpFlavor>) -> u32 {
        self.max_requests.unwrap_or(match flavor {
            Some(HttpFlavor::P3) => 128,
            Some(HttpFlavor::P2) | None => 1,
        })
    }

    /// `max_concurrent` with the flavor's default (always 1 for WASI 0.2).
    pub fn max_concurrent_for(&self, flavor: HttpFlavor) -> u32 {
        match flavor {
            HttpFlavor::P2 => 1,
            HttpFlavor::P3 => self.max_concurrent.unwrap_or(16),
        }
    }
}

/// How long an idle reusable instance is kept when the manifest does not say.
pub const DEFAULT_REUSE_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

impl Default for ReusePolicy {
    fn default() -> Self {
        ReusePolicy {
            max_requests: None,
            max_concurrent: None,
            idle_timeout: DEFAULT_REUSE_IDLE_TIMEOUT,
            max_instances: 100,
        }
    }
}

/// Errors from compiling or preparing a component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The bytes are not a valid component, or failed to compile.
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component imports something this host does not provide or the manifest does
    /// not grant.
    #[error("{0}")]
    Imports(String),
    /// The component exports no handler this host can call.
    #[error("{0}")]
    Exports(String),
    /// Pre-instantiation failed (type mismatch with the host's interfaces).
    #[error("cannot link component: {0}")]
    Link(String),
    /// Reading or writing the compile cache failed.
    #[error("compile cache: {0}")]
    Cache(String),
}

/// The error for bytes an engine refused; says why when it is a proposal the host
/// turns off.
fn refused_error(message: String) -> RuntimeError {
    if ["not enabled", "not supported without", "proposal"]
        .iter()
        .any(|m| message.contains(m))
    {
        return RuntimeError::Compile(format!("{message}; {}", engine::PROPOSALS_OFF));
    }
    RuntimeError::Compile(message)
}

/// One engine with the linker and compile cache that go with it.
struct EngineSet {
    engine: Engine,
    linker: Arc<Linker<InstanceState>>,
    cache: cache::CompileCache,
}

impl EngineSet {
    fn new(kind: engine::EngineKind, pool: &PoolConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let engine = engine::build_engine(pool, kind)?;
        let mut linker = Linker::new(&engine);
        // Linking an interface grants nothing by itself: what a guest can reach
        // through it is decided per instance by its grants.
        crate::capability::add_to_linker(&mut linker, kind == engine::EngineKind::Concurrent)?;
        let cache = cache::CompileCache::open(data_dir, &engine).map_err(|e| {
            anyhow::anyhow!(
                "cannot open compile cache under {}: {e}",
                data_dir.display()
            )
        })?;
        Ok(EngineSet {
            engine,
            linker: Arc::new(linker),
            cache,
        })
    }
}

/// The host's wasm runtime.
///
/// It has two engines ([`engine::EngineKind`]): components that do not use the
/// component model's async ABI (WASI 0.2) run on the sync one, which skips wasmtime's
/// concurrent bookkeeping on every call; the others (WASI 0.3) on the concurrent one,
/// built on first need (a component the sync engine refuses, or a look into its
/// cache; ADR 0009). Each has its own instance pool.
pub struct Runtime {
    sync: EngineSet,
    concurrent: OnceLock<EngineSet>,
    /// Serializes building the concurrent engine.
    concurrent_init: std::sync::Mutex<()>,
    /// The concurrent engine, for the epoch ticker.
    concurrent_engine: Arc<OnceLock<Engine>>,
    pool: PoolConfig,
    data_dir: std::path::PathBuf,
    /// Components in memory by digest (entries die with their last user).
    loaded: std::sync::Mutex<HashMap<String, Weak<Component>>>,
    /// One lock per digest being loaded, so concurrent loads of the same bytes
    /// compile them once: the others wait and take the loaded copy.
    loading: std::sync::Mutex<HashMap<String, Arc<std::sync::Mutex<()>>>>,
    /// Digests known to need the concurrent engine (so a reload does not first try
    /// the sync one).
    needs_concurrent: std::sync::Mutex<std::collections::HashSet<String>>,
    host_memory: Arc<HostMemory>,
    _ticker: engine::EpochTicker,
}

impl Runtime {
    /// Builds the sync engine and its linker, and opens the compile cache under
    /// `data_dir`. The concurrent engine is built on first need.
    pub fn new(pool: &PoolConfig, data_dir: &Path) -> anyhow::Result<Runtime> {
        let sync = EngineSet::new(engine::EngineKind::Sync, pool, data_dir)?;
        let concurrent_engine = Arc::new(OnceLock::new());
        let ticker = engine::EpochTicker::start(sync.engine.clone(), concurrent_engine.clone());
        Ok(Runtime {
            sync,
            concurrent: OnceLock::new(),
            concurrent_init: Default::default(),
            concurrent_engine,
            pool: pool.clone(),
            data_dir: data_dir.to_path_buf(),
            loaded: Default::default(),
            loading: Default::default(),
            needs_concurrent: Default::default(),
            host_memory: Arc::new(HostMemory::new(pool.total_memory)),
            _ticker: ticker,
        })
    }

    /// The concurrent engine set, built on first call.
    fn concurrent(&self) -> Result<&EngineSet, RuntimeError> {
        if let Some(set) = self.concurrent.get() {
            return Ok(set);
        }
        let _guard = self
            .concurrent_init
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(set) = self.concurrent.get() {
            return Ok(set);
        }
        let set = EngineSet::new(engine::EngineKind::Concurrent, &self.pool, &self.data_dir)
            .map_err(|e| RuntimeError::Compile(format!("{e:#}")))?;
        let _ = self.concurrent_engine.set(set.engine.clone());
        Ok(self.concurrent.get_or_init(|| set))
    }

    /// The engine set `component` was loaded with.
    fn set_of(&self, component: &Component) -> &EngineSet {
        match self.concurrent.get() {
            Some(c) if Engine::same(component.engine(), &c.engine) => c,
            _ => &self.sync,
        }
    }

    /// Whether a compile-cache artifact exists for `digest` (under either engine).
    /// Looking in the concurrent engine's cache builds that engine if need be.
    pub fn is_cached(&self, digest: &str) -> bool {
        self.sync.cache.contains(digest)
            || self.concurrent().is_ok_and(|c| c.cache.contains(digest))
    }

    /// Loads a component by digest: the copy already in memory if another deployment
    /// of the same bytes holds one, else from the compile cache, else by compiling the
    /// bytes `read` returns. Blocking (compilation): run it on a blocking thread.
    ///
    /// A component is compiled for the sync engine unless that engine refuses it (it
    /// uses the async ABI), then for the concurrent one.
    ///
    /// Loaded code is shared, not duplicated: a hundred apps deploying the same
    /// component (or one scaled back up while another copy is live) map it once, and
    /// loads of one digest at the same time compile it once (the others wait). It
    /// leaves memory when the last [`PreparedComponent`] using it is dropped.
    pub fn load(
        &self,
        digest: &str,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<(Arc<Component>, LoadInfo), RuntimeError> {
        let start = std::time::Instant::now();
        let in_memory = || {
            let c = self
                .loaded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(digest)
                .and_then(Weak::upgrade)?;
            let info = LoadInfo {
                origin: CompileOrigin::Memory,
                took: start.elapsed(),
            };
            Some((c, info))
        };
        if let Some(found) = in_memory() {
            return Ok(found);
        }
        // Another load of the same digest may be compiling it: wait for it, then
        // take its copy (if it failed, this load tries on its own).
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest.to_string())
            .or_default()
            .clone();
        let turn = gate.lock().unwrap_or_else(|e| e.into_inner());
        let result = match in_memory() {
            Some(found) => Ok(found),
            None => self.load_uncached(digest, read).map(|(component, origin)| {
                let component = Arc::new(component);
                self.loaded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(digest.to_string(), Arc::downgrade(&component));
                let info = LoadInfo {
                    origin,
                    took: start.elapsed(),
                };
                (component, info)
            }),
        };
        drop(turn);
        // The last one through removes the gate (a waiter still holds its own clone;
        // clones are taken under the same lock as this check).
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&gate) == 2 {
            loading.remove(digest);
        }
        result
    }

    /// [`Runtime::load`] past the in-memory copies.
    fn load_uncached(
        &self,
        digest: &str,
        read: impl FnOnce() -> std::io::Result<Vec<u8>>,
    ) -> Result<(Component, CompileOrigin), RuntimeError> {
        let known_concurrent = self
            .needs_concurrent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest);
        if known_concurrent {
            let set = self.concurrent()?;
            if let Some(c) = set.cache.load_cached(&set.engine, digest) {
                return Ok((c, CompileOrigin::Cache));
            }
            let wasm = read().map_err(|e| RuntimeError::Cache(format!("{e:#}")))?;
            return Self::compile_with(set, digest, &wasm).map(|c| (c, CompileOrigin::Compiled));
        }
        if let Some(c) = self.sync.cache.load_cached(&self.sync.engine, digest) {
            return Ok((c, CompileOrigin::Cache));
        }
        // Unreadable bytes are an error only if no artifact of the concurrent engine
        // stands in for them either.
        let wasm = read();
        let refused = match &wasm {
            Ok(wasm) => match self.sync.cache.compile(&self.sync.engine, digest, wasm) {
                Ok(c) => return Ok((c, CompileOrigin::Compiled)),
                Err(cache::CompileFailure::Cache(e)) => return Err(RuntimeError::Cache(e)),
                // Refused by the sync engine: try the concurrent one, which accepts
                // everything the sync one does and the async ABI besides. If that
                // refuses it too, its error is the one to report.
                Err(cache::CompileFailure::Refused(e)) => Some(e),
            },
            Err(_) => None,
        };
        let set = match self.concurrent() {
            Ok(set) => set,
            // Without a concurrent engine, the sync engine's verdict stands.
            Err(e) => return Err(refused.map(refused_error).unwrap_or(e)),
        };
        let loaded = match set.cache.load_cached(&set.engine, digest) {
            Some(c) => (c, CompileOrigin::Cache),
            None => {
                let wasm = wasm.map_err(|e| RuntimeError::Cache(format!("{e:#}")))?;
                (
                    Self::compile_with(set, digest, &wasm)?,
                    CompileOrigin::Compiled,
                )
            }
        };
        self.needs_concurrent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.to_string());
        Ok(loaded)
    }

    fn compile_with(set: &EngineSet, digest: &str, wasm: &[u8]) -> Result<Component, RuntimeError> {
        set.cache
            .compile(&set.engine, digest, wasm)
            .map_err(|e| match e {
                cache::CompileFailure::Refused(e) => refused_error(e),
                cache::CompileFailure::Cache(e) => RuntimeError::Cache(e),
            })
    }

    /// What a compiled component imports and exports.
    pub fn interface(&self, component: &Component) -> ComponentInterface {
        inspect::describe(component.engine(), component)
    }

    /// The linear memory budget shared by all instances.
    pub fn host_memory(&self) -> &Arc<HostMemory> {
        &self.host_memory
    }

    /// Checks `component`'s imports against what the host provides and its grants
    /// allow, and pre-instantiates it. Instances it creates are counted in `live`
    /// while they exist.
    pub fn prepare(
        &self,
        component: &Arc<Component>,
        grants: Arc<Grants>,
        limits: Limits,
        live: Arc<AtomicU32>,
    ) -> Result<PreparedComponent, RuntimeError> {
        let interface = self.interface(component);
        crate::capability::check_provided(&interface.imports).map_err(RuntimeError::Imports)?;
        grants
            .check_imports(&interface.imports)
            .map_err(RuntimeError::Imports)?;
        let pre = self
            .set_of(component)
            .linker
            .instantiate_pre(component)
            .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
        let stores = invoke::StoreFactory::new(
            component.clone(),
            grants,
            limits,
            live,
            self.host_memory.clone(),
            fair::CpuShare::new(self.pool.cpus_per_component),
        );
        PreparedComponent::new(pre, interface.http_flavor(), interface.exports, stores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several deploys of the same bytes at once (apps sharing a component, a reload
    /// from zero during a deploy) compile them once and share one copy.
    #[test]
    fn a_component_using_the_gc_proposal_is_refused_saying_why() {
        let data = tempfile::tempdir().expect("tempdir");
        let mut pool = crate::config::HostConfig::default().pool;
        pool.instances = 4;
        let runtime = Runtime::new(&pool, data.path()).expect("runtime");
        // A core module declaring a GC struct type, inside a component.
        let wasm = b"(component (core module (type (struct (field i32)))))".to_vec();
        let e = runtime
            .load("sha256:gc-test", || Ok(wasm))
            .map(|_| ())
            .expect_err("refused");
        let e = e.to_string();
        assert!(e.starts_with("not a valid WebAssembly component"), "{e}");
        assert!(e.contains("docs/SECURITY.md"), "{e}");
        // Exceptions too.
        let wasm = b"(component (core module (tag (param i32))))".to_vec();
        let e = runtime
            .load("sha256:exn-test", || Ok(wasm))
            .map(|_| ())
            .expect_err("refused");
        assert!(e.to_string().contains("docs/SECURITY.md"), "{e}");
    }

    #[test]
    fn concurrent_loads_of_one_digest_compile_it_once() {
        // A component in text form: unit tests need no prebuilt guest.
        let wasm = b"(component (core module (func (export \"f\"))))".to_vec();
        let data = tempfile::tempdir().expect("tempdir");
        let mut pool = crate::config::HostConfig::default().pool;
        pool.instances = 4;
        let runtime = Arc::new(Runtime::new(&pool, data.path()).expect("runtime"));
        let start = Arc::new(std::sync::Barrier::new(3));
        let loads: Vec<_> = (0..3)
            .map(|_| {
                let (runtime, start, wasm) = (runtime.clone(), start.clone(), wasm.clone());
                std::thread::spawn(move || {
                    start.wait();
                    runtime
                        .load("sha256:concurrent-test", || Ok(wasm))
                        .expect("load")
                })
            })
            .collect();
        let loaded: Vec<_> = loads.into_iter().map(|t| t.join().unwrap()).collect();
        let origins: Vec<_> = loaded.iter().map(|(_, info)| info.origin).collect();
        assert_eq!(
            origins
                .iter()
                .filter(|o| **o == CompileOrigin::Compiled)
                .count(),
            1,
            "one load compiles, the others take its copy: {origins:?}"
        );
        assert!(
            loaded.iter().all(|(c, _)| Arc::ptr_eq(c, &loaded[0].0)),
            "all share one copy"
        );
        assert!(
            runtime.loading.lock().unwrap().is_empty(),
            "the gate goes with the last load through it"
        );
    }
}
