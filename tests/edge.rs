//! The edge, as an attacker and an operator meet it: the admin API's token, uploads
//! checked as they stream, connection clocks and limits, HTTP/2 prior knowledge, and
//! hop-by-hop headers. Real binary, real sockets.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmhive_e2e::{
    Host, HostOptions, PATIENCE, Workspace, client, eventually, get, seen_header_names, send,
};

fn hello(ws: &Workspace) -> std::path::PathBuf {
    ws.write(
        "hello.toml",
        r#"
manifest_version = 1
[app]
name = "hello"
version = "0.1.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
"#,
    )
}

fn inspect(ws: &Workspace) -> std::path::PathBuf {
    ws.write(
        "inspect.toml",
        r#"
manifest_version = 1
[app]
name = "inspect"
version = "1.0.0"
[components.inspect]
source = "{component:inspect-request}"
routes = ["/inspect"]
"#,
    )
}

fn host_with_config(manifests: Vec<std::path::PathBuf>, ws: &Workspace, config: &str) -> Host {
    let cfg = ws.write("host.toml", config);
    Host::start_with(HostOptions {
        manifests,
        args: vec!["--config".into(), cfg.display().to_string()],
        ..Default::default()
    })
}

fn addr(base: &str) -> String {
    base.trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_string()
}

/// Reads from `stream` until the peer closes it (or `PATIENCE` passes); returns what
/// arrived.
async fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {PATIENCE:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_its_token() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello(&ws)]);

    // The host wrote its token, readable by its owner only.
    let token_file = host.data_dir.join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
    }
    let token = host.admin_token();
    assert!(token.len() >= 32, "a long random token");

    // Probes need no token.
    assert_eq!(get(host.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(host.admin_url("/readyz")).await.status, 200);

    // Everything else does: none, a wrong one, another scheme.
    let wrong = "not-the-token-but-long-enough";
    for (what, request) in [
        ("no token", client().get(host.admin_url("/v1/status"))),
        (
            "wrong token",
            client()
                .get(host.admin_url("/v1/status"))
                .bearer_auth(wrong),
        ),
        (
            "basic auth",
            client()
                .get(host.admin_url("/v1/status"))
                .basic_auth("admin", Some(&token)),
        ),
        ("metrics", client().get(host.admin_url("/metrics"))),
        (
            "deploy",
            client()
                .post(host.admin_url("/v1/apps"))
                .json(&serde_json::json!({"manifest": "", "origin": "x", "sources": {}})),
        ),
        (
            "upload",
            client()
                .put(host.admin_url(&format!("/v1/blobs/sha256:{}", "0".repeat(64))))
                .body("x"),
        ),
    ] {
        let r = send(request).await;
        assert_eq!(r.status, 401, "{what}: {r}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{what}: {r:?}"
        );
        assert!(
            r.json()["error"].as_str().unwrap().contains("Bearer"),
            "{r}"
        );
    }
    // Refusals are logged with the peer, never with what was presented.
    assert!(
        host.log_contains("admin request refused"),
        "{}",
        host.logs()
    );
    assert!(host.log_contains("127.0.0.1"));
    assert!(
        !host.logs().contains(wrong),
        "the presented token was logged"
    );
    assert!(!host.logs().contains(&token), "the token was logged");
    assert!(!host.stdout().contains(&token), "the token was printed");

    // With the token: 200, and the CLI finds it through the data dir.
    assert_eq!(host.admin_get("/v1/status").await.status, 200);
    assert_eq!(host.admin_get("/metrics").await.status, 200);
    assert!(
        host.status()["apps"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    );

    // The CLI with a wrong token says what to do, and changes nothing.
    let out = host.cli(&["undeploy", "hello", "--token", wrong]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the admin token") && err.contains("--token"),
        "{err}"
    );
    assert_eq!(get(host.url("/hello")).await.status, 200);
    // And without a token file to find, it says so.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(wasmhive_e2e::binary())
        .args(["status", "--admin", &host.admin, "--data-dir"])
        .arg(elsewhere.path())
        .env_remove("WASMHIVE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no admin token found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_give_the_token_and_open_metrics() {
    let ws = Workspace::new();
    let cfg = ws.write("host.toml", "[admin]\npublic_metrics = true\n");
    let token = "operator-chosen-token-0123456789";
    let host = Host::start_with(HostOptions {
        args: vec!["--config".into(), cfg.display().to_string()],
        env: vec![("WASMHIVE_ADMIN_TOKEN".into(), token.into())],
        ..Default::default()
    });
    // No token file is written when one is given.
    assert!(!host.data_dir.join("admin.token").exists());
    assert_eq!(get(host.admin_url("/metrics")).await.status, 200);
    assert_eq!(get(host.admin_url("/v1/status")).await.status, 401);
    let r = send(
        client()
            .get(host.admin_url("/v1/status"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(r.status, 200, "{r}");
    // The CLI takes it from the environment.
    let out = host
        .cli_command(&["status"])
        .env("WASMHIVE_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A token too short to be a lock is refused at start.
    let e = match Host::try_start(HostOptions {
        env: vec![("WASMHIVE_ADMIN_TOKEN".into(), "1234".into())],
        ..Default::default()
    }) {
        Ok(_) => panic!("a 4-character admin token must be refused"),
        Err(e) => e,
    };
    assert!(e.contains("at least 16 characters"), "{e}");
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_disk_and_only_components_are_stored() {
    use sha2::Digest;
    let host = Host::start(&[]);
    let digest = |bytes: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let put = |d: String, body: reqwest::Body| {
        host.admin_request(reqwest::Method::PUT, &format!("/v1/blobs/{d}"))
            .body(body)
    };
    let stored = async |d: &str| {
        host.admin_request(reqwest::Method::HEAD, &format!("/v1/blobs/{d}"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    };

    // Bytes that match their digest but are not a component: refused, not stored.
    let script = b"#!/bin/sh\nrm -rf /\n".to_vec();
    let r = send(put(digest(&script), script.clone().into())).await;
    assert_eq!(r.status, 400, "{r}");
    assert!(r.text.contains("not a WebAssembly component"), "{r}");
    assert!(!stored(&digest(&script)).await);
    // A core module is named as such.
    let module = wat::parse_str("(module)").unwrap();
    let r = send(put(digest(&module), module.clone().into())).await;
    assert_eq!(r.status, 400, "{r}");
    assert!(r.text.contains("core WebAssembly module"), "{r}");
    // The right preamble and garbage after it: validated before it is stored.
    let mut fake = wat::parse_str("(component)").unwrap();
    fake.extend_from_slice(&[0xff; 64]);
    let r = send(put(digest(&fake), fake.clone().into())).await;
    assert_eq!(r.status, 400, "{r}");
    assert!(!stored(&digest(&fake)).await);
    // A real component is stored.
    let hello = std::fs::read(wasmhive_e2e::component("hello")).unwrap();
    let r = send(put(digest(&hello), hello.clone().into())).await;
    assert_eq!(r.status, 201, "{r}");
    assert!(stored(&digest(&hello)).await);

    // A declared size over the limit is refused before a byte of the body is read.
    let mut s = TcpStream::connect(addr(&host.admin)).await.unwrap();
    let head = format!(
        "PUT /v1/blobs/{} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 600000000\r\n\r\n",
        digest(b"x"),
        host.admin_token()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(s);

    // A 300 MB upload streams through without the host holding it in memory.
    let before = peak_rss(host.pid());
    let chunk = bytes::Bytes::from({
        let mut c = wat::parse_str("(component)").unwrap();
        c.resize(1 << 20, 0);
        c
    });
    let zeros = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let mut hasher = sha2::Sha256::new();
    hasher.update(&chunk);
    for _ in 1..300 {
        hasher.update(&zeros);
    }
    let big = format!("sha256:{}", hex::encode(hasher.finalize()));
    let parts = std::iter::once(chunk)
        .chain(std::iter::repeat_n(zeros, 299))
        .map(Ok::<_, std::io::Error>);
    let r = send(put(
        big.clone(),
        reqwest::Body::wrap_stream(futures::stream::iter(parts)),
    ))
    .await;
    assert_eq!(r.status, 400, "zeros are no component: {r}");
    let grew = peak_rss(host.pid()).saturating_sub(before);
    assert!(
        grew < 100 << 20,
        "the host's peak memory grew by {} MiB for a 300 MiB upload",
        grew >> 20
    );
    assert!(!stored(&big).await);
    // Nothing is left behind in the upload area.
    let uploads = host.data_dir.join("blobs/uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_cannot_hold_the_listener() {
    let ws = Workspace::new();
    let host = host_with_config(
        vec![hello(&ws)],
        &ws,
        "max_connections = 4\n[gateway]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    );
    let http = addr(&host.http);

    // Four silent sockets take every slot...
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(&http).await.unwrap());
    }
    // ...and a normal client still gets its answer once their idle clock runs out.
    let r = get(host.url("/hello")).await;
    assert_eq!(r.status, 200, "{r}");
    for mut s in idle {
        let got = read_until_closed(&mut s)
            .await
            .expect("a silent socket is closed");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }

    // A client trickling its header a byte at a time is cut off before it finishes.
    let mut slow = TcpStream::connect(&http).await.unwrap();
    let header = b"GET /hello HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in header {
        if slow.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        // Has the host closed it? (A closed socket reads 0 bytes at once.)
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => panic!(
                "answered a trickled header: {}",
                String::from_utf8_lossy(&probe[..n])
            ),
            Err(_) => {}
        }
    }
    assert!(
        cut,
        "a header sent over ~20 s got through a 1 s header timeout"
    );

    // A kept-alive connection is closed after its idle time...
    let mut kept = TcpStream::connect(&http).await.unwrap();
    kept.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut kept)
        .await
        .expect("closed when idle");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // ...and the host serves on.
    assert_eq!(get(host.url("/hello")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let ws = Workspace::new();
    let host = host_with_config(
        vec![hello(&ws)],
        &ws,
        // Loopback is exempt by default (a local proxy speaks for many clients);
        // this host counts it like any other address.
        "[gateway]\nmax_connections_per_ip = 2\nper_ip_exempt = []\nheader_read_timeout = \"60s\"\n",
    );
    let http = addr(&host.http);
    let _a = TcpStream::connect(&http).await.unwrap();
    let _b = TcpStream::connect(&http).await.unwrap();
    // The third from the same address is closed at once (its header clock is 60 s).
    let mut third = TcpStream::connect(&http).await.unwrap();
    let _ = third
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let got = read_until_closed(&mut third)
        .await
        .expect("the third connection is closed");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    drop((_a, _b));
    // Once they are gone, the address is welcome again.
    eventually(
        "a request from the address to succeed",
        PATIENCE,
        async || match client().get(host.url("/hello")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_and_hop_by_hop_headers() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello(&ws), &inspect(&ws)]);

    // h2c: HTTP/2 without TLS, for clients that know the server speaks it.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(host.url("/hello")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello, world\n");

    // Headers a client names in `Connection:` are for this hop only.
    let mut s = TcpStream::connect(addr(&host.http)).await.unwrap();
    s.write_all(
        b"GET /inspect HTTP/1.1\r\nhost: x\r\nconnection: close, x-hop-secret\r\nx-hop-secret: 1\r\nx-kept: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until_closed(&mut s).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    let body = &text[text.find("\r\n\r\n").expect("a response") + 4..];
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| {
        // Chunked: the JSON is between the chunk size lines.
        let start = body.find('{').unwrap();
        let end = body.rfind('}').unwrap();
        serde_json::from_str(&body[start..=end]).unwrap()
    });
    let names = seen_header_names(&v);
    assert!(names.iter().any(|n| n == "x-kept"), "{names:?}");
    assert!(!names.iter().any(|n| n == "x-hop-secret"), "{names:?}");
}

/// A test CA and certificates it signs (rcgen; real keys, made per test).
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `localhost` and 127.0.0.1 (or a client certificate), as
    /// (cert PEM, key PEM).
    fn issue(&self, client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        if client {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A client that trusts only `ca` and reaches `localhost` at the host's address.
fn tls_client(ca: &Ca, http_base: &str) -> reqwest::Client {
    let addr: std::net::SocketAddr = addr(http_base).parse().unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

fn https(host: &Host, path: &str) -> String {
    let port = addr(&host.http).rsplit(':').next().unwrap().to_string();
    format!("https://localhost:{port}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http2_and_http1_and_reloads_its_certificate_without_dropping_connections() {
    let ws = Workspace::new();
    let ca1 = Ca::new("wasmhive test CA 1");
    let (cert, key) = ca1.issue(false);
    let cert_file = ws.write("cert.pem", &cert);
    let key_file = ws.write("key.pem", &key);
    let host = Host::start_with(HostOptions {
        manifests: vec![hello(&ws), inspect(&ws)],
        args: vec![
            "--tls-cert".into(),
            cert_file.display().to_string(),
            "--tls-key".into(),
            key_file.display().to_string(),
        ],
        ..Default::default()
    });
    assert!(host.http.starts_with("https://"), "{}", host.http);

    // HTTP/2 by ALPN for a client that offers it; guests see https.
    let client1 = tls_client(&ca1, &host.http);
    let r = client1.get(https(&host, "/hello")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "hello, world\n");
    let v: serde_json::Value = client1
        .get(https(&host, "/inspect"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["scheme"], "https", "{v:#}");
    assert!(
        v["authority"].as_str().unwrap().starts_with("localhost:"),
        "the authority the client named (HTTP/2 :authority): {v:#}"
    );
    // HTTP/1.1 for one that does not.
    let h1 = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca1.pem().as_bytes()).unwrap())
        .resolve("localhost", addr(&host.http).parse().unwrap())
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(https(&host, "/hello")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    // curl, as a user would try it.
    let ca_file = ws.write("ca1.pem", &ca1.pem());
    let port = addr(&host.http).rsplit(':').next().unwrap().to_string();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca_file)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version}", &https(&host, "/hello")])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "hello, world\n\n2", "curl saw: {text}");
    // Plaintext to the TLS port gets no answer from a route.
    let plain = client()
        .get(host.url("/hello").replace("https://", "http://"))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    // A new certificate from another CA: SIGHUP, and new connections get it while
    // the open HTTP/2 connection of client1 keeps working.
    let ca2 = Ca::new("wasmhive test CA 2");
    let client2 = tls_client(&ca2, &host.http);
    assert!(
        client2.get(https(&host, "/hello")).send().await.is_err(),
        "a client trusting only CA 2 must not accept CA 1's certificate"
    );
    let (cert2, key2) = ca2.issue(false);
    std::fs::write(&cert_file, cert2).unwrap();
    std::fs::write(&key_file, key2).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(
        "new connections to get CA 2's certificate",
        PATIENCE,
        async || match client2.get(https(&host, "/hello")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let r = client1.get(https(&host, "/hello")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the connection open before the reload still serves"
    );
    assert!(host.log_contains("TLS certificate reloaded"));

    // A broken certificate file is refused and the current one stays.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &host.pid().to_string()])
        .status();
    assert!(host.log_contains("TLS certificate reload failed"));
    let fresh = tls_client(&ca2, &host.http);
    assert_eq!(
        fresh
            .get(https(&host, "/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Files changed without a signal are picked up too.
    let (cert1, key1) = ca1.issue(false);
    std::fs::write(&key_file, key1).unwrap();
    std::fs::write(&cert_file, cert1).unwrap();
    eventually("the changed files to be served", PATIENCE, async || {
        let fresh = tls_client(&ca1, &host.http);
        match fresh.get(https(&host, "/hello")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_over_mutual_tls() {
    let ws = Workspace::new();
    let ca = Ca::new("wasmhive admin CA");
    let (cert, key) = ca.issue(false);
    let (client_cert, client_key) = ca.issue(true);
    let ca_file = ws.write("ca.pem", &ca.pem());
    let identity = ws.write("operator.pem", &format!("{client_cert}{client_key}"));
    let host = Host::start_with(HostOptions {
        args: vec![
            "--admin-tls-cert".into(),
            ws.write("cert.pem", &cert).display().to_string(),
            "--admin-tls-key".into(),
            ws.write("key.pem", &key).display().to_string(),
            "--admin-client-ca".into(),
            ca_file.display().to_string(),
        ],
        ..Default::default()
    });
    assert!(host.admin.starts_with("https://"), "{}", host.admin);
    let port = addr(&host.admin).rsplit(':').next().unwrap().to_string();
    let admin = format!("https://localhost:{port}");
    let status = |extra: &[&str]| {
        // The certificate names localhost; the CLI finds the token in the data dir.
        std::process::Command::new(wasmhive_e2e::binary())
            .args(["status", "--admin", &admin, "--data-dir"])
            .arg(&host.data_dir)
            .arg("--admin-ca")
            .arg(&ca_file)
            .args(extra)
            .env_remove("WASMHIVE_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let out = status(&["--admin-identity", identity.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a client certificate the handshake is refused.
    let out = status(&[]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_its_body_is_cut_off() {
    let ws = Workspace::new();
    let echo = ws.write(
        "echo.toml",
        r#"
manifest_version = 1
[app]
name = "echo"
version = "1.0.0"
[components.echo]
source = "{component:echo-body}"
routes = ["POST /echo"]
# Longer than the test waits: only the gateway's body clock can end the request.
limits = { timeout = "300s" }
"#,
    );
    let host = host_with_config(vec![echo], &ws, "[gateway]\nbody_read_timeout = \"1s\"\n");
    let mut s = TcpStream::connect(addr(&host.http)).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // Then nothing more: the guest's next read fails after the gap, the echo ends
    // without its final chunk, and the connection is closed.
    let got = read_until_closed(&mut s)
        .await
        .expect("the stalled request ends");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut-off echo must not look complete: {text}"
    );
    // The host serves on.
    assert_eq!(
        get(host.url("/echo")).await.status,
        405,
        "GET is not routed: the host answers"
    );
}
