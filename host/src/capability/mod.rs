//! Capabilities: what a guest may import, one module each.
//!
//! A capability owns everything about one guest-facing feature:
//!
//! - the WIT interfaces it provides ([`Capability::INTERFACES`]: what a component may
//!   import; anything else is refused at deploy);
//! - its keys of a component's manifest section, read and checked with file:line
//!   errors into the type the host uses ([`Capability::spec`]);
//! - the grant it derives for one deployed component version from that spec, the host
//!   configuration and the host's services ([`Capability::grant`]), and the import
//!   checks that need it ([`Capability::check_imports`]);
//! - the state it adds to each instance ([`Capability::instance`], reset per
//!   invocation by [`Capability::begin`]);
//! - its `add_to_linker`, with the projection to its own part of the instance state
//!   ([`View`], wasmtime's `add_to_linker(linker, |s| ...)` style).
//!
//! The host assembles its capabilities from one list, the [`capabilities!`] call at the
//! bottom of this file. Adding a capability is one new module and one line there (and
//! its WIT under `wit/deps`). Linking an interface grants nothing by itself: what a
//! guest can do through it is decided per component by its grant (deny by default).
//!
//! This module knows nothing about engines, routes, apps or scaling: the runtime puts
//! an [`Instance`] in every store and links what [`add_to_linker`] adds.

pub mod bus;
pub mod config;
pub mod http;
pub mod keyvalue;
pub mod logging;
pub mod messaging;
pub mod wasi;

use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};

use crate::bus::Bus;
use crate::config::HostConfig;
use crate::ids::ComponentId;
use crate::section::{ManifestError, Table};
use crate::state::KvStore;

/// One guest-facing capability.
pub trait Capability: Sized + 'static {
    /// Interface packages it provides, as prefixes of import names
    /// (`"wasi:keyvalue/"`).
    const INTERFACES: &'static [&'static str];

    /// Its part of a component's manifest section, checked.
    type Spec: Debug + Clone + Default + Send + Sync;
    /// What one deployed component version may use through it.
    type Grant: Debug + Send + Sync;
    /// What it keeps per instance (`()` when the grant is all it needs).
    type Ctx: Send;

    /// Takes its keys from `[components.NAME]` (or from shared sub-tables of it).
    fn spec(component: &mut Table<'_>) -> Result<Self::Spec, ManifestError>;

    /// Derives the grant at deploy time. The error names the field
    /// (`config.currency: ...`) and never contains a secret.
    fn grant(spec: &Self::Spec, cx: &GrantContext<'_>) -> Result<Self::Grant, String>;

    /// Refuses a component whose imports of this capability its grant cannot back.
    fn check_imports(_grant: &Self::Grant, _imports: &[String]) -> Result<(), String> {
        Ok(())
    }

    /// Fresh per-instance state.
    fn instance(grants: &Arc<Grants>) -> Self::Ctx;

    /// Called when an instance starts serving an invocation (a fresh or a reused one).
    fn begin(_ctx: &mut Self::Ctx, _invocation: &Invocation) {}

    /// Adds its interfaces to `linker`; `concurrent` is set for the engine that runs
    /// WASI 0.3 components (it can link the async variants too).
    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        concurrent: bool,
    ) -> anyhow::Result<()>;
}

/// Where a capability's part of the composite types lives (implemented by
/// [`capabilities!`] for each listed capability).
pub trait Slot: Capability {
    /// Its per-instance state in `ctxs`.
    fn ctx(ctxs: &mut Ctxs) -> &mut Self::Ctx;
    /// Its grant in `grants`.
    fn grant_in(grants: &Grants) -> &Self::Grant;
}

/// What the host offers capabilities to back their grants with. `None`: not
/// available (offline validation), and the guest gets an error if it tries.
#[derive(Clone, Default)]
pub struct Services {
    /// The message bus.
    pub bus: Option<Arc<dyn Bus>>,
    /// The key-value backend.
    pub kv: Option<Arc<dyn KvStore>>,
    /// Calls to other components by name.
    pub mesh: Option<Arc<dyn http::Mesh>>,
}

/// What deriving a grant may look at.
pub struct GrantContext<'a> {
    /// The component version being deployed.
    pub id: &'a ComponentId,
    /// The host's configuration.
    pub host: &'a HostConfig,
    /// The host's services.
    pub services: &'a Services,
    /// The manifest's directory, when it was deployed from this machine.
    pub manifest_dir: Option<&'a std::path::Path>,
}

/// What one invocation carries into the instance serving it; set anew for each
/// invocation of a reused instance.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// The invocation's `traceparent`, added to what the guest sends out.
    pub traceparent: Option<::http::HeaderValue>,
    /// The `x-request-id` of the request chain, added to outgoing requests.
    pub request_id: Option<::http::HeaderValue>,
    /// Reply subject of the message being handled (the guest may always answer it).
    pub reply_to: Option<String>,
    /// The verified caller (`wasmhive-auth-*` headers), passed on to service calls
    /// whose `forward_identity` is on.
    pub identity: Option<Arc<[(::http::HeaderName, ::http::HeaderValue)]>>,
    /// A command run's argv, extra environment, stdin and output (jobs); `None`: the
    /// component's own environment, empty stdin, output to the log.
    pub command: Option<Arc<wasi::CommandIo>>,
}

impl Invocation {
    /// The trace id (`00-<trace id>-<span>-<flags>`), or `""`.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .as_ref()
            .and_then(|t| t.to_str().ok())
            .and_then(|t| t.split('-').nth(1))
            .unwrap_or("")
    }
}

/// The state of one instance: the resource table its capabilities share, each
/// capability's state, the grants, the current invocation, and `host`: what the
/// runtime keeps per instance (memory limiter, interruption flag).
pub struct Instance<X> {
    /// Resources the guest holds handles to.
    pub table: ResourceTable,
    /// Each capability's state.
    pub ctxs: Ctxs,
    /// What the component may use.
    pub grants: Arc<Grants>,
    /// The invocation being served.
    pub invocation: Invocation,
    /// The runtime's part.
    pub host: X,
}

impl<X> Instance<X> {
    /// Fresh state for one instance of the component `grants` describes.
    pub fn new(grants: &Arc<Grants>, host: X) -> Self {
        Instance {
            table: ResourceTable::new(),
            ctxs: Ctxs::new(grants),
            grants: grants.clone(),
            invocation: Invocation::default(),
            host,
        }
    }

    /// Starts serving `invocation`.
    pub fn begin(&mut self, invocation: Invocation) {
        self.ctxs.begin(&invocation);
        self.invocation = invocation;
    }

    /// Capability `C`'s view of this instance.
    pub fn view<C: Slot>(&mut self) -> View<'_, C> {
        View {
            ctx: C::ctx(&mut self.ctxs),
            grant: C::grant_in(&self.grants),
            id: &self.grants.id,
            table: &mut self.table,
            invocation: &self.invocation,
        }
    }
}

/// What a capability's host functions see of an instance: its own state and grant,
/// the shared resource table and the invocation.
pub struct View<'a, C: Capability> {
    /// Its per-instance state.
    pub ctx: &'a mut C::Ctx,
    /// Its grant.
    pub grant: &'a C::Grant,
    /// The component.
    pub id: &'a ComponentId,
    /// The resource table.
    pub table: &'a mut ResourceTable,
    /// The invocation being served.
    pub invocation: &'a Invocation,
}

/// The [`HasData`] of capability `C`'s bindings: their host traits are implemented for
/// [`View<C>`].
pub struct HasView<C>(PhantomData<C>);

impl<C: Capability> HasData for HasView<C> {
    type Data<'a> = View<'a, C>;
}

/// The projection a capability hands its bindings' `add_to_linker`.
pub fn view_of<X, C: Slot>(state: &mut Instance<X>) -> View<'_, C> {
    state.view::<C>()
}

/// Every interface prefix the host provides.
pub fn interfaces() -> impl Iterator<Item = &'static str> {
    INTERFACES.iter().flat_map(|list| list.iter().copied())
}

/// Refuses imports no capability provides, naming each one and what is provided.
pub fn check_provided(imports: &[String]) -> Result<(), String> {
    let unknown: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|i| !interfaces().any(|p| i.starts_with(p)))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "component imports {}, which this host does not provide (it provides {})",
        unknown.join(", "),
        interfaces()
            .map(|p| p.trim_end_matches('/'))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Assembles the capabilities: one field per capability in each composite type, and
/// the functions that go through all of them.
macro_rules! capabilities {
    ($($(#[$doc:meta])* $field:ident: $cap:ty,)*) => {
        /// Each capability's part of a component's manifest section.
        #[derive(Debug, Clone, Default)]
        pub struct Specs {
            $($(#[$doc])* pub $field: <$cap as Capability>::Spec,)*
        }

        /// What a component version may use: its id and each capability's grant.
        #[derive(Debug)]
        pub struct Grants {
            /// The component version.
            pub id: ComponentId,
            $($(#[$doc])* pub $field: <$cap as Capability>::Grant,)*
        }

        /// Each capability's per-instance state.
        pub struct Ctxs {
            $($(#[$doc])* pub $field: <$cap as Capability>::Ctx,)*
        }

        $(impl Slot for $cap {
            fn ctx(ctxs: &mut Ctxs) -> &mut Self::Ctx {
                &mut ctxs.$field
            }
            fn grant_in(grants: &Grants) -> &Self::Grant {
                &grants.$field
            }
        })*

        /// Each capability's interface prefixes.
        const INTERFACES: &[&[&str]] = &[$(<$cap as Capability>::INTERFACES,)*];

        impl Specs {
            /// Every capability takes its keys from `[components.NAME]`.
            pub fn read(component: &mut Table<'_>) -> Result<Specs, ManifestError> {
                Ok(Specs { $($field: <$cap>::spec(component)?,)* })
            }
        }

        impl Grants {
            /// Every capability derives its grant.
            pub fn derive(specs: &Specs, cx: &GrantContext<'_>) -> Result<Grants, String> {
                Ok(Grants {
                    id: cx.id.clone(),
                    $($field: <$cap>::grant(&specs.$field, cx)?,)*
                })
            }

            /// Every capability checks the component's imports against its grant.
            pub fn check_imports(&self, imports: &[String]) -> Result<(), String> {
                $(<$cap>::check_imports(&self.$field, imports)?;)*
                Ok(())
            }
        }

        impl Ctxs {
            fn new(grants: &Arc<Grants>) -> Ctxs {
                Ctxs { $($field: <$cap>::instance(grants),)* }
            }

            fn begin(&mut self, invocation: &Invocation) {
                $(<$cap>::begin(&mut self.$field, invocation);)*
            }
        }

        /// Adds every capability's interfaces to `linker`.
        pub fn add_to_linker<X: Send + 'static>(
            linker: &mut Linker<Instance<X>>,
            concurrent: bool,
        ) -> anyhow::Result<()> {
            $(<$cap>::add_to_linker(linker, concurrent)?;)*
            Ok(())
        }
    };
}

capabilities! {
    /// WASI 0.2/0.3 basics: env (only what `env` lists), clocks, random, stdio into
    /// the log; no files, no sockets.
    wasi: wasi::Wasi,
    /// Outgoing wasi:http: `allowed_outbound_hosts`, and calls by name (`calls`).
    http: http::OutgoingHttp,
    /// wasi:keyvalue and the cas extension: `[keyvalue]`.
    keyvalue: keyvalue::Keyvalue,
    /// wasi:config: `[config]` and `[secrets]`.
    config: config::Config,
    /// wasi:logging into the host's log.
    logging: logging::Logging,
    /// wasmcloud:messaging consumer: `messaging.publish` and `messaging.subscribe`.
    messaging: messaging::Messaging,
    /// wasmcloud:bus link names (1.0.0, 2.0.0): accepted; grants decide.
    bus: bus::Bus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_imports_are_named() {
        let e = check_provided(&["wasi:io/streams@0.2.0".into(), "acme:db/query@1.0.0".into()])
            .unwrap_err();
        assert!(e.contains("acme:db/query@1.0.0"), "{e}");
        assert!(!e.contains("wasi:io/streams@"), "{e}");
        assert!(e.contains("wasi:keyvalue"), "{e}");
    }
}
