//! Per-instance store state: the WASI and wasi:http contexts one instance sees, its
//! resource table, its memory limiter, and where its stdout/stderr go.
//!
//! Built fresh for every instance from the component's [`Grants`]: env vars the manifest
//! lists and nothing else; no preopened directories, no sockets, no inherited stdio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::Grants;
use super::hooks::HostHooks;

/// The `T` in `Store<T>` for every component instance.
pub struct InstanceState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HostHooks,
    pub(crate) limiter: MemoryLimiter,
    /// Set when the host interrupted the instance at a deadline (the epoch callback,
    /// or a WASI 0.3 worker's expiry): its failure is a timeout, not a trap.
    pub(crate) interrupted: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) messaging: super::messaging::MessagingCtx,
    /// The invocation's trace id, shared with the stdout/stderr writers.
    trace_id: TraceId,
    grants: Arc<Grants>,
    _live: LiveInstance,
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

impl InstanceState {
    /// Fresh state for one instance of the component `grants` describes, counted in
    /// `live` while it exists, its memory drawn from `host_memory`.
    pub(crate) fn new(
        grants: &Arc<Grants>,
        live: &Arc<AtomicU32>,
        host_memory: &Arc<HostMemory>,
    ) -> Self {
        let trace_id: TraceId = Arc::default();
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&grants.env)
            .stdout(GuestLog::new(grants.clone(), "stdout", trace_id.clone()))
            .stderr(GuestLog::new(grants.clone(), "stderr", trace_id.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        InstanceState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: HostHooks::new(grants.clone()),
            limiter: MemoryLimiter::new(grants.memory, host_memory.clone()),
            interrupted: Default::default(),
            messaging: Default::default(),
            trace_id,
            grants: grants.clone(),
            _live: LiveInstance::new(live.clone()),
        }
    }

    /// Sets the `x-request-id` this instance's outgoing requests carry.
    pub(crate) fn set_request_id(&mut self, value: Option<http::HeaderValue>) {
        self.hooks.request_id = value;
    }

    /// Sets the `traceparent` this instance's outgoing requests and messages carry.
    pub(crate) fn set_traceparent(&mut self, header: Option<http::HeaderValue>) {
        let id = header
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or_default();
        // A reused instance keeps its buffer.
        let mut trace_id = self.trace_id.lock().unwrap_or_else(|e| e.into_inner());
        trace_id.clear();
        trace_id.push_str(id);
        drop(trace_id);
        self.messaging.traceparent = header.clone();
        self.hooks.traceparent = header;
    }

    pub(crate) fn table_ref(&self) -> &ResourceTable {
        &self.table
    }

    pub(crate) fn table_mut(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// What this instance's component may do.
    pub fn grants(&self) -> &Arc<Grants> {
        &self.grants
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
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

/// The trace id of the invocation an instance is serving (empty: none).
type TraceId = Arc<std::sync::Mutex<String>>;

/// Longest stdout/stderr line kept; longer output is split.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Guest stdout/stderr: each line becomes a tracing event with the component's name,
/// never raw bytes on the host's own stdout.
#[derive(Clone)]
struct GuestLog {
    grants: Arc<Grants>,
    stream: &'static str,
    trace_id: TraceId,
    buf: Vec<u8>,
}

impl GuestLog {
    fn new(grants: Arc<Grants>, stream: &'static str, trace_id: TraceId) -> Self {
        GuestLog {
            grants,
            stream,
            trace_id,
            buf: Vec::new(),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            self.buf.extend_from_slice(&bytes[..i]);
            self.emit();
            bytes = &bytes[i + 1..];
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= MAX_LOG_LINE {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.buf);
        let line = line.trim_end_matches('\r');
        let trace_id = self
            .trace_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tracing::info!(
            target: "wasmhive::guest",
            app = %self.grants.id.app,
            component = %self.grants.id.component,
            version = %self.grants.id.version,
            trace_id,
            stream = self.stream,
            "{line}"
        );
        self.buf.clear();
    }
}

impl Drop for GuestLog {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.emit();
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestLog::new(
            self.grants.clone(),
            self.stream,
            self.trace_id.clone(),
        ))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestLog::new(
            self.grants.clone(),
            self.stream,
            self.trace_id.clone(),
        ))
    }
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
