//! The status document served at `GET /v1/status` and printed by `wasmhive status`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apps::{DeployedComponent, Snapshot};
use crate::config::HostConfig;
use crate::runtime::{CompileOrigin, HttpFlavor};
use crate::scaler::State;

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
    /// The message bus.
    #[serde(default)]
    pub bus: BusStatus,
    /// Deployed apps.
    pub apps: Vec<AppStatus>,
    /// The lattice this host belongs to (`None`: it is alone).
    #[serde(default)]
    pub lattice: Option<LatticeStatus>,
    /// App records of the lattice this host refused, with the reason (it keeps
    /// serving the version it had).
    #[serde(default)]
    pub refused: Vec<Refused>,
}

/// `GET /v1/hosts`: the lattice's live hosts, from their heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hosts {
    /// The lattice's name.
    pub lattice: String,
    /// Live hosts, by name.
    pub hosts: Vec<crate::lattice::hosts::LiveHost>,
    /// Components no live host may run (`app/component`): their placement labels
    /// match no live host.
    #[serde(default)]
    pub unplaced: Vec<String>,
}

impl Hosts {
    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "lattice {}: {} live host(s)\n",
            self.lattice,
            self.hosts.len()
        );
        out.push_str("NAME  ID  LABELS  VERSION  UP  COMPONENTS  FLIGHT  HEARTBEAT\n");
        for h in &self.hosts {
            let labels: Vec<String> = h
                .info
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!(
                "{}  {}  {}  {}  {}s  {}  {}  {}ms ago\n",
                h.info.name,
                h.info.id,
                if labels.is_empty() {
                    "-".to_string()
                } else {
                    labels.join(",")
                },
                h.info.version,
                h.info.uptime_ms / 1000,
                h.info.components,
                h.info.in_flight,
                h.last_heartbeat_ms_ago
            ));
        }
        for c in &self.unplaced {
            out.push_str(&format!(
                "NOT RUNNING ANYWHERE: {c} (its placement matches no live host)\n"
            ));
        }
        out
    }
}

/// This host in its lattice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatticeStatus {
    /// The lattice's name.
    pub name: String,
    /// This host's id.
    pub host_id: String,
    /// This host's name.
    pub host_name: String,
    /// Live hosts (this one included).
    pub hosts: usize,
}

/// An app record this host refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refused {
    /// The app.
    pub app: String,
    /// Why.
    pub reason: String,
}

/// Service calls to a component, by where they were served.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Calls {
    /// On the caller's host.
    pub local: u64,
    /// Forwarded to another host.
    pub remote: u64,
}

/// The bus as `status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BusStatus {
    /// `nats` or `local`.
    pub kind: String,
    /// Where it is.
    pub describe: String,
    /// Connected now (false while NATS is unreachable; the client reconnects).
    pub connected: bool,
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
    /// During a rollout: the new version loaded beside this one and its share of
    /// requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutShare>,
}

/// The new version of a rollout in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutShare {
    /// Its version.
    pub version: String,
    /// Its share of requests, percent (0: preview only).
    pub weight_percent: f64,
}

/// One component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Name.
    pub name: String,
    /// Content digest.
    pub digest: String,
    /// What it serves: `p2` or `p3` (its HTTP handler), `msg` (a message handler),
    /// joined by `+` (`p2+msg`).
    pub flavor: String,
    /// Routes served.
    pub routes: Vec<String>,
    /// How the deploy loaded it: `cache` (compile cache) or `compiled`.
    pub loaded_from: String,
    /// Time the deploy's load took, in milliseconds.
    pub load_ms: f64,
    /// `zero`, `loading`, `ready` or `stopped`.
    pub state: State,
    /// Live instances now.
    pub instances: u32,
    /// Invocations admitted and not finished.
    pub in_flight: u32,
    /// Invocations waiting for a free instance.
    pub queued: u32,
    /// Instances allowed at once.
    pub max_instances: u32,
    /// Loads from zero caused by an invocation.
    pub cold_starts: u64,
    /// Invocations shed with 503.
    pub shed: u64,
    /// Invocations so far.
    pub invocations: u64,
    /// Failed invocations so far.
    pub failures: u64,
    /// Unix milliseconds of the last invocation, if any.
    pub last_invocation_ms: Option<u64>,
    /// Circuit breakers of its calls: (target, `closed` | `open` | `half-open`).
    #[serde(default)]
    pub circuits: Vec<(String, String)>,
    /// In a lattice: the names of the hosts that run it (empty alone, or when no
    /// live host may run it).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Whether this host runs it (always, alone).
    #[serde(default)]
    pub placed_here: bool,
    /// Service calls to it from this host's components.
    #[serde(default)]
    pub calls: Calls,
    /// Its job schedule, if it has one (`0 0 7 * * *`, `@every 30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The next tick of its schedule, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_ms: Option<u64>,
}

impl ComponentStatus {
    /// The status of one deployed component.
    pub fn of(c: &DeployedComponent) -> Self {
        let last = c.stats.last_invocation_ms.load(Ordering::Relaxed);
        let scaler = c.scaler.status();
        let job = &c.spec.triggers.job;
        ComponentStatus {
            name: c.id.component.to_string(),
            digest: c.digest.clone(),
            flavor: kind(c.flavor, &c.exports),
            routes: c
                .spec
                .triggers
                .http
                .routes
                .iter()
                .map(|r| r.to_string())
                .collect(),
            loaded_from: match c.load.origin {
                CompileOrigin::Memory => "memory".into(),
                CompileOrigin::Cache => "cache".into(),
                CompileOrigin::Compiled => "compiled".into(),
            },
            load_ms: (c.load.took.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
            state: scaler.state,
            instances: c.instances.load(Ordering::Relaxed),
            in_flight: scaler.in_flight,
            queued: scaler.queued,
            max_instances: c.scaler.policy().max_instances,
            cold_starts: scaler.cold_starts,
            shed: scaler.shed,
            invocations: c.stats.invocations.load(Ordering::Relaxed),
            failures: c.stats.failures.load(Ordering::Relaxed),
            last_invocation_ms: (last != 0).then_some(last),
            circuits: Vec::new(),
            hosts: c.placement.hosts().to_vec(),
            placed_here: c.placement.here(),
            calls: Calls {
                local: c.stats.calls_local.load(Ordering::Relaxed),
                remote: c.stats.calls_remote.load(Ordering::Relaxed),
            },
            schedule: job.schedule.as_ref().map(|s| s.to_string()),
            next_run_ms: job
                .next_tick(chrono::Utc::now())
                .map(|t| t.timestamp_millis().max(0) as u64),
        }
    }
}

/// `p2`, `p3` (its HTTP handler), then each other trigger's tag (`msg`), joined by
/// `+`: what a component serves.
pub fn kind(flavor: Option<HttpFlavor>, exports: &[String]) -> String {
    let mut parts = Vec::new();
    match flavor {
        Some(HttpFlavor::P2) => parts.push("p2"),
        Some(HttpFlavor::P3) => parts.push("p3"),
        None => {}
    }
    parts.extend(crate::trigger::tags(exports));
    parts.join("+")
}

impl HostStatus {
    pub(crate) fn collect(snapshot: &Snapshot, config: &HostConfig, uptime: Duration) -> Self {
        HostStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            http: config.http_addr.to_string(),
            admin: config.admin_addr.to_string(),
            data_dir: config.data_dir.display().to_string(),
            uptime_secs: uptime.as_secs(),
            bus: BusStatus::default(),
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
                    rollout: snapshot.candidates.get(app.name()).map(|c| RolloutShare {
                        version: c.app.manifest.app.version.clone(),
                        weight_percent: f64::from(
                            c.weight.load(std::sync::atomic::Ordering::Relaxed),
                        ) / 10.0,
                    }),
                })
                .collect(),
            lattice: None,
            refused: Vec::new(),
        }
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut rows = vec![[
            "APP".to_string(),
            "VERSION".into(),
            "COMPONENT".into(),
            "KIND".into(),
            "STATE".into(),
            "INST".into(),
            "FLIGHT".into(),
            "QUEUED".into(),
            "COLD".into(),
            "SHED".into(),
            "CALLS".into(),
            "FAILED".into(),
            "LAST".into(),
            "ROUTES".into(),
        ]];
        for app in &self.apps {
            if let Some(r) = &app.rollout {
                let mut row: [String; 14] = Default::default();
                row[0] = app.name.clone();
                row[1] = r.version.clone();
                row[13] = format!(
                    "rollout: {}% of requests to {} (beside {})",
                    r.weight_percent, r.version, app.version
                );
                rows.push(row);
            }
            for c in &app.components {
                rows.push([
                    app.name.clone(),
                    app.version.clone(),
                    c.name.clone(),
                    c.flavor.clone(),
                    c.state.as_str().to_string(),
                    c.instances.to_string(),
                    c.in_flight.to_string(),
                    c.queued.to_string(),
                    c.cold_starts.to_string(),
                    c.shed.to_string(),
                    c.invocations.to_string(),
                    c.failures.to_string(),
                    ago(c.last_invocation_ms),
                    c.routes.join(", "),
                ]);
                if let Some(schedule) = &c.schedule {
                    let mut row: [String; 14] = Default::default();
                    let next = c
                        .next_run_ms
                        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_else(|| "none".into());
                    row[13] = format!("job: {schedule}, next run {next}");
                    rows.push(row);
                }
                if self.lattice.is_some() {
                    let mut row: [String; 14] = Default::default();
                    row[13] = format!(
                        "runs on: {}{}",
                        if c.hosts.is_empty() {
                            "NO HOST (placement matches no live host)".to_string()
                        } else {
                            c.hosts.join(", ")
                        },
                        if c.placed_here { " (here)" } else { "" }
                    );
                    rows.push(row);
                }
                for (target, state) in &c.circuits {
                    let mut row: [String; 14] = Default::default();
                    row[13] = format!("-> {target}: circuit {state}");
                    rows.push(row);
                }
            }
        }
        let mut out = format!(
            "wasmhive {} — http://{} (admin http://{}), up {}s\n",
            self.version, self.http, self.admin, self.uptime_secs
        );
        if !self.bus.kind.is_empty() && !self.bus.connected {
            out.push_str(&format!(
                "bus {} is DOWN (reconnecting): messages wait, publishes fail\n",
                self.bus.describe
            ));
        }
        if let Some(l) = &self.lattice {
            out.push_str(&format!(
                "lattice {}: host {} ({}), {} live host(s)\n",
                l.name, l.host_name, l.host_id, l.hosts
            ));
        }
        for r in &self.refused {
            out.push_str(&format!("REFUSED app {}: {}\n", r.app, r.reason));
        }
        if self.apps.is_empty() {
            out.push_str("no apps deployed\n");
            return out;
        }
        let widths: Vec<usize> = (0..rows[0].len())
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

/// `3s ago`, `5m ago`, or `-` for never.
fn ago(unix_ms: Option<u64>) -> String {
    let Some(ms) = unix_ms else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(ms);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}
