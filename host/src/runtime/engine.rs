//! The one place that builds wasmtime [`Engine`]s, and the epoch ticker that drives
//! deadlines.
//!
//! Settings: component model, epoch interruption for wall deadlines, and the pooling
//! instance allocator sized from [`PoolConfig`] with keep-resident memory, tables and
//! stacks, so a fresh instance per request does not pay for page faults and TLB
//! shootdowns.
//!
//! There are two kinds of engine ([`EngineKind`], ADR 0009). Wasmtime's support for
//! the component model's async ABI (WASI 0.3) is an engine-wide switch, and with it on
//! every call into any component, and every host call out of it, goes through its
//! concurrent task machinery (a guest task per call, a host task per import, fiber
//! and future bookkeeping at store drop). A WASI 0.2 component needs none of that: on
//! an engine without it the same requests run 12-16% fewer instructions. So WASI 0.2
//! components run on a [`EngineKind::Sync`] engine and only components that use the
//! async ABI on a [`EngineKind::Concurrent`] one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::PoolConfig;

/// How often the epoch advances. Deadlines are checked (and long-running guests yield
/// to the scheduler) at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Core instances, memories and tables per pooled component instance. Components hold
/// several core modules (the main module plus adapters and shims): a Rust wasip2 build
/// has about four, componentize-py and jco builds more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 12;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Which component-model features an engine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// No concurrency support: WASI 0.2 components (and any other component that does
    /// not use the async ABI). Validation rejects async lifts, lowers and builtins.
    Sync,
    /// Component-model async (WASI 0.3): runs every component, at the cost of
    /// wasmtime's concurrent bookkeeping on every call.
    Concurrent,
}

impl EngineKind {
    /// A name for logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Sync => "sync",
            EngineKind::Concurrent => "concurrent",
        }
    }
}

/// Builds one of the host's engines; each has its own instance pool sized by `pool`.
pub fn build_engine(pool: &PoolConfig, kind: EngineKind) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    match kind {
        EngineKind::Sync => {
            config.concurrency_support(false);
        }
        EngineKind::Concurrent => {
            config.concurrency_support(true);
            config.wasm_component_model_async(true);
        }
    }
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    turn_off_unneeded_proposals(&mut config);

    let mut pooling = PoolingAllocationConfig::new();
    let n = pool.instances;
    pooling
        .total_component_instances(n)
        .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(n.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(n)
        .max_memories_per_module(2)
        .max_tables_per_module(4)
        .max_memory_size(usize::try_from(pool.max_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(to_usize(pool.memory_keep_resident))
        .table_keep_resident(to_usize(pool.table_keep_resident))
        .async_stack_keep_resident(to_usize(pool.stack_keep_resident))
        // Reset only the pages an instance dirtied (Linux 6.7+ PAGEMAP_SCAN) instead
        // of memset-ing the whole keep-resident prefix of every memory: a hello
        // instance touches a few pages of its ~1 MiB initial memory. Not with swap
        // on: wasmtime 48's scan skips dirty pages that are swapped out, which then
        // keep the previous instance's data (docs/SECURITY.md).
        .pagemap_scan(pagemap_scan(swap_in_use()));
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

    Engine::new(&config)
        .map_err(|e| anyhow::anyhow!("cannot build the {} wasm engine: {e:#}", kind.as_str()))
}

/// Wasm proposals no supported guest toolchain emits, off in both engines: a component
/// that uses one is refused at deploy. The GC proposal and its relatives carried the
/// code paths of several wasmtime advisories (docs/SECURITY.md); the host is also
/// built without wasmtime's `gc` feature, so their runtime is not compiled in.
fn turn_off_unneeded_proposals(config: &mut Config) {
    // Exception handling and typed function references need wasmtime's `gc` feature,
    // threads its `threads` feature; the host is built without either, so these
    // cannot be turned on at all.
    config
        .wasm_gc(false)
        .gc_support(false)
        .wasm_stack_switching(false);
}

/// What the host says when a component uses a proposal it turns off.
pub const PROPOSALS_OFF: &str = "wasmhive runs components without the GC, typed function references, exception-handling, stack-switching and threads proposals (see docs/SECURITY.md)";

/// Whether to reset instance memory with PAGEMAP_SCAN, given whether swap is in use.
fn pagemap_scan(swap: bool) -> wasmtime::Enabled {
    if swap {
        tracing::warn!(
            "swap is in use: instance memory is reset without PAGEMAP_SCAN (slower; wasmtime 48's scan would miss swapped-out pages, see docs/SECURITY.md)"
        );
        wasmtime::Enabled::No
    } else {
        wasmtime::Enabled::Auto
    }
}

/// Whether the machine has swap space in use, from `/proc/swaps` (unknown: assume
/// yes, the safe side).
fn swap_in_use() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(text) => swaps_listed(&text),
        Err(_) => cfg!(target_os = "linux"),
    }
}

/// Whether `/proc/swaps` text lists a swap area (a line after the header).
fn swaps_listed(text: &str) -> bool {
    text.lines().skip(1).any(|l| !l.trim().is_empty())
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Advances the engines' epochs every [`EPOCH_TICK`] on a dedicated thread until
/// dropped: the sync engine from the start, the concurrent one once it is built.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`, and `later` once it is set.
    pub fn start(engine: Engine, later: Arc<OnceLock<Engine>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wasmhive-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                        if let Some(e) = later.get() {
                            e.increment_epoch();
                        }
                    }
                })
                .ok()
        };
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_turns_the_page_scan_off() {
        let none = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swaps_listed(none));
        let one =
            format!("{none}/swapfile                               file\t\t1048572\t\t0\t\t-2\n");
        assert!(swaps_listed(&one));
        assert_eq!(pagemap_scan(true), wasmtime::Enabled::No);
        assert_eq!(pagemap_scan(false), wasmtime::Enabled::Auto);
    }
}
