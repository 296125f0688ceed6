//! Key-value state: `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) and the
//! `wasmhive:keyvalue/cas` extension.
//!
//! Manifest: `[keyvalue] buckets = [...]` (the only buckets the guest may open; `""`
//! and `default` are the same bucket) and `max_value_size` (default 1 MiB). `open` of
//! any other bucket is `access-denied`, an error the guest sees. Buckets are
//! namespaced by app and component in the store, so the same bucket name in another
//! component is another bucket (database per service). A `set` larger than
//! `max_value_size` fails with `other(...)`. A component importing these interfaces
//! with no buckets granted is refused at deploy.

use std::sync::Arc;

use wasmtime::component::{Linker, Resource};

use super::{Capability, GrantContext, Grants, HasView, Instance, View, view_of};
use crate::section::{ManifestError, Table};
use crate::state::{KvError, KvStore, Namespace};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:keyvalue-host;
                 world keyvalue {
                   import wasi:keyvalue/store@0.2.0-draft;
                   import wasi:keyvalue/atomics@0.2.0-draft;
                   import wasi:keyvalue/batch@0.2.0-draft;
                   import wasmhive:keyvalue/cas@0.1.0;
                 }",
        path: "../wit",
        world: "wasmhive:keyvalue-host/keyvalue",
        imports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": super::KvBucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};
use bindings::wasmhive::keyvalue::cas;

/// Default `max_value_size`.
pub const DEFAULT_MAX_VALUE_SIZE: u64 = 1 << 20;

/// The capability.
pub struct Keyvalue;

/// `[keyvalue]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyvalueSpec {
    /// Bucket names the guest may open (`""` is written as `default`).
    pub buckets: Vec<String>,
    /// Largest value a `set` accepts.
    pub max_value_size: Option<u64>,
}

/// What key-value access a component has.
#[derive(Clone)]
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

/// An open bucket (the resource the guest holds).
pub struct KvBucket {
    ns: Namespace,
}

impl Capability for Keyvalue {
    const INTERFACES: &'static [&'static str] = &["wasi:keyvalue/", "wasmhive:keyvalue/"];
    type Spec = KeyvalueSpec;
    type Grant = KeyvalueGrant;
    type Ctx = ();

    fn spec(component: &mut Table<'_>) -> Result<KeyvalueSpec, ManifestError> {
        let mut spec = KeyvalueSpec::default();
        let Some(kv) = component.table("keyvalue")? else {
            return Ok(spec);
        };
        for name in kv.list("buckets", check_bucket)? {
            if !spec.buckets.contains(&name) {
                spec.buckets.push(name);
            }
        }
        spec.max_value_size = kv.size("max_value_size")?;
        Ok(spec)
    }

    fn grant(spec: &KeyvalueSpec, cx: &GrantContext<'_>) -> Result<KeyvalueGrant, String> {
        Ok(KeyvalueGrant {
            buckets: spec.buckets.clone(),
            max_value_size: spec.max_value_size.unwrap_or(DEFAULT_MAX_VALUE_SIZE),
            store: cx.services.kv.clone(),
        })
    }

    fn check_imports(grant: &KeyvalueGrant, imports: &[String]) -> Result<(), String> {
        let uses = imports
            .iter()
            .any(|i| Self::INTERFACES.iter().any(|p| i.starts_with(p)));
        if uses && grant.buckets.is_empty() {
            return Err("component imports wasi:keyvalue but its manifest grants no buckets: list them under [components.NAME.keyvalue] buckets".into());
        }
        Ok(())
    }

    fn instance(_grants: &Arc<Grants>) {}

    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        _concurrent: bool,
    ) -> anyhow::Result<()> {
        bindings::Keyvalue::add_to_linker::<_, HasView<Keyvalue>>(linker, view_of::<X, Keyvalue>)?;
        Ok(())
    }
}

/// A bucket name as written; `""` becomes `default`.
fn check_bucket(name: &str) -> Result<String, String> {
    let ok = name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err("bucket names use letters, digits, '-', '_' and '.' (at most 64)".into());
    }
    Ok(if name.is_empty() {
        "default".into()
    } else {
        name.into()
    })
}

fn other(e: impl std::fmt::Display) -> store::Error {
    store::Error::Other(e.to_string())
}

impl From<KvError> for store::Error {
    fn from(e: KvError) -> Self {
        other(e)
    }
}

impl View<'_, Keyvalue> {
    /// The store and namespace behind `bucket`.
    fn kv(
        &self,
        bucket: &Resource<KvBucket>,
    ) -> Result<(Arc<dyn KvStore>, Namespace), store::Error> {
        let ns = self.table.get(bucket).map_err(other)?.ns.clone();
        let Some(kv) = self.grant.store.clone() else {
            return Err(other("key-value storage is not available"));
        };
        Ok((kv, ns))
    }

    fn check_size(&self, len: usize) -> Result<(), store::Error> {
        let max = self.grant.max_value_size;
        if len as u64 > max {
            return Err(other(format!(
                "value of {len} bytes is larger than this component's keyvalue.max_value_size ({max} bytes)"
            )));
        }
        Ok(())
    }
}

impl store::Host for View<'_, Keyvalue> {
    async fn open(&mut self, identifier: String) -> Result<Resource<KvBucket>, store::Error> {
        let name = if identifier.is_empty() {
            "default"
        } else {
            identifier.as_str()
        };
        if !self.grant.buckets.iter().any(|b| b == name) {
            tracing::warn!(app = %self.id.app, component = %self.id.component, bucket = %identifier, "key-value bucket denied: not in keyvalue.buckets");
            return Err(store::Error::AccessDenied);
        }
        if self.grant.store.is_none() {
            return Err(store::Error::NoSuchStore);
        }
        let ns = Namespace::new(&self.id.app, &self.id.component, name);
        self.table.push(KvBucket { ns }).map_err(other)
    }
}

impl store::HostBucket for View<'_, Keyvalue> {
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
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for View<'_, Keyvalue> {
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

impl batch::Host for View<'_, Keyvalue> {
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

impl cas::Host for View<'_, Keyvalue> {
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
