//! `[auth]`: how an app's callers prove who they are (JWTs, API keys), and each
//! component's rules (`[components.NAME.auth]`, read by the HTTP trigger).
//!
//! This module only reads and checks what is written; the verifiers are built at
//! deploy by [`crate::auth`], which reads the key files and variables (within what the
//! host allows a deploy to read).

use std::time::Duration;

use crate::capability::config::SecretSource;
use crate::section::{ManifestError, Table};

/// Default `roles_claim`.
pub const DEFAULT_ROLES_CLAIM: &str = "roles";
/// Default clock skew allowed on `exp`/`nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Default API key header.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";

/// `[auth]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSpec {
    /// `[auth.jwt]`
    pub jwt: Option<JwtSpec>,
    /// `[auth.api_keys]`
    pub api_keys: Option<ApiKeysSpec>,
    /// Where `[auth]` is written (for errors found when its keys are read at deploy).
    pub location: Option<crate::section::Location>,
}

/// `[auth.jwt]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSpec {
    /// `iss` must equal this.
    pub issuer: String,
    /// `aud` must contain this.
    pub audience: String,
    /// Where the public keys are: a file (relative to the manifest) or an http(s) URL.
    pub jwks: Option<String>,
    /// An HMAC secret (HS256/384/512 tokens are accepted only with one).
    pub secret: Option<SecretSource>,
    /// The claim holding the caller's roles (a string array).
    pub roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// `[auth.api_keys]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeysSpec {
    /// The request header carrying the key.
    pub header: http::HeaderName,
    /// Where the `NAME:KEY` lines are.
    pub keys: SecretSource,
}

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

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

fn secret_source(
    t: &Table<'_>,
    key: &str,
    raw: toml::Spanned<RawSecret>,
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
        _ => Err(t.invalid(
            span,
            key,
            "give exactly one of { env = \"VAR\" } or { file = \"path\" }",
        )),
    }
}

/// Reads `[auth]` from the document.
pub(super) fn read(doc: &mut Table<'_>) -> Result<AuthSpec, ManifestError> {
    let Some(auth) = doc.table("auth")? else {
        return Ok(AuthSpec::default());
    };
    let jwt = match auth.table("jwt")? {
        None => None,
        Some(t) => {
            let issuer: toml::Spanned<String> = t.require("issuer")?;
            let audience: toml::Spanned<String> = t.require("audience")?;
            let jwks: Option<String> = t.take("jwks")?;
            let secret = match t.take::<toml::Spanned<RawSecret>>("secret")? {
                Some(raw) => Some(secret_source(t, "secret", raw)?),
                None => None,
            };
            if jwks.is_none() && secret.is_none() {
                return Err(t.invalid(
                    t.span(),
                    "jwks",
                    "name the keys that sign tokens: jwks = \"keys/jwks.json\" (or an https URL), or secret = { env = \"VAR\" } for HS256",
                ));
            }
            for (value, key) in [(&issuer, "issuer"), (&audience, "audience")] {
                if value.get_ref().is_empty() {
                    return Err(t.invalid(value.span(), key, "must not be empty"));
                }
            }
            Some(JwtSpec {
                issuer: issuer.into_inner(),
                audience: audience.into_inner(),
                jwks,
                secret,
                roles_claim: t
                    .take("roles_claim")?
                    .unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_string()),
                leeway: t.duration("leeway")?.unwrap_or(DEFAULT_LEEWAY),
            })
        }
    };
    let api_keys = match auth.table("api_keys")? {
        None => None,
        Some(t) => {
            let header = t
                .parsed("header", |h| {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("{h:?} is not a header name"))
                })?
                .unwrap_or(http::HeaderName::from_static(DEFAULT_API_KEY_HEADER));
            let raw: toml::Spanned<RawSecret> = t.require("keys")?;
            Some(ApiKeysSpec {
                header,
                keys: secret_source(t, "keys", raw)?,
            })
        }
    };
    Ok(AuthSpec {
        jwt,
        api_keys,
        location: Some(auth.source().location(Some(auth.span()))),
    })
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
pub fn read_component(
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

/// Checks a component's rules against the app's `[auth]` (a component requiring JWTs
/// needs `[auth.jwt]`, and so on); `field` names the component's auth table.
pub fn check_component(app: &AuthSpec, spec: &ComponentAuthSpec) -> Result<(), String> {
    let missing = match spec.require {
        Require::None => None,
        Require::Jwt if app.jwt.is_none() => Some("[auth.jwt]"),
        Require::ApiKey if app.api_keys.is_none() => Some("[auth.api_keys]"),
        Require::Any if app.jwt.is_none() && app.api_keys.is_none() => {
            Some("[auth.jwt] or [auth.api_keys]")
        }
        _ => None,
    };
    if let Some(m) = missing {
        return Err(format!(
            "require = {:?} needs {m} in the manifest",
            match spec.require {
                Require::Jwt => "jwt",
                Require::ApiKey => "api_key",
                _ => "any",
            }
        ));
    }
    if spec.require == Require::ApiKey {
        let any = |f: fn(&Rule) -> bool| f(&spec.rule) || spec.routes.iter().any(|(_, r)| f(r));
        if any(|r| !r.roles.is_empty() || !r.scopes.is_empty()) {
            return Err(
                "roles and scopes come from a JWT's claims; an API key carries none (require \"jwt\" or \"any\")"
                    .into(),
            );
        }
    }
    Ok(())
}

/// `[components.NAME.rate_limit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// Requests allowed per `per`, sustained.
    pub requests: u32,
    /// The window `requests` is counted over.
    pub per: Duration,
    /// Requests allowed at once above the sustained rate (default: `requests`).
    pub burst: u32,
    /// Whose requests are counted together.
    pub key: RateKey,
}

/// `key` of a rate limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RateKey {
    /// Each client address.
    ClientIp,
    /// Each authenticated subject; the client address when there is none.
    #[default]
    Subject,
    /// Everyone together.
    Global,
}

/// Reads `[components.NAME.rate_limit]`.
pub fn read_rate_limit(component: &mut Table<'_>) -> Result<Option<RateLimitSpec>, ManifestError> {
    let Some(t) = component.table("rate_limit")? else {
        return Ok(None);
    };
    let requests = t
        .count("requests", 1, i64::from(u32::MAX))?
        .ok_or_else(|| t.missing("requests"))?;
    let per = t.duration("per")?.unwrap_or(Duration::from_secs(1));
    if per.is_zero() {
        return Err(t.invalid(t.span(), "per", "must be longer than zero"));
    }
    let burst = t
        .count("burst", 1, i64::from(u32::MAX))?
        .unwrap_or(requests);
    let key: Option<toml::Spanned<String>> = t.take("key")?;
    let key = match key {
        None => RateKey::default(),
        Some(k) => match k.get_ref().as_str() {
            "client_ip" => RateKey::ClientIp,
            "subject" => RateKey::Subject,
            "global" => RateKey::Global,
            other => {
                return Err(t.invalid(
                    k.span(),
                    "key",
                    format!("{other:?}: expected \"client_ip\", \"subject\" or \"global\""),
                ));
            }
        },
    };
    Ok(Some(RateLimitSpec {
        requests,
        per,
        burst,
        key,
    }))
}
