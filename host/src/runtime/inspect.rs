//! What a component imports and exports, and which HTTP handler flavor it has.
//! (Whether the host provides its imports is the capabilities' call; whether its
//! exports serve its manifest's triggers, the triggers'.)

use wasmtime::Engine;
use wasmtime::component::Component;

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
}
