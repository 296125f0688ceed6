//! The one place that builds a wasmtime [`Engine`], and the epoch ticker that drives
//! deadlines.
//!
//! Settings: component model (with async, for WASI 0.3), epoch interruption for wall
//! deadlines, and the pooling instance allocator sized from [`PoolConfig`] with
//! keep-resident memory, tables and stacks, so a fresh instance per request does not
//! pay for page faults and TLB shootdowns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::PoolConfig;

/// How often the epoch advances. Deadlines are checked (and long-running guests yield
/// to the scheduler) at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances, memories and tables per pooled component instance. Components hold
/// several core modules (the main module plus adapters and shims): a Rust wasip2 build
/// has about four, componentize-py and jco builds more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 12;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 4;

/// Builds the host's engine.
pub fn build_engine(pool: &PoolConfig) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);

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
        // instance touches a few pages of its ~1 MiB initial memory.
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));

    Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot build the wasm engine: {e:#}"))
}

fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated thread until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    pub fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wasmhive-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
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
