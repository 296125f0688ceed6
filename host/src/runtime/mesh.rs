//! The runtime's side of service-to-service calls: an outgoing wasi:http request
//! whose authority is a component the caller's manifest lists under `calls` goes to
//! a [`Mesh`] instead of the network. The mesh (the `mesh` module of the host)
//! resolves the name, applies the caller's policy and invokes the target in process.

use std::sync::Arc;

use wasmtime_wasi_http::WasiBody;

use super::ComponentId;
use crate::manifest::CallPolicy;

/// Routes calls between components.
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
    ) -> Result<http::Response<WasiBody>, wasmtime_wasi_http::p2::bindings::http::types::ErrorCode>;
}

/// A mesh handle in the grants (`Debug` by hand).
#[derive(Clone)]
pub struct MeshHandle(pub Arc<dyn Mesh>);

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshHandle")
    }
}
