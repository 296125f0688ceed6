//! The composition root: builds a host from its configuration, starts its listeners,
//! deploys start-up manifests and runs until shutdown.
//!
//! This is the only place that picks concrete implementations (the runtime, the app
//! registry, the control plane) and wires them together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::Apps;
use crate::config::HostConfig;
use crate::control::{self, ControlPlane};
use crate::gateway::Gateway;
use crate::runtime::Runtime;

async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr}; choose another address with {flag}")
    })
}

/// Runs a host until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    mut config: HostConfig,
    manifests: Vec<PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let http = bind(config.http_addr, "HTTP", "--http").await?;
    let admin = bind(config.admin_addr, "the admin API", "--admin").await?;
    config.http_addr = http.local_addr()?;
    config.admin_addr = admin.local_addr()?;

    let (token, token_origin) = control::token::AdminToken::load(
        config.admin.token_file.as_deref(),
        config.admin.token.as_deref(),
        &config.data_dir,
    )?;
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::Tls::load)
        .transpose()
        .context("TLS for the public listener (--tls-cert, --tls-key)")?;
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(crate::tls::Tls::load)
        .transpose()
        .context("TLS for the admin listener (--admin-tls-cert, --admin-tls-key)")?;
    let runtime = Arc::new(Runtime::new(&config.pool, &config.data_dir)?);
    let apps = Arc::new(Apps::default());
    let bus = crate::bus::connect(&config, &shutdown).await?;
    let kv = open_kv(&config, &bus)?;
    let lattice: crate::lattice::Slot = Default::default();
    // With --nats the host belongs to a lattice: joined now if NATS answers, else as
    // soon as it does (serving what it had meanwhile).
    let joining = config.bus.nats.is_some() && bus.bus.as_nats().is_some();
    if joining && bus.bus.connected() {
        let l = join_lattice(&config, bus.bus.as_ref(), &apps, &shutdown).await?;
        let _ = lattice.set(l);
    }
    let control = Arc::new(ControlPlane::new(
        runtime,
        apps.clone(),
        config.clone(),
        bus.bus.clone(),
        kv.clone(),
        lattice.clone(),
        shutdown.clone(),
    )?);
    let gateway = Gateway::new(
        apps.clone(),
        config.http_addr,
        control.request_metrics().clone(),
        config.gateway.body_read_timeout,
        crate::gateway::GuardConfig {
            trusted_proxies: config.gateway.trusted_proxies.clone(),
            host_limit: config
                .gateway
                .rate_limit
                .as_ref()
                .map(|r| Arc::new(crate::limit::Limiter::new(r.requests, r.per, r.burst))),
        },
        lattice.clone(),
    );

    let api = Arc::new(control::api::AdminApi::new(
        control.clone(),
        token,
        config.admin.public_metrics,
    ));
    let tasks = serve(
        &config,
        Listeners {
            http,
            admin,
            tls,
            admin_tls,
        },
        api,
        gateway,
        &shutdown,
    );
    print_banner(&config, &bus.describe(), kv.kind(), &token_origin);
    if let Some(l) = lattice.get() {
        let me = l.hosts().me();
        println!(
            "  lattice: {} as host {} ({}), {} live host(s)",
            l.name(),
            me.name,
            me.id,
            l.hosts().live().len()
        );
    } else if joining {
        println!(
            "  lattice: {} (joining when NATS is reachable)",
            config.lattice.name
        );
    }

    control.restore().await;
    for path in &manifests {
        let result = async {
            let request = control::request_from_file(path, control.blobs()).await?;
            Ok::<_, anyhow::Error>(control.deploy_startup(request).await?)
        }
        .await;
        if let Err(e) = result {
            shutdown.cancel();
            tasks.wait().await;
            return Err(e.context(format!("cannot deploy {}", path.display())));
        }
    }
    if joining && lattice.get().is_none() {
        control.set_joining();
        tokio::spawn(join_when_reachable(
            control.clone(),
            config.clone(),
            bus.bus.clone(),
            apps.clone(),
            manifests.clone(),
            shutdown.clone(),
        ));
    }
    control.set_ready();

    print_routes(&control, &config);
    println!("ready");

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining in-flight requests and message handlers");
    tasks.wait().await;
    control.drain(config.drain_timeout).await;
    Ok(())
}

/// The bound sockets and their TLS.
struct Listeners {
    http: TcpListener,
    admin: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    admin_tls: Option<Arc<crate::tls::Tls>>,
}

/// Starts the admin and public listeners, their certificate watchers and the reaper;
/// they stop at `shutdown`.
fn serve(
    config: &HostConfig,
    listeners: Listeners,
    api: Arc<control::api::AdminApi>,
    gateway: Arc<Gateway>,
    shutdown: &CancellationToken,
) -> TaskTracker {
    let tasks = TaskTracker::new();
    let control = api.control().clone();
    for (name, tls) in [("http", &listeners.tls), ("admin", &listeners.admin_tls)] {
        if let Some(tls) = tls {
            tasks.spawn(tls.clone().watch(name, shutdown.clone()));
        }
    }
    tasks.spawn(crate::listener::serve(
        "admin",
        listeners.admin,
        move |req| control::api::handle(api.clone(), req),
        config.admin_limits(),
        listeners.admin_tls,
        shutdown.clone(),
        config.drain_timeout,
    ));
    tasks.spawn(crate::listener::serve(
        "http",
        listeners.http,
        move |req| gateway.clone().handle(req),
        config.http_limits(),
        listeners.tls,
        shutdown.clone(),
        config.drain_timeout,
    ));
    tasks.spawn(reaper(control, shutdown.clone()));
    tasks.close();
    tasks
}

/// Where the host serves, on stdout (the test harness and `just up` read it).
fn print_banner(config: &HostConfig, bus: &str, kv: &str, token: &control::token::TokenOrigin) {
    println!("wasmhive {} serving", env!("CARGO_PKG_VERSION"));
    println!("  http:  {}://{}", http_scheme(config), config.http_addr);
    println!("  admin: {}://{}", admin_scheme(config), config.admin_addr);
    println!("  auth:  admin API needs its bearer token ({token})");
    println!("  data:  {}", config.data_dir.display());
    println!("  bus:   {bus}");
    println!("  kv:    {kv} ({})", config.data_dir.join("kv").display());
}

fn http_scheme(config: &HostConfig) -> &'static str {
    if config.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

fn admin_scheme(config: &HostConfig) -> &'static str {
    if config.admin.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Each deployed app's routes, as URLs.
fn print_routes(control: &ControlPlane, config: &HostConfig) {
    for app in &control.status().apps {
        println!("app {} {}", app.name, app.version);
        for c in &app.components {
            for r in &c.routes {
                let (method, path) = r.split_once(' ').unwrap_or(("*", r.as_str()));
                println!(
                    "  {:<7} {}://{}{}  -> {}",
                    method,
                    http_scheme(config),
                    config.http_addr,
                    path,
                    c.name
                );
            }
        }
    }
}

/// How often idle components are checked for scaling to zero.
const REAP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Scales idle components to zero until shutdown.
async fn reaper(control: Arc<ControlPlane>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if control.reap() > 0 {
                    // Unloaded code and metadata are freed in many small pieces the C
                    // allocator keeps for reuse; hand the free pages back so an idle
                    // host's RSS really shrinks.
                    let _ = tokio::task::spawn_blocking(release_free_memory).await;
                }
            }
        }
    }
}

/// Returns free heap pages to the kernel (glibc keeps them otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits for NATS, then joins the lattice (retrying while that fails) until
/// shutdown.
async fn join_when_reachable(
    control: Arc<ControlPlane>,
    config: HostConfig,
    bus: Arc<dyn crate::bus::Bus>,
    apps: Arc<Apps>,
    manifests: Vec<PathBuf>,
    shutdown: CancellationToken,
) {
    loop {
        if bus.connected() {
            match join_lattice(&config, bus.as_ref(), &apps, &shutdown).await {
                Ok(lattice) => {
                    control.join_late(lattice, &manifests).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot join the lattice yet; retrying")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// Joins the lattice of a host given a NATS system (`--nats`); a host with a
/// managed nats-server or the in-process bus is alone.
async fn join_lattice(
    config: &HostConfig,
    bus: &dyn crate::bus::Bus,
    apps: &Arc<Apps>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<crate::lattice::Lattice>> {
    let nats = bus.as_nats().context("a lattice needs NATS (--nats URL)")?;
    let stats_apps = apps.clone();
    let stats: crate::lattice::hosts::Stats = Arc::new(move || {
        let snapshot = stats_apps.snapshot();
        let mut loaded = 0;
        let mut in_flight = 0;
        for c in snapshot.components() {
            let s = c.scaler.status();
            if s.state == crate::scaler::State::Ready {
                loaded += 1;
            }
            in_flight += u64::from(s.in_flight);
        }
        (loaded, in_flight)
    });
    let lattice = crate::lattice::Lattice::join(
        nats.client().clone(),
        &config.lattice,
        &config.data_dir,
        format!("{}://{}", http_scheme(config), config.http_addr),
        stats,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot join lattice {:?}", config.lattice.name))?;
    Ok(lattice)
}

/// The key-value backend `config.kv` asks for.
fn open_kv(
    config: &HostConfig,
    bus: &crate::bus::Connected,
) -> anyhow::Result<Arc<dyn crate::state::KvStore>> {
    use crate::config::KvBackend;
    let nats = bus.bus.as_nats();
    let jetstream = match config.kv {
        KvBackend::Redb => false,
        KvBackend::Jetstream => {
            anyhow::ensure!(
                nats.is_some(),
                "--kv jetstream needs NATS: pass --nats URL (or install nats-server for a managed one)"
            );
            true
        }
        // Joining a NATS system means sharing state with its other hosts.
        KvBackend::Auto => config.bus.nats.is_some(),
    };
    match (jetstream, nats) {
        (true, Some(n)) => {
            // In a lattice (explicit --nats) the buckets are the lattice's.
            let (lattice, replicas) = match &config.bus.nats {
                Some(_) if config.lattice.name != crate::config::DEFAULT_LATTICE => {
                    (Some(config.lattice.name.as_str()), config.lattice.replicas)
                }
                Some(_) => (None, config.lattice.replicas),
                None => (None, 1),
            };
            Ok(Arc::new(
                crate::state::jetstream::JetStreamStore::for_lattice(
                    n.client().clone(),
                    lattice,
                    replicas,
                ),
            ))
        }
        _ => Ok(Arc::new(crate::state::redb::RedbStore::open(
            &config.data_dir.join("kv"),
        )?)),
    }
}
