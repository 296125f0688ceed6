//! Operator access to a component's own buckets (`wasmhive kv list|get|set|delete`):
//! read and seed them on either backend without writing a component.
//!
//! Only buckets the component's manifest lists (`keyvalue.buckets`) are reachable, in
//! the same namespace the component sees, and a value is held to the component's
//! `keyvalue.max_value_size`.

use super::{ControlPlane, DeployError};
use crate::capability::keyvalue::DEFAULT_MAX_VALUE_SIZE;
use crate::state::{KvStore, Namespace};

/// Keys listed at most by one `kv list`.
pub const MAX_LISTED_KEYS: usize = 100_000;

/// A bucket an operator addresses.
pub struct Bucket {
    store: std::sync::Arc<dyn KvStore>,
    ns: Namespace,
    max_value_size: u64,
}

/// `kv list`: the keys, sorted, and whether there were more than [`MAX_LISTED_KEYS`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyList {
    /// The keys.
    pub keys: Vec<String>,
    /// More keys exist than were listed.
    pub truncated: bool,
}

fn storage(e: impl std::fmt::Display) -> DeployError {
    DeployError::Storage(e.to_string())
}

impl ControlPlane {
    /// The bucket `bucket` of `app/component`, if the component is deployed and its
    /// manifest lists the bucket.
    pub fn bucket(&self, app: &str, component: &str, bucket: &str) -> Result<Bucket, DeployError> {
        let c = self.component(app, component)?;
        let name = if bucket.is_empty() { "default" } else { bucket };
        let spec = &c.spec.caps.keyvalue;
        if !spec.buckets.iter().any(|b| b == name) {
            return Err(DeployError::Missing(format!(
                "{app}/{component} has no bucket {name:?} (its keyvalue.buckets: {:?})",
                spec.buckets
            )));
        }
        let store = self
            .services
            .kv
            .clone()
            .ok_or_else(|| storage("this host has no key-value storage"))?;
        Ok(Bucket {
            store,
            ns: Namespace::new(app, component, name),
            max_value_size: spec.max_value_size.unwrap_or(DEFAULT_MAX_VALUE_SIZE),
        })
    }
}

impl Bucket {
    /// Its keys, sorted (at most [`MAX_LISTED_KEYS`]).
    pub async fn list(&self) -> Result<KeyList, DeployError> {
        let mut keys = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self
                .store
                .list_keys(&self.ns, cursor)
                .await
                .map_err(storage)?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) if keys.len() < MAX_LISTED_KEYS => cursor = next,
                Some(_) => {
                    keys.truncate(MAX_LISTED_KEYS);
                    keys.sort();
                    return Ok(KeyList {
                        keys,
                        truncated: true,
                    });
                }
                None => break,
            }
        }
        keys.sort();
        Ok(KeyList {
            keys,
            truncated: false,
        })
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, DeployError> {
        self.store.get(&self.ns, key).await.map_err(storage)
    }

    /// Sets `key`, within the component's `max_value_size`.
    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), DeployError> {
        if value.len() as u64 > self.max_value_size {
            return Err(DeployError::Limit {
                component: self.ns.to_string(),
                message: format!(
                    "value of {} bytes is larger than keyvalue.max_value_size ({} bytes)",
                    value.len(),
                    self.max_value_size
                ),
            });
        }
        self.store.set(&self.ns, key, value).await.map_err(storage)
    }

    /// Deletes `key` (no error if it was not set).
    pub async fn delete(&self, key: &str) -> Result<(), DeployError> {
        self.store.delete(&self.ns, key).await.map_err(storage)
    }

    /// Largest value `set` accepts.
    pub fn max_value_size(&self) -> u64 {
        self.max_value_size
    }
}
