//! `allowed_outbound_hosts` patterns: which external HTTP destinations a component may call.
//!
//! A pattern is `scheme://host[:port]`:
//! - scheme `http`, `https`, or `*` (either);
//! - host an exact name or IP, `*.example.com` (any subdomain), or `*` (any host);
//! - port a number or `*`; when absent, the scheme's default (80 / 443).
//!
//! No paths, no credentials. Anything not matched is denied.

use std::fmt;

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.suffix`: matches `a.suffix`, `a.b.suffix`, not `suffix` itself.
    Subdomain(String),
}

impl OutboundRule {
    /// Parses a pattern; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} needs a scheme, e.g. \"https://api.example.com\""))?;
        let scheme = match scheme {
            "http" | "https" => Some(scheme.to_string()),
            "*" => None,
            other => return Err(format!("scheme {other:?} is not http, https or *")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(format!(
                "{text:?} must be scheme://host[:port] without path or credentials"
            ));
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            None => match scheme.as_deref() {
                Some("http") => Some(80),
                Some("https") => Some(443),
                _ => None,
            },
            Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("invalid port {p:?} in {text:?}"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("invalid host pattern {host:?}"));
            }
            HostPattern::Subdomain(suffix.to_string())
        } else if host.is_empty() || host.contains('*') {
            return Err(format!("invalid host {host:?} in {text:?}"));
        } else {
            HostPattern::Exact(host)
        };
        Ok(OutboundRule {
            scheme,
            host,
            port,
            text: text.to_string(),
        })
    }

    /// Whether a request to `scheme://host:port` is allowed by this rule.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if let Some(s) = &self.scheme
            && s != scheme
        {
            return false;
        }
        if let Some(p) = self.port
            && p != port
        {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h.trim_start_matches('[').trim_end_matches(']') == host,
            HostPattern::Subdomain(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1),
        }
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits `host:port`, `[v6]:port`, `host`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| format!("unclosed '[' in {s:?}"))?;
        let host = &s[..end + 2];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(format!("unexpected {after:?} after host in {s:?}")),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_with_port() {
        let r = OutboundRule::parse("http://127.0.0.1:8081").unwrap();
        assert!(r.matches("http", "127.0.0.1", 8081));
        assert!(!r.matches("http", "127.0.0.1", 8082));
        assert!(!r.matches("https", "127.0.0.1", 8081));
    }

    #[test]
    fn default_ports() {
        let r = OutboundRule::parse("https://api.example.com").unwrap();
        assert!(r.matches("https", "api.example.com", 443));
        assert!(!r.matches("https", "api.example.com", 8443));
    }

    #[test]
    fn wildcards() {
        let r = OutboundRule::parse("*://*.example.com:*").unwrap();
        assert!(r.matches("http", "a.example.com", 1));
        assert!(r.matches("https", "a.b.example.com", 443));
        assert!(!r.matches("https", "example.com", 443));
        assert!(!r.matches("https", "badexample.com", 443));
    }

    #[test]
    fn rejects_paths_and_bad_schemes() {
        assert!(OutboundRule::parse("http://a.com/path").is_err());
        assert!(OutboundRule::parse("ftp://a.com").is_err());
        assert!(OutboundRule::parse("a.com").is_err());
        assert!(OutboundRule::parse("http://a.com:port").is_err());
    }

    #[test]
    fn ipv6() {
        let r = OutboundRule::parse("http://[::1]:8080").unwrap();
        assert!(r.matches("http", "[::1]", 8080));
        assert!(r.matches("http", "::1", 8080));
    }
}
