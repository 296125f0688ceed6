//! Names for what runs: one deployed component version. A leaf: every layer uses it
//! (logs, metrics, grants, errors) and it imports nothing from the host.

use std::sync::Arc;

/// Identifies one deployed component version in logs, metrics and errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ComponentId {
    /// App name.
    pub app: Arc<str>,
    /// Component name within the app.
    pub component: Arc<str>,
    /// App version.
    pub version: Arc<str>,
}

impl ComponentId {
    /// The id of `component` of `app` at `version`.
    pub fn new(app: &str, component: &str, version: &str) -> Self {
        ComponentId {
            app: app.into(),
            component: component.into(),
            version: version.into(),
        }
    }
}

impl std::fmt::Display for ComponentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.app, self.component, self.version)
    }
}
