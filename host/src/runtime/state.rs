//! Per-instance store state: the capabilities' state (see [`crate::capability`]) plus
//! what the runtime keeps per instance: its memory limiter (drawing on the host's
//! budget), whether the host interrupted it at a deadline, its turn in its
//! component's share of CPU, and its place in the count of live instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

/// The `T` in `Store<T>` for every component instance.
pub type InstanceState = crate::capability::Instance<HostSide>;

/// The runtime's part of an instance's state.
pub struct HostSide {
    pub(crate) limiter: MemoryLimiter,
    /// Set when the host interrupted the instance at a deadline (the epoch callback,
    /// or a WASI 0.3 worker's expiry): its failure is a timeout, not a trap.
    pub(crate) interrupted: Arc<AtomicBool>,
    /// Set, with the reason, when a WASI 0.3 instance failed (trapped) while serving:
    /// the bodies it was still producing must then fail, not end cleanly.
    pub(crate) failed: Arc<std::sync::OnceLock<String>>,
    /// Its turn in its component's share of guest CPU (see `fair.rs`).
    pub(crate) cpu: super::fair::CpuTurn,
    _live: LiveInstance,
}

impl HostSide {
    /// The runtime's state for one instance with a memory cap of `max_memory` bytes,
    /// drawn from `host_memory`, running under `cpu`, counted in `live` while it exists.
    pub(crate) fn new(
        max_memory: u64,
        host_memory: &Arc<HostMemory>,
        cpu: &Arc<super::fair::CpuShare>,
        live: &Arc<AtomicU32>,
    ) -> Self {
        HostSide {
            limiter: MemoryLimiter::new(max_memory, host_memory.clone()),
            interrupted: Default::default(),
            failed: Default::default(),
            cpu: super::fair::CpuTurn::new(cpu.clone()),
            _live: LiveInstance::new(live.clone()),
        }
    }
}

/// Counts one live instance of a component for as long as its store exists.
struct LiveInstance(Arc<AtomicU32>);

impl LiveInstance {
    fn new(counter: Arc<AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        LiveInstance(counter)
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The linear memory all instances on the host may use together.
#[derive(Debug)]
pub struct HostMemory {
    used: AtomicU64,
    limit: u64,
}

impl HostMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        HostMemory {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Bytes in use now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which memory limit stopped a growth, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryHit {
    /// No limit was hit.
    None,
    /// The component's own `limits.memory`.
    Component,
    /// The host's total memory budget.
    Host,
}

/// Caps linear memory growth per instance (the component's limit) and across the host
/// (the shared budget), and remembers which cap was hit, so a trap that follows (a
/// guest aborting on allocation failure) is reported as what it is.
pub struct MemoryLimiter {
    max_memory: u64,
    host: Arc<HostMemory>,
    reserved: u64,
    hit: Arc<AtomicU8>,
}

impl MemoryLimiter {
    fn new(max_memory: u64, host: Arc<HostMemory>) -> Self {
        MemoryLimiter {
            max_memory,
            host,
            reserved: 0,
            hit: Arc::new(AtomicU8::new(0)),
        }
    }

    /// A handle that reads which limit was hit, usable after the store is gone.
    pub fn hit_flag(&self) -> Arc<AtomicU8> {
        self.hit.clone()
    }

    /// Decodes a [`hit_flag`](Self::hit_flag) value.
    pub fn decode(flag: &AtomicU8) -> MemoryHit {
        match flag.load(Ordering::Relaxed) {
            1 => MemoryHit::Component,
            2 => MemoryHit::Host,
            _ => MemoryHit::None,
        }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.host.release(self.reserved);
    }
}

/// Tables are bounded by the pooling allocator's slot size; this generous cap only
/// stops a runaway `table.grow` early.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if (desired as u64) > self.max_memory || maximum.is_some_and(|m| desired > m) {
            self.hit.store(1, Ordering::Relaxed);
            return Ok(false);
        }
        let delta = desired.saturating_sub(current) as u64;
        if !self.host.try_reserve(delta) {
            self.hit.store(2, Ordering::Relaxed);
            return Ok(false);
        }
        self.reserved += delta;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|m| desired <= m))
    }
}
