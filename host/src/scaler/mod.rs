//! Per-component lifecycle and admission: the one place that decides whether a
//! component is loaded and whether an invocation may run now, wait, or be shed.
//!
//! Lifecycle: `zero → loading → ready → (idle) zero`. A deployed component starts ready
//! (its deploy compiled and pre-instantiated it). With nothing in flight for
//! `idle_timeout` (and `min_instances = 0`) the [`reap`] pass drops its compiled code and
//! pre-instance; only metadata and routes stay. The next invocation loads it again from
//! the on-disk compile cache. Loading is single-flight: concurrent first invocations
//! wait for one load.
//!
//! Admission is a bulkhead per component: `max_instances` invocations run at once, up to
//! `queue` more wait (FIFO) at most `queue_timeout`, the rest are shed. A host-wide
//! semaphore sized to the instance pool caps the sum across components. Every way out
//! of admission is counted, and a [`Permit`] releases its slot when dropped, whatever
//! happened to the invocation (trap, deadline, client gone).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::runtime::{PreparedComponent, RuntimeError};

/// A component's resolved scaling policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePolicy {
    /// Instances at once (for a component serving one request per instance, also the
    /// invocations at once).
    pub max_instances: u32,
    /// Requests one instance serves at once (WASI 0.3 `max_concurrent`; else 1): the
    /// bulkhead admits `max_instances × per_instance` invocations.
    pub per_instance: u32,
    /// Invocations that may wait.
    pub queue: u32,
    /// Longest wait.
    pub queue_timeout: Duration,
    /// Idle time before scaling to zero.
    pub idle_timeout: Duration,
    /// Greater than zero: never scale to zero.
    pub min_instances: u32,
}

/// Where a component is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Scaled to zero: no compiled code in memory.
    Zero,
    /// Being loaded from the compile cache.
    Loading,
    /// Loaded and pre-instantiated.
    Ready,
    /// Stopped by an operator (`wasmhive stop`): requests are refused with 503,
    /// messages wait, nothing is loaded.
    Stopped,
}

impl State {
    /// `zero`, `loading` or `ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Zero => "zero",
            State::Loading => "loading",
            State::Ready => "ready",
            State::Stopped => "stopped",
        }
    }
}

/// Why an invocation was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Shed {
    /// All instances busy and the queue full.
    #[error("all {0} instances busy and the queue is full")]
    QueueFull(u32),
    /// Waited in the queue past `queue_timeout`.
    #[error("waited {0:?} in the queue without a free instance")]
    QueueTimeout(Duration),
    /// The host's instance pool is exhausted.
    #[error("the host's instance pool is exhausted")]
    HostFull,
    /// An operator stopped the component.
    #[error("the component is stopped")]
    Stopped,
}

/// Host-wide admission: the sum of running invocations across components.
#[derive(Clone)]
pub struct HostCapacity {
    slots: Arc<Semaphore>,
}

impl HostCapacity {
    /// Capacity for `instances` invocations at once.
    pub fn new(instances: u32) -> Self {
        HostCapacity {
            slots: Arc::new(Semaphore::new(instances as usize)),
        }
    }
}

/// Loads a component from the compile cache and pre-instantiates it (blocking).
pub type Loader = Arc<dyn Fn() -> Result<PreparedComponent, RuntimeError> + Send + Sync>;

/// Counters a status page or scrape reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalerStatus {
    /// Lifecycle state.
    pub state: State,
    /// Admitted invocations not yet finished.
    pub in_flight: u32,
    /// Invocations waiting for a slot.
    pub queued: u32,
    /// Loads caused by an invocation finding the component at zero.
    pub cold_starts: u64,
    /// Invocations shed (queue full, queue timeout, host full).
    pub shed: u64,
}

/// The scaler of one deployed component version.
pub struct Scaler {
    policy: ScalePolicy,
    loader: Loader,
    ready: Arc<ArcSwapOption<PreparedComponent>>,
    load_lock: Arc<tokio::sync::Mutex<()>>,
    loading: Arc<AtomicBool>,
    stopped: tokio::sync::watch::Sender<bool>,
    slots: Arc<Semaphore>,
    host: HostCapacity,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU32,
    in_flight: AtomicU32,
    cold_starts: AtomicU64,
    shed: AtomicU64,
    /// Milliseconds since [`EPOCH`] of the last admission or completion.
    last_active: AtomicU64,
}

/// The monotonic time base for idle accounting.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Counters {
    fn touch(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
    }
}

/// Decrements the queue count however the wait ends (admitted, timed out, cancelled).
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admitted invocation. Dropping it frees its slot and marks the component active.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.counters.touch();
    }
}

impl Scaler {
    /// A scaler starting ready with `prepared` (loaded by the deploy).
    pub fn new(
        policy: ScalePolicy,
        loader: Loader,
        prepared: PreparedComponent,
        host: HostCapacity,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        counters.touch();
        Scaler {
            slots: Arc::new(Semaphore::new(
                (policy.max_instances as usize).saturating_mul(policy.per_instance.max(1) as usize),
            )),
            policy,
            loader,
            ready: Arc::new(ArcSwapOption::new(Some(Arc::new(prepared)))),
            load_lock: Arc::new(tokio::sync::Mutex::new(())),
            loading: Arc::new(AtomicBool::new(false)),
            stopped: tokio::sync::watch::Sender::new(false),
            host,
            counters,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &ScalePolicy {
        &self.policy
    }

    /// Admits one invocation: a free slot now, or a place in the queue and a slot
    /// within `queue_timeout`, or [`Shed`]. Cancel-safe: dropping the future while it
    /// waits gives up the place in the queue.
    pub async fn admit(&self) -> Result<Permit, Shed> {
        if *self.stopped.borrow() {
            return Err(Shed::Stopped);
        }
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let position = self.counters.queued.fetch_add(1, Ordering::Relaxed);
                let _queued = Queued(&self.counters.queued);
                if position >= self.policy.queue {
                    return Err(self.shed(Shed::QueueFull(self.policy.max_instances)));
                }
                match tokio::time::timeout(
                    self.policy.queue_timeout,
                    self.slots.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(slot)) => slot,
                    _ => return Err(self.shed(Shed::QueueTimeout(self.policy.queue_timeout))),
                }
            }
        };
        let host = match self.host.slots.clone().try_acquire_owned() {
            Ok(h) => h,
            Err(_) => return Err(self.shed(Shed::HostFull)),
        };
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        self.counters.touch();
        Ok(Permit {
            _slot: slot,
            _host: host,
            counters: self.counters.clone(),
        })
    }

    /// Admits one invocation, waiting as long as it takes (for triggers that apply
    /// back-pressure instead of shedding, like message subscriptions). Cancel-safe.
    pub async fn admit_wait(&self) -> Permit {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let queued = Queued(&self.counters.queued);
        let mut stopped = self.stopped.subscribe();
        // A stopped component takes no messages: wait until it is started again.
        let _ = stopped.wait_for(|s| !*s).await;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the scaler never closes its semaphore");
        let host = self
            .host
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the host never closes its semaphore");
        drop(queued);
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        self.counters.touch();
        Permit {
            _slot: slot,
            _host: host,
            counters: self.counters.clone(),
        }
    }

    fn shed(&self, why: Shed) -> Shed {
        self.counters.shed.fetch_add(1, Ordering::Relaxed);
        why
    }

    /// The loaded component, loading it from the compile cache first if it is at zero.
    /// Concurrent callers share one load. The load runs to completion (and is kept)
    /// even if the caller that started it goes away, and holds the single-flight lock
    /// until it is done.
    pub async fn prepared(&self) -> Result<PreparedComponent, RuntimeError> {
        if let Some(p) = self.ready.load_full() {
            return Ok((*p).clone());
        }
        let single_flight = self.load_lock.clone().lock_owned().await;
        if let Some(p) = self.ready.load_full() {
            return Ok((*p).clone());
        }
        self.loading.store(true, Ordering::Relaxed);
        let (loader, ready, loading, counters) = (
            self.loader.clone(),
            self.ready.clone(),
            self.loading.clone(),
            self.counters.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let _single_flight = single_flight;
            let loaded = loader();
            if let Ok(p) = &loaded {
                counters.cold_starts.fetch_add(1, Ordering::Relaxed);
                counters.touch();
                ready.store(Some(Arc::new(p.clone())));
            }
            loading.store(false, Ordering::Relaxed);
            loaded
        })
        .await
        .map_err(|e| RuntimeError::Cache(format!("load task failed: {e}")))?
    }

    /// The loaded component, if it is loaded (never loads it).
    pub fn loaded(&self) -> Option<Arc<PreparedComponent>> {
        self.ready.load_full()
    }

    /// Stops (`true`) or starts (`false`) the component; returns whether that changed
    /// anything. A stopped component refuses new requests (503), holds its messages
    /// back, and is unloaded once its invocations in flight finish (see [`reap`]).
    /// Starting it lets the next invocation load it again.
    pub fn set_stopped(&self, stop: bool) -> bool {
        let changed = self
            .stopped
            .send_if_modified(|s| std::mem::replace(s, stop) != stop);
        if changed && stop {
            self.reap();
        }
        changed
    }

    /// Whether an operator stopped it.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Scales to zero if idle long enough (or stopped); returns whether it did.
    pub fn reap(&self) -> bool {
        let stopped = self.is_stopped();
        if (self.policy.min_instances > 0 && !stopped) || self.loading.load(Ordering::Relaxed) {
            return false;
        }
        let c = &self.counters;
        // Messages waiting for a stopped component wait for it to start: they do not
        // keep it loaded.
        if c.in_flight.load(Ordering::Relaxed) > 0
            || (!stopped && c.queued.load(Ordering::Relaxed) > 0)
        {
            return false;
        }
        let idle = now_ms().saturating_sub(c.last_active.load(Ordering::Relaxed));
        if !stopped && u128::from(idle) < self.policy.idle_timeout.as_millis() {
            return false;
        }
        self.ready.swap(None).is_some()
    }

    /// Current counters.
    pub fn status(&self) -> ScalerStatus {
        let state = if self.is_stopped() {
            State::Stopped
        } else if self.ready.load().is_some() {
            State::Ready
        } else if self.loading.load(Ordering::Relaxed) {
            State::Loading
        } else {
            State::Zero
        };
        let c = &self.counters;
        ScalerStatus {
            state,
            in_flight: c.in_flight.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            cold_starts: c.cold_starts.load(Ordering::Relaxed),
            shed: c.shed.load(Ordering::Relaxed),
        }
    }
}
