//! The component's `[config]` values, through `wasi:config/store@0.2.0-draft`.

use crate::bindings::wasi::config0_2_0_draft::store;

/// The value of `key`, or `None` if the manifest does not set it (or config cannot be
/// read: a service falls back to its default either way).
pub fn get(key: &str) -> Option<String> {
    store::get(key).ok().flatten()
}

/// The value of `key` parsed as `T`, or `default` when absent or malformed.
pub fn get_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    get(key)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
