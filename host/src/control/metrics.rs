//! The `/metrics` scrape: request families from [`RequestMetrics`] plus, computed at
//! scrape time from the current snapshot, each component's lifecycle and admission
//! state.
//!
//! | metric | type | meaning |
//! | --- | --- | --- |
//! | `wasmhive_requests_total{app,component,trigger,status}` | counter | requests answered |
//! | `wasmhive_request_duration_seconds{…}` | histogram | admission to response head |
//! | `wasmhive_component_ready{app,component}` | gauge | 1 loaded, 0 at zero (or loading) |
//! | `wasmhive_component_instances{app,component}` | gauge | live instances |
//! | `wasmhive_component_in_flight{app,component}` | gauge | admitted, unfinished invocations |
//! | `wasmhive_component_queued{app,component}` | gauge | invocations waiting for a slot |
//! | `wasmhive_component_max_instances{app,component}` | gauge | the bulkhead size |
//! | `wasmhive_component_cold_starts_total{app,component}` | counter | loads from zero |
//! | `wasmhive_component_shed_total{app,component}` | counter | invocations shed with 503 |
//! | `wasmhive_component_invocations_total{app,component}` | counter | invocations started |
//! | `wasmhive_component_failures_total{app,component}` | counter | invocations failed |
//! | `wasmhive_component_last_invocation_timestamp_seconds{app,component}` | gauge | unix time |
//! | `wasmhive_host_memory_bytes` | gauge | linear memory in use, all instances |
//! | `wasmhive_circuit_open{app,component,target}` | gauge | 1 open, 0.5 half-open, 0 closed |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::apps::{Apps, DeployedComponent};
use crate::mesh::MeshRouter;
use crate::runtime::HostMemory;
use crate::scaler::State;
use crate::telemetry::metrics::RequestMetrics;

/// Builds the registry the admin listener encodes on each scrape.
pub fn registry(
    apps: Arc<Apps>,
    requests: &RequestMetrics,
    memory: Arc<HostMemory>,
    mesh: Arc<MeshRouter>,
) -> Registry {
    let mut registry = Registry::default();
    requests.register(&mut registry);
    registry.register_collector(Box::new(ComponentCollector { apps, memory, mesh }));
    registry
}

/// Encodes `registry` in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => out,
        Err(e) => format!("# encoding failed: {e}\n"),
    }
}

struct ComponentCollector {
    apps: Arc<Apps>,
    memory: Arc<HostMemory>,
    mesh: Arc<MeshRouter>,
}

impl std::fmt::Debug for ComponentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ComponentCollector")
    }
}

type Sample = fn(&DeployedComponent) -> f64;

const GAUGES: &[(&str, &str, Sample)] = &[
    (
        "wasmhive_component_ready",
        "1 when the component is loaded, 0 when at zero",
        |c| f64::from(u8::from(c.scaler.status().state == State::Ready)),
    ),
    ("wasmhive_component_instances", "Live instances", |c| {
        f64::from(c.instances.load(Ordering::Relaxed))
    }),
    (
        "wasmhive_component_in_flight",
        "Admitted invocations not finished",
        |c| f64::from(c.scaler.status().in_flight),
    ),
    (
        "wasmhive_component_queued",
        "Invocations waiting for a free instance",
        |c| f64::from(c.scaler.status().queued),
    ),
    (
        "wasmhive_component_max_instances",
        "Instances allowed at once",
        |c| f64::from(c.scaler.policy().max_instances),
    ),
    (
        "wasmhive_component_last_invocation_timestamp_seconds",
        "Unix time of the last invocation (0 = never)",
        |c| c.stats.last_invocation_ms.load(Ordering::Relaxed) as f64 / 1000.0,
    ),
];

const COUNTERS: &[(&str, &str, Sample)] = &[
    (
        "wasmhive_component_cold_starts",
        "Loads from zero caused by an invocation",
        |c| c.scaler.status().cold_starts as f64,
    ),
    (
        "wasmhive_component_shed",
        "Invocations shed with 503",
        |c| c.scaler.status().shed as f64,
    ),
    (
        "wasmhive_component_invocations",
        "Invocations started",
        |c| c.stats.invocations.load(Ordering::Relaxed) as f64,
    ),
    (
        "wasmhive_component_failures",
        "Invocations that failed",
        |c| c.stats.failures.load(Ordering::Relaxed) as f64,
    ),
];

impl Collector for ComponentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.apps.snapshot();
        let components: Vec<_> = snapshot.components().collect();
        for (name, help, sample) in GAUGES {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for c in &components {
                let labels = [
                    ("app", c.id.app.as_ref()),
                    ("component", c.id.component.as_ref()),
                ];
                ConstGauge::new(sample(c)).encode(metric.encode_family(&labels)?)?;
            }
        }
        for (name, help, sample) in COUNTERS {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &components {
                let labels = [
                    ("app", c.id.app.as_ref()),
                    ("component", c.id.component.as_ref()),
                ];
                ConstCounter::new(sample(c)).encode(metric.encode_family(&labels)?)?;
            }
        }
        let metric = encoder.encode_descriptor(
            "wasmhive_host_memory_bytes",
            "Linear memory in use by all instances",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.memory.used() as i64).encode(metric)?;
        let mut metric = encoder.encode_descriptor(
            "wasmhive_circuit_open",
            "1 while the circuit breaker of a caller's calls to a target is open (0.5 half-open)",
            None,
            MetricType::Gauge,
        )?;
        for (app, component, target, state) in self.mesh.all_circuits() {
            let labels = [
                ("app", app.as_str()),
                ("component", component.as_str()),
                ("target", target.as_str()),
            ];
            let v = match state {
                "open" => 1.0,
                "half-open" => 0.5,
                _ => 0.0,
            };
            ConstGauge::new(v).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
