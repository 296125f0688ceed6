//! The gateway's guard, between routing and admission: the host-wide per-client
//! rate limit, then the route's authentication and authorization, then its rate
//! limit. A refused request is answered here (401, 403, 429) and never reaches the
//! component: its invocation count does not move.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::apps::DeployedComponent;
use crate::auth::{Identity, Refusal};
use crate::body::{self, Body};
use crate::limit::RateKey;
use crate::limit::{Decision, Limiter};
use crate::listener::{IpRange, PeerAddr};

/// What the guard needs from the host configuration.
pub struct GuardConfig {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpRange>,
    /// The host-wide per-client limit.
    pub host_limit: Option<Arc<Limiter>>,
}

/// What a request that passed carries on.
#[derive(Default)]
pub struct Passed {
    /// Who is calling, when the route asked.
    pub identity: Option<Arc<Identity>>,
    /// The route's rate limit decision (its headers go on the response).
    pub limit: Option<Decision>,
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not a trusted proxy itself.
pub fn client_ip(
    peer: Option<&PeerAddr>,
    headers: &HeaderMap,
    trusted: &[IpRange],
) -> Option<IpAddr> {
    let peer = peer?.0.ip();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else { break };
        for entry in text.split(',').rev() {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return Some(client);
            };
            client = ip;
            if !is_trusted(ip) {
                return Some(client);
            }
        }
    }
    Some(client)
}

impl GuardConfig {
    /// The host-wide limit, before routing: the 429 to send, if over.
    pub fn host_limit(&self, ip: Option<IpAddr>) -> Option<Response<Body>> {
        let (Some(limiter), Some(ip)) = (&self.host_limit, ip) else {
            return None;
        };
        let d = limiter.check(&ip.to_string());
        (!d.allowed).then(|| too_many(&d))
    }

    /// The route's checks: authentication, authorization, its rate limit.
    pub async fn check(
        &self,
        component: &DeployedComponent,
        method: &Method,
        pattern: &str,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
    ) -> Result<Passed, Box<Response<Body>>> {
        let mut passed = Passed::default();
        if let Some(policy) = &component.auth {
            match policy.check(method, pattern, headers).await {
                Ok(identity) => passed.identity = Some(identity),
                Err(refusal) => {
                    tracing::info!(
                        component = %component.id,
                        client = ?ip,
                        refusal = ?refusal,
                        "request refused at the gateway"
                    );
                    return Err(Box::new(refused(&refusal)));
                }
            }
        }
        if let Some((limiter, key)) = &component.rate_limit {
            let key = match (key, &passed.identity, ip) {
                (RateKey::Global, _, _) => "global".to_string(),
                (RateKey::Subject, Some(id), _) => format!("sub:{}", id.subject),
                (_, _, Some(ip)) => format!("ip:{ip}"),
                (_, _, None) => "ip:unknown".to_string(),
            };
            let d = limiter.check(&key);
            if !d.allowed {
                return Err(Box::new(too_many(&d)));
            }
            passed.limit = Some(d);
        }
        Ok(passed)
    }
}

/// 429 with the limit's headers.
fn too_many(d: &Decision) -> Response<Body> {
    let mut r = body::json(
        StatusCode::TOO_MANY_REQUESTS,
        &serde_json::json!({
            "error": "rate_limited",
            "error_description": format!("too many requests; retry in {} s", d.reset_secs.max(1)),
        }),
    );
    d.set_headers(r.headers_mut());
    r
}

/// 401 with `WWW-Authenticate` per accepted scheme, or 403; a JSON body either way.
fn refused(refusal: &Refusal) -> Response<Body> {
    let quote = |s: &str| s.replace(['"', '\\'], "'");
    match refusal {
        Refusal::Unauthenticated {
            schemes,
            description,
        } => {
            let mut r = body::json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "invalid_token", "error_description": description}),
            );
            for scheme in schemes {
                let value = format!(
                    "{scheme} error=\"invalid_token\", error_description=\"{}\"",
                    quote(description)
                );
                if let Ok(v) = HeaderValue::from_str(&value) {
                    r.headers_mut().append(http::header::WWW_AUTHENTICATE, v);
                }
            }
            r
        }
        Refusal::Forbidden { description } => {
            let mut r = body::json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "insufficient_scope", "error_description": description}),
            );
            let value = format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                quote(description)
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = vec![IpRange::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 6.6.6.6, 10.0.0.7"),
        );
        let peer = |ip: &str| PeerAddr(format!("{ip}:1000").parse().unwrap());
        // From a trusted proxy: the right-most untrusted entry (what the proxy saw).
        assert_eq!(
            client_ip(Some(&peer("10.0.0.2")), &h, &trusted),
            Some("6.6.6.6".parse().unwrap())
        );
        // From anyone else: the peer, whatever the header says.
        assert_eq!(
            client_ip(Some(&peer("8.8.8.8")), &h, &trusted),
            Some("8.8.8.8".parse().unwrap())
        );
        assert_eq!(
            client_ip(Some(&peer("10.0.0.2")), &HeaderMap::new(), &trusted),
            Some("10.0.0.2".parse().unwrap())
        );
    }
}
