//! The WASI basics: what every component built by a wasm32-wasip2 toolchain imports
//! (cli environment, exit and stdio, clocks, random, filesystem, sockets), linked so
//! any toolchain's output instantiates, and granting almost nothing.
//!
//! Manifest: `env = { NAME = "value" }`, the only environment variables the guest
//! sees. No preopened directories, no sockets, no name lookups, no inherited stdio:
//! what a guest prints on stdout or stderr becomes a log event (target
//! `wasmhive::guest`) with its app, component, version and the invocation's trace id,
//! line by line, never raw bytes on the host's own stdout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use toml::Spanned;
use wasmtime::component::Linker;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{Capability, GrantContext, Grants, Instance, Invocation};
use crate::section::{ManifestError, Table};

/// The capability.
pub struct Wasi;

/// `env`: the environment variables granted, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiSpec {
    /// Name and value of each variable.
    pub env: Vec<(String, String)>,
}

/// Per-instance state: the WASI context and the trace id its stdout/stderr writers
/// stamp on each line.
pub struct WasiState {
    ctx: WasiCtx,
    trace_id: TraceId,
    grants: Arc<Grants>,
}

impl Capability for Wasi {
    const INTERFACES: &'static [&'static str] = &[
        "wasi:cli/",
        "wasi:clocks/",
        "wasi:io/",
        "wasi:random/",
        "wasi:filesystem/",
        "wasi:sockets/",
    ];
    type Spec = WasiSpec;
    type Grant = WasiSpec;
    type Ctx = WasiState;

    fn spec(component: &mut Table<'_>) -> Result<WasiSpec, ManifestError> {
        let raw: BTreeMap<Spanned<String>, String> = component.take_or_default("env")?;
        let mut env = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            if !is_env_name(key.get_ref()) {
                return Err(component.invalid(
                    key.span(),
                    &format!("env.{}", key.get_ref()),
                    "environment variable names are letters, digits and '_', not starting with a digit",
                ));
            }
            env.push((key.into_inner(), value));
        }
        Ok(WasiSpec { env })
    }

    fn grant(spec: &WasiSpec, _cx: &GrantContext<'_>) -> Result<WasiSpec, String> {
        Ok(spec.clone())
    }

    fn instance(grants: &Arc<Grants>) -> WasiState {
        let trace_id: TraceId = Arc::default();
        let mut wasi = builder(grants);
        wasi.stdout(GuestLog::new(grants.clone(), "stdout", trace_id.clone()))
            .stderr(GuestLog::new(grants.clone(), "stderr", trace_id.clone()));
        WasiState {
            ctx: wasi.build(),
            trace_id,
            grants: grants.clone(),
        }
    }

    fn begin(ctx: &mut WasiState, invocation: &Invocation) {
        {
            // A reused instance keeps its buffer.
            let mut id = ctx.trace_id.lock().unwrap_or_else(|e| e.into_inner());
            id.clear();
            id.push_str(invocation.trace_id());
        }
        if let Some(command) = &invocation.command {
            // A command run starts in a fresh instance, before the guest holds any
            // stdio handle: its context is replaced whole.
            ctx.ctx = command.context(&ctx.grants, &ctx.trace_id);
        }
    }

    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        concurrent: bool,
    ) -> anyhow::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        if concurrent {
            wasmtime_wasi::p3::add_to_linker(linker)?;
        }
        Ok(())
    }
}

impl<X: Send> WasiView for Instance<X> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctxs.wasi.ctx,
            table: &mut self.table,
        }
    }
}

/// A WASI context with the component's environment and nothing else: no sockets, no
/// name lookups, no files, empty stdin.
fn builder(grants: &Grants) -> WasiCtxBuilder {
    let mut wasi = WasiCtxBuilder::new();
    wasi.envs(&grants.wasi.env)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    wasi
}

/// Where a command run's stdout or stderr goes (besides the log).
pub trait OutputSink: Send + Sync {
    /// Takes bytes the guest wrote.
    fn write(&self, bytes: &[u8]);
}

/// A command run's view of the world (`wasi:cli/run`): argv (the program name first),
/// environment added to the component's own (the same name replaces it), stdin, and
/// sinks for stdout and stderr. Output also goes to the log, line by line, as for any
/// invocation.
pub struct CommandIo {
    /// argv, the program name first.
    pub args: Vec<String>,
    /// Variables set for this run.
    pub env: Vec<(String, String)>,
    /// Its whole stdin.
    pub stdin: Bytes,
    /// Its stdout.
    pub stdout: Arc<dyn OutputSink>,
    /// Its stderr.
    pub stderr: Arc<dyn OutputSink>,
}

impl std::fmt::Debug for CommandIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values of the environment may be secrets: names only.
        f.debug_struct("CommandIo")
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("stdin", &self.stdin.len())
            .finish()
    }
}

impl CommandIo {
    fn context(&self, grants: &Arc<Grants>, trace_id: &TraceId) -> WasiCtx {
        // The run's variables replace the component's of the same name (a guest's
        // `getenv` takes the first match, so a name must appear once).
        let mut wasi = WasiCtxBuilder::new();
        let own = grants
            .wasi
            .env
            .iter()
            .filter(|(k, _)| !self.env.iter().any(|(n, _)| n == k));
        for (k, v) in own.chain(self.env.iter()) {
            wasi.env(k, v);
        }
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .args(&self.args)
            .stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(
                self.stdin.clone(),
            ))
            .stdout(GuestLog::new(grants.clone(), "stdout", trace_id.clone()).to(&self.stdout))
            .stderr(GuestLog::new(grants.clone(), "stderr", trace_id.clone()).to(&self.stderr));
        wasi.build()
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The trace id of the invocation an instance is serving (empty: none).
type TraceId = Arc<Mutex<String>>;

/// Longest stdout/stderr line kept; longer output is split.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Guest stdout/stderr: each line becomes a tracing event with the component's name;
/// a command run's output also goes to its sink, as written.
struct GuestLog {
    grants: Arc<Grants>,
    stream: &'static str,
    trace_id: TraceId,
    buf: Vec<u8>,
    sink: Option<Arc<dyn OutputSink>>,
}

impl GuestLog {
    fn new(grants: Arc<Grants>, stream: &'static str, trace_id: TraceId) -> Self {
        GuestLog {
            grants,
            stream,
            trace_id,
            buf: Vec::new(),
            sink: None,
        }
    }

    /// The same log, also writing to `sink`.
    fn to(mut self, sink: &Arc<dyn OutputSink>) -> Self {
        self.sink = Some(sink.clone());
        self
    }

    /// A fresh writer to the same log and sink (each stdio handle gets one).
    fn fresh(&self) -> Self {
        GuestLog {
            grants: self.grants.clone(),
            stream: self.stream,
            trace_id: self.trace_id.clone(),
            buf: Vec::new(),
            sink: self.sink.clone(),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        if let Some(sink) = &self.sink {
            sink.write(bytes);
        }
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
        let id = &self.grants.id;
        tracing::info!(
            target: "wasmhive::guest",
            app = %id.app,
            component = %id.component,
            version = %id.version,
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
        Box::new(self.fresh())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.fresh())
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
        // A run's output is kept small per write: its followers buffer writes.
        Ok(if self.sink.is_some() { 16 } else { 64 } * 1024)
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
