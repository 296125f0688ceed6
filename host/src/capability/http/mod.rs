//! Outgoing HTTP (wasi:http 0.2 and 0.3): where a guest's requests may go.
//!
//! Manifest: `allowed_outbound_hosts` (external destinations, deny by default: see
//! [`outbound`]) and `[calls.TARGET]` (components of the same app the guest may call by
//! name, `http://TARGET/...`, with the caller's policy: see [`calls`]). A call by name
//! never touches the network: it goes to the host's [`Mesh`], which resolves the
//! target, applies the policy and invokes it in process. Everything else is sent only
//! if an `allowed_outbound_hosts` pattern matches; otherwise the guest sees
//! `HttpRequestDenied`. Hop-by-hop headers are neither seen nor set by guests
//! ([`hooks`]).
//!
//! `max_outgoing_requests` (default [`DEFAULT_MAX_OUTGOING_REQUESTS`]) bounds the
//! requests one instance has open at once, external or by name: more wait for one to
//! finish (like a client's connection pool), under the invocation's deadline. A guest
//! that starts thousands at once holds that many connections, not thousands.

pub mod calls;
mod framing;
pub mod hooks;
pub mod outbound;

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::{Capability, GrantContext, Grants, Instance, Invocation};
use crate::ids::ComponentId;
use crate::section::{ManifestError, Table};
pub use calls::{BreakerPolicy, CallPolicy, Fallback, RetryPolicy};
pub use hooks::is_forbidden_header;
pub use outbound::OutboundRule;

/// The capability.
pub struct OutgoingHttp;

/// Outgoing requests one instance may have open at once, unless the manifest says.
pub const DEFAULT_MAX_OUTGOING_REQUESTS: u32 = 32;

/// `allowed_outbound_hosts` and `calls`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSpec {
    /// External destinations the guest may call.
    pub allowed_outbound_hosts: Vec<OutboundRule>,
    /// Components it may call by name, with their policies (in name order).
    pub calls: Vec<(String, CallPolicy)>,
    /// Requests one instance may have open at once (`None`: the default).
    pub max_outgoing_requests: Option<u32>,
}

/// What a component may reach over HTTP.
#[derive(Debug)]
pub struct HttpGrant {
    /// External destinations allowed.
    pub outbound: Vec<OutboundRule>,
    /// Components it may call by name, with their policies.
    pub calls: Vec<(String, CallPolicy)>,
    /// Where those calls go (`None`: unavailable, e.g. offline validation).
    pub mesh: Option<MeshHandle>,
    /// Requests one instance may have open at once.
    pub max_outgoing: u32,
}

/// Per-instance state: the wasi:http context and the hooks that apply the grant.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: hooks::HostHooks,
}

impl Capability for OutgoingHttp {
    const INTERFACES: &'static [&'static str] = &["wasi:http/"];
    type Spec = HttpSpec;
    type Grant = HttpGrant;
    type Ctx = HttpState;

    fn spec(component: &mut Table<'_>) -> Result<HttpSpec, ManifestError> {
        Ok(HttpSpec {
            allowed_outbound_hosts: component
                .list("allowed_outbound_hosts", OutboundRule::parse)?,
            calls: calls::read(component)?,
            max_outgoing_requests: component.count("max_outgoing_requests", 1, 10_000)?,
        })
    }

    fn grant(spec: &HttpSpec, cx: &GrantContext<'_>) -> Result<HttpGrant, String> {
        Ok(HttpGrant {
            outbound: spec.allowed_outbound_hosts.clone(),
            calls: spec.calls.clone(),
            mesh: cx.services.mesh.clone().map(MeshHandle),
            max_outgoing: spec
                .max_outgoing_requests
                .unwrap_or(DEFAULT_MAX_OUTGOING_REQUESTS),
        })
    }

    fn instance(grants: &Arc<Grants>) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: hooks::HostHooks::new(grants.clone()),
        }
    }

    fn begin(ctx: &mut HttpState, invocation: &Invocation) {
        ctx.hooks.traceparent = invocation.traceparent.clone();
        ctx.hooks.request_id = invocation.request_id.clone();
        ctx.hooks.identity = invocation.identity.clone();
    }

    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        concurrent: bool,
    ) -> anyhow::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        framing::add_to_linker(linker)?;
        if concurrent {
            wasmtime_wasi_http::p3::add_to_linker(linker)?;
        }
        Ok(())
    }
}

impl<X: Send + 'static> WasiHttpView for Instance<X> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let state = &mut self.ctxs.http;
        WasiHttpCtxView {
            ctx: &mut state.ctx,
            table: &mut self.table,
            hooks: &mut state.hooks,
        }
    }
}

/// Routes calls between components (the host's mesh implements it).
#[async_trait::async_trait]
pub trait Mesh: Send + Sync + 'static {
    /// Calls `target` (a component of the caller's app) with `request` under `policy`.
    /// Failures the policy does not absorb come back as responses (503, 504), the way
    /// a proxy would answer; `Err` only for a target that does not exist.
    async fn call(
        &self,
        caller: &ComponentId,
        target: &str,
        policy: &CallPolicy,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, ErrorCode>;
}

/// A mesh in a grant (`Debug` by hand).
#[derive(Clone)]
pub struct MeshHandle(pub Arc<dyn Mesh>);

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshHandle")
    }
}
