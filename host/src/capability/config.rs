//! Configuration and secrets: `wasi:config` in the three shapes found in the wild:
//! `wasi:config/store@0.2.0-draft` (wasmtime, Spin), `wasi:config/runtime@0.2.0-draft`
//! (wasmCloud) and `wasi:config/store@0.2.0-rc.1`.
//!
//! Manifest: `[config]` (string values; `${VAR}` is expanded from the host's
//! environment at deploy time) and `[secrets]` (`{ env = "VAR" }` or `{ file = "path" }`,
//! read at deploy time). Both share one namespace of keys. A variable or file that
//! cannot be read refuses the deploy, naming the field (never the value). Secret
//! values are never logged: [`ConfigValues`]' `Debug` shows their keys only.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use wasmtime::component::Linker;

use super::{Capability, GrantContext, Grants, HasView, Instance, View, view_of};
use crate::section::{ManifestError, Table};

#[allow(missing_docs)]
mod bindings {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:config-host;
                 world config {
                   import wasi:config/store@0.2.0-draft;
                   import wasi:config/runtime@0.2.0-draft;
                 }",
        path: "../wit",
        world: "wasmhive:config-host/config",
        imports: { default: async },
    });
}

/// `wasi:config/store@0.2.0-rc.1`, which cannot share a world with 0.2.0-draft.
#[allow(missing_docs)]
mod bindings_rc1 {
    wasmtime::component::bindgen!({
        inline: "package wasmhive:config-rc1; world rc1 { import wasi:config/store@0.2.0-rc.1; }",
        path: "../wit",
        world: "wasmhive:config-rc1/rc1",
        imports: { default: async },
    });
}

use bindings::wasi::config0_2_0_draft::{runtime, store};
use bindings_rc1::wasi::config0_2_0_rc_1::store as rc1;

/// The capability.
pub struct Config;

/// `[config]` and `[secrets]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSpec {
    /// Values (`${VAR}` not yet expanded), in key order.
    pub values: Vec<(String, String)>,
    /// Where each secret comes from, in key order.
    pub secrets: Vec<(String, SecretSource)>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A host environment variable.
    Env(String),
    /// A file on the host.
    File(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

/// A component's configuration: plain values and secrets in one namespace.
#[derive(Clone, Default)]
pub struct ConfigValues {
    values: Vec<(String, String)>,
    secret_keys: Vec<String>,
}

impl ConfigValues {
    /// Plain `values` and `secrets` (keys distinct).
    pub fn new(values: Vec<(String, String)>, secrets: Vec<(String, String)>) -> Self {
        let secret_keys = secrets.iter().map(|(k, _)| k.clone()).collect();
        let mut all = values;
        all.extend(secrets);
        all.sort();
        ConfigValues {
            values: all,
            secret_keys,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair.
    pub fn all(&self) -> &[(String, String)] {
        &self.values
    }
}

impl std::fmt::Debug for ConfigValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.values {
            if self.secret_keys.contains(k) {
                m.entry(k, &"<secret>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl Capability for Config {
    const INTERFACES: &'static [&'static str] = &["wasi:config/"];
    type Spec = ConfigSpec;
    type Grant = ConfigValues;
    type Ctx = ();

    fn spec(component: &mut Table<'_>) -> Result<ConfigSpec, ManifestError> {
        let values: BTreeMap<String, String> = component.take_or_default("config")?;
        let raw: BTreeMap<Spanned<String>, Spanned<RawSecret>> =
            component.take_or_default("secrets")?;
        let mut secrets = Vec::with_capacity(raw.len());
        for (key, secret) in raw {
            let field = format!("secrets.{}", key.get_ref());
            let span = secret.span();
            let source = match secret.into_inner() {
                RawSecret {
                    env: Some(e),
                    file: None,
                } => SecretSource::Env(e),
                RawSecret {
                    env: None,
                    file: Some(f),
                } => SecretSource::File(f),
                _ => {
                    return Err(component.invalid(
                        span,
                        &field,
                        "give exactly one of { env = \"VAR\" } or { file = \"path\" }",
                    ));
                }
            };
            if values.contains_key(key.get_ref()) {
                return Err(component.invalid(
                    key.span(),
                    &field,
                    "a config key of the same name exists; config and secrets share one namespace",
                ));
            }
            secrets.push((key.into_inner(), source));
        }
        Ok(ConfigSpec {
            values: values.into_iter().collect(),
            secrets,
        })
    }

    /// Expands `${VAR}` in values from the host environment and reads secrets.
    fn grant(spec: &ConfigSpec, _cx: &GrantContext<'_>) -> Result<ConfigValues, String> {
        let mut values = Vec::with_capacity(spec.values.len());
        for (key, raw) in &spec.values {
            values.push((key.clone(), expand(key, raw)?));
        }
        let mut secrets = Vec::with_capacity(spec.secrets.len());
        for (key, source) in &spec.secrets {
            let value = match source {
                SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                    format!("secrets.{key}: environment variable {var} is not set on the host")
                })?,
                SecretSource::File(path) => std::fs::read_to_string(path)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("secrets.{key}: cannot read {path}: {}", e.kind()))?,
            };
            secrets.push((key.clone(), value));
        }
        Ok(ConfigValues::new(values, secrets))
    }

    fn instance(_grants: &Arc<Grants>) {}

    fn add_to_linker<X: Send + 'static>(
        linker: &mut Linker<Instance<X>>,
        _concurrent: bool,
    ) -> anyhow::Result<()> {
        bindings::Config::add_to_linker::<_, HasView<Config>>(linker, view_of::<X, Config>)?;
        bindings_rc1::Rc1::add_to_linker::<_, HasView<Config>>(linker, view_of::<X, Config>)?;
        Ok(())
    }
}

/// `raw` with each `${VAR}` replaced by the host's value of `VAR`.
fn expand(key: &str, raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("config.{key}: unclosed \"${{\" in {raw:?}"))?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| {
            format!("config.{key}: environment variable {var} is not set on the host")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl store::Host for View<'_, Config> {
    async fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self.grant.get(&key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self.grant.all().to_vec())
    }
}

impl runtime::Host for View<'_, Config> {
    async fn get(&mut self, key: String) -> Result<Option<String>, runtime::ConfigError> {
        Ok(self.grant.get(&key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, runtime::ConfigError> {
        Ok(self.grant.all().to_vec())
    }
}

impl rc1::Host for View<'_, Config> {
    async fn get(&mut self, key: String) -> Result<Option<String>, rc1::Error> {
        Ok(self.grant.get(&key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, rc1::Error> {
        Ok(self.grant.all().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let v = ConfigValues::new(
            vec![("a".into(), "1".into())],
            vec![("k".into(), "hunter2".into())],
        );
        let shown = format!("{v:?}");
        assert!(
            shown.contains("<secret>") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(v.get("k"), Some("hunter2"));
    }

    #[test]
    fn unset_variables_name_the_field() {
        let e = expand("url", "x${WASMHIVE_SURELY_UNSET_VAR}").unwrap_err();
        assert!(e.starts_with("config.url:"), "{e}");
        assert_eq!(expand("k", "plain").unwrap(), "plain");
    }
}
