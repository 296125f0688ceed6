//! The lattice backend: NATS JetStream key-value buckets, so every host connected to
//! the same NATS sees the same data.
//!
//! One JetStream bucket per component bucket, named `WH_<app>_<component>_<bucket>`
//! (sanitized, with a short hash of the exact namespace so sanitizing never merges two
//! buckets), created on first use with history 1. Keys JetStream cannot hold as they
//! are (outside `[-/_=.a-zA-Z0-9]`, or starting with `.`/`_`, or ending with `.`) are
//! stored as `_h.<hex>`. Increment and compare-and-swap read the entry's revision and
//! write only if it is unchanged, retrying on conflict.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use super::{KeyPage, KvError, KvStore, Namespace, page, parse_counter};

/// Attempts of an optimistic update before giving up.
const MAX_RETRIES: usize = 1000;

/// JetStream key-value storage.
pub struct JetStreamStore {
    js: jetstream::Context,
    buckets: Mutex<HashMap<Namespace, kv::Store>>,
    /// The lattice whose buckets these are (`None`: the default lattice, whose
    /// buckets keep the names they had before lattices existed).
    lattice: Option<String>,
    /// JetStream replicas of buckets this store creates.
    replicas: usize,
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

/// The JetStream bucket name for `ns`.
pub fn bucket_name(ns: &Namespace) -> String {
    let clean: String = ns
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ns.as_str().hash(&mut h);
    format!("WH_{clean}_{:08x}", h.finish() as u32)
}

/// The JetStream bucket name for `ns` in a lattice other than the default one:
/// prefixed by the lattice, hashed with it, so lattices never share a bucket.
pub fn lattice_bucket_name(lattice: &str, ns: &Namespace) -> String {
    let base = bucket_name(ns);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lattice.hash(&mut h);
    ns.as_str().hash(&mut h);
    format!("WH_{lattice}_{}_{:08x}", &base[3..], h.finish() as u32)
}

fn plain(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.starts_with('_')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=' | '.'))
}

/// How `key` is stored.
pub fn encode_key(key: &str) -> String {
    if plain(key) {
        key.to_string()
    } else {
        format!("_h.{}", hex::encode(key.as_bytes()))
    }
}

/// The key a stored name stands for.
pub fn decode_key(stored: &str) -> String {
    match stored.strip_prefix("_h.") {
        Some(h) => hex::decode(h)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| stored.to_string()),
        None => stored.to_string(),
    }
}

impl JetStreamStore {
    /// Key-value storage on the JetStream of `client`.
    pub fn new(client: async_nats::Client) -> Self {
        JetStreamStore::for_lattice(client, None, 1)
    }

    /// Key-value storage of lattice `lattice` (`None`: the default lattice), whose
    /// new buckets get `replicas` JetStream replicas.
    pub fn for_lattice(client: async_nats::Client, lattice: Option<&str>, replicas: usize) -> Self {
        JetStreamStore {
            js: jetstream::new(client),
            buckets: Mutex::new(HashMap::new()),
            lattice: lattice.map(str::to_string),
            replicas: replicas.max(1),
        }
    }

    async fn bucket(&self, ns: &Namespace) -> Result<kv::Store, KvError> {
        if let Some(b) = self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(ns)
        {
            return Ok(b.clone());
        }
        let name = match &self.lattice {
            None => bucket_name(ns),
            Some(l) => lattice_bucket_name(l, ns),
        };
        let store = match self.js.get_key_value(&name).await {
            Ok(s) => s,
            Err(_) => self
                .js
                .create_key_value(kv::Config {
                    bucket: name.clone(),
                    description: format!("wasmhive bucket {ns}"),
                    history: 1,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    storage(format!(
                        "cannot create JetStream key-value bucket {name}: {e}"
                    ))
                })?,
        };
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.clone(), store.clone());
        Ok(store)
    }
}

#[async_trait::async_trait]
impl KvStore for JetStreamStore {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let b = self.bucket(ns).await?;
        b.get(encode_key(key))
            .await
            .map(|v| v.map(|b| b.to_vec()))
            .map_err(storage)
    }

    async fn set(&self, ns: &Namespace, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let b = self.bucket(ns).await?;
        b.put(encode_key(key), value.into())
            .await
            .map(|_| ())
            .map_err(storage)
    }

    async fn delete(&self, ns: &Namespace, key: &str) -> Result<(), KvError> {
        let b = self.bucket(ns).await?;
        b.delete(encode_key(key)).await.map_err(storage)
    }

    async fn list_keys(&self, ns: &Namespace, cursor: u64) -> Result<KeyPage, KvError> {
        let b = self.bucket(ns).await?;
        let mut keys = Vec::new();
        match b.keys().await {
            Ok(mut stream) => {
                while let Some(k) = stream.next().await {
                    keys.push(decode_key(&k.map_err(storage)?));
                }
            }
            Err(e) => return Err(storage(e)),
        }
        Ok(page(keys, cursor))
    }

    async fn increment(&self, ns: &Namespace, key: &str, delta: u64) -> Result<u64, KvError> {
        let b = self.bucket(ns).await?;
        let stored = encode_key(key);
        for _ in 0..MAX_RETRIES {
            let entry = b.entry(stored.clone()).await.map_err(storage)?;
            let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
            let current = parse_counter(key, live.map(|e| e.value.as_ref()))?;
            let new = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow(key.to_string()))?;
            let value = bytes::Bytes::from(new.to_string());
            let written = match &entry {
                Some(e) => b.update(&stored, value, e.revision).await.is_ok(),
                None => b.create(&stored, value).await.is_ok(),
            };
            if written {
                return Ok(new);
            }
        }
        Err(storage(format!(
            "increment of {key:?}: too much contention"
        )))
    }

    async fn compare_and_swap(
        &self,
        ns: &Namespace,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let b = self.bucket(ns).await?;
        let stored = encode_key(key);
        for _ in 0..MAX_RETRIES {
            let entry = b.entry(stored.clone()).await.map_err(storage)?;
            let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
            if live.map(|e| e.value.as_ref()) != expected.as_deref() {
                return Ok(false);
            }
            let written = match &entry {
                Some(e) => b
                    .update(&stored, new.clone().into(), e.revision)
                    .await
                    .is_ok(),
                None => b.create(&stored, new.clone().into()).await.is_ok(),
            };
            if written {
                return Ok(true);
            }
            // Someone wrote in between: look again.
        }
        Err(storage(format!(
            "compare-and-swap of {key:?}: too much contention"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [
            "orders/42",
            "a.b",
            "with space",
            "_under",
            ".dot",
            "ü",
            "a..b",
            "",
        ] {
            assert_eq!(decode_key(&encode_key(k)), k, "{k}");
        }
        assert_eq!(encode_key("orders/42"), "orders/42");
        assert!(encode_key("with space").starts_with("_h."));
    }

    #[test]
    fn lattices_have_their_own_buckets() {
        let ns = Namespace::new("app", "c", "notes");
        assert_eq!(
            bucket_name(&ns),
            bucket_name(&Namespace::new("app", "c", "notes"))
        );
        let a = lattice_bucket_name("l1", &ns);
        let b = lattice_bucket_name("l2", &ns);
        assert!(
            a.starts_with("WH_l1_") && b.starts_with("WH_l2_"),
            "{a} {b}"
        );
        assert_ne!(a, b);
        assert_ne!(a, bucket_name(&ns));
    }

    #[test]
    fn bucket_names_do_not_collide() {
        let a = bucket_name(&Namespace::new("app", "c", "a.b"));
        let b = bucket_name(&Namespace::new("app", "c", "a_b"));
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        );
    }
}
