//! A prepared component and its instances: a fresh `Store` and instance per invocation,
//! or a pooled one when the component allows serial reuse, whatever the trigger; a
//! wall deadline; and a clear account of how an invocation ended.
//!
//! How each kind of export is called lives beside this: `http.rs` (WASI 0.2 HTTP, with
//! its early response head), `p3.rs` (WASI 0.3 HTTP through wasmtime's
//! `ProxyHandler`), `message.rs` (the message handler). Every other export goes
//! through [`PreparedComponent::run`]: take an instance (warm or fresh), start the
//! invocation in it, call, put a healthy instance back. A trap or deadline drops the
//! instance. Every way an invocation can fail maps to one [`InvokeError`]; the
//! envelope turns that into a status in one place.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Instance, InstancePre};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyIndices;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

use super::fair::CpuShare;
use super::p3::{P3Handler, P3Limits};
use super::state::{HostMemory, HostSide, MemoryHit, MemoryLimiter};
use super::{HttpFlavor, InstanceState, Limits, RuntimeError};
use crate::capability::{Grants, Invocation};

/// How an invocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// The instance could not be created because every pooled slot is in use.
    #[error("instance pool exhausted: {0}")]
    PoolExhausted(String),
    /// Instantiation failed for another reason.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The guest trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The host's total memory budget is used up; the guest could not grow.
    #[error("the host's memory budget is exhausted: {0}")]
    HostMemory(String),
    /// The guest hit its memory limit and then failed.
    #[error("guest exceeded its memory limit of {limit} bytes: {detail}")]
    MemoryLimit {
        /// The configured limit.
        limit: u64,
        /// The trap that followed.
        detail: String,
    },
    /// The invocation was stopped before its end (a replaced or cancelled job run).
    #[error("stopped: {0}")]
    Cancelled(String),
    /// The invocation ran past its deadline and was killed.
    #[error("deadline of {0:?} exceeded")]
    Timeout(std::time::Duration),
    /// The guest answered with a wasi:http error code instead of a response.
    #[error("guest returned error: {0:?}")]
    Guest(ErrorCode),
    /// A WASI 0.3 guest failed its request with an error (not a trap).
    #[error("guest returned error: {0}")]
    GuestError(String),
    /// The message handler returned an error.
    #[error("handler returned error: {0}")]
    Handler(String),
    /// The guest returned without setting a response.
    #[error("guest returned without a response")]
    NoResponse,
    /// The component does not export what the trigger calls.
    #[error("the component exports no {0}")]
    NotExported(&'static str),
    /// The host could not hand the invocation to the guest.
    #[error("host error: {0}")]
    Host(String),
}

/// A component version ready to serve: pre-instantiated once, instantiated per call.
#[derive(Clone)]
pub struct PreparedComponent {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) pre: InstancePre<InstanceState>,
    /// Set when the component exports a wasi:http 0.2 handler.
    pub(super) proxy: Option<ProxyIndices>,
    /// Set when the component exports a wasi:http 0.3 handler.
    pub(super) p3: Option<P3Handler>,
    /// Set when the component exports a message handler.
    pub(super) messages: Option<super::message::Indices>,
    /// Set when the component exports `wasi:cli/run`.
    pub(super) command: Option<super::run::Indices>,
    /// The component's exports by name.
    exports: Vec<String>,
    /// Makes stores; keeps the shared loaded code alive (see `Runtime::load`).
    pub(super) stores: StoreFactory,
    pub(super) flavor: Option<HttpFlavor>,
    /// Idle instances kept for serial reuse (`instances.max_requests > 1`).
    pool: std::sync::Mutex<Vec<Warm>>,
}

/// An instance between invocations (serial reuse), or the one serving one now.
pub(super) struct Live {
    pub(super) store: Store<InstanceState>,
    pub(super) instance: Option<Instance>,
    /// The wasi:http 0.2 bindings, looked up on first HTTP use.
    pub(super) proxy: Option<wasmtime_wasi_http::p2::bindings::Proxy>,
    pub(super) memory_hit: Arc<AtomicU8>,
    deadline: Arc<AtomicU64>,
    served: u32,
    idle_since: Instant,
}

/// Kept in the pool.
type Warm = Live;

/// Idle reusable instances kept per component at most.
const MAX_IDLE: usize = 64;

/// The time base for deadlines stored in atomics.
static BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

pub(crate) fn to_nanos(t: Instant) -> u64 {
    t.saturating_duration_since(*BASE).as_nanos() as u64
}

/// The instant `n` [`to_nanos`] units stand for.
pub(crate) fn from_nanos(n: u64) -> Instant {
    *BASE + Duration::from_nanos(n)
}

/// How [`PreparedComponent::run_with`] runs a call.
pub(crate) struct RunOptions {
    /// The deadline, from the start of the call.
    pub(crate) timeout: Duration,
    /// A fresh instance, dropped afterwards.
    pub(crate) fresh: bool,
    /// Stops the call.
    pub(crate) cancel: Option<tokio_util::sync::CancellationToken>,
}

/// A call into one export of an instance, for [`PreparedComponent::run`].
pub(crate) trait ExportCall: Send + 'static {
    /// What the export returns.
    type Output: Send + 'static;
    /// Calls the export of `instance` (living in `store`).
    fn call(
        self,
        store: &mut Store<InstanceState>,
        instance: Instance,
    ) -> impl Future<Output = wasmtime::Result<Self::Output>> + Send;
}

impl PreparedComponent {
    pub(crate) fn new(
        pre: InstancePre<InstanceState>,
        flavor: Option<HttpFlavor>,
        exports: Vec<String>,
        stores: StoreFactory,
    ) -> Result<Self, RuntimeError> {
        let limits = stores.limits;
        let link = |e: wasmtime::Error| RuntimeError::Link(format!("{e:#}"));
        let (proxy, p3) = match flavor {
            None => (None, None),
            Some(HttpFlavor::P2) => (Some(ProxyIndices::new(&pre).map_err(link)?), None),
            Some(HttpFlavor::P3) => {
                let service =
                    wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()).map_err(link)?;
                let reuse = limits.reuse;
                let p3_limits = P3Limits {
                    max_requests: reuse.max_requests_for(Some(HttpFlavor::P3)) as usize,
                    max_concurrent: reuse.max_concurrent_for(HttpFlavor::P3) as usize,
                    idle_timeout: reuse.idle_timeout,
                    max_instances: reuse.max_instances as usize,
                };
                (
                    None,
                    Some(P3Handler::new(service, stores.clone(), p3_limits)),
                )
            }
        };
        let messages = super::message::indices(&pre, &exports)?;
        let command = super::run::indices(&pre, &exports)?;
        Ok(PreparedComponent {
            inner: Arc::new(Inner {
                pre,
                proxy,
                p3,
                messages,
                command,
                exports,
                stores,
                flavor,
                pool: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// The HTTP handler flavor this component exports, if any.
    pub fn flavor(&self) -> Option<HttpFlavor> {
        self.inner.flavor
    }

    /// Its export names.
    pub fn exports(&self) -> &[String] {
        &self.inner.exports
    }

    /// The grants the component runs with.
    pub fn grants(&self) -> &Arc<Grants> {
        &self.inner.stores.grants
    }

    /// The limits it runs under.
    pub fn limits(&self) -> &Limits {
        &self.inner.stores.limits
    }

    /// Waits while the component is over its share of CPU (`fair.rs`), before an
    /// invocation starts.
    pub(super) async fn wait_cpu_turn(&self) {
        self.inner.stores.cpu.wait_turn().await
    }

    /// Requests one instance serves before it is dropped.
    fn max_requests(&self) -> u32 {
        self.inner
            .stores
            .limits
            .reuse
            .max_requests_for(self.inner.flavor)
    }

    /// An instance for one invocation: an idle reusable one if the component allows
    /// reuse and one is fresh enough, else a new store (instantiated by the caller on
    /// first use). Its deadline is set to `deadline` and `invocation` is started in it.
    pub(super) fn acquire(&self, invocation: Invocation, deadline: Instant) -> Live {
        self.acquire_with(invocation, deadline, false)
    }

    /// [`PreparedComponent::acquire`]; `fresh` never takes a pooled instance.
    fn acquire_with(&self, invocation: Invocation, deadline: Instant, fresh: bool) -> Live {
        let warm = if !fresh && self.max_requests() > 1 {
            self.take_warm()
        } else {
            None
        };
        let mut live = warm.unwrap_or_else(|| {
            let cell = Arc::new(AtomicU64::new(0));
            let (store, memory_hit) = self.inner.stores.new_store(cell.clone());
            Live {
                store,
                instance: None,
                proxy: None,
                memory_hit,
                deadline: cell,
                served: 0,
                idle_since: Instant::now(),
            }
        });
        live.deadline.store(to_nanos(deadline), Ordering::Relaxed);
        live.memory_hit.store(0, Ordering::Relaxed);
        live.store.set_epoch_deadline(1);
        live.store.data_mut().host.cpu.begin();
        live.store.data_mut().begin(invocation);
        live
    }

    /// The instance of `live`, instantiating it if it is new.
    pub(super) async fn instance(&self, live: &mut Live) -> Result<Instance, InvokeError> {
        if let Some(i) = live.instance {
            return Ok(i);
        }
        let i = self
            .inner
            .pre
            .instantiate_async(&mut live.store)
            .await
            .map_err(|e| self.classify(e, Phase::Instantiate, &live.memory_hit))?;
        live.instance = Some(i);
        Ok(i)
    }

    /// Ends an invocation in `live`: a healthy instance with invocations left goes
    /// back to the pool, anything else is dropped.
    pub(super) fn release(&self, mut live: Live, healthy: bool) {
        if healthy && live.instance.is_some() && live.served + 1 < self.max_requests() {
            live.served += 1;
            live.idle_since = Instant::now();
            let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < MAX_IDLE {
                pool.push(live);
            }
        }
    }

    /// An idle reusable instance, if one is fresh enough (stale ones are dropped).
    fn take_warm(&self) -> Option<Warm> {
        let idle = self.inner.stores.limits.reuse.idle_timeout;
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        pool.retain(|w| now.duration_since(w.idle_since) < idle);
        pool.pop()
    }

    /// Drops reusable instances idle longer than the component's `idle_timeout`.
    pub fn prune_idle(&self) {
        let idle = self.inner.stores.limits.reuse.idle_timeout;
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if !pool.is_empty() {
            let now = Instant::now();
            pool.retain(|w| now.duration_since(w.idle_since) < idle);
        }
    }

    /// Runs one call into an export to completion in an instance (warm or fresh) under
    /// the component's deadline. `guard` (a scaler permit) is held until the instance
    /// is done.
    pub(crate) async fn run<C: ExportCall, G: Send + 'static>(
        &self,
        invocation: Invocation,
        guard: G,
        call: C,
    ) -> Result<C::Output, InvokeError> {
        let options = RunOptions {
            timeout: self.inner.stores.limits.timeout,
            fresh: false,
            cancel: None,
        };
        self.run_with(invocation, guard, call, options).await
    }

    /// [`PreparedComponent::run`] with its own deadline, a fresh instance that is not
    /// reused (`fresh`), and a token that stops it.
    pub(crate) async fn run_with<C: ExportCall, G: Send + 'static>(
        &self,
        invocation: Invocation,
        guard: G,
        call: C,
        options: RunOptions,
    ) -> Result<C::Output, InvokeError> {
        self.wait_cpu_turn().await;
        let RunOptions {
            timeout,
            fresh,
            cancel,
        } = options;
        let deadline = Instant::now() + timeout;
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut live = this.acquire_with(invocation, deadline, fresh);
            let run = async {
                let instance = this.instance(&mut live).await?;
                call.call(&mut live.store, instance)
                    .await
                    .map_err(|e| this.classify_after(e, &live.memory_hit, timeout))
            };
            let cancelled = async {
                match &cancel {
                    Some(c) => c.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), run) => match r {
                    Ok(r) => r,
                    Err(_) => Err(InvokeError::Timeout(timeout)),
                },
                _ = cancelled => Err(InvokeError::Cancelled("the run was stopped".into())),
            };
            this.release(live, result.is_ok() && !fresh);
            drop(guard);
            result
        });
        task.await.unwrap_or_else(|join| {
            Err(InvokeError::Host(format!("invocation task failed: {join}")))
        })
    }

    /// [`PreparedComponent::classify`] for a call with its own deadline of `timeout`.
    fn classify_after(
        &self,
        e: wasmtime::Error,
        memory_hit: &AtomicU8,
        timeout: Duration,
    ) -> InvokeError {
        match self.classify(e, Phase::Call, memory_hit) {
            InvokeError::Timeout(_) => InvokeError::Timeout(timeout),
            other => other,
        }
    }

    /// Sorts a wasmtime error into what a caller can act on.
    pub(super) fn classify(
        &self,
        e: wasmtime::Error,
        phase: Phase,
        memory_hit: &AtomicU8,
    ) -> InvokeError {
        let limits = &self.inner.stores.limits;
        if let Some(trap) = e.downcast_ref::<Trap>()
            && *trap == Trap::Interrupt
        {
            return InvokeError::Timeout(limits.timeout);
        }
        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return InvokeError::PoolExhausted(format!("{e:#}"));
        }
        let detail = format!("{e:#}");
        let hit = MemoryLimiter::decode(memory_hit);
        if hit != MemoryHit::None {
            return memory_failure(hit, limits.memory, detail);
        }
        match phase {
            Phase::Instantiate => InvokeError::Instantiate(detail),
            Phase::Call => InvokeError::Trap(detail),
        }
    }

    /// The deadline of one invocation.
    pub fn timeout(&self) -> Duration {
        self.inner.stores.limits.timeout
    }
}

/// Makes the stores of one component version: its grants, its memory limiter
/// drawing on the host's budget, counted in `live` while they exist.
#[derive(Clone)]
pub(crate) struct StoreFactory {
    /// Keeps the shared loaded code alive (see `Runtime::load`).
    component: Arc<Component>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) limits: Limits,
    live: Arc<AtomicU32>,
    host_memory: Arc<HostMemory>,
    /// The component's share of guest CPU, drawn on by all its stores.
    cpu: Arc<CpuShare>,
}

impl StoreFactory {
    /// The stores of `component` (loaded code, shared) with `grants` and `limits`,
    /// drawing memory from `host_memory`, counted in `live`.
    pub(crate) fn new(
        component: Arc<Component>,
        grants: Arc<Grants>,
        limits: Limits,
        live: Arc<AtomicU32>,
        host_memory: Arc<HostMemory>,
        cpu: Arc<CpuShare>,
    ) -> Self {
        StoreFactory {
            component,
            grants,
            limits,
            live,
            host_memory,
            cpu,
        }
    }

    /// A fresh store for one instance, with its memory limiter and a wall-clock
    /// deadline (read from `deadline`, so a reused instance gets a new one per
    /// invocation) enforced through epoch interruption. At each tick a running guest
    /// yields, or waits while its component is over its share of CPU (`fair.rs`).
    pub(crate) fn new_store(
        &self,
        deadline: Arc<AtomicU64>,
    ) -> (Store<InstanceState>, Arc<AtomicU8>) {
        let host = HostSide::new(self.limits.memory, &self.host_memory, &self.cpu, &self.live);
        let mut store = Store::new(
            self.component.engine(),
            InstanceState::new(&self.grants, host),
        );
        let memory_hit = store.data().host.limiter.hit_flag();
        let interrupted = store.data().host.interrupted.clone();
        store.limiter(|s| &mut s.host.limiter);
        // Time in wasm is what the CPU share charges (fair.rs): the hooks mark where
        // it starts and stops, so waits on I/O and for a thread are not charged.
        store.call_hook(|mut store, hook| {
            let now = Instant::now();
            let cpu = &mut store.data_mut().host.cpu;
            if hook.entering_host() {
                cpu.left_wasm(now);
            } else {
                cpu.entered_wasm(now);
            }
            Ok(())
        });
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut store| {
            if to_nanos(Instant::now()) >= deadline.load(Ordering::Relaxed) {
                interrupted.store(true, Ordering::Relaxed);
                Ok(UpdateDeadline::Interrupt)
            } else {
                let next = store.data_mut().host.cpu.next_slice();
                Ok(UpdateDeadline::YieldCustom(1, next))
            }
        });
        (store, memory_hit)
    }
}

/// Where a failure happened.
#[derive(Clone, Copy)]
pub(super) enum Phase {
    Instantiate,
    Call,
}

/// The failure of an instance that hit a memory limit (`hit` is not `None`): its own
/// limit of `limit` bytes, or the host's budget.
pub(crate) fn memory_failure(hit: MemoryHit, limit: u64, detail: String) -> InvokeError {
    match hit {
        MemoryHit::Host => InvokeError::HostMemory(detail),
        MemoryHit::Component | MemoryHit::None => InvokeError::MemoryLimit { limit, detail },
    }
}

/// What an HTTP request carries into the instance: its trace context.
pub(crate) fn http_invocation(headers: &http::HeaderMap) -> Invocation {
    let (traceparent, request_id) = crate::headers::trace_pair(headers);
    // Most requests carry no identity: one lookup says so.
    let identity = headers
        .contains_key(&crate::headers::AUTH_SUBJECT)
        .then(|| crate::headers::identity_of(headers).into());
    Invocation {
        traceparent,
        request_id,
        reply_to: None,
        identity,
        command: None,
    }
}
