//! `wasmcloud:bus/lattice` (`@1.0.0` and `@2.0.0`): wasmCloud's link names, linked
//! so components built for wasmCloud 1.x (with `wasmcloud-component` or its WIT) run
//! unmodified.
//!
//! In wasmCloud, `set-link-name(name, interfaces)` picks which link (which provider
//! and its configuration) backs later key-value, config or messaging calls. wasmhive
//! has no links: a component's manifest grants it buckets, config and subjects, and
//! those grants apply whatever link name it sets. So any name is accepted (logged at
//! debug) and changes nothing; the identifier a guest passes to `open` still names a
//! bucket its manifest must list. `set-target-component` (2.0.0: direct calls to a
//! named component) answers an error: calls to other components go through
//! `wasi:http` by name (`calls` in the manifest). No manifest keys.

use std::sync::Arc;

use wasmtime::component::{Linker, Resource};

use super::{Capability, GrantContext, Grants, HasView, Instance, View, view_of};
use crate::section::{ManifestError, Table};

/// An interface a link name was set for (`namespace:package/interface`).
#[derive(Debug, Clone)]
pub struct CallTarget {
    namespace: String,
    package: String,
    interface: String,
}

impl std::fmt::Display for CallTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.namespace, self.package, self.interface)
    }
}

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:bus-host;
                 world bus {
                   import wasmcloud:bus/lattice@1.0.0;
                   import wasmcloud:bus/lattice@2.0.0;
                 }",
        path: "../wit",
        world: "wasmhive:bus-host/bus",
        imports: { default: async | trappable },
        with: {
            "wasmcloud:bus/lattice@1.0.0.call-target-interface": super::CallTarget,
            "wasmcloud:bus/lattice@2.0.0.call-target-interface": super::CallTarget,
        },
    });
}

use bindings::wasmcloud::bus1_0_0::lattice as v1;
use bindings::wasmcloud::bus2_0_0::lattice as v2;

/// The capability.
pub struct Bus;

impl Capability for Bus {
    const INTERFACES: &'static [&'static str] =
        &["wasmcloud:bus/lattice@1.", "wasmcloud:bus/lattice@2."];
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
        bindings::Bus::add_to_linker::<_, HasView<Bus>>(linker, view_of::<X, Bus>)?;
        Ok(())
    }
}

impl View<'_, Bus> {
    fn target(
        &mut self,
        namespace: String,
        package: String,
        interface: String,
    ) -> wasmtime::Result<Resource<CallTarget>> {
        Ok(self.table.push(CallTarget {
            namespace,
            package,
            interface,
        })?)
    }

    fn link_name(
        &mut self,
        name: &str,
        interfaces: Vec<Resource<CallTarget>>,
    ) -> wasmtime::Result<()> {
        // The guest passes its handles over (owned): they end here.
        let mut names = Vec::with_capacity(interfaces.len());
        for i in interfaces {
            names.push(self.table.delete(i)?.to_string());
        }
        tracing::debug!(
            app = %self.id.app,
            component = %self.id.component,
            link_name = name,
            interfaces = ?names,
            "link name set (wasmhive has no links: the component's grants apply)"
        );
        Ok(())
    }
}

impl v1::Host for View<'_, Bus> {
    async fn set_link_name(
        &mut self,
        name: String,
        interfaces: Vec<Resource<CallTarget>>,
    ) -> wasmtime::Result<()> {
        self.link_name(&name, interfaces)
    }
}

impl v2::Host for View<'_, Bus> {
    async fn set_link_name(
        &mut self,
        name: String,
        interfaces: Vec<Resource<CallTarget>>,
    ) -> wasmtime::Result<Result<(), String>> {
        self.link_name(&name, interfaces)?;
        Ok(Ok(()))
    }

    async fn set_target_component(
        &mut self,
        target: String,
        interface: Resource<CallTarget>,
        _expected_version: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let interface = self.table.delete(interface)?.to_string();
        Ok(Err(format!(
            "wasmhive does not route {interface} to component {target:?} directly: call other components over wasi:http by name (the manifest's `calls`)"
        )))
    }
}

/// Both versions' `call-target-interface` resource: the same host type.
macro_rules! call_target_interface {
    ($($v:ident),*) => {$(
        impl $v::HostCallTargetInterface for View<'_, Bus> {
            async fn new(
                &mut self,
                namespace: String,
                package: String,
                interface: String,
            ) -> wasmtime::Result<Resource<CallTarget>> {
                self.target(namespace, package, interface)
            }

            async fn drop(&mut self, rep: Resource<CallTarget>) -> wasmtime::Result<()> {
                self.table.delete(rep)?;
                Ok(())
            }
        }
    )*};
}

call_target_interface!(v1, v2);
