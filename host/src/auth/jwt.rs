//! JWT verification against a JWKS (a file or an http(s) URL) or an HMAC secret.
//!
//! Accepted: RS256/384/512 and PS256/384/512 with RSA keys, ES256 (P-256) and ES384
//! (P-384) with EC keys, EdDSA with Ed25519 keys, each only with a key of its kind.
//! HS256/384/512 only with an explicit `secret`: a symmetric key in a JWKS is ignored,
//! and an HMAC token is never checked against a public key (key confusion). `alg:
//! none` is always refused. `iss`, `aud`, `sub` and `exp` are required; `exp` and
//! `nbf` are checked with the configured leeway.
//!
//! A token naming a key id (`kid`) the verifier does not know makes it re-read its
//! JWKS once (at most every [`MIN_REFRESH`]), so keys rotate without a restart.
//!
//! Verified tokens are kept (up to `[gateway] jwt_cache` of them, for at most
//! [`CACHE_TTL`] and never past their `exp`): a client sends the same token with every
//! request, and checking a signature costs more than the rest of a small request. A
//! token is looked up by its whole text, and its `nbf`/`exp` are checked on every hit.
//! The price: a key removed from the JWKS is still honoured for tokens verified with
//! it within the last [`CACHE_TTL`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::Identity;
use crate::config::DeployAccess;
use crate::manifest::auth::JwtSpec;

/// The shortest time between two JWKS refreshes caused by unknown key ids.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// How long a verified token is kept at most.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
/// Longest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long fetching a JWKS URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// Where the public keys come from.
enum KeySource {
    File {
        path: String,
        access: DeployAccess,
        manifest_dir: Option<PathBuf>,
    },
    Url(String),
}

/// One usable key and the algorithms it may verify.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algs: Vec<Algorithm>,
}

/// Verifies an app's JWTs.
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    roles_claim: String,
    leeway: u64,
    source: Option<KeySource>,
    keys: ArcSwap<Vec<Key>>,
    hmac: Option<DecodingKey>,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    cache: TokenCache,
}

/// Verified tokens, by their text.
struct TokenCache {
    max: usize,
    entries: std::sync::RwLock<std::collections::HashMap<Box<str>, Cached>>,
}

struct Cached {
    identity: Arc<Identity>,
    /// Unix seconds, leeway applied.
    not_before: u64,
    expires: u64,
    stored: Instant,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    fn get(&self, token: &str) -> Option<Arc<Identity>> {
        if self.max == 0 {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let c = entries.get(token)?;
        let now = unix_now();
        (now >= c.not_before && now < c.expires && c.stored.elapsed() < CACHE_TTL)
            .then(|| c.identity.clone())
    }

    fn put(&self, token: &str, identity: &Arc<Identity>, claims: &serde_json::Value, leeway: u64) {
        if self.max == 0 {
            return;
        }
        let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) else {
            return;
        };
        let nbf = claims
            .get("nbf")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max {
            let now = unix_now();
            entries.retain(|_, c| now < c.expires && c.stored.elapsed() < CACHE_TTL);
            if entries.len() >= self.max {
                entries.clear();
            }
        }
        entries.insert(
            token.into(),
            Cached {
                identity: identity.clone(),
                not_before: nbf.saturating_sub(leeway),
                expires: exp.saturating_add(leeway),
                stored: Instant::now(),
            },
        );
    }
}

impl JwtVerifier {
    /// Builds the verifier: reads (or fetches) the JWKS and the secret now, so a
    /// deploy with keys that cannot be read is refused.
    pub async fn build(
        spec: &JwtSpec,
        access: &DeployAccess,
        manifest_dir: Option<&Path>,
        cache: usize,
    ) -> Result<JwtVerifier, String> {
        let source = spec.jwks.as_ref().map(|j| {
            if j.starts_with("http://") || j.starts_with("https://") {
                KeySource::Url(j.clone())
            } else {
                KeySource::File {
                    path: j.clone(),
                    access: access.clone(),
                    manifest_dir: manifest_dir.map(Path::to_path_buf),
                }
            }
        });
        let keys = match &source {
            Some(s) => load(s).await?,
            None => Vec::new(),
        };
        let hmac = match &spec.secret {
            Some(secret) => {
                let value = secret.read("auth.jwt.secret", access, manifest_dir)?;
                if value.len() < 32 {
                    return Err(
                        "auth.jwt.secret: an HMAC secret needs at least 32 bytes".to_string()
                    );
                }
                Some(DecodingKey::from_secret(value.as_bytes()))
            }
            None => None,
        };
        Ok(JwtVerifier {
            issuer: spec.issuer.clone(),
            audience: spec.audience.clone(),
            roles_claim: spec.roles_claim.clone(),
            leeway: spec.leeway.as_secs(),
            source,
            keys: ArcSwap::from_pointee(keys),
            hmac,
            last_refresh: tokio::sync::Mutex::new(None),
            cache: TokenCache {
                max: cache,
                entries: Default::default(),
            },
        })
    }

    /// Verifies `token`; the error says why not (for the client: no secrets in it).
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, String> {
        if let Some(identity) = self.cache.get(token) {
            return Ok(identity);
        }
        let claims = self.verify_signature(token).await?;
        let identity = Arc::new(self.identity(&claims));
        self.cache.put(token, &identity, &claims, self.leeway);
        Ok(identity)
    }

    /// Checks the signature and the claims; returns the claims.
    async fn verify_signature(&self, token: &str) -> Result<serde_json::Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            if alg_is_none(token) {
                "alg none is not accepted".to_string()
            } else {
                "malformed token".to_string()
            }
        })?;
        let claims = if HMAC_ALGS.contains(&header.alg) {
            let Some(key) = &self.hmac else {
                return Err(format!(
                    "{:?} tokens are not accepted (this app verifies signatures with public keys)",
                    header.alg
                ));
            };
            self.decode(token, header.alg, key, &HMAC_ALGS)?
        } else {
            let keys = self.keys_for(header.kid.as_deref()).await?;
            let mut last = "no key for this token's algorithm".to_string();
            let mut verified = None;
            for k in keys.iter().filter(|k| match &header.kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            }) {
                if !k.algs.contains(&header.alg) {
                    last = format!("the key does not verify {:?}", header.alg);
                    continue;
                }
                match self.decode(token, header.alg, &k.key, &k.algs) {
                    Ok(c) => {
                        verified = Some(c);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            verified.ok_or(last)?
        };
        Ok(claims)
    }

    /// The keys to try for `kid`; an unknown kid refreshes the JWKS first (rate
    /// limited).
    async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<Vec<Key>>, String> {
        let known = |keys: &Vec<Key>| match kid {
            Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => !keys.is_empty(),
        };
        let keys = self.keys.load_full();
        if known(&keys) {
            return Ok(keys);
        }
        let Some(source) = &self.source else {
            return Err("unknown key".into());
        };
        let mut last = self.last_refresh.lock().await;
        // Another request may have refreshed while this one waited.
        let keys = self.keys.load_full();
        if known(&keys) {
            return Ok(keys);
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return Err("unknown key".into());
        }
        *last = Some(Instant::now());
        match load(source).await {
            Ok(fresh) => {
                tracing::info!(keys = fresh.len(), "JWKS refreshed for an unknown key id");
                self.keys.store(Arc::new(fresh));
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys I have"),
        }
        let keys = self.keys.load_full();
        if known(&keys) {
            Ok(keys)
        } else {
            Err("unknown key".into())
        }
    }

    fn decode(
        &self,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
        allowed: &[Algorithm],
    ) -> Result<serde_json::Value, String> {
        use jsonwebtoken::errors::ErrorKind;
        let mut v = Validation::new(alg);
        // Only algorithms of the key's own family (the library checks the key's
        // family against each of them, and the token's against the list).
        v.algorithms = allowed.iter().copied().filter(|a| *a == alg).collect();
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.required_spec_claims = ["exp", "iss", "aud", "sub"]
            .into_iter()
            .map(String::from)
            .collect::<HashSet<_>>();
        jsonwebtoken::decode::<serde_json::Value>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not yet valid",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::InvalidAudience => "wrong audience",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "algorithm not accepted for this key",
                    ErrorKind::MissingRequiredClaim(c) => {
                        return format!("missing claim {c}");
                    }
                    _ => "malformed token",
                }
                .to_string()
            })
    }

    fn identity(&self, claims: &serde_json::Value) -> Identity {
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            match v {
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect(),
                Some(serde_json::Value::String(s)) => s
                    .split([' ', ','])
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            }
        };
        Identity::new(
            claims
                .get("sub")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string(),
            strings(claims.get(&self.roles_claim)),
            strings(claims.get("scope").or_else(|| claims.get("scp"))),
            "jwt",
            claims,
        )
    }
}

/// Whether a token's header says `"alg": "none"` (to say so, rather than "malformed").
fn alg_is_none(token: &str) -> bool {
    use base64::Engine;
    let Some(head) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|h| {
            h.get("alg")
                .and_then(|a| a.as_str())
                .map(str::to_ascii_lowercase)
        })
        .is_some_and(|a| a == "none")
}

/// Reads or fetches the JWKS and turns it into usable keys.
async fn load(source: &KeySource) -> Result<Vec<Key>, String> {
    let text = match source {
        KeySource::File {
            path,
            access,
            manifest_dir,
        } => crate::capability::config::SecretSource::File(path.clone()).read(
            "auth.jwt.jwks",
            access,
            manifest_dir.as_deref(),
        )?,
        KeySource::Url(url) => fetch(url).await?,
    };
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("auth.jwt.jwks: not a JWKS document ({e})"))?;
    let keys: Vec<Key> = set.keys.iter().filter_map(key_of).collect();
    if keys.is_empty() {
        return Err(
            "auth.jwt.jwks: no usable key (RSA, EC P-256/P-384 or Ed25519) in the JWKS".into(),
        );
    }
    Ok(keys)
}

async fn fetch(url: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("auth.jwt.jwks: cannot fetch {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("auth.jwt.jwks: {url} answered {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("auth.jwt.jwks: reading {url}: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "auth.jwt.jwks: {url} is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
    }
    String::from_utf8(body).map_err(|_| format!("auth.jwt.jwks: {url} is not text"))
}

/// A JWK as a key with the algorithms its type allows (narrowed by its `alg`).
fn key_of(jwk: &Jwk) -> Option<Key> {
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // Symmetric keys are never taken from a JWKS.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let algs = match jwk.common.key_algorithm {
        Some(ka) => {
            let named: Option<Algorithm> = format!("{ka:?}").parse().ok();
            family.into_iter().filter(|a| Some(*a) == named).collect()
        }
        None => family,
    };
    if algs.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        key,
        algs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn verifier() -> (JwtVerifier, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        std::fs::write(
            dir.path().join("jwks.json"),
            format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k","x":"{x}"}},{{"kty":"oct","k":"c2VjcmV0","kid":"sym"}}]}}"#),
        )
        .unwrap();
        let spec = JwtSpec {
            issuer: "i".into(),
            audience: "a".into(),
            jwks: Some("jwks.json".into()),
            secret: None,
            roles_claim: "roles".into(),
            leeway: Duration::from_secs(0),
        };
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let v = JwtVerifier::build(&spec, &DeployAccess::default(), Some(&root), 16)
            .await
            .unwrap();
        (v, dir)
    }

    #[tokio::test]
    async fn symmetric_jwks_keys_are_ignored() {
        let (v, _dir) = verifier().await;
        let keys = v.keys.load();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].algs, [Algorithm::EdDSA]);
    }

    #[tokio::test]
    async fn hostile_tokens_are_refused_never_a_panic() {
        let (v, _dir) = verifier().await;
        // A deterministic stream of hostile strings: random base64url-ish segments,
        // dots in odd places, huge and empty parts, JSON headers with odd algs.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
        let headers = [
            r#"{"alg":"none"}"#,
            r#"{"alg":"NONE","kid":"k"}"#,
            r#"{"alg":"HS256","kid":"sym"}"#,
            r#"{"alg":"EdDSA","kid":"k"}"#,
            r#"{"alg":"EdDSA"}"#,
            r#"{"alg":"RS256","kid":"k"}"#,
            r#"{"alg":"EdDSA","kid":"../../etc/passwd"}"#,
            r#"{"alg":["EdDSA"]}"#,
            "not json",
        ];
        for i in 0..3000 {
            let token = if i % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                    .collect::<String>()
            } else {
                let h = headers[(next() % headers.len() as u64) as usize];
                let body = format!(
                    r#"{{"iss":"i","aud":"a","sub":"s","exp":{}}}"#,
                    next() % 4_000_000_000
                );
                let sig: Vec<u8> = (0..(next() % 80)).map(|_| next() as u8).collect();
                format!(
                    "{}.{}.{}",
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, h),
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, body),
                    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig)
                )
            };
            assert!(v.verify(&token).await.is_err(), "accepted {token:?}");
        }
        assert!(alg_is_none(&format!(
            "{}.e30.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                r#"{"alg":"none"}"#
            )
        )));
    }
}
