//! Who is in the lattice: every host writes a heartbeat (its [`HostInfo`]) to the
//! lattice's hosts bucket every quarter of the heartbeat TTL and watches the bucket.
//! A host is live while its last heartbeat, as seen by this host's clock, is younger
//! than the TTL; so clocks of different machines never need to agree. A host that
//! shuts down deletes its entry and leaves at once; one that dies is gone after the
//! TTL.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::LatticeConfig;

/// A host as its heartbeat describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// Stable id (kept in the data dir).
    pub id: String,
    /// Name shown to people.
    pub name: String,
    /// Labels (`--label`).
    pub labels: BTreeMap<String, String>,
    /// wasmhive version.
    pub version: String,
    /// Public HTTP address.
    #[serde(default)]
    pub http: String,
    /// How long it has been running.
    pub uptime_ms: u64,
    /// Components it has loaded now.
    pub components: u32,
    /// Invocations in flight on it now.
    pub in_flight: u64,
    /// It has converged to the lattice's records (placement only picks ready hosts,
    /// so a component does not move to a host still compiling it).
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}

/// A live host with the age of its last heartbeat.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LiveHost {
    /// What it said.
    #[serde(flatten)]
    pub info: HostInfo,
    /// How long ago this host heard from it.
    pub last_heartbeat_ms_ago: u64,
}

/// The live hosts, by id.
pub type HostSet = BTreeMap<String, HostInfo>;

/// What this host runs, for its heartbeat: (components loaded, invocations in flight).
pub type Stats = Arc<dyn Fn() -> (u32, u64) + Send + Sync>;

/// This host's identity in the lattice.
#[derive(Debug, Clone)]
pub struct Me {
    /// Stable id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    http: String,
    started: Instant,
}

impl Me {
    /// The id kept in `<data_dir>/host.id` (made on first start), the configured
    /// name or the machine's, and the labels.
    pub fn new(
        config: &LatticeConfig,
        data_dir: &std::path::Path,
        http: String,
    ) -> anyhow::Result<Me> {
        let path = data_dir.join("host.id");
        let id = match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                let id = format!("{:016x}", crate::telemetry::trace::random_u128() as u64);
                std::fs::write(&path, &id).map_err(|e| {
                    anyhow::anyhow!("cannot write the host id to {}: {e}", path.display())
                })?;
                id
            }
        };
        let name = config.host_name.clone().unwrap_or_else(machine_name);
        Ok(Me {
            id,
            name,
            labels: config.labels.clone(),
            http,
            started: Instant::now(),
        })
    }
}

/// The machine's host name (`wasmhive` if it has none).
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "wasmhive".into())
}

struct Seen {
    info: HostInfo,
    at: Instant,
}

/// Membership: this host's heartbeat and its view of the others.
pub struct Membership {
    me: Me,
    ttl: Duration,
    store: kv::Store,
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    live: Arc<ArcSwap<HostSet>>,
    changed: tokio::sync::watch::Sender<u64>,
    /// The NATS server's timestamp of this host's latest heartbeat.
    server_now: Arc<Mutex<Option<async_nats::datetime::DateTime>>>,
    /// When this host last saw its own heartbeat come back through the watch.
    echoed: Arc<Mutex<Instant>>,
    /// Whether this host has converged (sent in its heartbeat).
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the heartbeat loop to send a beat now.
    beat_now: Arc<tokio::sync::Notify>,
}

impl Membership {
    /// Writes the first heartbeat, reads the hosts already there, and starts the
    /// heartbeat and the watcher (both end at `shutdown`, when this host's entry is
    /// deleted).
    pub async fn start(
        store: kv::Store,
        me: Me,
        ttl: Duration,
        stats: Stats,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Membership> {
        let (changed, _) = tokio::sync::watch::channel(0);
        let m = Membership {
            me,
            ttl,
            store,
            seen: Default::default(),
            live: Default::default(),
            changed,
            server_now: Default::default(),
            echoed: Arc::new(Mutex::new(Instant::now())),
            ready: Default::default(),
            beat_now: Default::default(),
        };
        let first = m.info(&stats);
        m.beat(&first)
            .await
            .map_err(|e| anyhow::anyhow!("cannot write this host's heartbeat: {e}"))?;
        m.observe(first);
        // The hosts already there (the watch below sees them too, but a start-up that
        // places components must know them before it converges). This host's own
        // entry first: its server timestamp is "now" for aging the others.
        if let Ok(mut keys) = m.store.keys().await {
            let mut entries = Vec::new();
            while let Some(Ok(key)) = keys.next().await {
                if let Ok(Some(entry)) = m.store.entry(key).await {
                    entries.push(entry);
                }
            }
            entries.sort_by_key(|e| e.key != m.me.id);
            for entry in &entries {
                m.observe_entry(entry);
            }
        }
        m.publish();
        m.spawn_loops(stats, shutdown).await?;
        Ok(m)
    }

    fn info(&self, stats: &Stats) -> HostInfo {
        let (components, in_flight) = stats();
        HostInfo {
            id: self.me.id.clone(),
            name: self.me.name.clone(),
            labels: self.me.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            http: self.me.http.clone(),
            uptime_ms: self.me.started.elapsed().as_millis() as u64,
            components,
            in_flight,
            ready: self.ready.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Marks this host as converged: its next heartbeat (sent now) says so, and the
    /// other hosts start placing components on it.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Release);
        self.beat_now.notify_one();
    }

    async fn beat(&self, info: &HostInfo) -> Result<(), String> {
        let bytes = serde_json::to_vec(info).map_err(|e| e.to_string())?;
        self.store
            .put(&info.id, bytes.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn observe(&self, info: HostInfo) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(
            info.id.clone(),
            Seen {
                info,
                at: Instant::now(),
            },
        );
    }

    /// Takes a heartbeat entry. Its age is measured on the NATS server's clock
    /// (its timestamp against that of this host's own latest heartbeat), so an old
    /// entry of a dead host replayed by the bucket is not mistaken for a live one,
    /// whatever the machines' clocks say.
    fn observe_entry(&self, entry: &kv::Entry) {
        if entry.key == self.me.id {
            *self.server_now.lock().unwrap_or_else(|e| e.into_inner()) = Some(entry.created);
            *self.echoed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            return;
        }
        let Ok(info) = serde_json::from_slice::<HostInfo>(&entry.value) else {
            return;
        };
        let server_now = *self.server_now.lock().unwrap_or_else(|e| e.into_inner());
        let age = server_now
            .map(|now| {
                (now - entry.created)
                    .whole_milliseconds()
                    .clamp(0, i128::from(u32::MAX))
            })
            .map(|ms| Duration::from_millis(ms as u64))
            .unwrap_or_default()
            .min(self.ttl);
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.id.clone(), Seen { info, at });
    }

    fn forget(&self, id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Recomputes the live set; tells watchers when its members or labels changed.
    fn publish(&self) {
        let now = Instant::now();
        let live: HostSet = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|id, s| *id == self.me.id || now.duration_since(s.at) < self.ttl);
            seen.iter()
                .map(|(id, s)| (id.clone(), s.info.clone()))
                .collect()
        };
        let old = self.live.load();
        let same_members = old.len() == live.len()
            && old.iter().zip(live.iter()).all(|((a, x), (b, y))| {
                a == b && x.labels == y.labels && x.name == y.name && x.ready == y.ready
            });
        self.live.store(Arc::new(live));
        if !same_members {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    async fn spawn_loops(&self, stats: Stats, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut watch = self
            .store
            .watch_all()
            .await
            .map_err(|e| anyhow::anyhow!("cannot watch the lattice's hosts: {e}"))?;
        let this = self.clone_handle();
        let period = (self.ttl / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // Leave at once rather than after the TTL.
                        let _ = this.store.delete(&this.me.id).await;
                        return;
                    }
                    _ = async { tokio::select! { _ = tick.tick() => {}, _ = this.beat_now.notified() => {} } } => {
                        let info = this.info(&stats);
                        if let Err(e) = this.beat(&info).await {
                            tracing::warn!(error = %e, "lattice heartbeat failed");
                        } else {
                            this.observe(info);
                        }
                        this.publish();
                        // This host's own heartbeats come back through the watch; when
                        // they stop coming (the bucket's leader moved to another NATS
                        // node and the watch did not follow), watch again.
                        let echoed = *this.echoed.lock().unwrap_or_else(|e| e.into_inner());
                        if echoed.elapsed() > period * 3 {
                            tracing::info!("the lattice's heartbeats stopped arriving; watching again");
                            if let Ok(w) = this.store.watch_all().await {
                                watch = w;
                                *this.echoed.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                            }
                        }
                    }
                    entry = watch.next() => match entry {
                        Some(Ok(e)) => {
                            match e.operation {
                                kv::Operation::Put => this.observe_entry(&e),
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    if e.key != this.me.id {
                                        this.forget(&e.key);
                                    }
                                }
                            }
                            this.publish();
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "watching the lattice's hosts failed; watching again");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            if let Ok(w) = this.store.watch_all().await {
                                watch = w;
                            }
                        }
                        None => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            if let Ok(w) = this.store.watch_all().await {
                                watch = w;
                            }
                        }
                    }
                }
            }
        });
        Ok(())
    }

    fn clone_handle(&self) -> Membership {
        Membership {
            me: self.me.clone(),
            ttl: self.ttl,
            store: self.store.clone(),
            seen: self.seen.clone(),
            live: self.live.clone(),
            changed: self.changed.clone(),
            server_now: self.server_now.clone(),
            echoed: self.echoed.clone(),
            ready: self.ready.clone(),
            beat_now: self.beat_now.clone(),
        }
    }

    /// This host.
    pub fn me(&self) -> &Me {
        &self.me
    }

    /// The live hosts now (this host included).
    pub fn live(&self) -> Arc<HostSet> {
        self.live.load_full()
    }

    /// The live hosts with the age of their last heartbeat, for `wasmhive hosts`.
    pub fn list(&self) -> Vec<LiveHost> {
        let now = Instant::now();
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<LiveHost> = seen
            .values()
            .filter(|s| s.info.id == self.me.id || now.duration_since(s.at) < self.ttl)
            .map(|s| LiveHost {
                info: s.info.clone(),
                last_heartbeat_ms_ago: now.duration_since(s.at).as_millis() as u64,
            })
            .collect();
        out.sort_by(|a, b| {
            a.info
                .name
                .cmp(&b.info.name)
                .then(a.info.id.cmp(&b.info.id))
        });
        out
    }

    /// Changes whenever a host joins or leaves (or changes its labels).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
