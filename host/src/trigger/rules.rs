//! `[components.NAME.auth]`: who may call a component's routes, read by the HTTP
//! trigger with its `routes`. The app-level verifiers (`[auth]`) are read by
//! [`crate::manifest::auth`]; a component's rules are checked against them there.

use crate::section::{ManifestError, Table};

/// `require` of `[components.NAME.auth]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// Public: no credentials asked for (the default).
    #[default]
    None,
    /// A valid JWT.
    Jwt,
    /// A valid API key.
    ApiKey,
    /// Either.
    Any,
}

/// Roles and scopes a request must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// At least one of these roles (empty: any).
    pub roles: Vec<String>,
    /// All of these scopes (in the space-separated `scope` claim).
    pub scopes: Vec<String>,
}

/// `[components.NAME.auth]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentAuthSpec {
    /// What credentials a request must carry.
    pub require: Require,
    /// The component-wide rule.
    pub rule: Rule,
    /// Per-route overrides, keyed by the route exactly as written in `routes`.
    pub routes: Vec<(String, Rule)>,
    /// Where the table is written (for errors found against the app's `[auth]`).
    pub span: std::ops::Range<usize>,
}

fn rule(t: &mut Table<'_>) -> Result<Rule, ManifestError> {
    let rule = Rule {
        roles: t.take_or_default("roles")?,
        scopes: t.take_or_default("scopes")?,
    };
    for (what, list) in [("roles", &rule.roles), ("scopes", &rule.scopes)] {
        if let Some(bad) = list.iter().find(|r| r.is_empty() || r.contains([' ', ','])) {
            return Err(t.invalid(
                t.span(),
                what,
                format!("{bad:?}: names are non-empty, without spaces or commas"),
            ));
        }
    }
    Ok(rule)
}

/// Reads `[components.NAME.auth]`; `routes` are the component's routes as written.
pub fn read(
    component: &mut Table<'_>,
    routes: &[String],
) -> Result<ComponentAuthSpec, ManifestError> {
    let Some(t) = component.table("auth")? else {
        return Ok(ComponentAuthSpec::default());
    };
    let require: Option<toml::Spanned<String>> = t.take("require")?;
    let require = match require {
        None => Require::None,
        Some(r) => match r.get_ref().as_str() {
            "none" => Require::None,
            "jwt" => Require::Jwt,
            "api_key" => Require::ApiKey,
            "any" => Require::Any,
            other => {
                return Err(t.invalid(
                    r.span(),
                    "require",
                    format!("{other:?}: expected \"jwt\", \"api_key\", \"any\" or \"none\""),
                ));
            }
        },
    };
    let top = rule(t)?;
    let mut overrides = Vec::new();
    for (pattern, mut table) in t.tables("routes")? {
        if !routes.iter().any(|r| r == pattern.get_ref()) {
            return Err(t.invalid(
                pattern.span(),
                &format!("routes.{:?}", pattern.get_ref()),
                format!(
                    "{:?} is not one of this component's routes ({})",
                    pattern.get_ref(),
                    routes.join(", ")
                ),
            ));
        }
        let r = rule(&mut table)?;
        table.finish()?;
        overrides.push((pattern.into_inner(), r));
    }
    let has_rules = !top.roles.is_empty() || !top.scopes.is_empty() || !overrides.is_empty();
    if require == Require::None && has_rules {
        return Err(t.invalid(
            t.span(),
            "require",
            "roles or scopes on a public component would never be checked: set require = \"jwt\", \"api_key\" or \"any\"",
        ));
    }
    Ok(ComponentAuthSpec {
        require,
        rule: top,
        routes: overrides,
        span: t.span(),
    })
}
