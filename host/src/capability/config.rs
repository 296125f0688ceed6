//! Configuration and secrets: `wasi:config` in the three shapes found in the wild:
//! `wasi:config/store@0.2.0-draft` (wasmtime, Spin), `wasi:config/runtime@0.2.0-draft`
//! (wasmCloud) and `wasi:config/store@0.2.0-rc.1`.
//!
//! Manifest: `[config]` (string values; `${VAR}` is expanded from the host's
//! environment at deploy time) and `[secrets]` (`{ env = "VAR" }` or `{ file = "path" }`,
//! read at deploy time). Both share one namespace of keys. A variable or file that
//! cannot be read refuses the deploy, naming the field (never the value). Secret
//! values are never logged: [`ConfigValues`]' `Debug` shows their keys only.
//!
//! What a deploy may read is the host operator's decision
//! ([`DeployAccess`](crate::config::DeployAccess)): environment variables only with a
//! prefix in `[config] env_prefixes` (none by default), files only under `[secrets]
//! dirs` (by default the manifest's own directory tree, when it was deployed from
//! this machine). A relative `file` resolves against the manifest's directory. Paths
//! are checked as written (`..` resolved) and again after symlinks are followed, and a
//! path outside is refused before the file is touched.

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

/// `{ env = "VAR" }` or `{ file = "path" }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

impl SecretSource {
    /// Checks what was written (exactly one of `env`, `file`); `field` is its key in
    /// `table`.
    pub fn from_raw(
        table: &Table<'_>,
        field: &str,
        raw: Spanned<RawSecret>,
    ) -> Result<SecretSource, ManifestError> {
        let span = raw.span();
        match raw.into_inner() {
            RawSecret {
                env: Some(e),
                file: None,
            } => Ok(SecretSource::Env(e)),
            RawSecret {
                env: None,
                file: Some(f),
            } => Ok(SecretSource::File(f)),
            _ => Err(table.invalid(
                span,
                field,
                "give exactly one of { env = \"VAR\" } or { file = \"path\" }",
            )),
        }
    }

    /// Reads the value, within what the host lets a deploy read (`access`; see the
    /// module docs); `field` names the manifest field in errors.
    pub fn read(
        &self,
        field: &str,
        access: &crate::config::DeployAccess,
        manifest_dir: Option<&std::path::Path>,
    ) -> Result<String, String> {
        match self {
            SecretSource::Env(var) => env_var(field, var, &access.env_prefixes),
            SecretSource::File(path) => secret_file(field, path, &access.secret_dirs, manifest_dir),
        }
    }
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
            let source = SecretSource::from_raw(component, &field, secret)?;
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

    /// Expands `${VAR}` in values from the host environment and reads secrets, as far
    /// as the host lets deploys read.
    fn grant(spec: &ConfigSpec, cx: &GrantContext<'_>) -> Result<ConfigValues, String> {
        let access = &cx.host.access;
        let mut values = Vec::with_capacity(spec.values.len());
        for (key, raw) in &spec.values {
            values.push((key.clone(), expand(key, raw, &access.env_prefixes)?));
        }
        let mut secrets = Vec::with_capacity(spec.secrets.len());
        for (key, source) in &spec.secrets {
            let value = source.read(&format!("secrets.{key}"), access, cx.manifest_dir)?;
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

/// The host's value of `var`, if the host lets deploys read it; `field` names the
/// manifest field in errors.
fn env_var(field: &str, var: &str, prefixes: &[String]) -> Result<String, String> {
    if !prefixes.iter().any(|p| var.starts_with(p.as_str())) {
        let allowed = if prefixes.is_empty() {
            "this host lets deploys read no environment variables".to_string()
        } else {
            format!(
                "this host lets deploys read only environment variables starting with {}",
                prefixes
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(format!(
            "{field}: ${var}: {allowed} (the operator sets [config] env_prefixes in the host config)"
        ));
    }
    std::env::var(var)
        .map_err(|_| format!("{field}: environment variable {var} is not set on the host"))
}

/// Reads a secret file, if it lies under a directory the host lets deploys read:
/// `dirs`, or when that is empty the manifest's own directory (when known).
fn secret_file(
    field: &str,
    path: &str,
    dirs: &[std::path::PathBuf],
    manifest_dir: Option<&std::path::Path>,
) -> Result<String, String> {
    use std::path::{Path, PathBuf};
    let written = Path::new(path);
    let full = match (written.is_absolute(), manifest_dir) {
        (true, _) => written.to_path_buf(),
        (false, Some(dir)) => dir.join(written),
        (false, None) => {
            return Err(format!(
                "{field}: {path:?} is relative, and this deploy did not come from this machine: \
                 write an absolute path under the host's [secrets] dirs"
            ));
        }
    };
    let roots: Vec<PathBuf> = if dirs.is_empty() {
        manifest_dir.map(Path::to_path_buf).into_iter().collect()
    } else {
        dirs.iter()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()))
            .collect()
    };
    let inside = |p: &Path| {
        roots.iter().any(|r| {
            p.starts_with(lexical(r)) || std::fs::canonicalize(r).is_ok_and(|c| p.starts_with(c))
        })
    };
    let outside = || {
        let allowed = if roots.is_empty() {
            "no directory (this deploy came from another machine)".to_string()
        } else {
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{field}: {path:?} is outside the directories this host lets deploys read secrets \
             from ({allowed}); the operator lists them in [secrets] dirs in the host config"
        )
    };
    let written_path = lexical(&full);
    if !inside(&written_path) {
        return Err(outside());
    }
    let real = std::fs::canonicalize(&written_path)
        .map_err(|e| format!("{field}: cannot read {path}: {}", e.kind()))?;
    if !inside(&real) {
        return Err(outside());
    }
    std::fs::read_to_string(&real)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("{field}: cannot read {path}: {}", e.kind()))
}

/// `path` with `.` and `..` resolved without touching the file system.
fn lexical(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `raw` with each `${VAR}` replaced by the host's value of `VAR` (if the host lets
/// deploys read it).
fn expand(key: &str, raw: &str, prefixes: &[String]) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("config.{key}: unclosed \"${{\" in {raw:?}"))?;
        let var = &after[..end];
        let value = env_var(&format!("config.{key}"), var, prefixes)?;
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
        let any = ["WASMHIVE_SURELY".to_string()];
        let e = expand("url", "x${WASMHIVE_SURELY_UNSET_VAR}", &any).unwrap_err();
        assert!(
            e.starts_with("config.url:") && e.contains("is not set"),
            "{e}"
        );
        assert_eq!(expand("k", "plain", &[]).unwrap(), "plain");
    }

    #[test]
    fn only_allowed_variables_are_read() {
        let e = expand("home", "${HOME}", &[]).unwrap_err();
        assert!(
            e.contains("config.home: $HOME: this host lets deploys read no"),
            "{e}"
        );
        let e = expand("home", "${HOME}", &["APP_".into()]).unwrap_err();
        assert!(e.contains("starting with \"APP_\""), "{e}");
        assert!(env_var("secrets.k", "PATH", &["PA".into()]).is_ok());
    }

    #[test]
    fn secret_files_stay_inside_the_allowed_directories() {
        let root = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(root.path()).unwrap();
        let app = dir.join("app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("db.txt"), "pw\n").unwrap();
        std::fs::write(dir.join("outside.txt"), "no").unwrap();
        // Relative to the manifest, inside its tree.
        assert_eq!(secret_file("s", "db.txt", &[], Some(&app)).unwrap(), "pw");
        // Out of it, by `..`, by absolute path, or by symlink.
        for path in ["../outside.txt", "/etc/passwd"] {
            let e = secret_file("secrets.k", path, &[], Some(&app)).unwrap_err();
            assert!(
                e.starts_with("secrets.k:") && e.contains("is outside"),
                "{path}: {e}"
            );
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("outside.txt"), app.join("link.txt")).unwrap();
            let e = secret_file("s", "link.txt", &[], Some(&app)).unwrap_err();
            assert!(e.contains("is outside"), "{e}");
        }
        // From another machine: no default directory, relative paths refused.
        assert!(secret_file("s", &app.join("db.txt").display().to_string(), &[], None).is_err());
        assert!(
            secret_file("s", "db.txt", &[], None)
                .unwrap_err()
                .contains("relative")
        );
        // An operator's directory list replaces the default.
        let dirs = vec![dir.clone()];
        assert_eq!(
            secret_file(
                "s",
                &dir.join("outside.txt").display().to_string(),
                &dirs,
                None
            )
            .unwrap(),
            "no"
        );
    }
}
