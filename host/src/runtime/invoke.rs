//! Invoking a prepared component: a fresh `Store` and instance per request (or a
//! pooled one when the component allows serial reuse), a wall deadline, and a clear
//! account of how it ended.
//!
//! WASI 0.2 guests run on the caller's task until they finish or set the response
//! head; if the head comes first, the guest gets one more turn (a small body is then
//! written and the guest done), and only if it is still running does the rest of the
//! invocation move to its own task while the body streams from it. WASI 0.3 guests go
//! through wasmtime's `ProxyHandler` (see `p3.rs`). That future owns the store and
//! whatever guard the caller passes in (a scaler permit), so capacity is released
//! when the guest finishes, not when the head is sent. A healthy reusable instance
//! goes back to the pool; a trap or deadline drops it. Every way an invocation can
//! fail maps to one [`InvokeError`]: the gateway turns that into a status code in one
//! place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::oneshot;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

use http_body_util::BodyExt;

use super::messaging::BrokerMessage;
use super::messaging::handler::MessagingHandlerPre;
use super::p3::{P3Handler, P3Limits};
use super::state::{HostMemory, MemoryHit, MemoryLimiter};
use super::{Grants, HttpFlavor, InstanceState, RuntimeError};

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
    /// The host could not hand the request to the guest.
    #[error("host error: {0}")]
    Host(String),
}

/// A component version ready to serve: pre-instantiated once, instantiated per call.
#[derive(Clone)]
pub struct PreparedComponent {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set when the component exports a wasi:http 0.2 handler.
    http: Option<ProxyPre<InstanceState>>,
    /// Set when the component exports a wasi:http 0.3 handler.
    p3: Option<P3Handler>,
    /// Set when the component exports a message handler.
    messages: Option<MessagingHandlerPre<InstanceState>>,
    /// Makes stores; keeps the shared loaded code alive (see `Runtime::load`).
    stores: StoreFactory,
    grants: Arc<Grants>,
    flavor: Option<HttpFlavor>,
    /// Idle instances kept for serial reuse (`instances.max_requests > 1`).
    pool: std::sync::Mutex<Vec<Warm>>,
}

/// An instance kept between requests (p2 serial reuse).
struct Warm {
    store: Store<InstanceState>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    memory_hit: Arc<AtomicU8>,
    deadline: Arc<AtomicU64>,
    served: u32,
    idle_since: Instant,
}

/// Idle reusable instances kept per component at most.
const MAX_IDLE: usize = 64;

/// The time base for deadlines stored in atomics.
static BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

pub(crate) fn to_nanos(t: Instant) -> u64 {
    t.saturating_duration_since(*BASE).as_nanos() as u64
}

impl PreparedComponent {
    pub(crate) fn new(
        pre: InstancePre<InstanceState>,
        component: Arc<Component>,
        flavor: Option<HttpFlavor>,
        grants: Arc<Grants>,
        live: Arc<AtomicU32>,
        host_memory: Arc<HostMemory>,
    ) -> Result<Self, RuntimeError> {
        let stores = StoreFactory {
            component,
            grants: grants.clone(),
            live,
            host_memory,
        };
        let link = |e: wasmtime::Error| RuntimeError::Link(format!("{e:#}"));
        let (http, p3) = match flavor {
            None => (None, None),
            Some(HttpFlavor::P2) => (Some(ProxyPre::new(pre.clone()).map_err(link)?), None),
            Some(HttpFlavor::P3) => {
                let service =
                    wasmtime_wasi_http::p3::bindings::ServicePre::new(pre.clone()).map_err(link)?;
                let reuse = grants.reuse;
                let limits = P3Limits {
                    max_requests: reuse.max_requests_for(HttpFlavor::P3) as usize,
                    max_concurrent: reuse.max_concurrent_for(HttpFlavor::P3) as usize,
                    idle_timeout: reuse.idle_timeout,
                    max_instances: reuse.max_instances as usize,
                };
                (None, Some(P3Handler::new(service, stores.clone(), limits)))
            }
        };
        // Absent export: not a message trigger (checked against the manifest by the
        // control plane).
        let messages = MessagingHandlerPre::new(pre).ok();
        Ok(PreparedComponent {
            inner: Arc::new(Inner {
                http,
                p3,
                messages,
                stores,
                grants,
                flavor,
                pool: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// Whether it exports a message handler.
    pub fn handles_messages(&self) -> bool {
        self.inner.messages.is_some()
    }

    /// The HTTP handler flavor this component exports, if any.
    pub fn flavor(&self) -> Option<HttpFlavor> {
        self.inner.flavor
    }

    /// The grants the component runs with.
    pub fn grants(&self) -> &Arc<Grants> {
        &self.inner.grants
    }

    /// Serves one request in a fresh instance, or in an idle reusable one when the
    /// component allows reuse (`instances.max_requests > 1`). `guard` is held until
    /// the instance is done with this request (after the response body has been
    /// produced or the invocation failed). What the guest sends out carries the
    /// request's `traceparent` and `x-request-id` (the caller puts them on it).
    pub async fn handle<G: Send + 'static>(
        &self,
        request: http::Request<WasiBody>,
        guard: G,
    ) -> Result<http::Response<WasiBody>, InvokeError> {
        let inner = self.inner.clone();
        if let Some(p3) = &inner.p3 {
            let response = p3.handle(request).await?;
            // The body streams from the instance after the head: the guard (a
            // scaler permit) is held until it is done.
            return Ok(response.map(|body| {
                Guarded {
                    body,
                    guard: Some(Box::new(guard)),
                }
                .boxed_unsync()
            }));
        }
        let Some(http) = inner.http.clone() else {
            return Err(InvokeError::Host(
                "component exports no HTTP handler".into(),
            ));
        };
        let timeout = inner.grants.timeout;
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let reuse = inner.grants.reuse;
        let max_requests = reuse.max_requests_for(HttpFlavor::P2);
        let warm = if max_requests > 1 {
            self.take_warm(reuse.idle_timeout)
        } else {
            None
        };
        let (mut store, memory_hit, cell, proxy, served) = match warm {
            Some(w) => (w.store, w.memory_hit, w.deadline, Some(w.proxy), w.served),
            None => {
                let cell = Arc::new(AtomicU64::new(0));
                let (store, hit) = self.new_store(cell.clone());
                (store, hit, cell, None, 0)
            }
        };
        cell.store(to_nanos(deadline), Ordering::Relaxed);
        memory_hit.store(0, Ordering::Relaxed);
        store.set_epoch_deadline(1);
        let (traceparent, request_id) = trace_headers(request.headers());
        store.data_mut().set_traceparent(traceparent);
        store.data_mut().set_request_id(request_id);
        let this = self.clone();

        let mut task = Box::pin(async move {
            let run = async {
                let proxy = match proxy {
                    Some(p) => p,
                    None => http
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|e| classify(e, Phase::Instantiate, &memory_hit, &inner.grants))?,
                };
                let mut http = store.data_mut().http();
                let req = http
                    .new_incoming_request(Scheme::Http, request)
                    .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
                let out = http
                    .new_response_outparam(tx)
                    .map_err(|e| InvokeError::Host(format!("{e:#}")))?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
                    .map_err(|e| classify(e, Phase::Call, &memory_hit, &inner.grants))?;
                Ok(proxy)
            };
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r,
                Err(_) => Err(InvokeError::Timeout(timeout)),
            };
            let result = match result {
                // A healthy instance with requests left goes back for the next one.
                Ok(proxy) if served + 1 < max_requests => {
                    this.put_warm(Warm {
                        store,
                        proxy,
                        memory_hit,
                        deadline: cell,
                        served: served + 1,
                        idle_since: Instant::now(),
                    });
                    Ok(())
                }
                Ok(_) => {
                    drop(store);
                    Ok(())
                }
                // A trap or deadline poisons the instance: it is dropped here.
                Err(e) => {
                    drop(store);
                    Err(e)
                }
            };
            drop(guard);
            result
        });

        // Run the guest right here until it either finishes or sets the response head.
        // A small response usually finishes in one go: no task to spawn, no wakeup of
        // another thread. If the head comes first, the rest (the body) keeps running
        // in its own task while the head goes out.
        let mut rx = rx;
        tokio::select! {
            biased;
            finished = &mut task => match rx.try_recv() {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(code)) => Err(InvokeError::Guest(code)),
                Err(_) => match finished {
                    Err(e) => Err(e),
                    Ok(()) => Err(InvokeError::NoResponse),
                },
            },
            head = &mut rx => match head {
                Ok(head) => {
                    // Give the guest one more turn before handing it to its own task:
                    // a small body is usually written and the guest done by then (no
                    // spawn, no wakeup of another thread). A guest still writing runs
                    // on in its own task, its deadline enforced there.
                    if futures::FutureExt::now_or_never(&mut task).is_none() {
                        tokio::spawn(task);
                    }
                    head.map_err(InvokeError::Guest)
                }
                // The outparam was dropped unset: the guest's end says why.
                Err(_) => match task.await {
                    Err(e) => Err(e),
                    Ok(()) => Err(InvokeError::NoResponse),
                },
            }
        }
    }
}

impl PreparedComponent {
    /// An idle reusable instance, if one is fresh enough (stale ones are dropped).
    fn take_warm(&self, idle_timeout: std::time::Duration) -> Option<Warm> {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        pool.retain(|w| now.duration_since(w.idle_since) < idle_timeout);
        pool.pop()
    }

    fn put_warm(&self, warm: Warm) {
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE {
            pool.push(warm);
        }
    }

    /// Drops reusable instances idle longer than the component's `idle_timeout`.
    pub fn prune_idle(&self) {
        let idle = self.inner.grants.reuse.idle_timeout;
        let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if !pool.is_empty() {
            let now = Instant::now();
            pool.retain(|w| now.duration_since(w.idle_since) < idle);
        }
    }

    fn new_store(&self, deadline: Arc<AtomicU64>) -> (Store<InstanceState>, Arc<AtomicU8>) {
        self.inner.stores.new_store(deadline)
    }

    /// Delivers one message to a fresh instance's `handle-message`. `guard` is held
    /// until the instance is gone. A handler returning `Err` is
    /// [`InvokeError::Handler`].
    pub async fn handle_message<G: Send + 'static>(
        &self,
        message: BrokerMessage,
        traceparent: Option<http::HeaderValue>,
        guard: G,
    ) -> Result<(), InvokeError> {
        let inner = self.inner.clone();
        let Some(pre) = inner.messages.clone() else {
            return Err(InvokeError::Host(
                "component exports no message handler".into(),
            ));
        };
        let timeout = inner.grants.timeout;
        let deadline = Instant::now() + timeout;
        let (mut store, memory_hit) = self.new_store(Arc::new(AtomicU64::new(to_nanos(deadline))));
        store.data_mut().messaging.reply_to = message.reply_to.clone();
        store.data_mut().set_traceparent(traceparent);
        let task = tokio::spawn(async move {
            let run = async {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| classify(e, Phase::Instantiate, &memory_hit, &inner.grants))?;
                instance
                    .wasmcloud_messaging_handler()
                    .call_handle_message(&mut store, &message)
                    .await
                    .map_err(|e| classify(e, Phase::Call, &memory_hit, &inner.grants))?
                    .map_err(InvokeError::Handler)
            };
            let result = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(r) => r,
                Err(_) => Err(InvokeError::Timeout(timeout)),
            };
            drop(store);
            drop(guard);
            result
        });
        task.await.unwrap_or_else(|join| {
            Err(InvokeError::Host(format!("invocation task failed: {join}")))
        })
    }
}

/// Makes the stores of one component version: its grants, its memory limiter
/// drawing on the host's budget, counted in `live` while they exist.
#[derive(Clone)]
pub(crate) struct StoreFactory {
    /// Keeps the shared loaded code alive (see `Runtime::load`).
    component: Arc<Component>,
    grants: Arc<Grants>,
    live: Arc<AtomicU32>,
    host_memory: Arc<HostMemory>,
}

impl StoreFactory {
    pub(crate) fn grants(&self) -> &Arc<Grants> {
        &self.grants
    }

    /// A fresh store for one instance, with its memory limiter and a wall-clock
    /// deadline (read from `deadline`, so a reused instance gets a new one per
    /// request) enforced through epoch interruption.
    pub(crate) fn new_store(
        &self,
        deadline: Arc<AtomicU64>,
    ) -> (Store<InstanceState>, Arc<AtomicU8>) {
        let mut store = Store::new(
            self.component.engine(),
            InstanceState::new(&self.grants, &self.live, &self.host_memory),
        );
        let memory_hit = store.data().limiter.hit_flag();
        let interrupted = store.data().interrupted.clone();
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if to_nanos(Instant::now()) >= deadline.load(Ordering::Relaxed) {
                interrupted.store(true, Ordering::Relaxed);
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        (store, memory_hit)
    }
}

/// A response body that holds `guard` until it has been produced to the end (or
/// dropped).
struct Guarded {
    body: WasiBody,
    guard: Option<Box<dyn std::any::Any + Send>>,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[derive(Clone, Copy)]
enum Phase {
    Instantiate,
    Call,
}

/// Sorts a wasmtime error into what a caller can act on.
fn classify(
    e: wasmtime::Error,
    phase: Phase,
    memory_hit: &AtomicU8,
    grants: &Grants,
) -> InvokeError {
    if let Some(trap) = e.downcast_ref::<Trap>()
        && *trap == Trap::Interrupt
    {
        return InvokeError::Timeout(grants.timeout);
    }
    if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return InvokeError::PoolExhausted(format!("{e:#}"));
    }
    let detail = format!("{e:#}");
    let hit = MemoryLimiter::decode(memory_hit);
    if hit != MemoryHit::None {
        return memory_failure(hit, grants.memory, detail);
    }
    match phase {
        Phase::Instantiate => InvokeError::Instantiate(detail),
        Phase::Call => InvokeError::Trap(detail),
    }
}

/// The failure of an instance that hit a memory limit (`hit` is not `None`): its own
/// limit of `limit` bytes, or the host's budget.
pub(crate) fn memory_failure(hit: MemoryHit, limit: u64, detail: String) -> InvokeError {
    match hit {
        MemoryHit::Host => InvokeError::HostMemory(detail),
        MemoryHit::Component | MemoryHit::None => InvokeError::MemoryLimit { limit, detail },
    }
}

/// The `traceparent` and `x-request-id` a request for a guest carries (shared, not
/// copied: a header value's bytes are reference counted).
pub(crate) fn trace_headers(
    headers: &http::HeaderMap,
) -> (Option<http::HeaderValue>, Option<http::HeaderValue>) {
    (
        headers
            .get(&crate::telemetry::trace::TRACEPARENT_HEADER)
            .cloned(),
        headers.get(&crate::gateway::REQUEST_ID_HEADER).cloned(),
    )
}
