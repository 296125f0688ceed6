//! `wasmhive validate`: check a manifest and its components without a running host.
//!
//! Runs the same checks a deploy runs, minus the comparison with other deployed apps:
//! the manifest (fields, routes inside the app), each component's bytes (valid,
//! compiles, imports only what the host provides, exports a handler the manifest's
//! triggers need) and limits against the default host configuration. Compiled
//! artifacts go to the data dir's compile cache, so a later `up` starts faster.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{HostConfig, PoolConfig};
use crate::control::{DeployError, blobs::digest_of, grants_for};
use crate::manifest::Manifest;
use crate::runtime::Runtime;

/// Validates `manifest`; returns a report, or the first problem found.
pub async fn validate(manifest_path: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let manifest = Manifest::load(manifest_path)?;
    let config = HostConfig::default();
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
        let grants = grants_for(&manifest, spec, &config)?;
        let rt = runtime.clone();
        let d = digest.clone();
        let (component, _) = tokio::task::spawn_blocking(move || rt.load(&d, || Ok(bytes)))
            .await?
            .map_err(|error| DeployError::Component {
                component: spec.name.clone(),
                error,
            })?;
        let prepared = runtime
            .prepare(&component, std::sync::Arc::new(grants), Default::default())
            .map_err(|error| DeployError::Component {
                component: spec.name.clone(),
                error,
            })?;
        crate::control::check_triggers(spec, &prepared).map_err(|error| {
            DeployError::Component {
                component: spec.name.clone(),
                error,
            }
        })?;
        let interface = runtime.interface(&component);
        let _ = writeln!(
            out,
            "  component {}: {} handler, {} imports, routes: {}, subscribes: {}",
            spec.name,
            match (prepared.flavor(), prepared.handles_messages()) {
                (Some(crate::runtime::HttpFlavor::P2), false) => "wasi:http 0.2",
                (Some(crate::runtime::HttpFlavor::P3), false) => "wasi:http 0.3",
                (Some(_), true) => "wasi:http + message",
                (None, _) => "message",
            },
            interface.imports.len(),
            if spec.routes.is_empty() {
                "none".to_string()
            } else {
                spec.routes
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if spec.messaging.subscribe.is_empty() {
                "none".to_string()
            } else {
                spec.messaging.subscribe.join(", ")
            }
        );
    }
    Ok(out)
}
