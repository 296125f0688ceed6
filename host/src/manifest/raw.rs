//! Stage one: the manifest exactly as written, as serde structs.
//!
//! Every struct denies unknown fields, so a typo is an error naming the key rather
//! than a silently ignored setting. Values that need checking beyond their TOML type
//! keep their span (`Spanned`) so stage two can point at the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub manifest_version: Spanned<i64>,
    pub app: RawApp,
    #[serde(default)]
    pub components: BTreeMap<Spanned<String>, RawComponent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    pub name: Spanned<String>,
    pub version: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawComponent {
    pub source: Spanned<String>,
    #[serde(default)]
    pub routes: Vec<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub scale: Option<RawScale>,
    #[serde(default)]
    pub messaging: Option<RawMessaging>,
    #[serde(default)]
    pub keyvalue: Option<RawKeyvalue>,
    #[serde(default)]
    pub config: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub secrets: BTreeMap<Spanned<String>, Spanned<RawSecret>>,
    #[serde(default)]
    pub calls: BTreeMap<Spanned<String>, RawCall>,
    #[serde(default)]
    pub instances: Option<RawInstances>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstances {
    pub max_requests: Option<Spanned<i64>>,
    pub max_concurrent: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCall {
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<RawRetries>>,
    pub circuit_breaker: Option<Spanned<RawBreaker>>,
    pub fallback: Option<Spanned<RawFallback>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    pub attempts: u32,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub failures: u32,
    pub window: Option<String>,
    pub open_for: Option<String>,
    pub half_open_probes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFallback {
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeyvalue {
    #[serde(default)]
    pub buckets: Vec<Spanned<String>>,
    pub max_value_size: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMessaging {
    #[serde(default)]
    pub subscribe: Vec<Spanned<String>>,
    pub queue_group: Option<Spanned<String>>,
    #[serde(default)]
    pub publish: Vec<Spanned<String>>,
    pub durable: Option<Spanned<bool>>,
    pub max_deliver: Option<Spanned<i64>>,
    #[serde(default)]
    pub backoff: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub memory: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScale {
    pub max_instances: Option<Spanned<i64>>,
    pub queue: Option<Spanned<i64>>,
    pub queue_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub min_instances: Option<Spanned<i64>>,
}
