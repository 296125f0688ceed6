//! What a component imports and exports, and whether the host can run it.

use wasmtime::Engine;
use wasmtime::component::Component;

use super::RuntimeError;

/// Interface packages the host links for every component. Linking grants nothing by
/// itself (see `state`): these may be imported freely.
const PROVIDED: &[&str] = &[
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:io/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:http/",
    "wasi:logging/",
    "wasmcloud:messaging/",
    "wasi:keyvalue/",
    "wasmhive:keyvalue/",
    "wasi:config/",
];

/// Which wasi:http handler a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpFlavor {
    /// `wasi:http/incoming-handler@0.2.x` (WASI 0.2).
    P2,
    /// `wasi:http/handler@0.3.x` (WASI 0.3, async).
    P3,
}

/// A component's top-level import and export names.
#[derive(Debug, Clone, Default)]
pub struct ComponentInterface {
    /// Imported instance names, e.g. `wasi:http/types@0.2.12`.
    pub imports: Vec<String>,
    /// Exported names.
    pub exports: Vec<String>,
}

/// Lists a compiled component's imports and exports.
pub fn describe(engine: &Engine, component: &Component) -> ComponentInterface {
    let ty = component.component_type();
    ComponentInterface {
        imports: ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    }
}

impl ComponentInterface {
    /// The HTTP handler this component exports, if any.
    pub fn http_flavor(&self) -> Option<HttpFlavor> {
        // P3 first: a component exporting both is driven natively async.
        if self
            .exports
            .iter()
            .any(|e| e.starts_with("wasi:http/handler@0.3"))
        {
            Some(HttpFlavor::P3)
        } else if self
            .exports
            .iter()
            .any(|e| e.starts_with("wasi:http/incoming-handler@0.2"))
        {
            Some(HttpFlavor::P2)
        } else {
            None
        }
    }

    /// Whether it exports `wasmcloud:messaging/handler@0.2.x` (a message trigger).
    pub fn handles_messages(&self) -> bool {
        self.exports
            .iter()
            .any(|e| e.starts_with("wasmcloud:messaging/handler@0.2"))
    }

    /// Whether it imports any key-value interface.
    pub fn uses_keyvalue(&self) -> bool {
        self.imports
            .iter()
            .any(|i| i.starts_with("wasi:keyvalue/") || i.starts_with("wasmhive:keyvalue/"))
    }

    /// Refuses imports the host does not provide, naming each one.
    pub fn check_imports(&self) -> Result<(), RuntimeError> {
        let unknown: Vec<&str> = self
            .imports
            .iter()
            .map(String::as_str)
            .filter(|i| !PROVIDED.iter().any(|p| i.starts_with(p)))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(RuntimeError::Imports(format!(
            "component imports {}, which this host does not provide (it provides {})",
            unknown.join(", "),
            PROVIDED
                .iter()
                .map(|p| p.trim_end_matches('/'))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors() {
        let i = ComponentInterface {
            imports: vec![],
            exports: vec!["wasi:http/incoming-handler@0.2.6".into()],
        };
        assert_eq!(i.http_flavor(), Some(HttpFlavor::P2));
        let i = ComponentInterface {
            imports: vec![],
            exports: vec!["wasi:http/handler@0.3.0".into()],
        };
        assert_eq!(i.http_flavor(), Some(HttpFlavor::P3));
        assert_eq!(ComponentInterface::default().http_flavor(), None);
    }

    #[test]
    fn unknown_imports_are_named() {
        let i = ComponentInterface {
            imports: vec!["wasi:io/streams@0.2.0".into(), "acme:db/query@1.0.0".into()],
            exports: vec![],
        };
        let e = i.check_imports().unwrap_err().to_string();
        assert!(e.contains("acme:db/query@1.0.0"), "{e}");
        assert!(!e.contains("wasi:io/streams"), "{e}");
    }
}
