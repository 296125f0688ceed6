//! Host-side bindings for the interfaces wasmhive provides beyond WASI and wasi:http,
//! generated from `wit/`. The implementations live next to what they do:
//! [`messaging`](super::messaging) (wasmcloud:messaging, wasi:logging),
//! [`keyvalue`](super::keyvalue) (wasi:keyvalue, wasmhive:keyvalue/cas) and
//! [`config`](super::config) (wasi:config in its three published shapes).

use super::InstanceState;
use wasmtime::component::{HasSelf, Linker};

/// The `wasmhive:service/imports` world.
#[allow(missing_docs)]
pub(crate) mod imports {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wasmhive:service/imports",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": crate::runtime::keyvalue::KvBucket,
        },
    });
}

/// `wasi:config/store@0.2.0-rc.1`, which cannot share a world with 0.2.0-draft.
#[allow(missing_docs)]
pub(crate) mod config_rc1 {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:config-rc1; world rc1 { import wasi:config/store@0.2.0-rc.1; }",
        path: "../wit",
        world: "wasmhive:config-rc1/rc1",
        imports: { default: async },
    });
}

/// Adds every interface above to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<InstanceState>) -> anyhow::Result<()> {
    imports::Imports::add_to_linker::<_, HasSelf<InstanceState>>(linker, |s| s)?;
    config_rc1::Rc1::add_to_linker::<_, HasSelf<InstanceState>>(linker, |s| s)?;
    Ok(())
}
