//! Host side of `wasi:config`: the component's `[config]` values (with `${VAR}`
//! expanded at deploy time) and its `[secrets]`, through all three shapes of the
//! interface found in the wild: `wasi:config/store@0.2.0-draft` (wasmtime, Spin),
//! `wasi:config/runtime@0.2.0-draft` (wasmCloud) and `wasi:config/store@0.2.0-rc.1`.
//!
//! Secret values are never logged: [`ConfigValues`]' `Debug` shows keys only.

use super::InstanceState;
use super::bindings::config_rc1::wasi::config0_2_0_rc_1::store as rc1;
use super::bindings::imports::wasi::config0_2_0_draft::{runtime, store};

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

impl store::Host for InstanceState {
    async fn get(&mut self, key: String) -> Result<Option<String>, store::Error> {
        Ok(self.grants().config.get(&key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, store::Error> {
        Ok(self.grants().config.all().to_vec())
    }
}

impl runtime::Host for InstanceState {
    async fn get(&mut self, key: String) -> Result<Option<String>, runtime::ConfigError> {
        Ok(self.grants().config.get(&key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, runtime::ConfigError> {
        Ok(self.grants().config.all().to_vec())
    }
}

impl rc1::Host for InstanceState {
    async fn get(&mut self, key: String) -> Result<Option<String>, rc1::Error> {
        Ok(self.grants().config.get(&key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, rc1::Error> {
        Ok(self.grants().config.all().to_vec())
    }
}
