//! The embedded backend: one redb database file, `DATA/kv/kv.redb`.
//!
//! Reads run in their own read transactions. Writes go to one writer thread that
//! applies every write waiting in its queue in a single transaction and commits once
//! (group commit, durable: fsync before anyone is answered). That serializes
//! increment and compare-and-swap without locks in the callers, and amortizes the
//! fsync over concurrent writers.
//!
//! After an I/O failure (a full disk, say) redb refuses every operation, reads too,
//! until the database is opened again. The store does that itself: the failed write
//! is reported to its callers (nothing of it was committed), the file is reopened, and
//! reads and later writes go on with everything committed before.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{KEYS_PAGE, KeyPage, KvError, KvStore, Namespace, parse_counter};

/// (namespace, key) → value.
const TABLE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Writes applied per transaction at most.
const MAX_BATCH: usize = 512;

enum Write {
    Set(String, Vec<u8>),
    Delete(String),
    Increment(String, u64),
    Cas(String, Option<Vec<u8>>, Vec<u8>),
}

enum Done {
    Unit,
    Count(u64),
    Swapped(bool),
}

struct Job {
    ns: Namespace,
    writes: Vec<Write>,
    reply: mpsc::SyncSender<Result<Vec<Done>, KvError>>,
}

/// The redb store.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Handle>,
    writer: mpsc::Sender<Job>,
}

/// The open database, reopened after an I/O failure.
struct Handle {
    path: PathBuf,
    /// `None` while a reopen failed (the next use tries again).
    db: RwLock<Option<Arc<Database>>>,
}

/// How long a reopen waits for reads still using the old database.
const REOPEN_PATIENCE: Duration = Duration::from_secs(5);

impl Handle {
    /// The database to use now.
    fn current(&self) -> Result<Arc<Database>, KvError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        self.reopen(None)
    }

    /// Closes `broken` (unless another caller already replaced it) and opens the
    /// file again.
    fn reopen(&self, broken: Option<Arc<Database>>) -> Result<Arc<Database>, KvError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = slot.as_ref()
            && broken.as_ref().is_none_or(|b| !Arc::ptr_eq(b, current))
        {
            return Ok(current.clone());
        }
        drop(broken);
        if let Some(mut old) = slot.take() {
            // Reads hold it for one read: wait for them to let go (redb locks the
            // file, so it cannot be opened twice).
            let deadline = Instant::now() + REOPEN_PATIENCE;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        *slot = Some(still);
                        return Err(storage("the key-value store is busy reopening"));
                    }
                }
            }
        }
        let db = Arc::new(open(&self.path).map_err(storage)?);
        tracing::warn!(path = %self.path.display(), "key-value store reopened after an I/O failure");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs a read; after an I/O failure, reopens the database and tries once more.
    fn read<T>(&self, op: impl Fn(&Database) -> Result<T, redb::Error>) -> Result<T, KvError> {
        let db = self.current()?;
        match op(&db) {
            Err(e) if needs_reopen(&e) => {
                let db = self.reopen(Some(db))?;
                op(&db).map_err(storage)
            }
            other => other.map_err(storage),
        }
    }
}

/// Whether redb refuses to go on without a reopen.
fn needs_reopen(e: &redb::Error) -> bool {
    matches!(e, redb::Error::PreviousIo | redb::Error::Io(_))
}

/// Opens (creating) the database file with its table.
fn open(path: &Path) -> Result<Database, redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?;
    tx.commit()?;
    Ok(db)
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

impl RedbStore {
    /// Opens (creating) `dir/kv.redb` and starts its writer thread.
    pub fn open(dir: &Path) -> anyhow::Result<RedbStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("kv.redb");
        let db = open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open key-value store {}: {e}", path.display()))?;
        let db = Arc::new(Handle {
            path,
            db: RwLock::new(Some(Arc::new(db))),
        });
        let (writer, jobs) = mpsc::channel::<Job>();
        let wdb = db.clone();
        std::thread::Builder::new()
            .name("wasmhive-kv-writer".into())
            .spawn(move || write_loop(&wdb, jobs))?;
        Ok(RedbStore { db, writer })
    }

    fn write(&self, ns: &Namespace, writes: Vec<Write>) -> Result<Vec<Done>, KvError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.writer
            .send(Job {
                ns: ns.clone(),
                writes,
                reply,
            })
            .map_err(|_| storage("the key-value writer stopped"))?;
        answer
            .recv()
            .map_err(|_| storage("the key-value writer stopped"))?
    }
}

fn write_loop(handle: &Handle, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<Vec<Done>, KvError>> = Vec::with_capacity(batch.len());
        let db = match handle.current() {
            Ok(db) => db,
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        let committed = (|| -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(TABLE)?;
                for job in &batch {
                    let ns = job.ns.as_str();
                    let mut done = Vec::with_capacity(job.writes.len());
                    let mut failed = None;
                    for w in &job.writes {
                        let r = apply(&mut table, ns, w);
                        match r {
                            Ok(d) => done.push(d),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    results.push(match failed {
                        Some(e) => Err(e),
                        None => Ok(done),
                    });
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => {
                for (job, r) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "key-value commit failed; nothing of it was written");
                let reopen = needs_reopen(&e);
                let e = storage(e);
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
                if reopen && let Err(again) = handle.reopen(Some(db)) {
                    tracing::error!(error = %again, "cannot reopen the key-value store; retrying on next use");
                }
            }
        }
    }
}

/// One write inside the batch's transaction.
fn apply(
    table: &mut redb::Table<'_, (&str, &str), &[u8]>,
    ns: &str,
    write: &Write,
) -> Result<Done, KvError> {
    match write {
        Write::Set(k, v) => table
            .insert((ns, k.as_str()), v.as_slice())
            .map(|_| Done::Unit)
            .map_err(storage),
        Write::Delete(k) => table
            .remove((ns, k.as_str()))
            .map(|_| Done::Unit)
            .map_err(storage),
        Write::Increment(k, delta) => {
            let current = {
                let old = table.get((ns, k.as_str())).map_err(storage)?;
                parse_counter(k, old.as_ref().map(|g| g.value()))?
            };
            let new = current
                .checked_add(*delta)
                .ok_or_else(|| KvError::Overflow(k.clone()))?;
            table
                .insert((ns, k.as_str()), new.to_string().as_bytes())
                .map_err(storage)?;
            Ok(Done::Count(new))
        }
        Write::Cas(k, expected, new) => {
            let matches = {
                let old = table.get((ns, k.as_str())).map_err(storage)?;
                old.as_ref().map(|g| g.value()) == expected.as_deref()
            };
            if matches {
                table
                    .insert((ns, k.as_str()), new.as_slice())
                    .map_err(storage)?;
            }
            Ok(Done::Swapped(matches))
        }
    }
}

impl RedbStore {
    fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.db.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(TABLE)?;
            let v = table.get((ns.as_str(), key))?;
            Ok(v.map(|g| g.value().to_vec()))
        })
    }

    fn list_keys(&self, ns: &Namespace, cursor: u64) -> Result<KeyPage, KvError> {
        self.db.read(|db| list_keys(db, ns, cursor))
    }

    fn increment_blocking(&self, ns: &Namespace, key: &str, delta: u64) -> Result<u64, KvError> {
        match self
            .write(ns, vec![Write::Increment(key.to_string(), delta)])?
            .pop()
        {
            Some(Done::Count(n)) => Ok(n),
            _ => Err(storage("unexpected writer reply")),
        }
    }

    fn cas_blocking(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let w = Write::Cas(key.to_string(), expected, new);
        match self.write(ns, vec![w])?.pop() {
            Some(Done::Swapped(b)) => Ok(b),
            _ => Err(storage("unexpected writer reply")),
        }
    }

    fn get_many_blocking(
        &self,
        ns: &Namespace,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.db.read(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(TABLE)?;
            keys.iter()
                .map(|k| {
                    Ok(table
                        .get((ns.as_str(), k.as_str()))?
                        .map(|g| g.value().to_vec()))
                })
                .collect()
        })
    }
}

/// One page of `ns`'s keys from `cursor`.
fn list_keys(db: &Database, ns: &Namespace, cursor: u64) -> Result<KeyPage, redb::Error> {
    let tx = db.begin_read()?;
    let table = tx.open_table(TABLE)?;
    let n = ns.as_str();
    let mut keys = Vec::new();
    let mut more = false;
    for entry in table
        .range((n, "")..)?
        .skip(usize::try_from(cursor).unwrap_or(usize::MAX))
    {
        let (k, _) = entry?;
        let (kns, key) = k.value();
        if kns != n {
            break;
        }
        if keys.len() == KEYS_PAGE {
            more = true;
            break;
        }
        keys.push(key.to_string());
    }
    let next = more.then(|| cursor + keys.len() as u64);
    Ok(KeyPage { keys, cursor: next })
}

/// Runs a blocking operation on a clone of the store off the async threads.
async fn blocking<T: Send + 'static>(
    store: &RedbStore,
    ns: &Namespace,
    op: impl FnOnce(&RedbStore, &Namespace) -> Result<T, KvError> + Send + 'static,
) -> Result<T, KvError> {
    let (store, ns) = (store.clone(), ns.clone());
    tokio::task::spawn_blocking(move || op(&store, &ns))
        .await
        .map_err(storage)?
}

#[async_trait::async_trait]
impl KvStore for RedbStore {
    fn kind(&self) -> &'static str {
        "redb"
    }

    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        // A read is a few microseconds: not worth a thread hop.
        RedbStore::get(self, ns, key)
    }

    async fn set(&self, ns: &Namespace, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let key = key.to_string();
        blocking(self, ns, move |s, ns| {
            s.write(ns, vec![Write::Set(key, value)]).map(|_| ())
        })
        .await
    }

    async fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError> {
        let key = key.to_string();
        blocking(self, ns, move |s, ns| {
            s.write(ns, vec![Write::Delete(key)]).map(|_| ())
        })
        .await
    }

    async fn list_keys(&self, ns: &Namespace, cursor: u64) -> Result<KeyPage, KvError> {
        blocking(self, ns, move |s, ns| s.list_keys(ns, cursor)).await
    }

    async fn increment(&self, ns: &Namespace, key: &str, delta: u64) -> Result<u64, KvError> {
        let key = key.to_string();
        blocking(self, ns, move |s, ns| s.increment_blocking(ns, &key, delta)).await
    }

    async fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let key = key.to_string();
        blocking(self, ns, move |s, ns| {
            s.cas_blocking(ns, &key, expected, new)
        })
        .await
    }

    async fn get_many(
        &self,
        ns: &Namespace,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        blocking(self, ns, move |s, ns| s.get_many_blocking(ns, &keys)).await
    }

    async fn set_many(&self, ns: &Namespace, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        blocking(self, ns, move |s, ns| {
            let writes = pairs.into_iter().map(|(k, v)| Write::Set(k, v)).collect();
            s.write(ns, writes).map(|_| ())
        })
        .await
    }

    async fn delete_many(&self, ns: &Namespace, keys: Vec<String>) -> Result<(), KvError> {
        blocking(self, ns, move |s, ns| {
            let writes = keys.into_iter().map(Write::Delete).collect();
            s.write(ns, writes).map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate_and_atomics_work() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let a = Namespace::new("a", "c", "orders");
        let b = Namespace::new("b", "c", "orders");
        s.write(&a, vec![Write::Set("k".into(), b"1".to_vec())])
            .unwrap();
        assert_eq!(s.get(&a, "k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(&b, "k").unwrap(), None);
        assert_eq!(s.increment_blocking(&a, "k", 41).unwrap(), 42);
        assert!(
            !s.cas_blocking(&a, "k", Some(b"41".to_vec()), b"x".to_vec())
                .unwrap()
        );
        assert!(
            s.cas_blocking(&a, "k", Some(b"42".to_vec()), b"x".to_vec())
                .unwrap()
        );
        assert!(matches!(
            s.increment_blocking(&a, "k", 1),
            Err(KvError::NotANumber(_))
        ));
        assert!(s.cas_blocking(&b, "new", None, b"v".to_vec()).unwrap());
        assert!(!s.cas_blocking(&b, "new", None, b"w".to_vec()).unwrap());
    }

    #[test]
    fn list_keys_pages_within_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let ns = Namespace::new("a", "c", "b");
        let other = Namespace::new("a", "c", "b2");
        s.write(
            &ns,
            (0..2500)
                .map(|i| Write::Set(format!("k{i:05}"), vec![]))
                .collect(),
        )
        .unwrap();
        s.write(&other, vec![Write::Set("zzz".into(), vec![])])
            .unwrap();
        let mut all = Vec::new();
        let mut cursor = 0;
        loop {
            let page = s.list_keys(&ns, cursor).unwrap();
            all.extend(page.keys);
            match page.cursor {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(all.len(), 2500);
        assert_eq!(all[0], "k00000");
        assert!(!all.contains(&"zzz".to_string()));
    }

    #[test]
    fn concurrent_increments_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(RedbStore::open(dir.path()).unwrap());
        let ns = Namespace::new("a", "c", "b");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, ns) = (s.clone(), ns.clone());
                std::thread::spawn(move || {
                    for _ in 0..125 {
                        s.increment_blocking(&ns, "n", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get(&ns, "n").unwrap(), Some(b"1000".to_vec()));
    }
}
