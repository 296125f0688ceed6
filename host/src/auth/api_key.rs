//! API keys: `NAME:KEY` entries (one per line, or comma-separated in a variable;
//! a line starting with `#` is a comment);
//! the name becomes the caller's subject. Keys are held as SHA-256 digests and looked
//! up by digest, so a wrong key takes the same path however much of it was right.
//! A key file is re-read when it changes (checked at most once a second), so
//! removing a line revokes that key without a redeploy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use super::Identity;
use crate::capability::config::SecretSource;
use crate::config::DeployAccess;
use crate::manifest::auth::ApiKeysSpec;

/// How often a key file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(1);

/// Key digest → the identity its holder gets.
type Digests = HashMap<[u8; 32], std::sync::Arc<Identity>>;

/// An app's API keys.
pub struct ApiKeys {
    header: HeaderName,
    keys: ArcSwap<Digests>,
    file: Option<Watched>,
}

/// A key file and when it was last looked at.
struct Watched {
    source: SecretSource,
    access: DeployAccess,
    manifest_dir: Option<PathBuf>,
    resolved: Option<PathBuf>,
    state: Mutex<(Instant, Option<SystemTime>)>,
}

impl ApiKeys {
    /// Reads the keys now (a deploy whose keys cannot be read is refused).
    pub fn build(
        spec: &ApiKeysSpec,
        access: &DeployAccess,
        manifest_dir: Option<&Path>,
    ) -> Result<ApiKeys, String> {
        let text = spec.keys.read("auth.api_keys.keys", access, manifest_dir)?;
        let keys = parse(&text)?;
        let file = match &spec.keys {
            SecretSource::File(path) => {
                let resolved = match (Path::new(path).is_absolute(), manifest_dir) {
                    (true, _) => Some(PathBuf::from(path)),
                    (false, Some(d)) => Some(d.join(path)),
                    (false, None) => None,
                };
                let modified = resolved.as_deref().and_then(modified);
                Some(Watched {
                    source: spec.keys.clone(),
                    access: access.clone(),
                    manifest_dir: manifest_dir.map(Path::to_path_buf),
                    resolved,
                    state: Mutex::new((Instant::now(), modified)),
                })
            }
            SecretSource::Env(_) => None,
        };
        Ok(ApiKeys {
            header: spec.header.clone(),
            keys: ArcSwap::from_pointee(keys),
            file,
        })
    }

    /// The key a request presents, if any.
    pub fn presented<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    }

    /// Checks the presented key.
    pub fn verify(&self, headers: &HeaderMap) -> Result<std::sync::Arc<Identity>, String> {
        let Some(key) = self.presented(headers) else {
            return Err("missing credentials".into());
        };
        self.recheck();
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let keys = self.keys.load();
        keys.get(&digest)
            .cloned()
            .ok_or_else(|| "unknown or revoked API key".to_string())
    }

    /// Re-reads the key file if it changed since last looked at.
    fn recheck(&self) {
        let Some(w) = &self.file else { return };
        let Some(path) = &w.resolved else { return };
        {
            let mut state = w.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.0.elapsed() < RECHECK {
                return;
            }
            state.0 = Instant::now();
            let now = modified(path);
            if now == state.1 {
                return;
            }
            state.1 = now;
        }
        let read = w
            .source
            .read("auth.api_keys.keys", &w.access, w.manifest_dir.as_deref())
            .and_then(|t| parse(&t));
        match read {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "API keys re-read");
                self.keys.store(std::sync::Arc::new(keys));
            }
            Err(e) => {
                tracing::warn!(error = %e, "API key file unreadable; keeping the keys I have")
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `NAME:KEY` entries, separated by newlines or commas; `#` starts a comment line.
fn parse(text: &str) -> Result<Digests, String> {
    let mut keys = HashMap::new();
    let entries = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty());
    for (i, entry) in entries.enumerate() {
        let (name, key) = entry
            .split_once(':')
            .ok_or_else(|| format!("auth.api_keys.keys: entry {} is not NAME:KEY", i + 1))?;
        let (name, key) = (name.trim(), key.trim());
        if name.is_empty() || key.len() < 16 {
            return Err(format!(
                "auth.api_keys.keys: entry {} needs a name and a key of at least 16 characters",
                i + 1
            ));
        }
        let identity = Identity::new(
            name.to_string(),
            Vec::new(),
            Vec::new(),
            "api_key",
            &serde_json::json!({ "sub": name }),
        );
        keys.insert(
            Sha256::digest(key.as_bytes()).into(),
            std::sync::Arc::new(identity),
        );
    }
    if keys.is_empty() {
        return Err("auth.api_keys.keys: no NAME:KEY entry".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_names_and_digests() {
        let k = parse(
            "# NAME:KEY, one per line\nmobile:0123456789abcdef0123\n, web : fedcba9876543210fedc ",
        )
        .unwrap();
        assert_eq!(k.len(), 2);
        let d: [u8; 32] = Sha256::digest(b"fedcba9876543210fedc").into();
        assert_eq!(k[&d].subject, "web");
        assert!(parse("nocolon").is_err());
        assert!(parse("a:short").is_err());
        assert!(parse("\n# only a comment\n").is_err());
    }
}
