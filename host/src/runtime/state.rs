//! Per-instance store state: the WASI and wasi:http contexts one instance sees, its
//! resource table, its memory limiter, and where its stdout/stderr go.
//!
//! Built fresh for every instance from the component's [`Grants`]: env vars the manifest
//! lists and nothing else; no preopened directories, no sockets, no inherited stdio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl InstanceState {
    /// Fresh state for one instance of the component `grants` describes.
    pub fn new(grants: &Arc<Grants>) -> Self {
        let mut wasi = WasiCtxBuilder::new();
        wasi.envs(&grants.env)
            .stdout(GuestLog::new(grants.clone(), "stdout"))
            .stderr(GuestLog::new(grants.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        InstanceState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: HostHooks::new(grants.clone()),
            limiter: MemoryLimiter::new(grants.memory),
        }
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

/// Caps linear memory growth and remembers whether the cap was hit, so a trap that
/// follows (a guest aborting on allocation failure) is reported as a memory limit.
pub struct MemoryLimiter {
    max_memory: u64,
    hit: Arc<AtomicBool>,
}

impl MemoryLimiter {
    fn new(max_memory: u64) -> Self {
        MemoryLimiter {
            max_memory,
            hit: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A handle that reads whether the limit was hit, usable after the store is gone.
    pub fn hit_flag(&self) -> Arc<AtomicBool> {
        self.hit.clone()
    }
}

/// Tables are bounded by the pooling allocator's slot size; this generous cap only
/// stops a runaway `table.grow` early.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = (desired as u64) <= self.max_memory && maximum.is_none_or(|m| desired <= m);
        if !ok {
            self.hit.store(true, Ordering::Relaxed);
        }
        Ok(ok)
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

/// Longest stdout/stderr line kept; longer output is split.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Guest stdout/stderr: each line becomes a tracing event with the component's name,
/// never raw bytes on the host's own stdout.
#[derive(Clone)]
struct GuestLog {
    grants: Arc<Grants>,
    stream: &'static str,
    buf: Vec<u8>,
}

impl GuestLog {
    fn new(grants: Arc<Grants>, stream: &'static str) -> Self {
        GuestLog {
            grants,
            stream,
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
        tracing::info!(
            target: "wasmhive::guest",
            app = %self.grants.id.app,
            component = %self.grants.id.component,
            version = %self.grants.id.version,
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
        Box::new(GuestLog::new(self.grants.clone(), self.stream))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestLog::new(self.grants.clone(), self.stream))
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
