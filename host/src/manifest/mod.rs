//! App manifests, format version 1: parse, check, and resolve into a [`Manifest`].
//!
//! Loading happens in two stages. [`raw`] holds serde structs that mirror the TOML
//! exactly (`deny_unknown_fields`, spans kept); this module checks every value that
//! can be checked without the component bytes (names, routes, durations, sizes,
//! outbound host patterns, route conflicts inside the app) and produces the typed
//! [`Manifest`]. Errors name the file, line, column and dotted field path.
//!
//! What this module does not do: read component files, compile them, or compare
//! routes against other deployed apps. The control plane does that at deploy time.

mod error;
mod outbound;
mod raw;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

pub use error::{Location, ManifestError};
pub use outbound::OutboundRule;

/// The only manifest format this host reads.
pub const MANIFEST_VERSION: i64 = 1;

/// A checked app manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `[app]`: name and version.
    pub app: AppMeta,
    /// `[components.*]`, in name order.
    pub components: Vec<ComponentSpec>,
}

/// `[app]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMeta {
    /// Unique on a host; lowercase letters, digits and `-`.
    pub name: String,
    /// Free-form version label shown in status (semver recommended).
    pub version: String,
    /// Optional human description.
    pub description: Option<String>,
}

/// `[components.NAME]`: one service.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name, unique in the app; also its service name in the mesh.
    pub name: String,
    /// `source` exactly as written (a path relative to the manifest file).
    pub source: String,
    /// HTTP routes this component serves.
    pub routes: Vec<RouteSpec>,
    /// Environment variables granted to the guest (nothing else is visible).
    pub env: Vec<(String, String)>,
    /// Outbound HTTP destinations the guest may call.
    pub allowed_outbound_hosts: Vec<OutboundRule>,
    /// Per-component limits; `None` fields take the host's defaults.
    pub limits: LimitsSpec,
    /// Scaling; `None` fields take the host's defaults.
    pub scale: ScaleSpec,
    /// Subscriptions and publish grants.
    pub messaging: MessagingSpec,
    /// Key-value buckets.
    pub keyvalue: KeyvalueSpec,
    /// Configuration values as written (`${VAR}` expanded at deploy time).
    pub config: Vec<(String, String)>,
    /// Secrets: where each value comes from (resolved at deploy time, never logged).
    pub secrets: Vec<(String, SecretSource)>,
    /// Services it may call by name (`http://NAME/...`), with their policies.
    pub calls: Vec<(String, CallPolicy)>,
    /// Instance reuse.
    pub instances: InstancesSpec,
}

/// `[components.NAME.instances]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancesSpec {
    /// Requests one instance serves before it is dropped.
    pub max_requests: Option<u32>,
    /// Requests one instance serves at once (WASI 0.3 only).
    pub max_concurrent: Option<u32>,
    /// An idle reusable instance is dropped after this.
    pub idle_timeout: Option<Duration>,
}

/// `[components.NAME.calls.TARGET]`: how calls to another component behave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallPolicy {
    /// Per-attempt deadline for the response head.
    pub timeout: Option<Duration>,
    /// Retries of idempotent requests.
    pub retries: Option<RetryPolicy>,
    /// Fail fast after repeated failures.
    pub circuit_breaker: Option<BreakerPolicy>,
    /// Answer given instead of a failure.
    pub fallback: Option<Fallback>,
}

/// `retries = { attempts, backoff, max_backoff }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
    /// First delay; doubles per retry, with jitter.
    pub backoff: Duration,
    /// Longest delay.
    pub max_backoff: Duration,
}

/// `circuit_breaker = { failures, window, open_for, half_open_probes }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures within `window` that open the circuit.
    pub failures: u32,
    /// The counting window.
    pub window: Duration,
    /// How long it stays open before probing.
    pub open_for: Duration,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
}

/// `fallback = { status, headers, body }`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

/// `[components.NAME.keyvalue]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyvalueSpec {
    /// Bucket names the guest may open (`""` and `"default"` are the same bucket).
    pub buckets: Vec<String>,
    /// Largest value a `set` accepts.
    pub max_value_size: Option<u64>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A host environment variable.
    Env(String),
    /// A file on the host.
    File(String),
}

/// `[components.NAME.messaging]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagingSpec {
    /// Subjects (NATS wildcards allowed) delivered to the component's message handler.
    pub subscribe: Vec<String>,
    /// Queue group; `None` means `APP.COMPONENT`.
    pub queue_group: Option<String>,
    /// Subjects (wildcards allowed) the component may publish and send requests to.
    pub publish: Vec<String>,
    /// At-least-once delivery through JetStream.
    pub durable: bool,
    /// Deliveries before a message is dead-lettered (durable only).
    pub max_deliver: Option<u32>,
    /// Redelivery delays after a failure (durable only).
    pub backoff: Vec<Duration>,
}

/// A route: an optional method and a path pattern (`/users/{id}`, `/files/{*path}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `None` matches any method.
    pub method: Option<http::Method>,
    /// The path pattern, in `matchit` syntax.
    pub path: String,
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.path),
            None => write!(f, "{}", self.path),
        }
    }
}

/// `[components.NAME.limits]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsSpec {
    /// Linear memory cap in bytes.
    pub memory: Option<u64>,
    /// Wall-clock deadline per invocation.
    pub timeout: Option<Duration>,
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

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Checks manifest text; `origin` labels error locations (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let raw: raw::RawManifest = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let field = span
                .clone()
                .and_then(|s| error::field_path_at(text, s.start));
            ManifestError::Syntax {
                location: Location::from_span(origin, text, span),
                field,
                message: e.message().trim().to_string(),
            }
        })?;
        Checker { text, origin }.check(raw)
    }

    /// The component with this name, if the manifest has it.
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Stage two: value checks with spans at hand.
struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Checker<'_> {
    fn invalid(
        &self,
        span: Range<usize>,
        field: String,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            location: Location::from_span(self.origin, self.text, Some(span)),
            field,
            message: message.into(),
        }
    }

    fn check(&self, raw: raw::RawManifest) -> Result<Manifest, ManifestError> {
        if *raw.manifest_version.get_ref() != MANIFEST_VERSION {
            return Err(self.invalid(
                raw.manifest_version.span(),
                "manifest_version".into(),
                format!(
                    "unsupported manifest version {}; this host reads version {MANIFEST_VERSION}",
                    raw.manifest_version.get_ref()
                ),
            ));
        }
        let name = raw.app.name;
        if let Err(why) = check_name(name.get_ref()) {
            return Err(self.invalid(name.span(), "app.name".into(), why));
        }
        let version = raw.app.version;
        let v = version.get_ref();
        if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(
                version.span(),
                "app.version".into(),
                "must be 1 to 64 characters without spaces (e.g. \"1.2.0\")",
            ));
        }
        let app = AppMeta {
            name: name.into_inner(),
            version: version.into_inner(),
            description: raw.app.description,
        };

        let mut components = Vec::with_capacity(raw.components.len());
        let mut app_routes = crate::routes::RouteTable::default();
        for (name, component) in raw.components {
            components.push(self.component(name, component, &mut app_routes)?);
        }
        Ok(Manifest { app, components })
    }

    fn component(
        &self,
        name: toml::Spanned<String>,
        raw: raw::RawComponent,
        app_routes: &mut crate::routes::RouteTable<()>,
    ) -> Result<ComponentSpec, ManifestError> {
        let field = |rest: &str| format!("components.{}.{rest}", name.get_ref());
        if let Err(why) = check_name(name.get_ref()) {
            return Err(self.invalid(name.span(), format!("components.{}", name.get_ref()), why));
        }
        if raw.source.get_ref().trim().is_empty() {
            return Err(self.invalid(raw.source.span(), field("source"), "must not be empty"));
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, route) in raw.routes.iter().enumerate() {
            let f = field(&format!("routes[{i}]"));
            let spec = parse_route(route.get_ref())
                .map_err(|why| self.invalid(route.span(), f.clone(), why))?;
            app_routes
                .insert(
                    spec.method.clone(),
                    &spec.path,
                    &format!("component {}", name.get_ref()),
                    (),
                )
                .map_err(|why| self.invalid(route.span(), f, why))?;
            routes.push(spec);
        }

        let mut env = Vec::with_capacity(raw.env.len());
        for (key, value) in raw.env {
            if !is_env_name(key.get_ref()) {
                return Err(self.invalid(
                    key.span(),
                    field(&format!("env.{}", key.get_ref())),
                    "environment variable names are letters, digits and '_', not starting with a digit",
                ));
            }
            env.push((key.into_inner(), value));
        }

        let mut allowed_outbound_hosts = Vec::with_capacity(raw.allowed_outbound_hosts.len());
        for (i, host) in raw.allowed_outbound_hosts.iter().enumerate() {
            let rule = OutboundRule::parse(host.get_ref()).map_err(|why| {
                self.invalid(
                    host.span(),
                    field(&format!("allowed_outbound_hosts[{i}]")),
                    why,
                )
            })?;
            allowed_outbound_hosts.push(rule);
        }

        let mut limits = LimitsSpec::default();
        if let Some(raw_limits) = raw.limits {
            if let Some(memory) = raw_limits.memory {
                let bytes = parse_size(memory.get_ref())
                    .map_err(|why| self.invalid(memory.span(), field("limits.memory"), why))?;
                if bytes < 64 * 1024 {
                    return Err(self.invalid(
                        memory.span(),
                        field("limits.memory"),
                        "must be at least 64KiB (one wasm page)",
                    ));
                }
                limits.memory = Some(bytes);
            }
            if let Some(timeout) = raw_limits.timeout {
                let d = parse_duration(timeout.get_ref())
                    .map_err(|why| self.invalid(timeout.span(), field("limits.timeout"), why))?;
                limits.timeout = Some(d);
            }
        }

        let scale = match raw.scale {
            Some(raw_scale) => self.scale(raw_scale, &field)?,
            None => ScaleSpec::default(),
        };

        let messaging = match raw.messaging {
            Some(m) => self.messaging(m, &field)?,
            None => MessagingSpec::default(),
        };

        let mut keyvalue = KeyvalueSpec::default();
        if let Some(kv) = raw.keyvalue {
            for (i, b) in kv.buckets.into_iter().enumerate() {
                let name = b.get_ref();
                let ok = name.len() <= 64
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    return Err(self.invalid(
                        b.span(),
                        field(&format!("keyvalue.buckets[{i}]")),
                        "bucket names use letters, digits, '-', '_' and '.' (at most 64)",
                    ));
                }
                let name = if name.is_empty() {
                    "default".to_string()
                } else {
                    b.into_inner()
                };
                if !keyvalue.buckets.contains(&name) {
                    keyvalue.buckets.push(name);
                }
            }
            if let Some(size) = kv.max_value_size {
                let bytes = parse_size(size.get_ref()).map_err(|why| {
                    self.invalid(size.span(), field("keyvalue.max_value_size"), why)
                })?;
                keyvalue.max_value_size = Some(bytes);
            }
        }

        let mut config = Vec::with_capacity(raw.config.len());
        for (k, v) in raw.config {
            config.push((k.into_inner(), v.into_inner()));
        }
        let mut secrets = Vec::with_capacity(raw.secrets.len());
        for (k, v) in raw.secrets {
            let key = format!("secrets.{}", k.get_ref());
            let span = v.span();
            let source = match v.into_inner() {
                raw::RawSecret {
                    env: Some(e),
                    file: None,
                } => SecretSource::Env(e),
                raw::RawSecret {
                    env: None,
                    file: Some(f),
                } => SecretSource::File(f),
                _ => {
                    return Err(self.invalid(
                        span,
                        field(&key),
                        "give exactly one of { env = \"VAR\" } or { file = \"path\" }",
                    ));
                }
            };
            if config.iter().any(|(c, _)| c == k.get_ref()) {
                return Err(self.invalid(
                    k.span(),
                    field(&key),
                    "a config key of the same name exists; config and secrets share one namespace",
                ));
            }
            secrets.push((k.into_inner(), source));
        }

        let mut calls = Vec::with_capacity(raw.calls.len());
        for (target, c) in raw.calls {
            let key = target.get_ref().clone();
            if check_name(&key).is_err() {
                return Err(self.invalid(
                    target.span(),
                    field(&format!("calls.{key}")),
                    "a call target is a component name: lowercase letters, digits and '-'",
                ));
            }
            let f = |k: &str| field(&format!("calls.{key}.{k}"));
            let dur = |v: &Option<String>, span: Range<usize>, k: &str, default: Duration| match v {
                None => Ok(default),
                Some(t) => parse_duration(t).map_err(|why| self.invalid(span, f(k), why)),
            };
            let mut policy = CallPolicy::default();
            if let Some(t) = c.timeout {
                policy.timeout = Some(
                    parse_duration(t.get_ref())
                        .map_err(|why| self.invalid(t.span(), f("timeout"), why))?,
                );
            }
            if let Some(r) = c.retries {
                let span = r.span();
                let r = r.into_inner();
                if r.attempts == 0 || r.attempts > 10 {
                    return Err(self.invalid(span, f("retries.attempts"), "must be from 1 to 10"));
                }
                policy.retries = Some(RetryPolicy {
                    attempts: r.attempts,
                    backoff: dur(
                        &r.backoff,
                        span.clone(),
                        "retries.backoff",
                        Duration::from_millis(50),
                    )?,
                    max_backoff: dur(
                        &r.max_backoff,
                        span,
                        "retries.max_backoff",
                        Duration::from_secs(1),
                    )?,
                });
            }
            if let Some(b) = c.circuit_breaker {
                let span = b.span();
                let b = b.into_inner();
                if b.failures == 0 {
                    return Err(self.invalid(
                        span,
                        f("circuit_breaker.failures"),
                        "must be at least 1",
                    ));
                }
                policy.circuit_breaker = Some(BreakerPolicy {
                    failures: b.failures,
                    window: dur(
                        &b.window,
                        span.clone(),
                        "circuit_breaker.window",
                        Duration::from_secs(10),
                    )?,
                    open_for: dur(
                        &b.open_for,
                        span,
                        "circuit_breaker.open_for",
                        Duration::from_secs(5),
                    )?,
                    half_open_probes: b.half_open_probes.unwrap_or(1).max(1),
                });
            }
            if let Some(fb) = c.fallback {
                let span = fb.span();
                let fb = fb.into_inner();
                let status = fb.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(self.invalid(
                        span,
                        f("fallback.status"),
                        "must be an HTTP status code",
                    ));
                }
                policy.fallback = Some(Fallback {
                    status,
                    headers: fb.headers.into_iter().collect(),
                    body: fb.body,
                });
            }
            calls.push((key, policy));
        }

        let mut instances = InstancesSpec::default();
        if let Some(i) = raw.instances {
            let count =
                |v: Option<toml::Spanned<i64>>, key: &str| -> Result<Option<u32>, ManifestError> {
                    match v {
                        None => Ok(None),
                        Some(v) if (1..=1_000_000).contains(v.get_ref()) => {
                            Ok(Some(*v.get_ref() as u32))
                        }
                        Some(v) => Err(self.invalid(
                            v.span(),
                            field(&format!("instances.{key}")),
                            "must be a whole number from 1 to 1000000",
                        )),
                    }
                };
            instances.max_requests = count(i.max_requests, "max_requests")?;
            instances.max_concurrent = count(i.max_concurrent, "max_concurrent")?;
            if let Some(t) = i.idle_timeout {
                instances.idle_timeout =
                    Some(parse_duration(t.get_ref()).map_err(|why| {
                        self.invalid(t.span(), field("instances.idle_timeout"), why)
                    })?);
            }
        }

        Ok(ComponentSpec {
            name: name.into_inner(),
            source: raw.source.into_inner(),
            routes,
            env,
            allowed_outbound_hosts,
            limits,
            scale,
            messaging,
            keyvalue,
            config,
            secrets,
            calls,
            instances,
        })
    }

    fn messaging(
        &self,
        raw: raw::RawMessaging,
        field: &dyn Fn(&str) -> String,
    ) -> Result<MessagingSpec, ManifestError> {
        let subjects =
            |list: Vec<toml::Spanned<String>>, key: &str| -> Result<Vec<String>, ManifestError> {
                let mut out = Vec::with_capacity(list.len());
                for (i, s) in list.into_iter().enumerate() {
                    crate::bus::subject::check(s.get_ref(), true).map_err(|why| {
                        self.invalid(s.span(), field(&format!("messaging.{key}[{i}]")), why)
                    })?;
                    out.push(s.into_inner());
                }
                Ok(out)
            };
        let mut spec = MessagingSpec {
            subscribe: subjects(raw.subscribe, "subscribe")?,
            publish: subjects(raw.publish, "publish")?,
            ..Default::default()
        };
        if let Some(g) = raw.queue_group {
            let ok = !g.get_ref().is_empty()
                && g.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(self.invalid(
                    g.span(),
                    field("messaging.queue_group"),
                    "use letters, digits, '-', '_' and '.'",
                ));
            }
            spec.queue_group = Some(g.into_inner());
        }
        if let Some(n) = raw.max_deliver {
            if *n.get_ref() < 1 || *n.get_ref() > 10_000 {
                return Err(self.invalid(
                    n.span(),
                    field("messaging.max_deliver"),
                    "must be a whole number from 1 to 10000",
                ));
            }
            spec.max_deliver = Some(*n.get_ref() as u32);
        }
        for (i, b) in raw.backoff.into_iter().enumerate() {
            let d = parse_duration(b.get_ref()).map_err(|why| {
                self.invalid(b.span(), field(&format!("messaging.backoff[{i}]")), why)
            })?;
            spec.backoff.push(d);
        }
        spec.durable = raw.durable.is_some_and(|d| *d.get_ref());
        Ok(spec)
    }

    fn scale(
        &self,
        raw: raw::RawScale,
        field: &dyn Fn(&str) -> String,
    ) -> Result<ScaleSpec, ManifestError> {
        let count = |v: Option<toml::Spanned<i64>>,
                     key: &str,
                     min: i64|
         -> Result<Option<u32>, ManifestError> {
            match v {
                None => Ok(None),
                Some(v) => {
                    let n = *v.get_ref();
                    if n < min || n > i64::from(u32::MAX) {
                        return Err(self.invalid(
                            v.span(),
                            field(&format!("scale.{key}")),
                            format!("must be a whole number from {min} to {}", u32::MAX),
                        ));
                    }
                    Ok(Some(n as u32))
                }
            }
        };
        let duration = |v: Option<toml::Spanned<String>>,
                        key: &str|
         -> Result<Option<Duration>, ManifestError> {
            match v {
                None => Ok(None),
                Some(v) => parse_duration(v.get_ref())
                    .map(Some)
                    .map_err(|why| self.invalid(v.span(), field(&format!("scale.{key}")), why)),
            }
        };
        let min_span = raw.min_instances.as_ref().map(|v| v.span());
        let spec = ScaleSpec {
            max_instances: count(raw.max_instances, "max_instances", 1)?,
            queue: count(raw.queue, "queue", 0)?,
            queue_timeout: duration(raw.queue_timeout, "queue_timeout")?,
            idle_timeout: duration(raw.idle_timeout, "idle_timeout")?,
            min_instances: count(raw.min_instances, "min_instances", 0)?,
        };
        if let (Some(min), Some(max), Some(span)) =
            (spec.min_instances, spec.max_instances, min_span)
            && min > max
        {
            return Err(self.invalid(
                span,
                field("scale.min_instances"),
                format!("min_instances ({min}) is more than max_instances ({max})"),
            ));
        }
        Ok(spec)
    }
}

/// App and component names: DNS-label style, because a component's name is also the
/// host part of mesh calls (`http://users/...`).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1 to 63 lowercase letters, digits and '-', starting with a letter"
        ))
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `"GET /users/{id}"` or `"/files/{*path}"` (any method).
pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let text = text.trim();
    let (method, path) = match text.split_once(char::is_whitespace) {
        Some((m, p)) => (Some(m), p.trim()),
        None => (None, text),
    };
    let method = match method {
        None => None,
        Some(m) => {
            if !m.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "invalid method {m:?}: write it in upper case, e.g. \"GET /path\""
                ));
            }
            Some(
                http::Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("invalid method {m:?}"))?,
            )
        }
    };
    if !path.starts_with('/') {
        return Err(format!("route path {path:?} must start with '/'"));
    }
    if path.chars().any(char::is_whitespace) {
        return Err(format!("route path {path:?} must not contain spaces"));
    }
    // Let the router judge the pattern syntax, so what we accept is what it serves.
    let mut probe = matchit::Router::new();
    probe
        .insert(path, ())
        .map_err(|e| format!("invalid route pattern {path:?}: {e}"))?;
    Ok(RouteSpec {
        method,
        path: path.to_string(),
    })
}

/// Parses a human duration: `"300ms"`, `"10s"`, `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write e.g. \"300ms\", \"10s\", \"2m\"")
    })?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

/// Parses a byte size: `"64MiB"`, `"512KiB"`, `"1GiB"`, `"1000000"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("invalid size {text:?} ({e}); write e.g. \"64MiB\""))?;
    Ok(size.as_u64())
}

/// Env pairs as a map, for display.
pub fn env_map(env: &[(String, String)]) -> BTreeMap<&str, &str> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
manifest_version = 1
[app]
name = "hello"
version = "0.1.0"

[components.hello]
source = "../components/target/wasm32-wasip2/release/hello.wasm"
routes = ["GET /hello", "GET /hello/{name}", "/files/{*path}"]
env = { GREETING = "hi" }
allowed_outbound_hosts = ["http://127.0.0.1:8081"]
[components.hello.limits]
memory = "64MiB"
timeout = "10s"
[components.hello.scale]
max_instances = 50
queue = 100
queue_timeout = "2s"
idle_timeout = "60s"
min_instances = 0
"#;

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::parse(GOOD, "hello.toml").unwrap();
        assert_eq!(m.app.name, "hello");
        let c = &m.components[0];
        assert_eq!(c.routes.len(), 3);
        assert_eq!(c.routes[0].method, Some(http::Method::GET));
        assert_eq!(c.routes[2].method, None);
        assert_eq!(c.env, vec![("GREETING".into(), "hi".into())]);
        assert_eq!(c.limits.memory, Some(64 * 1024 * 1024));
        assert_eq!(c.limits.timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.scale.max_instances, Some(50));
        assert_eq!(c.scale.queue_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.scale.min_instances, Some(0));
    }

    #[test]
    fn scale_values_are_checked() {
        let e = err(&GOOD.replace("max_instances = 50", "max_instances = 0"));
        assert!(e.contains("components.hello.scale.max_instances"), "{e}");
        let e = err(&GOOD.replace("min_instances = 0", "min_instances = 60"));
        assert!(e.contains("components.hello.scale.min_instances"), "{e}");
        let e = err(&GOOD.replace("idle_timeout = \"60s\"", "idle_timeout = \"soon\""));
        assert!(e.contains("components.hello.scale.idle_timeout"), "{e}");
    }

    fn err(text: &str) -> String {
        Manifest::parse(text, "m.toml").unwrap_err().to_string()
    }

    #[test]
    fn later_sections_name_their_fields() {
        let with = |extra: &str| format!("{GOOD}\n{extra}\n");
        let ok = Manifest::parse(
            &with(
                "[components.hello.calls.users]\ntimeout = \"300ms\"\nretries = { attempts = 3 }\n\
                 circuit_breaker = { failures = 5 }\nfallback = { body = \"{}\" }\n\
                 [components.hello.messaging]\nsubscribe = [\"orders.*\"]\npublish = [\"x.>\"]\n\
                 [components.hello.keyvalue]\nbuckets = [\"orders\", \"\"]\n\
                 [components.hello.instances]\nmax_requests = 8",
            ),
            "m.toml",
        )
        .unwrap();
        let c = &ok.components[0];
        assert_eq!(c.calls[0].0, "users");
        assert_eq!(c.calls[0].1.retries.as_ref().unwrap().attempts, 3);
        assert_eq!(c.calls[0].1.fallback.as_ref().unwrap().status, 200);
        assert_eq!(c.keyvalue.buckets, ["orders", "default"]);
        assert_eq!(c.instances.max_requests, Some(8));

        let e = err(&with(
            "[components.hello.calls.users]\nretries = { attempts = 0 }",
        ));
        assert!(
            e.contains("components.hello.calls.users.retries.attempts"),
            "{e}"
        );
        let e = err(&with(
            "[components.hello.messaging]\nsubscribe = [\"orders.>.x\"]",
        ));
        assert!(e.contains("components.hello.messaging.subscribe[0]"), "{e}");
        let e = err(&with(
            "[components.hello.keyvalue]\nbuckets = [\"no spaces\"]",
        ));
        assert!(e.contains("components.hello.keyvalue.buckets[0]"), "{e}");
        let e = err(&with(
            "[components.hello.secrets]\nk = { env = \"A\", file = \"b\" }",
        ));
        assert!(e.contains("components.hello.secrets.k"), "{e}");
        let e = err(&with("[components.hello.instances]\nmax_requests = 0"));
        assert!(e.contains("components.hello.instances.max_requests"), "{e}");
        let e = err(&with("[components.hello.calls.Users]"));
        assert!(e.contains("components.hello.calls.Users"), "{e}");
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = GOOD.replace("memory = ", "memroy = ");
        let e = err(&text);
        assert!(e.contains("memroy"), "{e}");
        assert!(e.starts_with("m.toml:13:"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let e = err(&GOOD.replace("\"10s\"", "\"10 sekunds\""));
        assert!(e.contains("components.hello.limits.timeout"), "{e}");
        assert!(e.starts_with("m.toml:14:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err(&GOOD.replace("version = \"0.1.0\"", "version = 1"));
        assert!(e.contains("app.version"), "{e}");
    }

    #[test]
    fn duplicate_route_in_app_is_refused() {
        let text =
            format!("{GOOD}\n[components.other]\nsource = \"x.wasm\"\nroutes = [\"/hello\"]\n");
        let e = err(&text);
        assert!(e.contains("components.other.routes[0]"), "{e}");
        assert!(e.contains("overlaps"), "{e}");
    }

    #[test]
    fn same_path_different_methods_is_fine() {
        let text = format!(
            "{GOOD}\n[components.other]\nsource = \"x.wasm\"\nroutes = [\"POST /hello\"]\n"
        );
        Manifest::parse(&text, "m.toml").unwrap();
    }

    #[test]
    fn wrong_version_is_refused() {
        let e = err(&GOOD.replace("manifest_version = 1", "manifest_version = 2"));
        assert!(e.contains("manifest_version"), "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        let e = err(&GOOD.replace("name = \"hello\"", "name = \"Hello World\""));
        assert!(e.contains("app.name"), "{e}");
    }

    #[test]
    fn routes_parse() {
        assert!(parse_route("get /x").is_err());
        assert!(parse_route("GET x").is_err());
        assert!(parse_route("GET /x/{").is_err());
        assert_eq!(parse_route("/a/{*rest}").unwrap().method, None);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
    }
}
