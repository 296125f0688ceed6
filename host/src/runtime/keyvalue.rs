//! Host side of `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) and the
//! `wasmhive:keyvalue/cas` extension.
//!
//! `open` succeeds only for buckets the component's manifest lists (`""` and
//! `default` are the same bucket); anything else is `access-denied`, an error the
//! guest sees. Buckets are namespaced by app and component in the store, so the same
//! bucket name in another component is another bucket. A `set` larger than the
//! component's `max_value_size` fails with `other(...)`.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::InstanceState;
use super::bindings::imports::wasi::keyvalue::{atomics, batch, store};
use super::bindings::imports::wasmhive::keyvalue::cas;
use crate::state::{KvError, KvStore, Namespace};

/// Default `max_value_size`.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 1 << 20;

/// An open bucket (the resource the guest holds).
pub struct KvBucket {
    ns: Namespace,
}

/// What key-value access a component has.
#[derive(Clone, Default)]
pub struct KeyvalueGrant {
    /// Buckets it may open.
    pub buckets: Vec<String>,
    /// Largest value accepted by `set`.
    pub max_value_size: u64,
    /// The backend (`None`: key-value unavailable, e.g. offline validation).
    pub store: Option<Arc<dyn KvStore>>,
}

impl std::fmt::Debug for KeyvalueGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyvalueGrant")
            .field("buckets", &self.buckets)
            .field("max_value_size", &self.max_value_size)
            .field("store", &self.store.as_ref().map(|s| s.kind()))
            .finish()
    }
}

fn other(e: impl std::fmt::Display) -> store::Error {
    store::Error::Other(e.to_string())
}

impl From<KvError> for store::Error {
    fn from(e: KvError) -> Self {
        other(e)
    }
}

impl InstanceState {
    /// The store and namespace behind `bucket`.
    fn kv(
        &self,
        bucket: &Resource<KvBucket>,
    ) -> Result<(Arc<dyn KvStore>, Namespace), store::Error> {
        let ns = self.table_ref().get(bucket).map_err(other)?.ns.clone();
        let Some(kv) = self.grants().keyvalue.store.clone() else {
            return Err(other("key-value storage is not available"));
        };
        Ok((kv, ns))
    }

    fn check_size(&self, len: usize) -> Result<(), store::Error> {
        let max = self.grants().keyvalue.max_value_size;
        if len as u64 > max {
            return Err(other(format!(
                "value of {len} bytes is larger than this component's keyvalue.max_value_size ({max} bytes)"
            )));
        }
        Ok(())
    }
}

impl store::Host for InstanceState {
    async fn open(&mut self, identifier: String) -> Result<Resource<KvBucket>, store::Error> {
        let g = self.grants().clone();
        let name = if identifier.is_empty() {
            "default"
        } else {
            identifier.as_str()
        };
        if !g.keyvalue.buckets.iter().any(|b| b == name) {
            tracing::warn!(app = %g.id.app, component = %g.id.component, bucket = %identifier, "key-value bucket denied: not in keyvalue.buckets");
            return Err(store::Error::AccessDenied);
        }
        if g.keyvalue.store.is_none() {
            return Err(store::Error::NoSuchStore);
        }
        let ns = Namespace::new(&g.id.app, &g.id.component, name);
        self.table_mut().push(KvBucket { ns }).map_err(other)
    }
}

impl store::HostBucket for InstanceState {
    async fn get(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.get(&ns, &key).await?)
    }

    async fn set(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), store::Error> {
        self.check_size(value.len())?;
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.set(&ns, &key, value).await?)
    }

    async fn delete(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
    ) -> Result<(), store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.delete(&ns, &key).await?)
    }

    async fn exists(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
    ) -> Result<bool, store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.exists(&ns, &key).await?)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<KvBucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        let page = kv.list_keys(&ns, cursor.unwrap_or(0)).await?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    async fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table_mut().delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for InstanceState {
    async fn increment(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.increment(&ns, &key, delta).await?)
    }
}

impl batch::Host for InstanceState {
    async fn get_many(
        &mut self,
        bucket: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        let values = kv.get_many(&ns, keys.clone()).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<KvBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), store::Error> {
        for (_, v) in &key_values {
            self.check_size(v.len())?;
        }
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.set_many(&ns, key_values).await?)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<KvBucket>,
        keys: Vec<String>,
    ) -> Result<(), store::Error> {
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.delete_many(&ns, keys).await?)
    }
}

impl cas::Host for InstanceState {
    async fn compare_and_swap(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool, store::Error> {
        self.check_size(new.len())?;
        let (kv, ns) = self.kv(&bucket)?;
        Ok(kv.compare_and_swap(&ns, &key, expected, new).await?)
    }
}
