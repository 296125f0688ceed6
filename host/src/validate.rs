//! `wasmhive validate`: check a manifest and its components without a running host.
//!
//! Runs the same checks a deploy runs, minus the comparison with other deployed apps:
//! the manifest (fields, routes inside the app), each component's bytes (valid,
//! compiles, imports only what the host provides and its grants back, exports a
//! handler for what the manifest's triggers need) and limits against the default host
//! configuration. No host services exist here (no bus, no key-value store): their
//! grants are checked, not backed. Compiled artifacts go to the data dir's compile
//! cache, so a later `up` starts faster.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::capability::Services;
use crate::config::{HostConfig, PoolConfig};
use crate::control::{DeployError, blobs::digest_of, check_component, resolve};
use crate::manifest::Manifest;
use crate::runtime::{HttpFlavor, Runtime};

/// The HTTP handler a component exports, in words.
fn kind(flavor: Option<HttpFlavor>) -> &'static str {
    match flavor {
        Some(HttpFlavor::P2) => "wasi:http 0.2 handler",
        Some(HttpFlavor::P3) => "wasi:http 0.3 handler",
        None => "no HTTP handler",
    }
}

/// Validates `manifest`; returns a report, or the first problem found.
pub async fn validate(manifest_path: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let manifest = Manifest::load(manifest_path)?;
    let config = HostConfig::default();
    let manifest_dir = std::fs::canonicalize(manifest_path.parent().unwrap_or(Path::new("."))).ok();
    crate::control::app_auth(&manifest, &config, manifest_dir.as_deref()).await?;
    let pool = PoolConfig {
        instances: 4,
        ..config.pool.clone()
    };
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let runtime = Arc::new(Runtime::new(&pool, data_dir)?);
    let base = manifest_path.parent().unwrap_or(Path::new("."));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: app {} {} is valid",
        manifest_path.display(),
        manifest.app.name,
        manifest.app.version
    );
    for spec in &manifest.components {
        let file = base.join(&spec.source);
        let bytes = std::fs::read(&file).with_context(|| {
            format!(
                "component {}: cannot read source {}",
                spec.name,
                file.display()
            )
        })?;
        let digest = digest_of(&bytes);
        let (grants, limits) = resolve(
            &manifest,
            spec,
            &config,
            &Services::default(),
            manifest_dir.as_deref(),
        )?;
        let component_err = |error| DeployError::Component {
            component: spec.name.clone(),
            error,
        };
        let rt = runtime.clone();
        let (component, _) = tokio::task::spawn_blocking(move || rt.load(&digest, || Ok(bytes)))
            .await?
            .map_err(component_err)?;
        let prepared = runtime
            .prepare(&component, grants, limits, Default::default())
            .map_err(component_err)?;
        check_component(spec, &prepared).map_err(component_err)?;
        let _ = writeln!(
            out,
            "  component {}: {} ({}), {} imports, {}",
            spec.name,
            kind(prepared.flavor()),
            crate::control::status::kind(prepared.flavor(), prepared.exports()),
            runtime.interface(&component).imports.len(),
            spec.triggers.describe(&spec.caps).join(", ")
        );
    }
    Ok(out)
}
