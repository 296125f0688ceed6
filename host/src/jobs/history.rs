//! Each job's run history and its lattice-wide coordination, kept in the host's
//! key-value backend (redb alone, JetStream KV in a lattice, so every host sees the
//! same history and the same claims), in a bucket of the component that no guest can
//! open (`#jobs` is not a valid bucket name).
//!
//! Keys:
//! - `seq`: runs numbered so far; run `n` goes to slot `(n - 1) % keep_runs`, so the
//!   history is a ring that overwrites its oldest entry and never deletes (deleting
//!   leaves a marker per key in JetStream KV, which would grow without end);
//! - `run.<slot>`: the run's record without its output (what listings read), and
//!   `out.<slot>`: the record with the last bytes of its stdout and stderr;
//! - `tick`: the last scheduled tick claimed, in Unix milliseconds: the host that moves
//!   it forward (compare-and-swap) runs the tick;
//! - `running`: the lease of the run a `forbid` or `replace` job has going, with its
//!   deadline, so a dead host's run does not block the job for longer than that.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::output::Tail;
use crate::state::{KvError, KvStore, Namespace};

/// The bucket name of the job state (not a name a manifest may grant).
const BUCKET: &str = "#jobs";

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunTrigger {
    /// A tick of its schedule.
    Schedule,
    /// `wasmhive run` / the admin API.
    Manual,
    /// A message on one of its `on_message` subjects.
    Message,
}

impl RunTrigger {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Schedule => "schedule",
            RunTrigger::Manual => "manual",
            RunTrigger::Message => "message",
        }
    }
}

/// How a run ended (or that it has not yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Still going.
    Running,
    /// Exited with `exit_code` (0: success).
    Exit,
    /// Trapped (panic, unreachable, memory limit...).
    Trap,
    /// Ran past its deadline and was killed.
    Timeout,
    /// Stopped by `concurrency = "replace"` or the host shutting down.
    Stopped,
    /// Could not start (shed, load failure, the host's limits).
    Failed,
    /// A tick skipped because a run was still going (`concurrency = "forbid"`).
    Skipped,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Exit => "exit",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::Stopped => "stopped",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One run of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id (`r<start ms>-<random>`).
    pub id: String,
    /// App.
    pub app: String,
    /// Component.
    pub component: String,
    /// Component version.
    pub version: String,
    /// What started it.
    pub trigger: RunTrigger,
    /// The message's subject (trigger `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The tick it runs for, Unix milliseconds (trigger `schedule`; a caught-up tick
    /// is earlier than the host's start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<u64>,
    /// A tick missed while no host ran the job, run late (`catch_up = true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub caught_up: bool,
    /// The host that ran it.
    pub host: String,
    /// 1 for the first attempt, then each retry.
    pub attempt: u32,
    /// Start, Unix milliseconds.
    pub started_ms: u64,
    /// How long it ran (none while running).
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// Its exit code (outcome `exit`).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed (trap, deadline, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes written on stdout.
    pub stdout_bytes: u64,
    /// Bytes written on stderr.
    pub stderr_bytes: u64,
    /// The last bytes of stdout, base64 (empty in listings).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// The last bytes of stderr, base64 (empty in listings).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

impl RunRecord {
    /// Whether it ended well (exit code 0).
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Exit && self.exit_code == Some(0)
    }

    /// Whether it failed in a way retries are for (non-zero exit, trap, deadline).
    pub fn retryable(&self) -> bool {
        matches!(
            (self.outcome, self.exit_code),
            (Outcome::Exit, Some(c)) if c != 0
        ) || matches!(self.outcome, Outcome::Trap | Outcome::Timeout)
    }

    /// Keeps the output tails in the record.
    pub fn set_output(&mut self, stdout: &Tail, stderr: &Tail) {
        let b64 = base64::engine::general_purpose::STANDARD;
        self.stdout_bytes = stdout.total();
        self.stderr_bytes = stderr.total();
        self.stdout = b64.encode(stdout.bytes());
        self.stderr = b64.encode(stderr.bytes());
    }

    /// The record without its output (for listings).
    pub fn summary(mut self) -> RunRecord {
        self.stdout.clear();
        self.stderr.clear();
        self
    }

    /// The process exit code `wasmhive run` ends with: the run's own, 70 for a trap,
    /// 124 for the deadline, 69 for a run that could not start or was stopped.
    pub fn exit_status(&self) -> i32 {
        match self.outcome {
            Outcome::Exit => self.exit_code.unwrap_or(1),
            Outcome::Trap => 70,
            Outcome::Timeout => 124,
            Outcome::Running | Outcome::Stopped | Outcome::Failed | Outcome::Skipped => 69,
        }
    }
}

/// The run in progress of a `forbid`/`replace` job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run: String,
    /// The host running it (its name, for people).
    pub host: String,
    /// The host process running it (unique per process: a restarted host does not
    /// take its previous run for its own).
    #[serde(default)]
    pub owner: String,
    /// Its deadline, Unix milliseconds: past it the lease is void.
    pub until_ms: u64,
}

/// One job's history and claims.
#[derive(Clone)]
pub struct History {
    kv: Arc<dyn KvStore>,
    ns: Namespace,
}

/// The slot of run `id` (`r<ms>-<slot>-<random>`).
fn slot_of(id: &str) -> Option<u64> {
    id.split('-').nth(1)?.parse().ok()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new run id, starting at `started_ms`.
pub fn new_id(started_ms: u64) -> String {
    format!(
        "r{started_ms:013}-{:06x}",
        rand::random::<u32>() & 0xff_ffff
    )
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

impl History {
    /// The history of `app/component` in `kv`.
    pub fn new(kv: Arc<dyn KvStore>, app: &str, component: &str) -> Self {
        History {
            kv,
            ns: Namespace::new(app, component, BUCKET),
        }
    }

    /// A new run's id, starting at `started_ms`, in a history of `keep` runs.
    pub async fn new_id(&self, started_ms: u64, keep: u32) -> Result<String, KvError> {
        let n = self.kv.increment(&self.ns, "seq", 1).await?;
        let slot = (n.max(1) - 1) % u64::from(keep.max(1));
        Ok(format!(
            "r{started_ms:013}-{slot}-{:04x}",
            rand::random::<u16>()
        ))
    }

    /// Writes `record` (new or updated) into its slot.
    pub async fn put(&self, record: &RunRecord) -> Result<(), KvError> {
        let slot =
            slot_of(&record.id).ok_or_else(|| storage(format!("bad run id {}", record.id)))?;
        let full = serde_json::to_vec(record).map_err(storage)?;
        let summary = serde_json::to_vec(&record.clone().summary()).map_err(storage)?;
        self.kv
            .set_many(
                &self.ns,
                vec![
                    (format!("out.{slot}"), full),
                    (format!("run.{slot}"), summary),
                ],
            )
            .await
    }

    /// The run `id`, with its output (`None` once its slot holds a newer run).
    pub async fn get(&self, id: &str) -> Result<Option<RunRecord>, KvError> {
        let Some(slot) = slot_of(id) else {
            return Ok(None);
        };
        let Some(bytes) = self.kv.get(&self.ns, &format!("out.{slot}")).await? else {
            return Ok(None);
        };
        let record: RunRecord =
            serde_json::from_slice(&bytes).map_err(|e| storage(format!("run {id}: {e}")))?;
        Ok((record.id == id).then_some(record))
    }

    /// The latest `limit` runs of a history of `keep` runs, newest first, without
    /// their output.
    pub async fn list(&self, keep: u32, limit: usize) -> Result<Vec<RunRecord>, KvError> {
        let keys = (0..keep.max(1)).map(|s| format!("run.{s}")).collect();
        let mut runs: Vec<RunRecord> = self
            .kv
            .get_many(&self.ns, keys)
            .await?
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_slice::<RunRecord>(&v).ok())
            .collect();
        runs.sort_by(|a, b| (b.started_ms, &b.id).cmp(&(a.started_ms, &a.id)));
        runs.truncate(limit);
        Ok(runs)
    }

    /// The last tick claimed (Unix ms), if any.
    pub async fn last_tick(&self) -> Result<Option<u64>, KvError> {
        Ok(self
            .kv
            .get(&self.ns, "tick")
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok()))
    }

    /// Claims the tick at `tick_ms`: true for the one host that moves the claimed tick
    /// forward to it, false if it was claimed already (by any host).
    pub async fn claim_tick(&self, tick_ms: u64) -> Result<bool, KvError> {
        for _ in 0..16 {
            let current = self.kv.get(&self.ns, "tick").await?;
            let claimed = current
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|s| s.parse::<u64>().ok());
            if claimed.is_some_and(|c| c >= tick_ms) {
                return Ok(false);
            }
            if self
                .kv
                .compare_and_swap(&self.ns, "tick", current, tick_ms.to_string().into_bytes())
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The lease as stored (raw, to compare-and-swap against) and decoded.
    async fn current_lease(&self) -> Result<(Option<Vec<u8>>, Option<Lease>), KvError> {
        let raw = self.kv.get(&self.ns, "running").await?;
        let lease = raw
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Lease>(v).ok());
        Ok((raw, lease))
    }

    /// The live lease of a run in progress, if any.
    pub async fn lease(&self) -> Result<Option<Lease>, KvError> {
        let now = now_ms();
        Ok(self.current_lease().await?.1.filter(|l| l.until_ms > now))
    }

    /// Takes the lease for `lease.run` if no live one is held.
    pub async fn take_lease(&self, lease: &Lease) -> Result<bool, KvError> {
        let (raw, current) = self.current_lease().await?;
        if current.is_some_and(|l| l.until_ms > now_ms()) {
            return Ok(false);
        }
        let json = serde_json::to_vec(lease).map_err(storage)?;
        self.kv
            .compare_and_swap(&self.ns, "running", raw, json)
            .await
    }

    /// Moves the deadline of `run`'s lease to `until_ms`, if it still holds it.
    pub async fn renew_lease(&self, run: &str, until_ms: u64) -> Result<bool, KvError> {
        self.replace_lease(run, |l| l.until_ms = until_ms).await
    }

    /// Gives the lease of `run` back (if it still holds it: a lease taken since by
    /// another run is left alone).
    pub async fn release_lease(&self, run: &str) -> Result<(), KvError> {
        self.replace_lease(run, |l| l.until_ms = 0).await.map(drop)
    }

    async fn replace_lease(&self, run: &str, change: impl Fn(&mut Lease)) -> Result<bool, KvError> {
        for _ in 0..8 {
            let (raw, current) = self.current_lease().await?;
            let Some(mut lease) = current.filter(|l| l.run == run) else {
                return Ok(false);
            };
            change(&mut lease);
            let json = serde_json::to_vec(&lease).map_err(storage)?;
            if self
                .kv
                .compare_and_swap(&self.ns, "running", raw, json)
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            app: "a".into(),
            component: "c".into(),
            version: "1".into(),
            trigger: RunTrigger::Manual,
            subject: None,
            tick_ms: None,
            caught_up: false,
            host: "h".into(),
            attempt: 1,
            started_ms: 1,
            duration_ms: Some(1),
            outcome: Outcome::Exit,
            exit_code: Some(0),
            error: None,
            stdout_bytes: 2,
            stderr_bytes: 0,
            stdout: "aGk=".into(),
            stderr: String::new(),
        }
    }

    #[tokio::test]
    async fn history_is_a_bounded_ring_newest_first_and_ticks_are_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn KvStore> =
            Arc::new(crate::state::redb::RedbStore::open(&dir.path().join("kv")).unwrap());
        let h = History::new(kv, "a", "c");
        let mut ids = Vec::new();
        for i in 0..5 {
            let id = h.new_id(1000 + i, 3).await.unwrap();
            let mut r = record(&id);
            r.started_ms = 1000 + i;
            h.put(&r).await.unwrap();
            ids.push(id);
        }
        let runs = h.list(3, 10).await.unwrap();
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].id, ids[4]);
        assert_eq!(runs[2].id, ids[2]);
        assert!(runs[0].stdout.is_empty(), "listings carry no output");
        assert_eq!(h.get(&ids[4]).await.unwrap().unwrap().stdout, "aGk=");
        assert!(
            h.get(&ids[0]).await.unwrap().is_none(),
            "overwritten by a newer run"
        );

        assert!(h.claim_tick(5000).await.unwrap());
        assert!(!h.claim_tick(5000).await.unwrap(), "claimed once");
        assert!(!h.claim_tick(4000).await.unwrap(), "never backwards");
        assert!(h.claim_tick(6000).await.unwrap());
        assert_eq!(h.last_tick().await.unwrap(), Some(6000));

        let lease = Lease {
            run: "r1".into(),
            host: "h".into(),
            owner: "p1".into(),
            until_ms: now_ms() + 60_000,
        };
        assert!(h.take_lease(&lease).await.unwrap());
        let other = Lease {
            run: "r2".into(),
            ..lease.clone()
        };
        assert!(!h.take_lease(&other).await.unwrap());
        h.release_lease("r2").await.unwrap();
        assert_eq!(h.lease().await.unwrap(), Some(lease));
        h.release_lease("r1").await.unwrap();
        assert_eq!(h.lease().await.unwrap(), None);
        assert!(h.take_lease(&other).await.unwrap());
        h.release_lease("r1").await.unwrap();
        assert_eq!(
            h.lease().await.unwrap().map(|l| l.run),
            Some("r2".into()),
            "an old run's release leaves a newer lease alone"
        );
    }
}
