//! WASI 0.3 HTTP components (`wasi:http/handler@0.3.x`): native async handlers, where
//! one instance serves several requests at once.
//!
//! Dispatch goes through wasmtime's own [`ProxyHandler`]: it owns the hard part, the
//! worker loop that drives one store's `run_concurrent` event loop, accepts a new
//! request only while the instance's tasks are blocked on I/O (so CPU-bound guests
//! do not pile requests onto one instance), and expires requests and instances from
//! outside that loop. This module supplies the host's side of it ([`HandlerState`]):
//!
//! - **instances** are our stores ([`InstanceState`], the component's grants, memory
//!   limiter, counted in `live`), at most `max_instances` at once (a semaphore taken
//!   in `instantiate`, released when the worker exits). At the cap, `instantiate`
//!   fails fast, the request comes back inside the `InstantiationError`, and
//!   [`P3Handler::handle`] offers it again after a short pause (1–20 ms) until an
//!   instance has room or its deadline passes;
//! - **reuse**: `instances.max_requests` per instance in total, `max_concurrent` at
//!   once, dropped after `idle_timeout` idle;
//! - **deadlines**: each request expires at its own deadline (it fails with 504, the
//!   instance stops taking requests and is dropped when the others finish); a guest
//!   that loops or blocks the store is interrupted by the epoch deadline, set to the
//!   latest deadline of the requests it accepted;
//! - **trace context**: `traceparent` and `x-request-id` for outbound calls are set per
//!   instance when a request starts, so with concurrent requests in one instance an
//!   outbound call carries the most recent request's (a known limitation).
//!
//! A trap fails every request that instance was serving and drops it; the next request
//! gets another instance. See docs/adr/0007-wasi-0-3-and-instance-reuse.md.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ProxyPre,
    ShouldAccept, TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};

use super::InstanceState;
use super::invoke::{InvokeError, StoreFactory, memory_failure, to_nanos};
use super::state::{MemoryHit, MemoryLimiter};
use crate::capability::Invocation;

/// What travels with one request into the worker that accepts it.
pub(crate) struct RequestData {
    deadline: Instant,
    /// The request's trace context, started in the instance that accepts it.
    invocation: Invocation,
    /// What the instance that accepted the request records (its memory-limit flag and
    /// that flag's value then, whether the host interrupted it), so a trap can be told
    /// apart from a memory limit hit or a deadline (as for WASI 0.2).
    served_by: Arc<OnceLock<Served>>,
}

/// Reuse limits of one p3 component, resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) struct P3Limits {
    pub max_requests: usize,
    pub max_concurrent: usize,
    pub idle_timeout: Duration,
    pub max_instances: usize,
}

/// The host's state for wasmtime's [`ProxyHandler`].
pub(crate) struct P3State {
    pre: ProxyPre<InstanceState>,
    stores: StoreFactory,
    limits: P3Limits,
    instances: Arc<Semaphore>,
}

/// Serves one p3 component.
pub(crate) struct P3Handler {
    handler: ProxyHandler<P3State>,
    timeout: Duration,
    memory_limit: u64,
}

impl P3Handler {
    pub(crate) fn new(
        pre: wasmtime_wasi_http::p3::bindings::ServicePre<InstanceState>,
        stores: StoreFactory,
        limits: P3Limits,
    ) -> Self {
        let timeout = stores.limits.timeout;
        let memory_limit = stores.limits.memory;
        P3Handler {
            handler: ProxyHandler::new(P3State {
                pre: ProxyPre::P3(pre),
                stores,
                instances: Arc::new(Semaphore::new(limits.max_instances.max(1))),
                limits,
            }),
            timeout,
            memory_limit,
        }
    }

    /// Hands `request` to an instance with room for it (or a new one) and waits for
    /// the response head. At `max_instances`, the request waits (until its deadline)
    /// for an instance to take it or to go away. Returns the response and the failure
    /// flag of the instance serving it (set if it fails while the body streams).
    pub(crate) async fn handle(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<
        (
            http::Response<wasmtime_wasi_http::WasiBody>,
            Arc<OnceLock<String>>,
        ),
        InvokeError,
    > {
        let mut data = RequestData {
            deadline: Instant::now() + self.timeout,
            invocation: super::invoke::http_invocation(request.headers()),
            served_by: Arc::new(OnceLock::new()),
        };
        let served_by = data.served_by.clone();
        let mut request = request;
        let mut pause = Duration::from_millis(1);
        loop {
            let e = match self.handler.handle(data, request).await {
                Ok(response) => {
                    let failed = served_by
                        .get()
                        .map(|s| s.failed.clone())
                        .unwrap_or_default();
                    return Ok((response, failed));
                }
                Err(e) => e,
            };
            // No instance had room and a new one would exceed max_instances: the
            // request comes back; try again shortly (an existing instance may have
            // room by then, or one may have gone).
            match e.downcast::<InstantiationError<RequestData>>() {
                Ok(inst) if inst.error.downcast_ref::<AtCapacity>().is_some() => {
                    if Instant::now() + pause >= inst.request_data.deadline {
                        return Err(InvokeError::Timeout(self.timeout));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                    data = inst.request_data;
                    request = inst.request.into_inner().unwrap_or_else(|e| e.into_inner());
                }
                Ok(inst) => {
                    return Err(self.classify(wasmtime::Error::new(inst), &served_by));
                }
                Err(e) => return Err(self.classify(e, &served_by)),
            }
        }
    }

    /// Sorts a failed request's error; `served_by` is what the instance that had
    /// accepted it (if one had) recorded. (The flags are per instance: with concurrent
    /// requests, all of them fail when the instance does, and all are reported with
    /// its cause.)
    fn classify(&self, e: wasmtime::Error, served_by: &OnceLock<Served>) -> InvokeError {
        if e.downcast_ref::<ExpirationError>().is_some() {
            return InvokeError::Timeout(self.timeout);
        }
        if e.downcast_ref::<TrapOrPanicError>().is_some() {
            let detail =
                "the instance trapped while serving this request (see the worker's log line)";
            // Only a hit since this request started counts: an instance can survive a
            // refused memory.grow and trap much later for another reason.
            let served = served_by.get();
            let hit = served
                .filter(|s| s.memory.load(Ordering::Relaxed) != s.memory_at_start)
                .map(|s| MemoryLimiter::decode(&s.memory));
            // The worker reports the host's interruption at a deadline as a trap like
            // any other; the instance records that it was interrupted.
            let interrupted = served.is_some_and(|s| s.interrupted.load(Ordering::Relaxed));
            return match hit {
                Some(hit) if hit != MemoryHit::None => {
                    memory_failure(hit, self.memory_limit, detail.into())
                }
                _ if interrupted => InvokeError::Timeout(self.timeout),
                _ => InvokeError::Trap(detail.into()),
            };
        }
        if let Some(inst) = e.downcast_ref::<InstantiationError<RequestData>>() {
            if inst
                .error
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                return InvokeError::PoolExhausted(format!("{:#}", inst.error));
            }
            return InvokeError::Instantiate(format!("{:#}", inst.error));
        }
        if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
            if *trap == wasmtime::Trap::Interrupt {
                return InvokeError::Timeout(self.timeout);
            }
            return InvokeError::Trap(format!("{e:#}"));
        }
        InvokeError::GuestError(format!("{e:#}"))
    }
}

impl HandlerState for P3State {
    type StoreData = InstanceState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<InstanceState, Expiration, Worker>> {
        let slot = self
            .instances
            .clone()
            .try_acquire_owned()
            .map_err(|_| wasmtime::Error::new(AtCapacity))?;
        let timeout = self.stores.limits.timeout;
        let deadline = Arc::new(AtomicU64::new(to_nanos(Instant::now() + timeout)));
        let (mut store, _memory_hit) = self.stores.new_store(deadline.clone());
        let interrupted = store.data().host.interrupted.clone();
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            proxy,
            view: <InstanceState as WasiHttpView>::http,
            expiration: Expiration {
                idle_timeout: self.limits.idle_timeout,
                request_timeout: timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400 * 365))),
                interrupted,
            },
            state: Worker {
                limits: self.limits,
                deadline,
                component: self.stores.grants.id.to_string(),
                _slot: slot,
            },
        })
    }
}

/// What the instance that accepted a request recorded, for sorting its failure.
pub(crate) struct Served {
    /// The instance's memory-limit flag, and its value when the request started.
    memory: Arc<AtomicU8>,
    memory_at_start: u8,
    /// Whether the host interrupted the instance at a deadline.
    interrupted: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the instance fails (see `Worker::drop`).
    failed: Arc<OnceLock<String>>,
}

/// A new instance would exceed `max_instances`.
#[derive(Debug)]
struct AtCapacity;

impl std::fmt::Display for AtCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the component is at max_instances")
    }
}

impl std::error::Error for AtCapacity {}

/// When a worker's instance must go: idle past `idle_timeout`, or busy past the
/// request timeout since its most recent request started (a guest stuck in a loop or
/// a blocking host call keeps the event loop from noticing its requests expire).
pub(crate) struct Expiration {
    idle_timeout: Duration,
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The instance's flag: set when this expiry ends it while it serves requests.
    interrupted: Arc<std::sync::atomic::AtomicBool>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let after = match status {
            WorkerStatus::Idle => self.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.request_timeout,
        };
        let Some(deadline) = start.checked_add(after) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        let expired = self.sleep.as_mut().poll(cx);
        if expired.is_ready() && status != WorkerStatus::Idle {
            self.interrupted.store(true, Ordering::Relaxed);
        }
        expired
    }
}

/// One instance's reuse accounting.
pub(crate) struct Worker {
    limits: P3Limits,
    deadline: Arc<AtomicU64>,
    component: String,
    _slot: OwnedSemaphorePermit,
}

impl WorkerState for Worker {
    type StoreData = InstanceState;
    type RequestData = RequestData;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.limits.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.limits.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, InstanceState>,
        data: RequestData,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + 'static + Send + Sync>> {
        // No `cpu.begin()`: the store's other requests may have wasm time not yet
        // charged, and waits between them are not charged anyway (call hooks).
        let state = store.data_mut();
        state.begin(data.invocation);
        let memory = state.host.limiter.hit_flag();
        let _ = data.served_by.set(Served {
            memory_at_start: memory.load(Ordering::Relaxed),
            memory,
            interrupted: state.host.interrupted.clone(),
            failed: state.host.failed.clone(),
        });
        self.deadline
            .fetch_max(to_nanos(data.deadline), Ordering::Relaxed);
        Box::pin(tokio::time::sleep_until(data.deadline.into()))
    }

    fn drop(&self, store: Store<InstanceState>, result: wasmtime::Result<()>) {
        if let Err(e) = result {
            let why = format!("{e:#}");
            tracing::warn!(component = %self.component, error = %why, "WASI 0.3 instance failed; dropped");
            // Before the store goes: dropping it ends the bodies it was producing, and
            // they must see the failure then (`runtime/http.rs`, `FailsWithGuest`).
            let _ = store.data().host.failed.set(why);
        }
        drop(store);
    }
}
