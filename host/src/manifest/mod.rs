//! App manifests, format version 1: read once, checked, into the types the host uses.
//!
//! The document is parsed into a spanned TOML tree ([`crate::section`]); this module
//! reads `manifest_version` and `[app]`, and each `[components.NAME]`'s core keys
//! ([`component`]). Every capability and trigger reads and checks its own keys of the
//! component table (see [`crate::capability`], [`crate::trigger`]); a key nobody
//! takes is refused. Then each trigger checks across the app's components (routes
//! that overlap). Errors name the file, line, column and dotted field path.
//!
//! What this module does not do: read component files, compile them, or compare
//! routes against other deployed apps. The control plane does that at deploy time.

pub mod auth;
mod component;
pub mod rollout;

use std::path::Path;

pub use crate::section::{Location, ManifestError, check_name, parse_duration, parse_size};
pub use component::{
    ComponentSpec, DEFAULT_REQUEST_BUFFER, InstancesSpec, LimitsSpec, PlacementSpec, ScaleSpec,
};

use crate::section::{Source, Table};

/// The only manifest format this host reads.
pub const MANIFEST_VERSION: i64 = 1;

/// A checked app manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `[app]`: name and version.
    pub app: AppMeta,
    /// `[components.*]`, in name order.
    pub components: Vec<ComponentSpec>,
    /// `[auth]`: how callers prove who they are.
    pub auth: auth::AuthSpec,
    /// `[rollout]`: how a new version takes over.
    pub rollout: rollout::RolloutSpec,
}

/// `[app]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMeta {
    /// Unique on a host; lowercase letters, digits and `-`.
    pub name: String,
    /// Free-form version label shown in status (semver recommended).
    pub version: String,
    /// Optional human description.
    pub description: Option<String>,
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Checks manifest text; `origin` labels error locations (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let src = Source { text, origin };
        let mut doc = Table::parse(src)?;
        let version: toml::Spanned<i64> = doc.require("manifest_version")?;
        if *version.get_ref() != MANIFEST_VERSION {
            return Err(doc.invalid(
                version.span(),
                "manifest_version",
                format!(
                    "unsupported manifest version {}; this host reads version {MANIFEST_VERSION}",
                    version.get_ref()
                ),
            ));
        }
        let app = match doc.table("app")? {
            Some(t) => app(t)?,
            None => return Err(doc.missing("app")),
        };
        let auth = auth::read(&mut doc)?;
        let rollout = rollout::read(&mut doc)?;
        let mut components = Vec::new();
        for (name, table) in doc.tables("components")? {
            components.push(ComponentSpec::read(name, table)?);
        }
        doc.finish()?;
        for c in &components {
            let rules = &c.triggers.http.auth;
            auth::check_component(&auth, rules).map_err(|message| ManifestError::Invalid {
                location: src.location(Some(rules.span.clone())),
                field: format!("components.{}.auth", c.name),
                message,
            })?;
        }
        let parts: Vec<_> = components
            .iter()
            .map(|c| (c.name.as_str(), &c.triggers))
            .collect();
        crate::trigger::Specs::check_app(src, &parts)?;
        Ok(Manifest {
            app,
            components,
            auth,
            rollout,
        })
    }

    /// The component with this name, if the manifest has it.
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name == name)
    }
}

fn app(t: &mut Table<'_>) -> Result<AppMeta, ManifestError> {
    let name: toml::Spanned<String> = t.require("name")?;
    check_name(name.get_ref()).map_err(|why| t.invalid(name.span(), "name", why))?;
    let version: toml::Spanned<String> = t.require("version")?;
    let v = version.get_ref();
    if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(t.invalid(
            version.span(),
            "version",
            "must be 1 to 64 characters without spaces (e.g. \"1.2.0\")",
        ));
    }
    Ok(AppMeta {
        name: name.into_inner(),
        version: version.into_inner(),
        description: t.take("description")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GOOD: &str = r#"
manifest_version = 1
[app]
name = "hello"
version = "0.1.0"

[components.hello]
source = "../components/target/wasm32-wasip2/release/hello.wasm"
routes = ["GET /hello", "GET /hello/{name}", "/files/{*path}"]
env = { GREETING = "hi" }
allowed_outbound_hosts = ["http://127.0.0.1:8081"]
[components.hello.limits]
memory = "64MiB"
timeout = "10s"
[components.hello.scale]
max_instances = 50
queue = 100
queue_timeout = "2s"
idle_timeout = "60s"
min_instances = 0
"#;

    #[test]
    fn parses_the_documented_example() {
        let m = Manifest::parse(GOOD, "hello.toml").unwrap();
        assert_eq!(m.app.name, "hello");
        let c = &m.components[0];
        assert_eq!(c.triggers.http.routes.len(), 3);
        assert_eq!(c.triggers.http.routes[0].method, Some(http::Method::GET));
        assert_eq!(c.triggers.http.routes[2].method, None);
        assert_eq!(c.caps.wasi.env, vec![("GREETING".into(), "hi".into())]);
        assert_eq!(c.limits.memory, Some(64 * 1024 * 1024));
        assert_eq!(c.limits.timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.scale.max_instances, Some(50));
        assert_eq!(c.scale.queue_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.scale.min_instances, Some(0));
    }

    #[test]
    fn scale_values_are_checked() {
        let e = err(&GOOD.replace("max_instances = 50", "max_instances = 0"));
        assert!(e.contains("components.hello.scale.max_instances"), "{e}");
        let e = err(&GOOD.replace("min_instances = 0", "min_instances = 60"));
        assert!(e.contains("components.hello.scale.min_instances"), "{e}");
        let e = err(&GOOD.replace("idle_timeout = \"60s\"", "idle_timeout = \"soon\""));
        assert!(e.contains("components.hello.scale.idle_timeout"), "{e}");
    }

    fn err(text: &str) -> String {
        Manifest::parse(text, "m.toml").unwrap_err().to_string()
    }

    #[test]
    fn later_sections_name_their_fields() {
        let with = |extra: &str| format!("{GOOD}\n{extra}\n");
        let ok = Manifest::parse(
            &with(
                "[components.hello.calls.users]\ntimeout = \"300ms\"\nretries = { attempts = 3 }\n\
                 circuit_breaker = { failures = 5 }\nfallback = { body = \"{}\" }\n\
                 [components.hello.messaging]\nsubscribe = [\"orders.*\"]\npublish = [\"x.>\"]\n\
                 [components.hello.keyvalue]\nbuckets = [\"orders\", \"\"]\n\
                 [components.hello.instances]\nmax_requests = 8",
            ),
            "m.toml",
        )
        .unwrap();
        let c = &ok.components[0];
        assert_eq!(c.caps.http.calls[0].0, "users");
        assert_eq!(c.caps.http.calls[0].1.retries.as_ref().unwrap().attempts, 3);
        assert_eq!(
            c.caps.http.calls[0].1.fallback.as_ref().unwrap().status,
            200
        );
        assert_eq!(c.caps.keyvalue.buckets, ["orders", "default"]);
        assert_eq!(c.instances.max_requests, Some(8));

        let e = err(&with(
            "[components.hello.calls.users]\nretries = { attempts = 0 }",
        ));
        assert!(
            e.contains("components.hello.calls.users.retries.attempts"),
            "{e}"
        );
        let e = err(&with(
            "[components.hello.messaging]\nsubscribe = [\"orders.>.x\"]",
        ));
        assert!(e.contains("components.hello.messaging.subscribe[0]"), "{e}");
        let e = err(&with(
            "[components.hello.keyvalue]\nbuckets = [\"no spaces\"]",
        ));
        assert!(e.contains("components.hello.keyvalue.buckets[0]"), "{e}");
        let e = err(&with(
            "[components.hello.secrets]\nk = { env = \"A\", file = \"b\" }",
        ));
        assert!(e.contains("components.hello.secrets.k"), "{e}");
        let e = err(&with("[components.hello.instances]\nmax_requests = 0"));
        assert!(e.contains("components.hello.instances.max_requests"), "{e}");
        let e = err(&with("[components.hello.calls.Users]"));
        assert!(e.contains("components.hello.calls.Users"), "{e}");
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = GOOD.replace("memory = ", "memroy = ");
        let e = err(&text);
        assert!(e.contains("memroy"), "{e}");
        assert!(e.starts_with("m.toml:13:"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_field() {
        let e = err(&GOOD.replace("\"10s\"", "\"10 sekunds\""));
        assert!(e.contains("components.hello.limits.timeout"), "{e}");
        assert!(e.starts_with("m.toml:14:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = err(&GOOD.replace("version = \"0.1.0\"", "version = 1"));
        assert!(e.contains("app.version"), "{e}");
    }

    #[test]
    fn duplicate_route_in_app_is_refused() {
        let text =
            format!("{GOOD}\n[components.other]\nsource = \"x.wasm\"\nroutes = [\"/hello\"]\n");
        let e = err(&text);
        assert!(e.contains("components.other.routes[0]"), "{e}");
        assert!(e.contains("overlaps"), "{e}");
    }

    #[test]
    fn same_path_different_methods_is_fine() {
        let text = format!(
            "{GOOD}\n[components.other]\nsource = \"x.wasm\"\nroutes = [\"POST /hello\"]\n"
        );
        Manifest::parse(&text, "m.toml").unwrap();
    }

    #[test]
    fn wrong_version_is_refused() {
        let e = err(&GOOD.replace("manifest_version = 1", "manifest_version = 2"));
        assert!(e.contains("manifest_version"), "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        let e = err(&GOOD.replace("name = \"hello\"", "name = \"Hello World\""));
        assert!(e.contains("app.name"), "{e}");
    }

    #[test]
    fn a_shared_section_refuses_what_no_owner_takes() {
        // [messaging] is read by the messaging capability (subscribe, publish) and the
        // message trigger (delivery keys); a typo is refused, naming every allowed key.
        let e = err(&format!(
            "{GOOD}\n[components.hello.messaging]\nsubscribe = [\"a\"]\nduarble = true\n"
        ));
        assert!(e.contains("components.hello.messaging.duarble"), "{e}");
        for key in ["subscribe", "publish", "durable", "queue_group", "backoff"] {
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        let m = Manifest::parse(
            &format!(
                "{GOOD}\n[components.hello.messaging]\nsubscribe = [\"a.>\"]\ndurable = true\nbackoff = [\"1s\"]\n"
            ),
            "m.toml",
        )
        .unwrap();
        let c = &m.components[0];
        assert_eq!(c.caps.messaging.subscribe, ["a.>"]);
        assert!(c.triggers.message.durable);
        assert_eq!(c.triggers.message.backoff, [Duration::from_secs(1)]);
    }

    #[test]
    fn an_unknown_component_key_lists_the_keys_of_every_owner() {
        let e = err(&GOOD.replace("env = {", "envv = {"));
        assert!(
            e.contains("components.hello.envv: unknown field `envv`"),
            "{e}"
        );
        for key in [
            "source",
            "routes",
            "env",
            "keyvalue",
            "calls",
            "messaging",
            "scale",
        ] {
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
    }
}
