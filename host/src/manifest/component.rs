//! `[components.NAME]`: one service. Its core keys (`source`, `limits`, `scale`,
//! `instances`) are read here; every capability and trigger then takes its own keys
//! from the same table, and whatever nobody took is refused.

use std::time::Duration;

use crate::capability;
use crate::section::{ManifestError, Table, check_name};
use crate::trigger;

/// One service of an app.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name, unique in the app; also its service name in the mesh.
    pub name: String,
    /// `source` exactly as written (a path relative to the manifest file).
    pub source: String,
    /// Per-component limits; `None` fields take the host's defaults.
    pub limits: LimitsSpec,
    /// Scaling; `None` fields take the host's defaults.
    pub scale: ScaleSpec,
    /// Instance reuse.
    pub instances: InstancesSpec,
    /// What it may import: each capability's keys.
    pub caps: capability::Specs,
    /// What invokes it: each trigger's keys.
    pub triggers: trigger::Specs,
    /// Which hosts of a lattice run it.
    pub placement: PlacementSpec,
}

/// `[components.NAME.placement]`: which hosts of a lattice run the component. A host
/// alone (no lattice) runs everything and ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementSpec {
    /// How many hosts run it (`None`: every eligible host).
    pub hosts: Option<u32>,
    /// Only hosts carrying all these labels (`--label KEY=VALUE`) are eligible.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `[components.NAME.limits]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsSpec {
    /// Linear memory cap in bytes.
    pub memory: Option<u64>,
    /// Wall-clock deadline per invocation.
    pub timeout: Option<Duration>,
    /// A request body of a known length up to this is received whole before the
    /// component starts (so a guest that reads without blocking sees it all).
    pub request_buffer: Option<u64>,
}

/// `[components.NAME.scale]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleSpec {
    /// Instances running at once (the bulkhead).
    pub max_instances: Option<u32>,
    /// Invocations that may wait for a free instance.
    pub queue: Option<u32>,
    /// How long an invocation may wait in the queue.
    pub queue_timeout: Option<Duration>,
    /// Nothing in flight for this long: scale to zero.
    pub idle_timeout: Option<Duration>,
    /// Greater than zero keeps the component loaded.
    pub min_instances: Option<u32>,
}

/// `[components.NAME.instances]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancesSpec {
    /// Invocations one instance serves before it is dropped (every trigger).
    pub max_requests: Option<u32>,
    /// Invocations one instance serves at once (WASI 0.3 only).
    pub max_concurrent: Option<u32>,
    /// An idle reusable instance is dropped after this.
    pub idle_timeout: Option<Duration>,
}

/// `limits.request_buffer` when the manifest is silent.
pub const DEFAULT_REQUEST_BUFFER: u64 = 64 * 1024;
/// The largest `limits.request_buffer`.
pub const MAX_REQUEST_BUFFER: u64 = 16 << 20;

/// The smallest `limits.memory`: one wasm page.
const MIN_MEMORY: u64 = 64 * 1024;

impl ComponentSpec {
    /// Reads `[components.NAME]`; `table` is finished (unknown keys refused) here.
    pub(super) fn read(
        name: toml::Spanned<String>,
        mut table: Table<'_>,
    ) -> Result<Self, ManifestError> {
        check_name(name.get_ref()).map_err(|why| ManifestError::Invalid {
            location: table.source().location(Some(name.span())),
            field: table.path().to_string(),
            message: why,
        })?;
        let source: toml::Spanned<String> = table.require("source")?;
        if source.get_ref().trim().is_empty() {
            return Err(table.invalid(source.span(), "source", "must not be empty"));
        }
        let spec = ComponentSpec {
            name: name.into_inner(),
            source: source.into_inner(),
            limits: limits(&mut table)?,
            scale: scale(&mut table)?,
            instances: instances(&mut table)?,
            caps: capability::Specs::read(&mut table)?,
            triggers: trigger::Specs::read(&mut table)?,
            placement: placement(&mut table)?,
        };
        table.finish()?;
        Ok(spec)
    }
}

fn limits(component: &mut Table<'_>) -> Result<LimitsSpec, ManifestError> {
    let Some(t) = component.table("limits")? else {
        return Ok(LimitsSpec::default());
    };
    let memory = t.parsed("memory", |text| {
        let bytes = crate::section::parse_size(text)?;
        if bytes < MIN_MEMORY {
            return Err("must be at least 64KiB (one wasm page)".into());
        }
        Ok(bytes)
    })?;
    let request_buffer = t.parsed("request_buffer", |text| {
        let bytes = crate::section::parse_size(text)?;
        if bytes > MAX_REQUEST_BUFFER {
            return Err(format!(
                "at most {} (larger bodies stream to the component)",
                bytesize::ByteSize(MAX_REQUEST_BUFFER)
            ));
        }
        Ok(bytes)
    })?;
    Ok(LimitsSpec {
        memory,
        timeout: t.duration("timeout")?,
        request_buffer,
    })
}

fn scale(component: &mut Table<'_>) -> Result<ScaleSpec, ManifestError> {
    let Some(t) = component.table("scale")? else {
        return Ok(ScaleSpec::default());
    };
    let max = i64::from(u32::MAX);
    let min_instances = t.count_spanned("min_instances", 0, max)?;
    let spec = ScaleSpec {
        max_instances: t.count("max_instances", 1, max)?,
        queue: t.count("queue", 0, max)?,
        queue_timeout: t.duration("queue_timeout")?,
        idle_timeout: t.duration("idle_timeout")?,
        min_instances: min_instances.as_ref().map(|m| *m.get_ref()),
    };
    if let (Some(min), Some(max)) = (&min_instances, spec.max_instances)
        && *min.get_ref() > max
    {
        return Err(t.invalid(
            min.span(),
            "min_instances",
            format!(
                "min_instances ({}) is more than max_instances ({max})",
                min.get_ref()
            ),
        ));
    }
    Ok(spec)
}

fn placement(component: &mut Table<'_>) -> Result<PlacementSpec, ManifestError> {
    let Some(t) = component.table("placement")? else {
        return Ok(PlacementSpec::default());
    };
    Ok(PlacementSpec {
        hosts: t.count("hosts", 1, 10_000)?,
        labels: t.take_or_default("labels")?,
    })
}

fn instances(component: &mut Table<'_>) -> Result<InstancesSpec, ManifestError> {
    let Some(t) = component.table("instances")? else {
        return Ok(InstancesSpec::default());
    };
    Ok(InstancesSpec {
        max_requests: t.count("max_requests", 1, 1_000_000)?,
        max_concurrent: t.count("max_concurrent", 1, 1_000_000)?,
        idle_timeout: t.duration("idle_timeout")?,
    })
}
