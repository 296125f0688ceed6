//! `wasi:logging@0.1.0-draft`: a guest's log calls become the host's log events
//! (target `wasmhive::guest`) with its app, component, version and the invocation's
//! trace id. No manifest keys: every component may log.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{Capability, GrantContext, Grants, HasView, Instance, View, view_of};
use crate::section::{ManifestError, Table};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:logging-host;
                 world logging { import wasi:logging/logging@0.1.0-draft; }",
        path: "../wit",
        world: "wasmhive:logging-host/logging",
        imports: { default: async },
    });
}

use bindings::wasi::logging::logging::{self, Level};

/// The capability.
pub struct Logging;

impl Capability for Logging {
    const INTERFACES: &'static [&'static str] = &["wasi:logging/"];
    type Spec = ();
    type Grant = ();
    type Ctx = ();

    fn spec(_component: &mut Table<'_>) -> Result<(), ManifestError> {
        Ok(())
    }

    fn grant(_spec: &(), _cx: &GrantContext<'_>) -> Result<(), String> {
        Ok(())
    }

    fn instance(_grants: &Arc<Grants>) {}

    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        _concurrent: bool,
    ) -> anyhow::Result<()> {
        bindings::Logging::add_to_linker::<_, HasView<Logging>>(linker, view_of::<X, Logging>)?;
        Ok(())
    }
}

impl logging::Host for View<'_, Logging> {
    async fn log(&mut self, level: Level, context: String, message: String) {
        let (app, component, version) = (&*self.id.app, &*self.id.component, &*self.id.version);
        let trace_id = self.invocation.trace_id();
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(target: "wasmhive::guest", app, component, version, trace_id, context, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error | Level::Critical => emit!(error),
        }
    }
}
