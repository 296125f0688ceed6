//! Key-value state: each component's own buckets (database per service).
//!
//! A bucket is addressed by a [`Namespace`] (app, component, bucket name), so two apps
//! that both name a bucket `orders` never share data, and a component can reach only
//! the buckets its manifest lists (checked in the runtime's `wasi:keyvalue` binding).
//!
//! Backends implement [`KvStore`] with the same semantics:
//! - [`redb::RedbStore`], an embedded database under the data dir (durable: a
//!   committed write survives a host kill); writes serialized through one writer.
//! - [`jetstream::JetStreamStore`], NATS JetStream key-value buckets, so every host of
//!   a lattice sees the same data; increment and compare-and-swap are optimistic
//!   (revision-checked) and retried on conflict.

pub mod jetstream;
pub mod redb;

use std::fmt;

/// Keys returned per `list-keys` page.
pub const KEYS_PAGE: usize = 1000;

/// Where a bucket lives: app, component and bucket name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// The namespace of `bucket` of `component` in `app` (`""` is `default`).
    pub fn new(app: &str, component: &str, bucket: &str) -> Self {
        let bucket = if bucket.is_empty() { "default" } else { bucket };
        Namespace(format!("{app}/{component}/{bucket}"))
    }

    /// `app/component/bucket`
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failed key-value operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The existing value is not a decimal number (for `increment`).
    #[error("the value of {0:?} is not a decimal number")]
    NotANumber(String),
    /// Increment would overflow u64.
    #[error("incrementing {0:?} overflows")]
    Overflow(String),
    /// The storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys, in order.
    pub keys: Vec<String>,
    /// Cursor of the next page, if any.
    pub cursor: Option<u64>,
}

/// A key-value backend.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// `redb` or `jetstream`.
    fn kind(&self) -> &'static str;
    /// The value of `key`.
    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Sets `key` to `value`.
    async fn set(&self, ns: &Namespace, key: &str, value: Vec<u8>) -> Result<(), KvError>;
    /// Removes `key` (absent is fine).
    async fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError>;
    /// Whether `key` exists.
    async fn exists(&self, ns: &Namespace, key: &str) -> Result<bool, KvError> {
        Ok(self.get(ns, key).await?.is_some())
    }
    /// Keys from position `cursor` (0 first), at most [`KEYS_PAGE`], in key order.
    async fn list_keys(&self, ns: &Namespace, cursor: u64) -> Result<KeyPage, KvError>;
    /// Adds `delta` to the decimal value of `key` (absent = 0); returns the new value.
    async fn increment(&self, ns: &Namespace, key: &str, delta: u64) -> Result<u64, KvError>;
    /// Sets `key` to `new` if its value is `expected` (`None`: absent).
    async fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, KvError>;
    /// Values of `keys`, in order.
    async fn get_many(
        &self,
        ns: &Namespace,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let mut out = Vec::with_capacity(keys.len());
        for k in &keys {
            out.push(self.get(ns, k).await?);
        }
        Ok(out)
    }
    /// Sets every pair.
    async fn set_many(&self, ns: &Namespace, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        for (k, v) in pairs {
            self.set(ns, &k, v).await?;
        }
        Ok(())
    }
    /// Removes every key.
    async fn delete_many(&self, ns: &Namespace, keys: Vec<String>) -> Result<(), KvError> {
        for k in &keys {
            self.delete(ns, k).await?;
        }
        Ok(())
    }
}

/// Pages sorted `keys` from position `cursor`.
pub fn page(mut keys: Vec<String>, cursor: u64) -> KeyPage {
    keys.sort();
    let start = usize::try_from(cursor)
        .unwrap_or(usize::MAX)
        .min(keys.len());
    let end = (start + KEYS_PAGE).min(keys.len());
    let more = end < keys.len();
    KeyPage {
        keys: keys[start..end].to_vec(),
        cursor: more.then_some(end as u64),
    }
}

/// Parses an increment counter's stored value.
pub fn parse_counter(key: &str, value: Option<&[u8]>) -> Result<u64, KvError> {
    match value {
        None => Ok(0),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| KvError::NotANumber(key.to_string())),
    }
}
