//! `wasmhive stop` and `start`: a component of a deployed app stopped or started (on
//! this host alone; in a lattice written to the app's record for every host), and the
//! lookup of a deployed component that stop/start, kv and jobs share.

use std::sync::Arc;

use super::{ControlPlane, DeployError};

impl ControlPlane {
    /// Stops (`stop = true`) or starts a component of a deployed app; returns whether
    /// that changed anything here. Alone, not persisted: a restart or redeploy starts
    /// it again. In a lattice it is written to the app's record, so every host stops
    /// (or starts) it, and it stays so across restarts until `start` or a deploy.
    pub async fn set_stopped(
        &self,
        app: &str,
        component: &str,
        stop: bool,
    ) -> Result<bool, DeployError> {
        self.refuse_while_joining()?;
        let changed = self.set_stopped_here(app, component, stop)?;
        if let Some(lattice) = self.lattice() {
            self.record_stopped(lattice, app, component, stop).await?;
        }
        Ok(changed)
    }

    /// The deployed component `app/component` (its current version).
    pub(crate) fn component(
        &self,
        app: &str,
        component: &str,
    ) -> Result<Arc<crate::apps::DeployedComponent>, DeployError> {
        self.apps
            .snapshot()
            .apps
            .get(app)
            .ok_or_else(|| DeployError::NotFound(app.to_string()))?
            .components
            .iter()
            .find(|c| &*c.id.component == component)
            .cloned()
            .ok_or_else(|| {
                DeployError::Missing(format!("no component {app}/{component} is deployed"))
            })
    }

    /// Stops or starts a component on this host only.
    fn set_stopped_here(
        &self,
        app: &str,
        component: &str,
        stop: bool,
    ) -> Result<bool, DeployError> {
        let c = self.component(app, component)?;
        let changed = c.scaler.set_stopped(stop);
        if changed {
            tracing::info!(component = %c.id, "{}", if stop { "stopped" } else { "started" });
        }
        Ok(changed)
    }
}
