//! `[auth]`: how an app's callers prove who they are (JWTs, API keys), and each
//! component's rules (`[components.NAME.auth]`, read by the HTTP trigger).
//!
//! This module only reads and checks what is written; the verifiers are built at
//! deploy by [`crate::auth`], which reads the key files and variables (within what the
//! host allows a deploy to read).

use std::time::Duration;

use crate::capability::config::{RawSecret, SecretSource};
use crate::section::{ManifestError, Table};
use crate::trigger::rules::{ComponentAuthSpec, Require, Rule};

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
                Some(raw) => Some(SecretSource::from_raw(t, "secret", raw)?),
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
                keys: SecretSource::from_raw(t, "keys", raw)?,
            })
        }
    };
    Ok(AuthSpec {
        jwt,
        api_keys,
        location: Some(auth.source().location(Some(auth.span()))),
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
