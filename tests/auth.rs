//! Authentication, authorization and rate limits at the gateway, with real keys made
//! in the test: RSA (openssl), EC P-256 and Ed25519 (rcgen), a JWKS from a file and
//! from a local HTTP server, API keys from a file. Every refusal is checked for its
//! status, its `WWW-Authenticate` and that the component was not invoked.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use wasmhive_e2e::{Host, HostOptions, PATIENCE, Reply, Workspace, client, eventually, send};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

impl Signer {
    /// RSA 2048 made by openssl (ring cannot generate RSA keys).
    fn rsa(ws: &Workspace, kid: &str) -> Signer {
        let path = ws.path().join(format!("{kid}.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .output()
            .expect("openssl is installed");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let modulus = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        let hex_n = String::from_utf8(modulus.stdout).unwrap();
        let n = hex::decode(hex_n.trim().trim_start_matches("Modulus=")).unwrap();
        let pem = std::fs::read(&path).unwrap();
        Signer {
            alg: Algorithm::RS256,
            kid: kid.into(),
            key: EncodingKey::from_rsa_pem(&pem).unwrap(),
            jwk: serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&n), "e": "AQAB"}),
        }
    }

    fn ec(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point[0], 4, "an uncompressed point");
        Signer {
            alg: Algorithm::ES256,
            kid: kid.into(),
            key: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
        }
    }

    fn ed25519(kid: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Signer {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            key: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key_raw())}),
        }
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn jwks(signers: &[&Signer]) -> String {
    serde_json::json!({ "keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() })
        .to_string()
}

fn claims(sub: &str, roles: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "iss": "https://id.example.com", "aud": ["shop", "other"], "sub": sub,
        "roles": roles, "scope": "orders:read orders:write",
        "exp": now() + 600, "iat": now(),
    })
}

/// The inspect fixture behind auth rules; `jwks` is what the manifest's `jwks =`
/// says.
fn manifest(ws: &Workspace, jwks: &str) -> std::path::PathBuf {
    ws.write(
        "keys.txt",
        "# name:key\nmobile:mobile-key-0123456789\nweb:web-key-0123456789abc\n",
    );
    ws.write(
        "app.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "shop"
version = "1.0.0"

[auth.jwt]
issuer = "https://id.example.com"
audience = "shop"
jwks = "{jwks}"
leeway = "5s"
[auth.api_keys]
header = "x-api-key"
keys = {{ file = "keys.txt" }}

[components.orders]
source = "{{component:inspect-request}}"
routes = ["GET /orders/{{id}}", "POST /orders", "/public"]
[components.orders.auth]
require = "jwt"
roles = ["customer"]
scopes = ["orders:write"]
[components.orders.auth.routes."GET /orders/{{id}}"]
roles = ["customer", "support"]
scopes = []

[components.reports]
source = "{{component:inspect-request}}"
routes = ["/reports"]
[components.reports.auth]
require = "any"

[components.open]
source = "{{component:inspect-request}}"
routes = ["/open"]
[components.open.rate_limit]
requests = 2
per = "2s"
burst = 2
key = "client_ip"
"#
        ),
    )
}

fn invocations(host: &Host, component: &str) -> u64 {
    host.component_status("shop", component)["invocations"]
        .as_u64()
        .unwrap()
}

async fn get(url: String, headers: &[(&str, &str)]) -> Reply {
    let mut r = client().get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    send(r).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts a 401 whose `WWW-Authenticate` names `scheme` and says `why`.
fn assert_401(r: &Reply, scheme: &str, why: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    let challenges: Vec<&str> = r
        .headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        challenges.iter().any(
            |c| c.starts_with(&format!("{scheme} error=\"invalid_token\"")) && c.contains(why)
        ),
        "{why}: {challenges:?}"
    );
    let body = r.json();
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["error_description"].as_str().unwrap().contains(why),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_and_api_keys_are_checked_before_the_component_runs() {
    let ws = Workspace::new();
    let rsa = Signer::rsa(&ws, "rsa-1");
    let ec = Signer::ec("ec-1");
    let ed = Signer::ed25519("ed-1");
    ws.write("jwks.json", &jwks(&[&rsa, &ec, &ed]));
    let host = Host::start(&[&manifest(&ws, "jwks.json")]);
    let url = |p: &str| host.url(p);

    // Good tokens of every key type reach the guest, with the identity headers.
    for signer in [&rsa, &ec, &ed] {
        let r = send(client().post(url("/orders")).header(
            "authorization",
            bearer(&signer.token(claims("alice", &["customer"]))),
        ))
        .await;
        assert_eq!(r.status, 200, "{:?}: {r}", signer.alg);
        let v = r.json();
        let header = |n: &str| wasmhive_e2e::seen_header(&v, n).join(",");
        assert_eq!(header("wasmhive-auth-subject"), "alice");
        assert_eq!(header("wasmhive-auth-roles"), "customer");
        assert_eq!(header("wasmhive-auth-method"), "jwt");
        let claims: serde_json::Value =
            serde_json::from_str(&wasmhive_e2e::seen_header(&v, "wasmhive-auth-claims")[0])
                .unwrap();
        assert_eq!(claims["sub"], "alice");
    }
    let served = invocations(&host, "orders");
    assert_eq!(served, 3);

    // Every refusal: 401 or 403, and the component never runs.
    let hs_key = EncodingKey::from_secret(b"a-shared-secret-that-nobody-configured");
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(&hs_header, &claims("mallory", &["customer"]), &hs_key).unwrap();
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("mallory", &["customer"]).to_string().as_bytes())
    );
    let mut forged = rsa.token(claims("alice", &["customer"]));
    forged.replace_range(forged.len() - 6.., "AAAAAA");
    let other_rsa = Signer::rsa(&ws, "rsa-1");
    let expired = serde_json::json!({"iss": "https://id.example.com", "aud": "shop", "sub": "a",
        "roles": ["customer"], "scope": "orders:write", "exp": now() - 60});
    let early = serde_json::json!({"iss": "https://id.example.com", "aud": "shop", "sub": "a",
        "roles": ["customer"], "scope": "orders:write", "exp": now() + 600, "nbf": now() + 300});
    let mut wrong_iss = claims("a", &["customer"]);
    wrong_iss["iss"] = "https://evil.example.com".into();
    let mut wrong_aud = claims("a", &["customer"]);
    wrong_aud["aud"] = "billing".into();
    let unknown_kid = Signer::ec("nobody-knows-me");
    for (what, auth, why) in [
        ("no credentials", None, "missing credentials"),
        ("malformed", Some(bearer("not.a.jwt")), "malformed token"),
        ("alg none", Some(bearer(&none)), "alg none"),
        (
            "HMAC against a public key",
            Some(bearer(&hs)),
            "HS256 tokens are not accepted",
        ),
        ("bad signature", Some(bearer(&forged)), "bad signature"),
        (
            "another key with the same kid",
            Some(bearer(&other_rsa.token(claims("a", &["customer"])))),
            "bad signature",
        ),
        (
            "expired",
            Some(bearer(&rsa.token(expired))),
            "token expired",
        ),
        (
            "not yet valid",
            Some(bearer(&rsa.token(early))),
            "not yet valid",
        ),
        (
            "wrong issuer",
            Some(bearer(&rsa.token(wrong_iss))),
            "wrong issuer",
        ),
        (
            "wrong audience",
            Some(bearer(&rsa.token(wrong_aud))),
            "wrong audience",
        ),
        (
            "unknown key",
            Some(bearer(&unknown_kid.token(claims("a", &["customer"])))),
            "unknown key",
        ),
        (
            "an API key where a JWT is required",
            None,
            "missing credentials",
        ),
    ] {
        let mut request = client().post(url("/orders"));
        if let Some(a) = &auth {
            request = request.header("authorization", a);
        }
        if what.starts_with("an API key") {
            request = request.header("x-api-key", "mobile-key-0123456789");
        }
        let r = send(request).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_401(&r, "Bearer", why);
    }
    // Authenticated, but without the role or scope: 403.
    for (token, why) in [
        (rsa.token(claims("bob", &["support"])), "roles customer"),
        (
            rsa.token(
                serde_json::json!({"iss": "https://id.example.com", "aud": "shop",
                "sub": "c", "roles": ["customer"], "scope": "orders:read", "exp": now() + 600}),
            ),
            "scope orders:write",
        ),
    ] {
        let r = send(
            client()
                .post(url("/orders"))
                .header("authorization", bearer(&token)),
        )
        .await;
        assert_eq!(r.status, 403, "{r:?}");
        assert!(
            r.json()["error_description"]
                .as_str()
                .unwrap()
                .contains(why),
            "{r}"
        );
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.contains("insufficient_scope")),
            "{r:?}"
        );
    }
    // A route's own rule: support may read an order, without the write scope.
    let support = rsa.token(
        serde_json::json!({"iss": "https://id.example.com", "aud": "shop",
        "sub": "sam", "roles": ["support"], "exp": now() + 600}),
    );
    let r = get(url("/orders/7"), &[("authorization", &bearer(&support))]).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        invocations(&host, "orders"),
        served + 1,
        "refused requests ran the component"
    );
    // Refusals are counted per component and status.
    let metrics = host.admin_get("/metrics").await.text;
    let count = |status: u16| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("wasmhive_gateway_refused_total{")
                    && l.contains("component=\"orders\"")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(count(401), 12, "{metrics}");
    assert_eq!(count(403), 2, "{metrics}");

    // A verified token is remembered, but never past its `exp` (plus the leeway).
    let short = rsa.token(
        serde_json::json!({"iss": "https://id.example.com", "aud": "shop",
        "sub": "brief", "roles": ["support"], "exp": now() + 1}),
    );
    let r = get(url("/orders/7"), &[("authorization", &bearer(&short))]).await;
    assert_eq!(r.status, 200, "{r}");
    eventually("the short token to expire", PATIENCE, async || {
        let r = get(url("/orders/7"), &[("authorization", &bearer(&short))]).await;
        if r.status == 401 {
            Ok(r)
        } else {
            Err(r.to_string())
        }
    })
    .await;
    let r = get(url("/orders/7"), &[("authorization", &bearer(&short))]).await;
    assert_401(&r, "Bearer", "token expired");

    // Forged identity headers from a client never reach the guest.
    let r = get(
        url("/orders/7"),
        &[
            ("authorization", &bearer(&support)),
            ("wasmhive-auth-subject", "root"),
            ("wasmhive-auth-roles", "admin"),
        ],
    )
    .await;
    let v = r.json();
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-subject"),
        ["sam"]
    );
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-roles"),
        ["support"]
    );

    // require = "any": an API key or a JWT.
    let r = get(url("/reports"), &[("x-api-key", "web-key-0123456789abc")]).await;
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-subject"),
        ["web"]
    );
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-method"),
        ["api_key"]
    );
    let r = get(url("/reports"), &[("x-api-key", "guessed-key-0123456789")]).await;
    assert_401(&r, "ApiKey", "unknown or revoked API key");
    assert_401(&r, "Bearer", "unknown or revoked API key");
    // Revoking a key: remove its line; the file is re-read.
    ws.write("keys.txt", "mobile:mobile-key-0123456789\n");
    eventually("the web key to be revoked", PATIENCE, async || {
        let r = get(url("/reports"), &[("x-api-key", "web-key-0123456789abc")]).await;
        if r.status == 401 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
    let before = invocations(&host, "reports");
    let r = get(url("/reports"), &[("x-api-key", "web-key-0123456789abc")]).await;
    assert_401(&r, "ApiKey", "unknown or revoked API key");
    assert_eq!(invocations(&host, "reports"), before);
    let r = get(url("/reports"), &[("x-api-key", "mobile-key-0123456789")]).await;
    assert_eq!(r.status, 200, "the kept key still works: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_a_jwks_url_without_a_restart() {
    let ws = Workspace::new();
    let old = Signer::ec("2026-01");
    let new = Signer::ed25519("2026-02");
    // The identity provider: a local HTTP server whose JWKS the test changes.
    let served = std::sync::Arc::new(std::sync::Mutex::new(jwks(&[&old])));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let idp = listener.local_addr().unwrap();
    {
        let served = served.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let body = served.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
    }
    let host = Host::start(&[&manifest(&ws, &format!("http://{idp}/jwks.json"))]);
    let post = async |token: &str| {
        send(
            client()
                .post(host.url("/orders"))
                .header("authorization", bearer(token)),
        )
        .await
    };
    assert_eq!(
        post(&old.token(claims("a", &["customer"]))).await.status,
        200
    );
    // Not yet published: unknown.
    let r = post(&new.token(claims("a", &["customer"]))).await;
    assert_401(&r, "Bearer", "unknown key");
    // The provider publishes the new key; tokens with it verify (after at most one
    // rate-limited refresh), and old ones still do.
    *served.lock().unwrap() = jwks(&[&old, &new]);
    eventually("the rotated key to be fetched", PATIENCE, async || {
        let r = post(&new.token(claims("a", &["customer"]))).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
    assert_eq!(
        post(&old.token(claims("a", &["customer"]))).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answers_429_then_recovers() {
    let ws = Workspace::new();
    ws.write("jwks.json", &jwks(&[&Signer::ec("k")]));
    let host = Host::start(&[&manifest(&ws, "jwks.json")]);
    let url = host.url("/open");
    // The burst goes through, with the limit's headers.
    for left in ["1", "0"] {
        let r = get(url.clone(), &[]).await;
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.header("ratelimit-limit"), Some("2"));
        assert_eq!(r.header("ratelimit-remaining"), Some(left));
    }
    let served = invocations(&host, "open");
    let r = get(url.clone(), &[]).await;
    assert_eq!(r.status, 429, "{r}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{r:?}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("ratelimit-reset").is_some());
    assert_eq!(
        invocations(&host, "open"),
        served,
        "a limited request ran the component"
    );
    // After the window, requests go through again.
    eventually("the limit to recover", PATIENCE, async || {
        let r = get(url.clone(), &[]).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_section_is_checked_at_deploy() {
    let ws = Workspace::new();
    let host = Host::start_with(HostOptions::default());
    let deploy = |text: &str| {
        let m = ws.write("bad.toml", text);
        let out = host.cli(&["deploy", m.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let head = "manifest_version = 1\n[app]\nname = \"bad\"\nversion = \"1\"\n";
    let component = "[components.c]\nsource = \"{component:hello}\"\nroutes = [\"/c\"]\n";
    for (text, expect) in [
        (
            format!(
                "{head}[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks = \"missing.json\"\n{component}[components.c.auth]\nrequire = \"jwt\"\n"
            ),
            "auth.jwt.jwks: cannot read missing.json",
        ),
        (
            format!("{head}{component}[components.c.auth]\nrequire = \"password\"\n"),
            "components.c.auth.require",
        ),
        (
            format!("{head}{component}[components.c.auth]\nroles = [\"admin\"]\n"),
            "roles or scopes on a public component",
        ),
        (
            format!("{head}{component}[components.c.auth]\nrequire = \"jwt\"\n"),
            "needs [auth.jwt]",
        ),
        (
            format!(
                "{head}[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks = \"x.json\"\n{component}[components.c.auth]\nrequire = \"jwt\"\n[components.c.auth.routes.\"GET /nope\"]\nroles = [\"a\"]\n"
            ),
            "is not one of this component's routes",
        ),
    ] {
        ws.write("x.json", &jwks(&[&Signer::ec("k")]));
        let (ok, err) = deploy(&text.replace(
            "{component:hello}",
            &wasmhive_e2e::component("hello").display().to_string(),
        ));
        assert!(!ok, "{text}");
        assert!(err.contains(expect), "expected {expect:?} in: {err}");
        // Every refusal says where: the file and line.
        let at = err.find("bad.toml:").map(|i| &err[i + "bad.toml:".len()..]);
        assert!(
            at.is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())),
            "no file:line in: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_carry_the_callers_identity_on() {
    let ws = Workspace::new();
    let signer = Signer::ec("k");
    ws.write("jwks.json", &jwks(&[&signer]));
    let m = ws.write(
        "calls.toml",
        r#"
manifest_version = 1
[app]
name = "shop"
version = "1.0.0"
[auth.jwt]
issuer = "https://id.example.com"
audience = "shop"
jwks = "jwks.json"
[components.front]
source = "{component:outbound-call}"
routes = ["/call"]
[components.front.auth]
require = "jwt"
[components.front.calls.inspect]
timeout = "30s"
[components.front.calls.quiet]
forward_identity = false
[components.inspect]
source = "{component:inspect-request}"
routes = ["/inspect/{*rest}"]
[components.quiet]
source = "{component:inspect-request}"
routes = ["/quiet/{*rest}"]
"#,
    );
    let host = Host::start(&[&m]);
    let token = signer.token(claims("alice", &["customer"]));
    let call = async |target: &str| {
        let r = send(
            client()
                .get(host.url(&format!("/call?url={target}")))
                .header("authorization", bearer(&token)),
        )
        .await;
        assert_eq!(r.status, 200, "{r}");
        let (first, body) = r.text.split_once('\n').unwrap();
        assert_eq!(first, "status=200", "{r}");
        serde_json::from_str::<serde_json::Value>(body).unwrap()
    };
    // The callee sees who called the caller.
    let v = call("http://inspect/inspect/x").await;
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-subject"),
        ["alice"]
    );
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-method"),
        ["jwt"]
    );
    // A guest cannot name another identity.
    let v = call("http://inspect/inspect/x&header=wasmhive-auth-subject:root").await;
    assert_eq!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-subject"),
        ["alice"]
    );
    // forward_identity = false: the callee sees none.
    let v = call("http://quiet/quiet/x").await;
    assert!(
        wasmhive_e2e::seen_header(&v, "wasmhive-auth-subject").is_empty(),
        "{v:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_wide_limit_counts_each_client_before_routing() {
    let ws = Workspace::new();
    let cfg = ws.write(
        "host.toml",
        "[gateway.rate_limit]\nrequests = 1\nper = \"30s\"\nburst = 3\n",
    );
    let host = Host::start_with(HostOptions {
        args: vec!["--config".into(), cfg.display().to_string()],
        ..Default::default()
    });
    // Any path counts, routed or not.
    for _ in 0..3 {
        assert_eq!(get(host.url("/nothing-here"), &[]).await.status, 404);
    }
    let r = get(host.url("/nothing-here"), &[]).await;
    assert_eq!(r.status, 429, "{r}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    let metrics = host.admin_get("/metrics").await.text;
    assert!(
        metrics
            .contains("wasmhive_gateway_refused_total{app=\"\",component=\"\",status=\"429\"} 1"),
        "{metrics}"
    );
}
