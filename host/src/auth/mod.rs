//! Authentication and authorization at the edge: who is calling ([`Identity`], from
//! a JWT or an API key) and whether they may call this route ([`Policy`]).
//!
//! Built at deploy from the manifest's `[auth]` and each component's
//! `[components.NAME.auth]` ([`crate::manifest::auth`]); key files and variables are
//! read within what the host lets a deploy read (the same rules as secrets). The
//! gateway asks a component's policy before the component is admitted: a refused
//! request is 401 (no or bad credentials) or 403 (authenticated, but a role or scope
//! is missing), and the component never sees it. An admitted request carries the
//! identity to the guest in `wasmhive-auth-*` headers, which clients cannot forge
//! (the gateway strips every client `wasmhive-*` header).

mod api_key;
mod jwt;

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::DeployAccess;
use crate::manifest::auth::AuthSpec;
use crate::trigger::rules::{ComponentAuthSpec, Require, Rule};

pub use api_key::ApiKeys;
pub use jwt::JwtVerifier;

/// `wasmhive-auth-subject`: who is calling.
pub const SUBJECT_HEADER: HeaderName = crate::headers::AUTH_SUBJECT;
/// `wasmhive-auth-roles`: their roles, comma-separated.
pub const ROLES_HEADER: HeaderName = HeaderName::from_static("wasmhive-auth-roles");
/// `wasmhive-auth-method`: `jwt` or `api_key`.
pub const METHOD_HEADER: HeaderName = HeaderName::from_static("wasmhive-auth-method");
/// `wasmhive-auth-claims`: the verified claims as JSON.
pub const CLAIMS_HEADER: HeaderName = HeaderName::from_static("wasmhive-auth-claims");
/// Every identity header, in the order above.
pub const IDENTITY_HEADERS: [HeaderName; 4] =
    [SUBJECT_HEADER, ROLES_HEADER, METHOD_HEADER, CLAIMS_HEADER];

/// A verified caller, with the headers that tell the guest (rendered once).
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub` of a JWT, or an API key's name.
    pub subject: String,
    /// Roles (from the JWT's roles claim; none for an API key).
    pub roles: Vec<String>,
    /// Scopes (the JWT's space-separated `scope` claim).
    pub scopes: Vec<String>,
    /// `jwt` or `api_key`.
    pub method: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Identity {
    /// An identity and its `wasmhive-auth-*` headers (`claims`: the verified claims,
    /// `{"sub": NAME}` for an API key).
    pub fn new(
        subject: String,
        roles: Vec<String>,
        scopes: Vec<String>,
        method: &'static str,
        claims: &serde_json::Value,
    ) -> Identity {
        let claims = serde_json::to_string(claims).unwrap_or_default();
        let headers = [
            (SUBJECT_HEADER, subject.clone()),
            (ROLES_HEADER, roles.join(",")),
            (METHOD_HEADER, method.to_string()),
            (CLAIMS_HEADER, claims),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, HeaderValue::from_str(&value).ok()?)))
        .collect();
        Identity {
            subject,
            roles,
            scopes,
            method,
            headers,
        }
    }

    /// Sets the identity headers on a request to a guest (replacing any).
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credentials, or credentials that do not verify.
    Unauthenticated {
        /// The schemes the route accepts (`Bearer`, `ApiKey`).
        schemes: Vec<&'static str>,
        /// What was wrong, for the client (never a secret).
        description: String,
    },
    /// 403: a verified caller without a required role or scope.
    Forbidden {
        /// What is missing.
        description: String,
    },
}

/// The app's verifiers, shared by its components.
pub struct AppAuth {
    jwt: Option<JwtVerifier>,
    api_keys: Option<ApiKeys>,
}

impl AppAuth {
    /// Builds the app's verifiers: reads JWKS files and key lists, fetches JWKS URLs.
    /// `manifest_dir` is the manifest's directory when deployed from this machine;
    /// `jwt_cache` bounds the verified tokens kept (0: verify every request).
    pub async fn build(
        spec: &AuthSpec,
        access: &DeployAccess,
        manifest_dir: Option<&Path>,
        jwt_cache: usize,
    ) -> Result<Option<Arc<AppAuth>>, String> {
        if spec.jwt.is_none() && spec.api_keys.is_none() {
            return Ok(None);
        }
        let jwt = match &spec.jwt {
            Some(j) => Some(JwtVerifier::build(j, access, manifest_dir, jwt_cache).await?),
            None => None,
        };
        let api_keys = match &spec.api_keys {
            Some(k) => Some(ApiKeys::build(k, access, manifest_dir)?),
            None => None,
        };
        Ok(Some(Arc::new(AppAuth { jwt, api_keys })))
    }
}

/// One component's policy: what its routes require, checked with its app's verifiers.
pub struct Policy {
    app: Arc<AppAuth>,
    require: Require,
    rule: Rule,
    routes: Vec<(crate::routes::RouteSpec, Rule)>,
}

impl Policy {
    /// The policy of a component, or `None` for a public one. Fails closed: rules
    /// that cannot be enforced refuse the deploy rather than leave routes open.
    pub fn new(
        app: Option<&Arc<AppAuth>>,
        spec: &ComponentAuthSpec,
    ) -> Result<Option<Arc<Policy>>, String> {
        if spec.require == Require::None {
            return Ok(None);
        }
        let Some(app) = app else {
            return Err("auth.require needs the app's [auth.jwt] or [auth.api_keys]".into());
        };
        let routes = spec
            .routes
            .iter()
            .map(|(written, rule)| {
                crate::routes::parse_route(written)
                    .map(|route| (route, rule.clone()))
                    .map_err(|why| format!("auth.routes.{written:?}: {why}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Arc::new(Policy {
            app: app.clone(),
            require: spec.require,
            rule: spec.rule.clone(),
            routes,
        })))
    }

    fn schemes(&self) -> Vec<&'static str> {
        match self.require {
            Require::Jwt => vec!["Bearer"],
            Require::ApiKey => vec!["ApiKey"],
            _ => vec!["Bearer", "ApiKey"],
        }
    }

    /// Checks a request (`method`, its headers) that matched the route pattern
    /// `pattern`.
    pub async fn check(
        &self,
        method: &http::Method,
        pattern: &str,
        headers: &HeaderMap,
    ) -> Result<Arc<Identity>, Refusal> {
        let unauthenticated = |description: String| Refusal::Unauthenticated {
            schemes: self.schemes(),
            description,
        };
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let jwt = matches!(self.require, Require::Jwt | Require::Any)
            .then_some(self.app.jwt.as_ref())
            .flatten();
        let keys = matches!(self.require, Require::ApiKey | Require::Any)
            .then_some(self.app.api_keys.as_ref())
            .flatten();
        let identity = match (jwt, bearer, keys) {
            (Some(v), Some(token), _) => v.verify(token).await.map_err(unauthenticated)?,
            (_, _, Some(k)) if k.presented(headers).is_some() => {
                k.verify(headers).map_err(unauthenticated)?
            }
            _ => return Err(unauthenticated("missing credentials".into())),
        };
        let rule = self
            .routes
            .iter()
            .find(|(r, _)| r.path == pattern && r.method.as_ref().is_none_or(|m| m == method))
            .map(|(_, rule)| rule)
            .unwrap_or(&self.rule);
        if !rule.roles.is_empty() && !rule.roles.iter().any(|r| identity.roles.contains(r)) {
            return Err(Refusal::Forbidden {
                description: format!("needs one of the roles {}", rule.roles.join(", ")),
            });
        }
        if let Some(missing) = rule.scopes.iter().find(|s| !identity.scopes.contains(s)) {
            return Err(Refusal::Forbidden {
                description: format!("needs the scope {missing}"),
            });
        }
        Ok(identity)
    }
}
