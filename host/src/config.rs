//! Host configuration: where the host listens, where it keeps data, and the defaults
//! and pools every component shares.
//!
//! Host configuration is not an app manifest: it belongs to the operator of one host
//! and is read once at start-up from an optional TOML file (`wasmhive up --config
//! FILE`), then overridden by command-line flags and environment variables. Every
//! default is the constant next to its field; the README's configuration reference
//! lists them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::section::{Location, ManifestError, Source, Table};

/// Public HTTP listener (`--http`, `WASMHIVE_HTTP`).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Admin listener: health, metrics, the deploy API (`--admin`, `WASMHIVE_ADMIN`).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";
/// Data directory: compile cache, uploaded components, deployments (`--data-dir`, `WASMHIVE_DATA_DIR`).
pub const DEFAULT_DATA_DIR: &str = ".wasmhive";

/// Linear memory a component may use when its manifest sets no `limits.memory`.
pub const DEFAULT_MEMORY_LIMIT: u64 = 128 << 20;
/// Wall-clock deadline per invocation when the manifest sets no `limits.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Instances of one component running at once, when its manifest sets no `scale.max_instances`.
pub const DEFAULT_MAX_INSTANCES: u32 = 100;
/// Invocations that may wait for a free instance of one component.
pub const DEFAULT_QUEUE: u32 = 100;
/// How long an invocation may wait in a component's queue before a 503.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// A component with nothing in flight for this long is scaled to zero.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Loaded components kept even when idle (0 = scale to zero).
pub const DEFAULT_MIN_INSTANCES: u32 = 0;
/// Component instances alive at once across the host (pooling allocator slots).
pub const DEFAULT_POOL_INSTANCES: u32 = 1000;
/// Ceiling for any one linear memory; a manifest asking for more is refused.
pub const DEFAULT_POOL_MAX_MEMORY: u64 = 1 << 30;
/// Bytes of each linear memory slot reset in place (memset) instead of returned to the
/// kernel between instances. Avoids page faults and TLB shootdowns on the hot path.
pub const DEFAULT_MEMORY_KEEP_RESIDENT: u64 = 16 << 20;
/// Linear memory all instances together may use, when not configured: half the
/// machine's physical memory (read from /proc/meminfo; 4 GiB if unknown).
pub fn default_total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024 / 2)
        .unwrap_or(4 << 30)
}
/// CPUs' worth of guest code one component version may run at once, when not
/// configured: the machine's cores less one (at least one), so a component whose
/// invocations spin leaves a core for everyone else. Only time in wasm across epoch
/// ticks is charged: short requests never reach the limit (ADR 0013).
pub fn default_cpus_per_component() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}
/// Same for tables.
pub const DEFAULT_TABLE_KEEP_RESIDENT: u64 = 1 << 20;
/// Same for async (fiber) stacks.
pub const DEFAULT_STACK_KEEP_RESIDENT: u64 = 1 << 20;
/// How long shutdown waits for in-flight requests before exiting anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Open client connections on the public listener; more wait in the kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// `[gateway] header_read_timeout`: longest time to receive a request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `[gateway] idle_timeout`: an idle keep-alive connection is closed after this long.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// `[gateway] max_connections_per_ip`: open connections from one client address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 512;
/// `[gateway] body_read_timeout`: longest gap between two pieces of a request body.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `[gateway] h2_max_concurrent_streams`: HTTP/2 streams open at once per connection.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;
/// `[gateway] h2_keep_alive_interval`: HTTP/2 ping interval (and answer timeout).
pub const DEFAULT_H2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// `[gateway] jwt_cache`: verified JWTs kept per app.
pub const DEFAULT_JWT_CACHE: usize = 10_000;
/// Admin connections are few (the CLI, probes, scrapers).
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// The resolved host configuration.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Public HTTP listener address.
    pub http_addr: SocketAddr,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Defaults for components whose manifest is silent.
    pub defaults: ComponentDefaults,
    /// The instance pool shared by all components.
    pub pool: PoolConfig,
    /// Shutdown drain bound.
    pub drain_timeout: Duration,
    /// Public listener connection bound.
    pub max_connections: usize,
    /// Where messages flow.
    pub bus: BusConfig,
    /// Key-value backend: `auto`, `redb` or `jetstream`.
    pub kv: KvBackend,
    /// `[admin]`: who may use the admin API.
    pub admin: AdminConfig,
    /// `[gateway]`: how the public listener treats client connections.
    pub gateway: GatewayConfig,
    /// `[secrets] dirs` and `[config] env_prefixes`: what deploys may read on the host.
    pub access: DeployAccess,
    /// `[tls]`: HTTPS on the public listener (`--tls-cert/key`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// `[lattice]`: which lattice the host joins when it has `--nats`.
    pub lattice: LatticeConfig,
}

/// `[lattice]` (`--lattice`, `--label`, `--host-name`): the lattice a host with
/// `--nats` joins. Without `--nats` the host is alone and this is unused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatticeConfig {
    /// The lattice's name: prefixes its subjects, buckets and object store.
    pub name: String,
    /// This host's labels, matched by components' `[placement] labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// This host's name in `wasmhive hosts` (default: the machine's host name).
    pub host_name: Option<String>,
    /// A host whose last heartbeat is older than this is gone.
    pub heartbeat_ttl: Duration,
    /// JetStream replicas of the lattice's buckets and object store (3 on a
    /// clustered NATS).
    pub replicas: usize,
}

/// `[lattice] name`: the lattice hosts join by default.
pub const DEFAULT_LATTICE: &str = "default";
/// `[lattice] heartbeat_ttl`: a host silent for this long is gone.
pub const DEFAULT_HEARTBEAT_TTL: Duration = Duration::from_secs(10);

impl Default for LatticeConfig {
    fn default() -> Self {
        LatticeConfig {
            name: DEFAULT_LATTICE.into(),
            labels: Default::default(),
            host_name: None,
            heartbeat_ttl: DEFAULT_HEARTBEAT_TTL,
            replicas: 1,
        }
    }
}

/// A lattice name: it becomes part of NATS subjects and JetStream bucket names.
pub fn check_lattice_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid lattice name {name:?}: use 1 to 32 letters, digits, '-' and '_'"
        ))
    }
}

/// Parses `KEY=VALUE` (a `--label`).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("invalid label {text:?}: write KEY=VALUE")),
    }
}

/// What a deploy may read on this host: an operator's decision, since whoever can
/// deploy can hand what they read to their component.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployAccess {
    /// `[secrets] dirs`: directories `secrets = { file = … }` may read from. Empty:
    /// only the manifest's own directory tree, and only when it was deployed from
    /// this machine (start-up manifests, or the CLI over loopback).
    pub secret_dirs: Vec<PathBuf>,
    /// `[config] env_prefixes`: environment variables `${VAR}` and
    /// `secrets = { env = … }` may read. Empty: none.
    pub env_prefixes: Vec<String>,
}

/// `[gateway]`: connection timeouts and limits of the public listener (the admin
/// listener uses the same timeouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Longest time to receive a request head.
    pub header_read_timeout: Duration,
    /// Longest idle time of a kept-alive connection.
    pub idle_timeout: Duration,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
    /// Addresses the per-address limit does not count (default: loopback).
    pub per_ip_exempt: Vec<crate::listener::IpRange>,
    /// Longest gap between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 ping interval.
    pub h2_keep_alive_interval: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (for rate limits and logs).
    pub trusted_proxies: Vec<crate::listener::IpRange>,
    /// `[gateway.rate_limit]`: requests per client address across every route.
    pub rate_limit: Option<crate::limit::RateLimitSpec>,
    /// Verified JWTs kept per app (0: verify the signature of every request).
    pub jwt_cache: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            per_ip_exempt: crate::listener::IpRange::loopback(),
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_STREAMS,
            h2_keep_alive_interval: DEFAULT_H2_KEEP_ALIVE,
            trusted_proxies: Vec::new(),
            rate_limit: None,
            jwt_cache: DEFAULT_JWT_CACHE,
        }
    }
}

impl HostConfig {
    /// The public listener's connection limits.
    pub fn http_limits(&self) -> crate::listener::ConnectionLimits {
        let g = &self.gateway;
        crate::listener::ConnectionLimits {
            max_connections: self.max_connections,
            max_connections_per_ip: g.max_connections_per_ip,
            per_ip_exempt: g.per_ip_exempt.clone(),
            header_read_timeout: g.header_read_timeout,
            idle_timeout: g.idle_timeout,
            h2_max_concurrent_streams: g.h2_max_concurrent_streams,
            h2_keep_alive_interval: g.h2_keep_alive_interval,
        }
    }

    /// The admin listener's: the same clocks, fewer connections.
    pub fn admin_limits(&self) -> crate::listener::ConnectionLimits {
        crate::listener::ConnectionLimits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            max_connections_per_ip: ADMIN_MAX_CONNECTIONS,
            ..self.http_limits()
        }
    }
}

/// `[admin]`: the admin API's lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Read the bearer token from this file (`--admin-token-file`) instead of
    /// `WASMHIVE_ADMIN_TOKEN` or `<data_dir>/admin.token`.
    pub token_file: Option<PathBuf>,
    /// The token itself (`WASMHIVE_ADMIN_TOKEN`; never from the config file, never logged).
    pub token: Option<String>,
    /// Serve `GET /metrics` without the token (for a scraper on a private network).
    pub public_metrics: bool,
    /// TLS on the admin listener (`--admin-tls-cert/key`, `--admin-client-ca`).
    pub tls: Option<crate::tls::TlsFiles>,
}

/// Where components' key-value data lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KvBackend {
    /// JetStream when the host joins a NATS system with `--nats URL`, else redb.
    #[default]
    Auto,
    /// The embedded database under the data dir (this host only).
    Redb,
    /// JetStream key-value buckets (shared by every host on the NATS system).
    Jetstream,
}

/// `[bus]`: how the host reaches NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusConfig {
    /// NATS server URL(s). `None`: start a managed `nats-server` if one is on PATH,
    /// else use the in-process bus.
    pub nats: Option<String>,
    /// Use the in-process bus even if `nats-server` is available.
    pub local: bool,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Token.
    pub token: Option<String>,
    /// `.creds` file.
    pub creds: Option<PathBuf>,
    /// Extra root CA (PEM) for TLS.
    pub tls_ca: Option<PathBuf>,
}

/// Defaults applied to every component unless its manifest says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDefaults {
    /// Linear memory cap in bytes.
    pub memory: u64,
    /// Deadline per invocation.
    pub timeout: Duration,
    /// Scaling policy.
    pub scale: ScaleDefaults,
}

/// `[defaults.scale]`: the scaling policy of components whose manifest is silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleDefaults {
    /// Instances running at once.
    pub max_instances: u32,
    /// Invocations waiting for an instance.
    pub queue: u32,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// Idle time before scaling to zero.
    pub idle_timeout: Duration,
    /// Instances kept loaded when idle.
    pub min_instances: u32,
}

/// Sizing of the pooling instance allocator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Component instances alive at once.
    pub instances: u32,
    /// Maximum size of one linear memory.
    pub max_memory: u64,
    /// Linear memory of all instances together.
    pub total_memory: u64,
    /// Bytes of memory kept resident per slot.
    pub memory_keep_resident: u64,
    /// Bytes of table kept resident per slot.
    pub table_keep_resident: u64,
    /// Bytes of async stack kept resident per slot.
    pub stack_keep_resident: u64,
    /// CPUs' worth of guest code one component version may run at once.
    pub cpus_per_component: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("valid default address"),
            admin_addr: DEFAULT_ADMIN_ADDR.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            defaults: ComponentDefaults {
                memory: DEFAULT_MEMORY_LIMIT,
                timeout: DEFAULT_TIMEOUT,
                scale: ScaleDefaults {
                    max_instances: DEFAULT_MAX_INSTANCES,
                    queue: DEFAULT_QUEUE,
                    queue_timeout: DEFAULT_QUEUE_TIMEOUT,
                    idle_timeout: DEFAULT_IDLE_TIMEOUT,
                    min_instances: DEFAULT_MIN_INSTANCES,
                },
            },
            pool: PoolConfig {
                instances: DEFAULT_POOL_INSTANCES,
                max_memory: DEFAULT_POOL_MAX_MEMORY,
                total_memory: default_total_memory(),
                memory_keep_resident: DEFAULT_MEMORY_KEEP_RESIDENT,
                table_keep_resident: DEFAULT_TABLE_KEEP_RESIDENT,
                stack_keep_resident: DEFAULT_STACK_KEEP_RESIDENT,
                cpus_per_component: default_cpus_per_component(),
            },
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            bus: BusConfig::default(),
            kv: KvBackend::Auto,
            admin: AdminConfig::default(),
            gateway: GatewayConfig::default(),
            access: DeployAccess::default(),
            tls: None,
            lattice: LatticeConfig::default(),
        }
    }
}

impl HostConfig {
    /// Reads a host configuration file over the defaults.
    pub fn load(path: &Path) -> Result<HostConfig, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        HostConfig::parse(&text, &path.display().to_string())
    }

    /// Parses host configuration text; `origin` labels errors (which name the field
    /// and line, as a manifest's do).
    pub fn parse(text: &str, origin: &str) -> Result<HostConfig, ManifestError> {
        let mut doc = Table::parse(Source { text, origin })?;
        let mut cfg = HostConfig::default();
        if let Some(a) = doc.parsed("http", parse_addr)? {
            cfg.http_addr = a;
        }
        // `admin = "ADDR"`, or an `[admin]` table with `addr` and the lock's settings.
        if doc.is_table("admin") {
            if let Some(t) = doc.table("admin")? {
                if let Some(a) = t.parsed("addr", parse_addr)? {
                    cfg.admin_addr = a;
                }
                cfg.admin.token_file = t.take("token_file")?;
                cfg.admin.public_metrics = t.take("public_metrics")?.unwrap_or(false);
                cfg.admin.tls = tls_files(t, "tls_cert", "tls_key", Some("client_ca"))?;
            }
        } else if let Some(a) = doc.parsed("admin", parse_addr)? {
            cfg.admin_addr = a;
        }
        if let Some(d) = doc.take::<PathBuf>("data_dir")? {
            cfg.data_dir = d;
        }
        if let Some(t) = doc.duration("drain_timeout")? {
            cfg.drain_timeout = t;
        }
        if let Some(n) = doc.count("max_connections", 0, i64::from(u32::MAX))? {
            cfg.max_connections = (n as usize).max(1);
        }
        if let Some(kv) = doc.take::<KvBackend>("kv")? {
            cfg.kv = kv;
        }
        if let Some(t) = doc.table("tls")? {
            cfg.tls = tls_files(t, "cert", "key", None)?;
        }
        if let Some(t) = doc.table("secrets")? {
            cfg.access.secret_dirs = t.take("dirs")?.unwrap_or_default();
        }
        if let Some(t) = doc.table("config")? {
            let prefixes: Vec<toml::Spanned<String>> = t.take("env_prefixes")?.unwrap_or_default();
            for p in &prefixes {
                if p.get_ref().is_empty() {
                    return Err(t.invalid(
                        p.span(),
                        "env_prefixes",
                        "an empty prefix would allow every variable, the host's own secrets too; list the prefixes deploys may read (e.g. \"APP_\")",
                    ));
                }
            }
            cfg.access.env_prefixes = prefixes
                .into_iter()
                .map(toml::Spanned::into_inner)
                .collect();
        }
        if let Some(g) = doc.table("gateway")? {
            gateway(g, &mut cfg.gateway)?;
        }
        if let Some(b) = doc.table("bus")? {
            cfg.bus = bus(b)?;
        }
        if let Some(t) = doc.table("lattice")? {
            lattice(t, &mut cfg.lattice)?;
        }
        if let Some(d) = doc.table("defaults")? {
            defaults(d, &mut cfg.defaults)?;
        }
        if let Some(p) = doc.table("pool")? {
            pool(p, &mut cfg.pool)?;
        }
        doc.finish()?;
        cfg.check()
            .map_err(|(field, message)| ManifestError::Invalid {
                location: Location {
                    origin: origin.to_string(),
                    line: None,
                    column: None,
                },
                field: field.to_string(),
                message,
            })?;
        Ok(cfg)
    }

    /// Cross-field checks.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.defaults.memory > self.pool.max_memory {
            return Err((
                "defaults.memory",
                format!(
                    "{} is more than pool.max_memory ({})",
                    bytesize::ByteSize(self.defaults.memory),
                    bytesize::ByteSize(self.pool.max_memory)
                ),
            ));
        }
        if self.defaults.scale.min_instances > self.defaults.scale.max_instances {
            return Err((
                "defaults.scale.min_instances",
                "is more than defaults.scale.max_instances".into(),
            ));
        }
        Ok(())
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{text:?}: {e} (write e.g. \"127.0.0.1:8080\")"))
}

/// `[bus]`
fn bus(t: &mut Table<'_>) -> Result<BusConfig, ManifestError> {
    let user: Option<toml::Spanned<String>> = t.take("user")?;
    let password: Option<String> = t.take("password")?;
    if let Some(u) = &user
        && password.is_none()
    {
        return Err(t.invalid(u.span(), "user", "bus.user and bus.password go together"));
    }
    if user.is_none() && password.is_some() {
        return Err(t.invalid(
            t.span(),
            "password",
            "bus.user and bus.password go together",
        ));
    }
    Ok(BusConfig {
        nats: t.take("nats")?,
        local: t.take("local")?.unwrap_or(false),
        user: user.map(toml::Spanned::into_inner),
        password,
        token: t.take("token")?,
        creds: t.take("creds")?,
        tls_ca: t.take("tls_ca")?,
    })
}

/// `[lattice]`
fn lattice(t: &mut Table<'_>, l: &mut LatticeConfig) -> Result<(), ManifestError> {
    if let Some(name) = t.take::<toml::Spanned<String>>("name")? {
        check_lattice_name(name.get_ref()).map_err(|why| t.invalid(name.span(), "name", why))?;
        l.name = name.into_inner();
    }
    if let Some(labels) = t.take("labels")? {
        l.labels = labels;
    }
    l.host_name = t.take("host_name")?.or(l.host_name.take());
    l.heartbeat_ttl = t.duration("heartbeat_ttl")?.unwrap_or(l.heartbeat_ttl);
    if let Some(n) = t.count("replicas", 1, 5)? {
        l.replicas = n as usize;
    }
    Ok(())
}

/// A certificate and key given together (and a client CA, where `ca_key` is allowed).
fn tls_files(
    t: &mut Table<'_>,
    cert_key: &'static str,
    key_key: &'static str,
    ca_key: Option<&'static str>,
) -> Result<Option<crate::tls::TlsFiles>, ManifestError> {
    let cert: Option<toml::Spanned<PathBuf>> = t.take(cert_key)?;
    let key: Option<toml::Spanned<PathBuf>> = t.take(key_key)?;
    let client_ca: Option<PathBuf> = match ca_key {
        Some(k) => t.take(k)?,
        None => None,
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsFiles {
            cert: cert.into_inner(),
            key: key.into_inner(),
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (Some(c), None) => Err(t.invalid(c.span(), key_key, format!("{cert_key} needs {key_key}"))),
        (None, Some(k)) => {
            Err(t.invalid(k.span(), cert_key, format!("{key_key} needs {cert_key}")))
        }
        (None, None) => Err(t.invalid(
            t.span(),
            ca_key.unwrap_or("client_ca"),
            format!("client certificates need TLS: set {cert_key} and {key_key}"),
        )),
    }
}

/// A list of addresses and blocks (`["10.0.0.0/8", "::1"]`), if present.
fn ip_ranges(
    t: &mut Table<'_>,
    key: &'static str,
) -> Result<Option<Vec<crate::listener::IpRange>>, ManifestError> {
    let Some(items) = t.take::<Vec<toml::Spanned<String>>>(key)? else {
        return Ok(None);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            crate::listener::IpRange::parse(item.get_ref())
                .map_err(|why| t.invalid(item.span(), &format!("{key}[{i}]"), why))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// `[gateway]`
fn gateway(t: &mut Table<'_>, g: &mut GatewayConfig) -> Result<(), ManifestError> {
    g.header_read_timeout = t
        .duration("header_read_timeout")?
        .unwrap_or(g.header_read_timeout);
    g.idle_timeout = t.duration("idle_timeout")?.unwrap_or(g.idle_timeout);
    g.body_read_timeout = t
        .duration("body_read_timeout")?
        .unwrap_or(g.body_read_timeout);
    if let Some(n) = t.count("max_connections_per_ip", 1, i64::from(u32::MAX))? {
        g.max_connections_per_ip = n as usize;
    }
    if let Some(ranges) = ip_ranges(t, "per_ip_exempt")? {
        g.per_ip_exempt = ranges;
    }
    if let Some(n) = t.count("jwt_cache", 0, 10_000_000)? {
        g.jwt_cache = n as usize;
    }
    if let Some(ranges) = ip_ranges(t, "trusted_proxies")? {
        g.trusted_proxies = ranges;
    }
    if let Some(r) = crate::limit::read_rate_limit(t)? {
        if r.key != crate::limit::RateKey::ClientIp && r.key != crate::limit::RateKey::default() {
            return Err(t.invalid(
                t.span(),
                "rate_limit.key",
                "the host-wide limit counts each client address; leave key out",
            ));
        }
        g.rate_limit = Some(crate::limit::RateLimitSpec {
            key: crate::limit::RateKey::ClientIp,
            ..r
        });
    }
    g.h2_max_concurrent_streams = t
        .count("h2_max_concurrent_streams", 1, i64::from(u32::MAX))?
        .unwrap_or(g.h2_max_concurrent_streams);
    g.h2_keep_alive_interval = t
        .duration("h2_keep_alive_interval")?
        .unwrap_or(g.h2_keep_alive_interval);
    Ok(())
}

/// `[defaults]` and `[defaults.scale]`
fn defaults(t: &mut Table<'_>, d: &mut ComponentDefaults) -> Result<(), ManifestError> {
    let max = i64::from(u32::MAX);
    d.memory = t.size("memory")?.unwrap_or(d.memory);
    d.timeout = t.duration("timeout")?.unwrap_or(d.timeout);
    if let Some(sc) = t.table("scale")? {
        let s = &mut d.scale;
        s.max_instances = sc
            .count("max_instances", 1, max)?
            .unwrap_or(s.max_instances);
        s.queue = sc.count("queue", 0, max)?.unwrap_or(s.queue);
        s.queue_timeout = sc.duration("queue_timeout")?.unwrap_or(s.queue_timeout);
        s.idle_timeout = sc.duration("idle_timeout")?.unwrap_or(s.idle_timeout);
        s.min_instances = sc
            .count("min_instances", 0, max)?
            .unwrap_or(s.min_instances);
    }
    Ok(())
}

/// `[pool]`
fn pool(t: &mut Table<'_>, p: &mut PoolConfig) -> Result<(), ManifestError> {
    p.instances = t
        .count("instances", 1, i64::from(u32::MAX))?
        .unwrap_or(p.instances);
    p.max_memory = t.size("max_memory")?.unwrap_or(p.max_memory);
    p.total_memory = t.size("total_memory")?.unwrap_or(p.total_memory);
    p.memory_keep_resident = t
        .size("memory_keep_resident")?
        .unwrap_or(p.memory_keep_resident);
    p.table_keep_resident = t
        .size("table_keep_resident")?
        .unwrap_or(p.table_keep_resident);
    p.stack_keep_resident = t
        .size("stack_keep_resident")?
        .unwrap_or(p.stack_keep_resident);
    p.cpus_per_component = t
        .count("cpus_per_component", 1, 4096)?
        .unwrap_or(p.cpus_per_component);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = HostConfig::parse("", "h.toml").unwrap();
        assert_eq!(cfg.defaults.memory, DEFAULT_MEMORY_LIMIT);
        assert_eq!(cfg.pool.instances, DEFAULT_POOL_INSTANCES);
    }

    #[test]
    fn overrides_and_errors() {
        let cfg = HostConfig::parse(
            "[defaults]\ntimeout = \"2s\"\n[pool]\ninstances = 10\n",
            "h.toml",
        )
        .unwrap();
        assert_eq!(cfg.defaults.timeout, Duration::from_secs(2));
        assert_eq!(cfg.pool.instances, 10);
        let e = HostConfig::parse("[pool]\ninstancez = 1\n", "h.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("h.toml:2:1: pool.instancez: unknown field"),
            "{e}"
        );
        let e = HostConfig::parse("[bus]\nuser = \"a\"\n", "h.toml").unwrap_err();
        assert!(e.to_string().contains("bus.user"), "{e}");
        let e = HostConfig::parse("drain_timeout = \"soon\"\n", "h.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("h.toml:1:17: drain_timeout:"),
            "{e}"
        );
        let e = HostConfig::parse("[defaults]\nmemory = \"8GiB\"\n", "h.toml").unwrap_err();
        assert!(e.to_string().contains("defaults.memory"), "{e}");
    }
}
