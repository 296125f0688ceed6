//! The service-call trigger: another component of the same app calling this one by
//! name (`http://NAME/...`), through its HTTP handler, in process. No keys of its own:
//! callers list it under `calls`. The source of its invocations is the mesh.

use super::Trigger;
use crate::capability;
use crate::section::{ManifestError, Table};

/// The trigger.
pub struct MeshTrigger;

impl Trigger for MeshTrigger {
    const NAME: &'static str = "mesh";
    const EXPORTS: &'static [&'static str] = super::http::HttpTrigger::EXPORTS;
    const HANDLER: &'static str = super::http::HttpTrigger::HANDLER;
    type Spec = ();

    fn spec(_component: &mut Table<'_>) -> Result<(), ManifestError> {
        Ok(())
    }

    fn wanted(_spec: &(), _caps: &capability::Specs) -> Option<&'static str> {
        None
    }
}
