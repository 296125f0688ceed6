//! Checking and building one component version of a deploy: its source is there,
//! its grants and limits resolve within what the host allows, it compiles, and it
//! exports a handler for every trigger its manifest section configures.

use std::path::Path;
use std::sync::Arc;

use super::{ControlPlane, DeployError, DeployRequest};
use crate::apps::DeployedComponent;
use crate::capability::{GrantContext, Grants, Services};
use crate::config::HostConfig;
use crate::ids::ComponentId;
use crate::manifest::{ComponentSpec, Manifest};
use crate::runtime::{HttpFlavor, Limits, PreparedComponent, ReusePolicy, RuntimeError};
use crate::scaler::{Loader, ScalePolicy, Scaler};

impl ControlPlane {
    pub(super) async fn prepare(
        &self,
        manifest: &Manifest,
        spec: &crate::manifest::ComponentSpec,
        request: &DeployRequest,
        app_auth: Option<&Arc<crate::auth::AppAuth>>,
    ) -> Result<DeployedComponent, DeployError> {
        let component_err = |error| DeployError::Component {
            component: spec.name.clone(),
            error,
        };
        let digest = request.sources.get(&spec.source).cloned().ok_or_else(|| {
            DeployError::MissingSource {
                component: spec.name.clone(),
                source_path: spec.source.clone(),
            }
        })?;
        if !self.blobs.contains(&digest) && !self.runtime.is_cached(&digest) {
            return Err(DeployError::MissingSource {
                component: spec.name.clone(),
                source_path: spec.source.clone(),
            });
        }
        let (grants, limits) = resolve(
            manifest,
            spec,
            &self.config,
            &self.services,
            request.manifest_dir.as_deref(),
        )?;
        let mut policy = policy_for(spec, &self.config);
        let instances = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let runtime = self.runtime.clone();
        let blobs = self.blobs.clone();
        let loader: Loader = {
            let (digest, grants, instances) = (digest.clone(), grants.clone(), instances.clone());
            Arc::new(move || {
                let (component, _) = runtime.load(&digest, || blobs.read(&digest))?;
                runtime.prepare(&component, grants.clone(), limits, instances.clone())
            })
        };
        let runtime = self.runtime.clone();
        let blobs = self.blobs.clone();
        let d = digest.clone();
        let (component, load) =
            tokio::task::spawn_blocking(move || runtime.load(&d, || blobs.read(&d)))
                .await
                .map_err(|e| DeployError::Storage(format!("compile task failed: {e}")))?
                .map_err(component_err)?;
        let prepared = self
            .runtime
            .prepare(&component, grants.clone(), limits, instances.clone())
            .map_err(component_err)?;
        check_component(spec, &prepared).map_err(component_err)?;
        if let Some(flavor) = prepared.flavor() {
            policy.per_instance = limits.reuse.max_concurrent_for(flavor);
        }
        tracing::info!(
            app = %manifest.app.name,
            component = %spec.name,
            %digest,
            origin = ?load.origin,
            took_ms = load.took.as_secs_f64() * 1000.0,
            "component loaded"
        );
        let auth =
            crate::auth::Policy::new(app_auth, &spec.triggers.http.auth).map_err(|message| {
                DeployError::Grant {
                    component: spec.name.clone(),
                    message,
                }
            })?;
        Ok(DeployedComponent {
            id: grants.id.clone(),
            spec: spec.clone(),
            digest,
            flavor: prepared.flavor(),
            exports: prepared.exports().to_vec(),
            load,
            scaler: Scaler::new(policy, loader, prepared, self.capacity.clone()),
            timeout: limits.timeout,
            instances,
            stats: Default::default(),
            series: Default::default(),
            auth,
            rate_limit: spec.triggers.http.rate_limit.as_ref().map(|r| {
                (
                    Arc::new(crate::limit::Limiter::new(r.requests, r.per, r.burst)),
                    r.key,
                )
            }),
            placement: Default::default(),
        })
    }
}

/// The app's verifiers, built from its `[auth]` (key files and variables read now,
/// within what the host lets a deploy read).
pub async fn app_auth(
    manifest: &Manifest,
    config: &HostConfig,
    manifest_dir: Option<&Path>,
) -> Result<Option<Arc<crate::auth::AppAuth>>, DeployError> {
    crate::auth::AppAuth::build(
        &manifest.auth,
        &config.access,
        manifest_dir,
        config.gateway.jwt_cache,
    )
    .await
    .map_err(|message| DeployError::Auth {
        location: manifest
            .auth
            .location
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        message,
    })
}

/// What one component version may use and the limits it runs under: each
/// capability's grant (from its manifest keys, the host's configuration and
/// `services`) and the runtime's limits (from the manifest and the host's defaults).
/// `manifest_dir` is the manifest's directory when it was deployed from this machine.
pub fn resolve(
    manifest: &Manifest,
    spec: &ComponentSpec,
    config: &HostConfig,
    services: &Services,
    manifest_dir: Option<&Path>,
) -> Result<(Arc<Grants>, Limits), DeployError> {
    let memory = spec.limits.memory.unwrap_or(config.defaults.memory);
    if memory > config.pool.max_memory {
        return Err(DeployError::Limit {
            component: spec.name.clone(),
            message: format!(
                "limits.memory {} is more than this host's pool.max_memory {}",
                bytesize::ByteSize(memory),
                bytesize::ByteSize(config.pool.max_memory)
            ),
        });
    }
    let id = ComponentId::new(&manifest.app.name, &spec.name, &manifest.app.version);
    let cx = GrantContext {
        id: &id,
        host: config,
        services,
        manifest_dir,
    };
    let grants = Grants::derive(&spec.caps, &cx).map_err(|message| DeployError::Grant {
        component: spec.name.clone(),
        message,
    })?;
    let limits = Limits {
        memory,
        timeout: spec.limits.timeout.unwrap_or(config.defaults.timeout),
        reuse: ReusePolicy {
            max_requests: spec.instances.max_requests,
            max_concurrent: spec.instances.max_concurrent,
            max_instances: policy_for(spec, config).max_instances,
            idle_timeout: spec
                .instances
                .idle_timeout
                .unwrap_or(crate::runtime::DEFAULT_REUSE_IDLE_TIMEOUT),
        },
    };
    Ok((Arc::new(grants), limits))
}

/// Checks a prepared component against its manifest section: it exports a handler for
/// every trigger the manifest configures (routes need an HTTP handler, subscriptions a
/// message handler) and at least one handler at all; WASI 0.3-only settings are set
/// only on WASI 0.3 components.
pub fn check_component(
    spec: &ComponentSpec,
    prepared: &PreparedComponent,
) -> Result<(), RuntimeError> {
    if spec.instances.max_concurrent.is_some_and(|n| n > 1)
        && prepared.flavor() != Some(HttpFlavor::P3)
    {
        return Err(RuntimeError::Exports(
            "instances.max_concurrent applies to WASI 0.3 components (wasi:http/handler@0.3.x); a WASI 0.2 component serves one request at a time per instance".into(),
        ));
    }
    spec.triggers
        .check_exports(&spec.caps, prepared.exports())
        .map_err(RuntimeError::Exports)
}

/// A component's scaling policy from its manifest section and the host's defaults.
pub fn policy_for(spec: &ComponentSpec, config: &HostConfig) -> ScalePolicy {
    let d = &config.defaults.scale;
    let s = &spec.scale;
    let max_instances = s.max_instances.unwrap_or(d.max_instances);
    ScalePolicy {
        max_instances,
        per_instance: 1,
        queue: s.queue.unwrap_or(d.queue),
        queue_timeout: s.queue_timeout.unwrap_or(d.queue_timeout),
        idle_timeout: s.idle_timeout.unwrap_or(d.idle_timeout),
        min_instances: s
            .min_instances
            .unwrap_or(d.min_instances)
            .min(max_instances),
    }
}
