//! The status document served at `GET /v1/status` and printed by `wasmhive status`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apps::{DeployedComponent, Snapshot};
use crate::config::HostConfig;
use crate::runtime::{CompileOrigin, HttpFlavor};

/// The whole host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host version (crate version).
    pub version: String,
    /// Public listener.
    pub http: String,
    /// Admin listener.
    pub admin: String,
    /// Data directory.
    pub data_dir: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Deployed apps.
    pub apps: Vec<AppStatus>,
}

/// One app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    /// Name.
    pub name: String,
    /// Version serving now.
    pub version: String,
    /// Unix seconds of the deploy.
    pub deployed_at: u64,
    /// Components.
    pub components: Vec<ComponentStatus>,
}

/// One component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// Content digest.
    pub digest: String,
    /// `p2` or `p3`.
    pub flavor: String,
    /// Routes served.
    pub routes: Vec<String>,
    /// `cache` when loaded from the compile cache, `compiled` when compiled.
    pub loaded_from: String,
    /// Time the load took, in milliseconds.
    pub load_ms: f64,
    /// Invocations so far.
    pub invocations: u64,
    /// Failed invocations so far.
    pub failures: u64,
    /// Unix milliseconds of the last invocation, if any.
    pub last_invocation_ms: Option<u64>,
}

impl ComponentStatus {
    /// The status of one deployed component.
    pub fn of(c: &DeployedComponent) -> Self {
        let last = c.stats.last_invocation_ms.load(Ordering::Relaxed);
        ComponentStatus {
            name: c.id.component.to_string(),
            digest: c.digest.clone(),
            flavor: match c.prepared.flavor() {
                HttpFlavor::P2 => "p2".into(),
                HttpFlavor::P3 => "p3".into(),
            },
            routes: c.spec.routes.iter().map(|r| r.to_string()).collect(),
            loaded_from: match c.load.origin {
                CompileOrigin::Cache => "cache".into(),
                CompileOrigin::Compiled => "compiled".into(),
            },
            load_ms: (c.load.took.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
            invocations: c.stats.invocations.load(Ordering::Relaxed),
            failures: c.stats.failures.load(Ordering::Relaxed),
            last_invocation_ms: (last != 0).then_some(last),
        }
    }
}

impl HostStatus {
    pub(crate) fn collect(snapshot: &Snapshot, config: &HostConfig, uptime: Duration) -> Self {
        HostStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            http: config.http_addr.to_string(),
            admin: config.admin_addr.to_string(),
            data_dir: config.data_dir.display().to_string(),
            uptime_secs: uptime.as_secs(),
            apps: snapshot
                .apps
                .values()
                .map(|app| AppStatus {
                    name: app.name().to_string(),
                    version: app.manifest.app.version.clone(),
                    deployed_at: app
                        .deployed_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    components: app
                        .components
                        .iter()
                        .map(|c| ComponentStatus::of(c))
                        .collect(),
                })
                .collect(),
        }
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut rows = vec![[
            "APP".to_string(),
            "VERSION".into(),
            "COMPONENT".into(),
            "KIND".into(),
            "LOADED".into(),
            "CALLS".into(),
            "FAILED".into(),
            "ROUTES".into(),
        ]];
        for app in &self.apps {
            for c in &app.components {
                rows.push([
                    app.name.clone(),
                    app.version.clone(),
                    c.name.clone(),
                    c.flavor.clone(),
                    format!("{} ({:.1} ms)", c.loaded_from, c.load_ms),
                    c.invocations.to_string(),
                    c.failures.to_string(),
                    c.routes.join(", "),
                ]);
            }
        }
        let mut out = format!(
            "wasmhive {} — http://{} (admin http://{}), up {}s\n",
            self.version, self.http, self.admin, self.uptime_secs
        );
        if self.apps.is_empty() {
            out.push_str("no apps deployed\n");
            return out;
        }
        let widths: Vec<usize> = (0..8)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}
