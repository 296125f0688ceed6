//! The lattice: hosts on one NATS system sharing deployments and load, with NATS
//! JetStream as the distributed engine and the hosts stateless around it
//! (docs/adr/0015).
//!
//! Everything a lattice keeps is named after it, so two lattices share one NATS
//! system without seeing each other:
//!
//! | what | name | holds |
//! | --- | --- | --- |
//! | key-value bucket | `wasmhive_<lattice>_apps` | one record per app: the deploy (manifest, source digests) |
//! | object store | `wasmhive_<lattice>_blobs` | component bytes, named by digest, uploaded once |
//! | key-value bucket | `wasmhive_<lattice>_hosts` | one heartbeat per live host ([`hosts`]) |
//! | subjects | `wasmhive.<lattice>.rpc.<app>.<component>` | forwarded invocations ([`forward`]) |
//!
//! Each host watches the apps bucket and converges (`control::converge`); computes
//! from the live host set which components it runs ([`placement`]); and forwards a
//! request or call for a component placed elsewhere over NATS request/reply.

pub mod forward;
pub mod hosts;
pub mod placement;
pub mod wire;

use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt as _;
use sha2::Digest as _;
use tokio::io::AsyncReadExt;

use crate::config::LatticeConfig;
pub use hosts::{HostInfo, HostSet};

/// Where a host keeps its lattice once it has joined: empty while it is alone, or
/// while the NATS it was given has not been reached yet (it joins when it is).
pub type Slot = Arc<std::sync::OnceLock<Arc<Lattice>>>;

/// Largest component the lattice's object store accepts (the admin API's upload
/// limit).
pub const MAX_BLOB: u64 = 512 << 20;

/// A lattice's desired state: the apps bucket and the object store of component
/// bytes. What `wasmhive deploy --nats` writes to with no host involved.
#[derive(Clone)]
pub struct Store {
    name: String,
    js: jetstream::Context,
    apps: kv::Store,
    blobs: object_store::ObjectStore,
}

impl Store {
    /// Opens (creating if missing) the apps bucket and object store of lattice
    /// `name`, with `replicas` JetStream replicas when created.
    pub async fn open(
        client: async_nats::Client,
        name: &str,
        replicas: usize,
    ) -> anyhow::Result<Store> {
        let js = jetstream::new(client);
        let apps = kv_bucket(
            &js,
            kv::Config {
                bucket: bucket(name, "apps"),
                description: format!("wasmhive lattice {name}: app records"),
                history: 5,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let blobs = match js.get_object_store(bucket(name, "blobs")).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket(name, "blobs"),
                    description: Some(format!("wasmhive lattice {name}: component bytes")),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot create the object store of lattice {name}"))?,
        };
        Ok(Store {
            name: name.to_string(),
            js,
            apps,
            blobs,
        })
    }

    /// The revision of the apps bucket's latest change (put or delete of any app).
    pub async fn last_revision(&self) -> anyhow::Result<u64> {
        let stream = self
            .js
            .get_stream(format!("KV_{}", bucket(&self.name, "apps")))
            .await
            .context("cannot read the apps bucket's stream")?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// The names of the apps the lattice has now; `None` if they could not all be read.
    pub async fn app_names(&self) -> Option<Vec<String>> {
        let mut keys = self.apps.keys().await.ok()?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.ok()?);
        }
        Some(names)
    }

    /// The apps bucket (records are [`crate::apps::DeploySource`] JSON).
    pub fn apps(&self) -> &kv::Store {
        &self.apps
    }

    /// Writes an app's record; returns its revision.
    pub async fn put_record(&self, record: &crate::apps::DeploySource) -> anyhow::Result<u64> {
        let manifest = crate::manifest::Manifest::parse(&record.manifest, &record.origin)?;
        let bytes = serde_json::to_vec(record)?;
        self.apps
            .put(&manifest.app.name, bytes.into())
            .await
            .with_context(|| {
                format!(
                    "cannot write the record of app {} to lattice {}",
                    manifest.app.name, self.name
                )
            })
    }

    /// Whether the object store has the blob `digest`.
    pub async fn has_blob(&self, digest: &str) -> bool {
        self.blobs.info(digest).await.is_ok_and(|i| !i.deleted)
    }

    /// Stores `bytes` as blob `digest` (content-addressed: a blob already there is
    /// not uploaded again).
    pub async fn put_blob(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if self.has_blob(digest).await {
            return Ok(());
        }
        let mut reader = bytes;
        self.blobs
            .put(digest, &mut reader)
            .await
            .with_context(|| format!("cannot store {digest} in the lattice's object store"))?;
        Ok(())
    }

    /// Reads blob `digest`, checking that its bytes have that digest.
    pub async fn get_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let mut object = self
            .blobs
            .get(digest)
            .await
            .with_context(|| format!("blob {digest} is not in the lattice's object store"))?;
        let mut bytes = Vec::new();
        (&mut object)
            .take(MAX_BLOB + 1)
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read blob {digest} from the lattice"))?;
        anyhow::ensure!(
            bytes.len() as u64 <= MAX_BLOB,
            "blob {digest} is larger than {MAX_BLOB} bytes"
        );
        let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        anyhow::ensure!(
            actual == digest,
            "blob {digest} in the lattice has other content ({actual})"
        );
        Ok(bytes)
    }
}

/// This host's membership in a lattice.
pub struct Lattice {
    name: String,
    client: async_nats::Client,
    store: Store,
    hosts: hosts::Membership,
}

impl Lattice {
    /// Joins the lattice `config.name` over `client`: creates (or opens) its buckets
    /// and object store and starts this host's heartbeat. `stats` reports what this
    /// host runs, for its heartbeat.
    pub async fn join(
        client: async_nats::Client,
        config: &LatticeConfig,
        data_dir: &std::path::Path,
        http: String,
        stats: hosts::Stats,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Arc<Lattice>> {
        let name = config.name.clone();
        let store = Store::open(client.clone(), &name, config.replicas).await?;
        let hosts_kv = kv_bucket(
            &jetstream::new(client.clone()),
            kv::Config {
                bucket: bucket(&name, "hosts"),
                description: format!("wasmhive lattice {name}: host heartbeats"),
                history: 1,
                max_age: config.heartbeat_ttl * 3,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let me = hosts::Me::new(config, data_dir, http)?;
        let hosts =
            hosts::Membership::start(hosts_kv, me, config.heartbeat_ttl, stats, shutdown).await?;
        Ok(Arc::new(Lattice {
            name,
            client,
            store,
            hosts,
        }))
    }

    /// The lattice's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NATS connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Its desired state.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The apps bucket (records are [`crate::apps::DeploySource`] JSON).
    pub fn apps(&self) -> &kv::Store {
        self.store.apps()
    }

    /// Live hosts and this host's identity.
    pub fn hosts(&self) -> &hosts::Membership {
        &self.hosts
    }

    /// The subject forwarded invocations of `app/component` are sent to.
    pub fn rpc_subject(&self, app: &str, component: &str) -> String {
        format!("wasmhive.{}.rpc.{app}.{component}", self.name)
    }

    /// The subject the hosts that may run `app/component` but are not placed to
    /// listen on: tried when no placed host answers (they died and the others have
    /// not noticed yet).
    pub fn standby_subject(&self, app: &str, component: &str) -> String {
        format!("wasmhive.{}.standby.{app}.{component}", self.name)
    }

    /// The queue group of the forwarding subjects (one host answers each).
    pub fn rpc_queue(&self) -> String {
        format!("wasmhive.{}.rpc", self.name)
    }
}

/// A lattice resource's name.
pub fn bucket(lattice: &str, what: &str) -> String {
    format!("wasmhive_{lattice}_{what}")
}

async fn kv_bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.create_key_value(config)
        .await
        .with_context(|| format!("cannot create the JetStream bucket {name}"))
}

/// Where an invocation of a component goes, decided by its placement.
pub enum Routed {
    /// Serve it on this host (placed here, or no host running it answered and this
    /// host may run it).
    Local(http::Request<crate::body::Body>),
    /// Another host served it.
    Remote(wire::Outcome, http::Response<crate::body::Body>),
    /// Nobody can serve it now (why, for the log).
    Unavailable(String),
}

/// How long a forwarding host waits for the head of `c`'s answer: its deadline and
/// its queue's, and a second for the trip.
pub fn deadline_for(c: &crate::apps::DeployedComponent) -> std::time::Duration {
    c.timeout + c.scaler.policy().queue_timeout + std::time::Duration::from_secs(1)
}

impl Lattice {
    /// Routes an invocation of `c`: here if it is placed here, else forwarded to a
    /// host that runs it. When none of those answers (they died and the host set has
    /// not noticed yet), the request was never delivered, so it is safe to send again
    /// whatever its method: it is served here if this host may run it, else by any
    /// host that may (the standby subject).
    pub async fn route(
        &self,
        c: &crate::apps::DeployedComponent,
        kind: wire::Kind,
        request: http::Request<crate::body::Body>,
    ) -> Routed {
        if c.placement.here() {
            return Routed::Local(request);
        }
        if c.placement.hosts().is_empty() {
            return Routed::Unavailable(format!(
                "no live host of lattice {} may run {} (its placement matches none)",
                self.name, c.id
            ));
        }
        let subject = self.rpc_subject(&c.id.app, &c.id.component);
        let first = forward::forward(&self.client, subject, kind, request, deadline_for(c)).await;
        let result = match first {
            Err(forward::ForwardError::NoResponders(Some(request))) if c.placement.eligible() => {
                tracing::debug!(component = %c.id, "no host running it answered: serving it here");
                return Routed::Local(*request);
            }
            Err(forward::ForwardError::NoResponders(Some(request))) => {
                tracing::debug!(component = %c.id, "no host running it answered: trying the standby hosts");
                let standby = self.standby_subject(&c.id.app, &c.id.component);
                forward::forward(&self.client, standby, kind, *request, deadline_for(c)).await
            }
            other => other,
        };
        match result {
            Ok((outcome, response)) => Routed::Remote(outcome, response),
            Err(forward::ForwardError::Timeout) => Routed::Remote(
                wire::Outcome::Timeout,
                crate::body::text(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    format!("{} did not answer in time", c.id.component),
                ),
            ),
            Err(e) => Routed::Unavailable(format!("{}: {e}", c.id)),
        }
    }
}
