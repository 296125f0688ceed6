//! The `wasmhive` command line: `up`, `deploy`, `undeploy`, `stop`, `start`, `status`, `hosts`, `kv`, `validate`, `publish`, `subscribe`.

mod jobs;
mod kv;
mod rollout;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{DEFAULT_ADMIN_ADDR, DEFAULT_DATA_DIR, HostConfig};
use crate::control::client::AdminClient;
use crate::control::token::TOKEN_ENV;
use crate::telemetry::{self, LogFormat};

/// A host for serverless microservices written as WebAssembly components.
#[derive(Parser)]
#[command(name = "wasmhive", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "WASMHIVE_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `wasmhive up`'s flags (each also an environment variable; flags win over the
/// environment, which wins over the config file).
#[derive(clap::Args)]
struct UpArgs {
    /// App manifests to deploy at start-up.
    manifests: Vec<PathBuf>,
    /// Public HTTP address.
    #[arg(long, env = "WASMHIVE_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// Admin API address.
    #[arg(long, env = "WASMHIVE_ADMIN")]
    admin: Option<std::net::SocketAddr>,
    /// Data directory (compile cache, components, deployments).
    #[arg(long, env = "WASMHIVE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Read the admin API's bearer token from this file (default:
    /// `WASMHIVE_ADMIN_TOKEN`, else `<data dir>/admin.token`, created on first start).
    #[arg(long, env = "WASMHIVE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve the public listener over TLS with this PEM certificate chain (with
    /// --tls-key). HTTP/2 and HTTP/1.1 are negotiated by ALPN.
    #[arg(long, env = "WASMHIVE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "WASMHIVE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve the admin API over TLS with this PEM certificate chain (with
    /// --admin-tls-key).
    #[arg(long, env = "WASMHIVE_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The PEM private key of --admin-tls-cert.
    #[arg(long, env = "WASMHIVE_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Admin clients must present a certificate from this PEM CA (mTLS; needs
    /// --admin-tls-cert).
    #[arg(long, env = "WASMHIVE_ADMIN_CLIENT_CA", requires = "admin_tls_cert")]
    admin_client_ca: Option<PathBuf>,
    /// Host configuration file (TOML); flags override it.
    #[arg(long, env = "WASMHIVE_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL (default: start a managed nats-server if one is on PATH,
    /// else use the in-process bus).
    #[arg(long, env = "WASMHIVE_NATS")]
    nats: Option<String>,
    /// Key-value backend: auto (JetStream with --nats, else redb), redb or jetstream.
    #[arg(long, env = "WASMHIVE_KV", value_enum)]
    kv: Option<crate::config::KvBackend>,
    /// Use the in-process bus (no NATS) even if nats-server is available.
    #[arg(long, conflicts_with = "nats")]
    local_bus: bool,
    /// NATS user (with --nats-password).
    #[arg(long, env = "WASMHIVE_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "WASMHIVE_NATS_PASSWORD", requires = "nats_user")]
    nats_password: Option<String>,
    /// NATS token.
    #[arg(long, env = "WASMHIVE_NATS_TOKEN")]
    nats_token: Option<String>,
    /// NATS credentials file (.creds).
    #[arg(long, env = "WASMHIVE_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// Extra root CA (PEM) to verify the NATS server's TLS certificate.
    #[arg(long, env = "WASMHIVE_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// With --nats: the lattice to join (default `default`). Hosts of one lattice
    /// share deployments and serve each other's routes.
    #[arg(long, env = "WASMHIVE_LATTICE")]
    lattice: Option<String>,
    /// With --nats: a label of this host (KEY=VALUE, repeatable), matched by
    /// components' `[placement] labels`.
    #[arg(long = "label", value_parser = crate::config::parse_label)]
    labels: Vec<(String, String)>,
    /// With --nats: this host's name in `wasmhive hosts` (default: the machine's).
    #[arg(long, env = "WASMHIVE_HOST_NAME")]
    host_name: Option<String>,
    /// With --nats: JetStream replicas of the lattice's buckets (3 on a NATS cluster).
    #[arg(long, env = "WASMHIVE_LATTICE_REPLICAS")]
    lattice_replicas: Option<usize>,
}

impl UpArgs {
    /// The host configuration: the config file (or defaults) with the flags applied.
    fn host_config(self) -> anyhow::Result<(HostConfig, Vec<PathBuf>)> {
        let mut cfg = match &self.config {
            Some(path) => HostConfig::load(path)?,
            None => HostConfig::default(),
        };
        if let Some(a) = self.http {
            cfg.http_addr = a;
        }
        if let Some(a) = self.admin {
            cfg.admin_addr = a;
        }
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        cfg.admin.token_file = self.admin_token_file.or(cfg.admin.token_file);
        if let (Some(cert), Some(key)) = (self.tls_cert, self.tls_key) {
            cfg.tls = Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: None,
            });
        }
        if let (Some(cert), Some(key)) = (self.admin_tls_cert, self.admin_tls_key) {
            cfg.admin.tls = Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: self.admin_client_ca,
            });
        }
        cfg.admin.token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        if self.nats.is_some() {
            cfg.bus.nats = self.nats;
            cfg.bus.local = false;
        }
        if let Some(kv) = self.kv {
            cfg.kv = kv;
        }
        if self.local_bus {
            cfg.bus.local = true;
            cfg.bus.nats = None;
        }
        if self.nats_user.is_some() {
            cfg.bus.user = self.nats_user;
            cfg.bus.password = self.nats_password;
        }
        cfg.bus.token = self.nats_token.or(cfg.bus.token);
        cfg.bus.creds = self.nats_creds.or(cfg.bus.creds);
        cfg.bus.tls_ca = self.nats_tls_ca.or(cfg.bus.tls_ca);
        if let Some(name) = self.lattice {
            crate::config::check_lattice_name(&name).map_err(anyhow::Error::msg)?;
            cfg.lattice.name = name;
        }
        cfg.lattice.labels.extend(self.labels);
        cfg.lattice.host_name = self.host_name.or(cfg.lattice.host_name);
        if let Some(n) = self.lattice_replicas {
            anyhow::ensure!((1..=5).contains(&n), "--lattice-replicas must be 1 to 5");
            cfg.lattice.replicas = n;
        }
        Ok((cfg, self.manifests))
    }
}

/// `wasmhive jobs ...`
#[derive(Subcommand)]
enum JobsOp {
    /// A finished run's output (the last 32 KiB of stdout and of stderr) and how it
    /// ended.
    Logs {
        /// The run's id (from `wasmhive jobs` or `wasmhive run --detach`).
        run: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How a client command reaches a host's admin API.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The host's admin address.
    #[arg(long, env = "WASMHIVE_ADMIN", default_value = DEFAULT_ADMIN_ADDR)]
    admin: String,
    /// The admin API's bearer token (default: the one in `<data dir>/admin.token`).
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// The host's data directory, whose `admin.token` to use when no token is given.
    #[arg(long, env = "WASMHIVE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// For an https:// admin address: trust this PEM CA besides the system's roots.
    #[arg(long, env = "WASMHIVE_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// For an admin listener that wants client certificates: this PEM file's
    /// certificate and key.
    #[arg(long, env = "WASMHIVE_ADMIN_IDENTITY")]
    admin_identity: Option<PathBuf>,
}

impl AdminArgs {
    pub(crate) fn client(&self) -> anyhow::Result<AdminClient> {
        AdminClient::new(
            &self.admin,
            crate::control::token::client_token(self.token.clone(), &self.data_dir),
            &crate::control::client::ClientTls {
                ca: self.admin_ca.clone(),
                identity: self.admin_identity.clone(),
            },
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start a host and deploy the given manifests.
    Up(Box<UpArgs>),
    /// Deploy (or upgrade) an app on a running host.
    Deploy {
        /// The app manifest.
        manifest: PathBuf,
        /// Deploy straight to a lattice on this NATS system, with no host involved
        /// (checked offline first, as `validate` does); every host of the lattice
        /// converges to it.
        #[arg(long)]
        nats: Option<String>,
        /// With --nats: the lattice.
        #[arg(long, env = "WASMHIVE_LATTICE", default_value = crate::config::DEFAULT_LATTICE)]
        lattice: String,
        /// With --nats: a `.creds` file for NATS.
        #[arg(long, env = "WASMHIVE_NATS_CREDS")]
        nats_creds: Option<PathBuf>,
        /// How the new version takes over: immediate, canary or blue-green (default:
        /// the manifest's `[rollout] strategy`, else immediate).
        #[arg(long)]
        strategy: Option<String>,
        /// Deploy even while a rollout of the app is running (it is aborted).
        #[arg(long)]
        force: bool,
        /// Follow the rollout this deploy starts, printing each step; exit 0 once
        /// promoted, 1 if aborted.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove an app from a running host.
    Undeploy {
        /// The app's name.
        app: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a component: its requests get 503 (callers get their fallback), its
    /// messages wait, and it is unloaded. Until `start` or a restart of the host.
    Stop {
        /// The app's name.
        app: String,
        /// The component's name.
        component: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start a stopped component again.
    Start {
        /// The app's name.
        app: String,
        /// The component's name.
        component: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show what a running host serves.
    Status {
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the hosts of the lattice a running host belongs to (from their
    /// heartbeats).
    Hosts {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Read and seed a component's own key-value buckets (those its manifest lists).
    Kv {
        #[command(subcommand)]
        op: kv::KvOp,
    },
    /// Publish a message on the host's bus (NATS or in-process).
    Publish {
        /// Subject, e.g. `orders.created`.
        subject: String,
        /// Payload (text).
        #[arg(default_value = "")]
        data: String,
        /// Send as a request and print the reply.
        #[arg(long)]
        request: bool,
        /// How long a request waits for its reply.
        #[arg(long, default_value = "5s", value_parser = crate::manifest::parse_duration)]
        timeout: std::time::Duration,
        /// A header, `K=V` (repeatable).
        #[arg(long = "header", value_name = "K=V")]
        headers: Vec<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the messages published on a subject (wildcards allowed) as they arrive,
    /// without taking them from the services that subscribe to it.
    Subscribe {
        /// Subject, e.g. `orders.*` or `>`.
        subject: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long (e.g. `30s`).
        #[arg(long = "for", value_parser = crate::manifest::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Print each message as a JSON line (subject, data, headers).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A rollout's state: `wasmhive rollout status APP`.
    Rollout {
        #[command(subcommand)]
        op: rollout::RolloutOp,
    },
    /// Send all of a rollout's traffic to the new version now (blue-green: switch).
    Promote {
        /// The app.
        app: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a rollout: all traffic back to the version serving before it.
    Abort {
        /// The app.
        app: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// An app's last versions (up to 10), newest first: version, when, how it came,
    /// its manifest's digest.
    History {
        /// The app.
        app: String,
        /// Print the history as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deploy an earlier version of an app again, from the host's history: no upload,
    /// no compile. Default: the version before the running one.
    Rollback {
        /// The app.
        app: String,
        /// The version to go back to.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run a job now on a host: its output is printed as it is written, and this
    /// command ends with the run's exit code (70: it trapped; 124: it ran past its
    /// deadline; 69: it could not start or was stopped).
    Run {
        /// App.
        app: String,
        /// Component (it must export wasi:cli/run).
        component: String,
        /// The run's stdin: a file, or `-` for this command's stdin.
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// A variable added to the component's environment, `K=V` (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Print the run's id and return at once.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        admin: AdminArgs,
        /// Arguments after the program name (default: the job's `args`), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List jobs with their schedule, next run and latest runs; `jobs logs RUN_ID`
    /// prints a run's output.
    #[command(args_conflicts_with_subcommands = true)]
    Jobs {
        #[command(subcommand)]
        op: Option<JobsOp>,
        /// Only this app's jobs.
        app: Option<String>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check a manifest and its components without a running host.
    Validate {
        /// The app manifest.
        manifest: PathBuf,
        /// Data directory whose compile cache to use.
        #[arg(long, env = "WASMHIVE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<jobs::ExitWith>().is_some() => {
            ExitCode::from(e.downcast_ref::<jobs::ExitWith>().map_or(1, |x| x.0))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => {
            let (cfg, manifests) = args.host_config()?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal_shutdown(shutdown.clone()));
            crate::host::run(cfg, manifests, shutdown).await
        }
        Command::Deploy {
            manifest,
            nats: Some(url),
            lattice,
            nats_creds,
            admin,
            ..
        } => deploy_to_lattice(&manifest, &url, &lattice, nats_creds, &admin.data_dir).await,
        Command::Deploy {
            manifest,
            strategy,
            force,
            wait,
            admin,
            ..
        } => {
            let client = admin.client()?;
            let report = client
                .deploy_with(&manifest, strategy.as_deref(), force)
                .await?;
            print_report(&report);
            match report.rollout {
                Some(_) if wait => rollout::follow(&client, &report.app).await,
                Some(s) => {
                    println!(
                        "{s} rollout of {} started: `wasmhive rollout status {}`",
                        report.app, report.app
                    );
                    Ok(())
                }
                None => Ok(()),
            }
        }
        Command::Rollout { op } => rollout::run(op).await,
        Command::Promote { app, admin } => {
            let v = admin.client()?.rollout_action(&app, "promote").await?;
            println!(
                "promoted {app} {}",
                v["version"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        Command::Abort { app, admin } => {
            admin.client()?.rollout_action(&app, "abort").await?;
            println!("aborted the rollout of {app}: the previous version serves everything");
            Ok(())
        }
        Command::Undeploy { app, admin } => {
            admin.client()?.undeploy(&app).await?;
            println!("undeployed {app}");
            Ok(())
        }
        Command::Stop {
            app,
            component,
            admin,
        } => set_stopped(&admin.client()?, &app, &component, true).await,
        Command::Start {
            app,
            component,
            admin,
        } => set_stopped(&admin.client()?, &app, &component, false).await,
        Command::Status { json, admin } => {
            let status = admin.client()?.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(())
        }
        Command::Hosts { json, admin } => {
            let hosts = admin.client()?.hosts().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hosts)?);
            } else {
                print!("{}", hosts.render());
            }
            Ok(())
        }
        Command::Kv { op } => kv::run(op).await,
        Command::Publish {
            subject,
            data,
            request,
            timeout,
            headers,
            admin,
        } => {
            let request = crate::control::PublishRequest {
                subject,
                data,
                headers: header_pairs(headers)?,
                request_timeout_ms: request.then_some(timeout.as_millis() as u64),
            };
            publish(&admin.client()?, request).await
        }
        Command::Subscribe {
            subject,
            count,
            duration,
            json,
            admin,
        } => {
            admin
                .client()?
                .subscribe(&subject, count, duration, json)
                .await?;
            Ok(())
        }
        Command::History { app, json, admin } => {
            let history = admin.client()?.history(&app).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&history)?);
            } else {
                print!("{}", history.render());
            }
            Ok(())
        }
        Command::Rollback { app, to, admin } => {
            let report = admin.client()?.rollback(&app, to.as_deref()).await?;
            print_report(&report);
            Ok(())
        }
        Command::Run {
            app,
            component,
            stdin,
            env,
            detach,
            admin,
            args,
        } => {
            let run = jobs::RunArgs {
                app,
                component,
                args: (!args.is_empty()).then_some(args),
                stdin,
                env: pairs("--env", env)?,
                detach,
            };
            jobs::run(&admin.client()?, run).await
        }
        Command::Jobs {
            op: Some(JobsOp::Logs { run, admin }),
            ..
        } => jobs::logs(&admin.client()?, &run).await,
        Command::Jobs {
            op: None,
            app,
            json,
            admin,
        } => {
            let list = admin.client()?.jobs(app.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", list.render());
            }
            Ok(())
        }
        Command::Validate { manifest, data_dir } => {
            let data_dir = data_dir.unwrap_or_else(|| HostConfig::default().data_dir);
            let report = crate::validate::validate(&manifest, &data_dir).await?;
            print!("{report}");
            Ok(())
        }
    }
}

/// Prints a deploy's report: the version now serving and how each component loaded.
fn print_report(report: &crate::control::DeployReport) {
    match &report.replaced {
        Some(old) => println!(
            "deployed {} {} (replaced {old})",
            report.app, report.version
        ),
        None => println!("deployed {} {}", report.app, report.version),
    }
    for c in &report.components {
        println!(
            "  {} {} [{}] loaded from {} in {:.1} ms: {}",
            c.name,
            &c.digest[..c.digest.len().min(19)],
            c.flavor,
            c.loaded_from,
            c.load_ms,
            c.routes.join(", ")
        );
    }
}

/// `wasmhive deploy --nats URL`: checks the app offline, then writes its component
/// bytes and record to the lattice.
async fn deploy_to_lattice(
    manifest: &std::path::Path,
    url: &str,
    lattice: &str,
    creds: Option<PathBuf>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    crate::config::check_lattice_name(lattice).map_err(anyhow::Error::msg)?;
    crate::validate::validate(manifest, data_dir).await?;
    let mut options = async_nats::ConnectOptions::new().name("wasmhive deploy");
    if let Some(c) = creds {
        options = options
            .credentials_file(&c)
            .await
            .with_context(|| format!("cannot read NATS credentials {}", c.display()))?;
    }
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let client = options
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))?;
    let store = crate::lattice::Store::open(client.clone(), lattice, 1).await?;
    let request = crate::control::request_from_file(manifest, &store).await?;
    let revision = store.put_record(&request).await?;
    let app = crate::manifest::Manifest::parse(&request.manifest, &request.origin)?.app;
    client.flush().await.ok();
    println!(
        "deployed {} {} to lattice {lattice} (record revision {revision}); its hosts converge to it (wasmhive status shows each host's view)",
        app.name, app.version
    );
    Ok(())
}

/// `wasmhive stop` and `wasmhive start`.
async fn set_stopped(
    admin: &AdminClient,
    app: &str,
    component: &str,
    stop: bool,
) -> anyhow::Result<()> {
    let changed = admin.set_stopped(app, component, stop).await?;
    let what = match (stop, changed) {
        (true, true) => "stopped",
        (true, false) => "already stopped",
        (false, true) => "started",
        (false, false) => "already running",
    };
    println!("{what} {app}/{component}");
    Ok(())
}

/// `--header K=V` flags as pairs.
fn header_pairs(headers: Vec<String>) -> anyhow::Result<Vec<(String, String)>> {
    pairs("--header", headers)
}

/// `--FLAG K=V` values as pairs.
fn pairs(flag: &str, items: Vec<String>) -> anyhow::Result<Vec<(String, String)>> {
    items
        .into_iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{flag} {h:?}: expected K=V"))
        })
        .collect()
}

/// `wasmhive publish`: publishes, or sends a request and prints the reply.
async fn publish(
    admin: &AdminClient,
    request: crate::control::PublishRequest,
) -> anyhow::Result<()> {
    let subject = request.subject.clone();
    match admin.publish(&request).await? {
        Some(r) => println!("{}", r.data),
        None => println!("published to {subject}"),
    }
    Ok(())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn signal_shutdown(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    token.cancel();
}
