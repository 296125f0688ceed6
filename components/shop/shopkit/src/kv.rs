//! JSON values in the component's own key-value buckets (`wasi:keyvalue@0.2.0-draft`
//! plus the host's `wasmhive:keyvalue/cas`).
//!
//! Read-modify-write goes through [`Bucket::update`]: read the value, compute the new
//! one, compare-and-swap it against the bytes read, and start again if another writer
//! got there first. That is what makes "reserve the same order twice, reserve once"
//! hold under concurrent and redelivered messages. [`Bucket::insert_new`] is the claim
//! (CAS against "absent"); [`Bucket::increment`] the atomic counter behind ids.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::bindings::wasmhive::keyvalue::cas;
use crate::{Error, Result};

/// How many times [`Bucket::update`] retries a lost compare-and-swap before giving
/// up with a 503 (only under heavy contention on one key).
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// An open bucket.
pub struct Bucket {
    name: String,
    inner: store::Bucket,
}

/// What an [`Bucket::update`] step decided.
pub enum Change<T> {
    /// Store this value (compare-and-swap against what was read).
    Put(T),
    /// Leave the key as it is.
    Keep,
}

impl Bucket {
    /// Opens bucket `name` (it must be listed in the manifest's `keyvalue.buckets`).
    pub fn open(name: &str) -> Result<Self> {
        let inner = store::open(name).map_err(|e| storage(name, &e))?;
        Ok(Bucket {
            name: name.to_string(),
            inner,
        })
    }

    /// The raw bytes under `key`.
    pub fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(key).map_err(|e| self.error(&e))
    }

    /// The JSON value under `key`. A value that does not parse is a 500.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_raw(key)?
            .map(|bytes| self.parse(key, &bytes))
            .transpose()
    }

    /// Stores `value` as JSON under `key`.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.inner
            .set(key, &crate::to_json(value))
            .map_err(|e| self.error(&e))
    }

    /// Removes `key` (no error if absent).
    pub fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).map_err(|e| self.error(&e))
    }

    /// Adds `by` to the counter under `key` atomically and returns the new value.
    pub fn increment(&self, key: &str, by: u64) -> Result<u64> {
        atomics::increment(&self.inner, key, by).map_err(|e| self.error(&e))
    }

    /// Stores `value` under `key` only if the key is absent (a claim). Returns whether
    /// it was stored.
    pub fn insert_new<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<bool> {
        self.swap(key, None, &crate::to_json(value))
    }

    /// Compare-and-swap on raw bytes: sets `key` to `new` if it holds `expected`
    /// (`None`: if it is absent).
    pub fn swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool> {
        cas::compare_and_swap(&self.inner, key, expected, new).map_err(|e| self.error(&e))
    }

    /// Read-modify-write of the JSON value under `key`, retried until the
    /// compare-and-swap succeeds. `step` gets the current value (`None` if absent) and
    /// returns what to do plus a result; it may run several times, so it must not
    /// have side effects. Returns the result of the step whose change was applied.
    pub fn update<T, R>(
        &self,
        key: &str,
        mut step: impl FnMut(Option<T>) -> Result<(Change<T>, R)>,
    ) -> Result<R>
    where
        T: Serialize + DeserializeOwned,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current = self.get_raw(key)?;
            let value = current
                .as_deref()
                .map(|bytes| self.parse(key, bytes))
                .transpose()?;
            let (change, result) = step(value)?;
            match change {
                Change::Keep => return Ok(result),
                Change::Put(new) => {
                    if self.swap(key, current.as_deref(), &crate::to_json(&new))? {
                        return Ok(result);
                    }
                }
            }
        }
        Err(Error::unavailable(format!(
            "too much contention on {}/{key}",
            self.name
        )))
    }

    /// Every key in the bucket, all pages.
    pub fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.inner.list_keys(cursor).map_err(|e| self.error(&e))?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    fn parse<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::internal(format!("corrupt value {}/{key}: {e}", self.name)))
    }

    fn error(&self, e: &store::Error) -> Error {
        storage(&self.name, e)
    }
}

fn storage(bucket: &str, e: &store::Error) -> Error {
    let what = match e {
        store::Error::NoSuchStore => "no such store".to_string(),
        store::Error::AccessDenied => "access denied".to_string(),
        store::Error::Other(m) => m.clone(),
    };
    Error::internal(format!("key-value bucket {bucket}: {what}"))
}
