//! Serving HTTP: routes, parameters, failures contained, streaming, concurrency,
//! grants (env, outbound) and forbidden headers. Real binary, real components.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmhive_e2e::{Host, Upstream, Workspace, client, get, seen_header, seen_header_names, send};

/// GETs `url` with `headers` and returns the inspect-request fixture's report of the
/// request it received.
async fn inspect(url: String, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = send(request).await;
    assert_eq!(r.status, 200, "{r}");
    r.json()
}

fn hello_manifest(ws: &Workspace) -> std::path::PathBuf {
    ws.write(
        "hello.toml",
        r#"
manifest_version = 1
[app]
name = "hello"
version = "0.1.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello", "GET /hello/{name}"]
env = { GREETING = "hi" }
"#,
    )
}

/// The faults fixture on its own paths, with a small memory limit and a 1 s deadline.
fn faults_paths_manifest(ws: &Workspace) -> std::path::PathBuf {
    ws.write(
        "faults.toml",
        r#"
manifest_version = 1
[app]
name = "faults"
version = "0.1.0"
[components.faults]
source = "{component:faults}"
routes = ["/ok", "/trap", "/loop", "/alloc", "/sleep", "/print", "/trap-after-head", "/dup-length", "/dup-length-list", "/conflicting-length"]
[components.faults.limits]
memory = "32MiB"
timeout = "1s"
"#,
    )
}

#[tokio::test]
async fn hello_route_answers() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello_manifest(&ws)]);
    assert_eq!(get(host.url("/hello")).await, (200, "hi, world\n"));
    // The startup output says where to send requests.
    assert!(host.stdout().contains("/hello"), "{}", host.stdout());
}

#[tokio::test]
async fn path_params_reach_the_guest() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello_manifest(&ws)]);
    assert_eq!(get(host.url("/hello/ada")).await.text, "hi, ada\n");

    let m = ws.write(
        "inspect.toml",
        r#"
manifest_version = 1
[app]
name = "inspect"
version = "1.0.0"
[components.inspect]
source = "{component:inspect-request}"
routes = ["GET /users/{id}/files/{*rest}", "GET /plain"]
"#,
    );
    let host = Host::start(&[&m]);
    let v = inspect(
        host.url("/users/42/files/a/b.txt?x=1"),
        &[("wasmhive-param-id", "forged")],
    )
    .await;
    assert_eq!(v["path_with_query"], "/users/42/files/a/b.txt?x=1");
    let header = |name: &str| seen_header(&v, name);
    assert_eq!(header("wasmhive-param-id"), vec!["42"], "{v:#}");
    assert_eq!(header("wasmhive-param-rest"), vec!["a/b.txt"]);
    assert_eq!(header("wasmhive-route"), vec!["/users/{id}/files/{*rest}"]);

    // A literal route adds nothing (its pattern is the path); a forged header is
    // still removed.
    let v = inspect(host.url("/plain"), &[("wasmhive-route", "forged")]).await;
    let names = seen_header_names(&v);
    assert!(
        !names.iter().any(|n| n.starts_with("wasmhive-")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "traceparent"), "{names:?}");
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello_manifest(&ws)]);
    assert_eq!(get(host.url("/nope")).await.status, 404);
    let r = send(client().post(host.url("/hello"))).await;
    assert_eq!(r.status, 405, "{r}");
    assert_eq!(r.header("allow"), Some("GET"), "{r:?}");
}

#[tokio::test]
async fn trap_is_500_and_the_next_request_succeeds() {
    let ws = Workspace::new();
    let host = Host::start(&[&faults_paths_manifest(&ws)]);
    assert_eq!(get(host.url("/trap")).await.status, 500);
    assert_eq!(get(host.url("/ok")).await, (200, "ok"));
    // Logged once with the component and the trap.
    assert!(
        host.log_contains("invocation failed") && host.log_contains("faults/faults@0.1.0"),
        "{}",
        host.logs()
    );
    let st = host.component_status("faults", "faults");
    assert_eq!(st["failures"], 1);
    assert_eq!(st["invocations"], 2);
}

/// A guest that fails after sending its response head: the client must not take the
/// truncated body for a whole one, and the host counts, logs and records a failure.
#[tokio::test]
async fn a_failure_after_the_response_head_fails_the_response() {
    let ws = Workspace::new();
    let host = Host::start(&[&faults_paths_manifest(&ws)]);
    // Whatever reaches the client, the response does not end cleanly: reading it fails
    // (the connection is cut, no final chunk).
    let outcome = client().get(host.url("/trap-after-head")).send().await;
    let clean = match outcome {
        Ok(r) => r.text().await.is_ok(),
        Err(_) => false,
    };
    assert!(!clean, "a truncated body must not end cleanly");
    assert_eq!(get(host.url("/ok")).await, (200, "ok"));

    let st = host.component_status("faults", "faults");
    assert_eq!(st["failures"], 1, "{st:#}");
    assert_eq!(st["invocations"], 2, "{st:#}");
    assert!(
        host.log_contains("invocation failed after its response head"),
        "{}",
        host.logs()
    );
    let failures = host
        .logs()
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("invocation failed"))
        .count();
    assert_eq!(failures, 1, "logged once: {}", host.logs());
    // Recorded as a 500, and the healthy request as a 200.
    let metrics = host.admin_get("/metrics").await.text;
    for status in ["500", "200"] {
        let series = format!(
            "wasmhive_requests_total{{app=\"faults\",component=\"faults\",trigger=\"http\",status=\"{status}\",version=\"0.1.0\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn busy_loop_is_504_and_the_host_keeps_serving() {
    let ws = Workspace::new();
    let host = Host::start(&[&faults_paths_manifest(&ws)]);
    assert_eq!(get(host.url("/loop")).await.status, 504);
    assert_eq!(get(host.url("/ok")).await.status, 200);
    // A guest blocked in a host call past its deadline is stopped the same way.
    assert_eq!(get(host.url("/sleep?ms=5000")).await.status, 504);
    assert_eq!(get(host.url("/sleep?ms=10")).await, (200, "slept 10 ms"));
}

#[tokio::test]
async fn memory_bomb_is_contained() {
    let ws = Workspace::new();
    let host = Host::start(&[&faults_paths_manifest(&ws)]);
    assert_eq!(get(host.url("/alloc")).await.status, 500);
    assert!(host.log_contains("memory limit"), "{}", host.logs());
    for _ in 0..3 {
        assert_eq!(get(host.url("/ok")).await.status, 200);
    }
}

#[tokio::test]
async fn one_mib_echo_streams_both_ways_byte_identical() {
    let ws = Workspace::new();
    let m = ws.write(
        "echo.toml",
        r#"
manifest_version = 1
[app]
name = "echo"
version = "0.1.0"
[components.echo]
source = "{component:echo-body}"
routes = ["POST /echo"]
"#,
    );
    let host = Host::start(&[&m]);
    let addr = host.http.trim_start_matches("http://").to_string();
    let payload: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();

    // Send the body in chunks over a raw connection. The first part of the echo must
    // arrive while most of the request is still unsent: that is only possible if the
    // host streams the request into the guest and the response out of it.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: {addr}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = payload.split_at(64 * 1024);
    stream
        .write_all(format!("{:x}\r\n", first.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(first).await.unwrap();
    stream.write_all(b"\r\n").await.unwrap();

    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Read until the response head and some echoed bytes have arrived.
    let header_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("echo should start before the request body is complete")
            .unwrap();
        assert!(n > 0, "connection closed early");
        received.extend_from_slice(&buf[..n]);
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n")
            && received.len() > i + 4 + 1024
        {
            break i + 4;
        }
    };
    let head_text = String::from_utf8_lossy(&received[..header_end]).to_string();
    assert!(head_text.starts_with("HTTP/1.1 200"), "{head_text}");

    for chunk in rest.chunks(64 * 1024) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    stream.read_to_end(&mut received).await.unwrap();

    let echoed = dechunk(&received[header_end..]);
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echoed bytes differ");
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[tokio::test]
async fn two_hundred_concurrent_requests_all_succeed() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello_manifest(&ws)]);
    let requests = (0..200).map(|i| get(host.url(&format!("/hello/n{i}"))));
    let results = futures::future::join_all(requests).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r, (200, format!("hi, n{i}\n")));
    }
}

#[tokio::test]
async fn guests_see_granted_env_and_no_forbidden_headers() {
    let ws = Workspace::new();
    let m = ws.write(
        "inspect.toml",
        r#"
manifest_version = 1
[app]
name = "inspect"
version = "1.0.0"
[components.inspect]
source = "{component:inspect-request}"
routes = ["/inspect"]
env = { COLOR = "blue" }
"#,
    );
    let host = Host::start_with(wasmhive_e2e::HostOptions {
        manifests: vec![m],
        env: vec![("HOST_SECRET".into(), "do-not-leak".into())],
        ..Default::default()
    });
    let v = inspect(
        host.url("/inspect"),
        &[
            ("x-custom", "yes"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-anything", "1"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ],
    )
    .await;
    assert_eq!(
        v["env"],
        serde_json::json!({ "COLOR": "blue" }),
        "only granted env: {v:#}"
    );
    let names = seen_header_names(&v);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(names.contains(&"x-custom"), "{names:?}");
    for forbidden in [
        "proxy-authorization",
        "proxy-anything",
        "upgrade",
        "te",
        "host",
        "connection",
        "keep-alive",
        "transfer-encoding",
    ] {
        assert!(
            !names.contains(&forbidden),
            "{forbidden} reached the guest: {names:?}"
        );
    }
    assert!(
        v["authority"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v:#}"
    );
}

#[tokio::test]
async fn outbound_http_only_to_listed_hosts() {
    let allowed = Upstream::start("from upstream");
    let unlisted = Upstream::start("should never be reached");
    let ws = Workspace::new();
    let m = ws.write(
        "outbound.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "outbound"
version = "1.0.0"
[components.caller]
source = "{{component:outbound-call}}"
routes = ["/call"]
allowed_outbound_hosts = ["{}"]
"#,
            allowed.url
        ),
    );
    let host = Host::start(&[&m]);
    assert_eq!(
        get(host.url(&format!("/call?url={}/x", allowed.url))).await,
        (200, "status=200\nfrom upstream")
    );
    assert_eq!(
        get(host.url(&format!("/call?url={}/x", unlisted.url))).await,
        (502, "error=HttpRequestDenied")
    );
    assert_eq!(unlisted.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(
        host.log_contains("outbound request denied"),
        "{}",
        host.logs()
    );
}

#[tokio::test]
async fn trace_context_reaches_the_guest() {
    let ws = Workspace::new();
    let m = ws.write(
        "inspect.toml",
        r#"
manifest_version = 1
[app]
name = "inspect"
version = "1.0.0"
[components.inspect]
source = "{component:inspect-request}"
routes = ["GET /inspect"]
"#,
    );
    let host = Host::start(&[&m]);
    let traceparent_seen = |v: &serde_json::Value| -> String {
        let all = seen_header(v, "traceparent");
        assert_eq!(all.len(), 1, "{v:#}");
        all[0].clone()
    };
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let v = inspect(host.url("/inspect"), &[("traceparent", parent)]).await;
    let seen = traceparent_seen(&v);
    // Same trace, the host's own span.
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert_ne!(seen, parent);

    // Without one, the host starts a trace.
    let v = inspect(host.url("/inspect"), &[]).await;
    let seen = traceparent_seen(&v);
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("00", 32, 16),
        "{seen}"
    );
}

#[tokio::test]
async fn guest_output_becomes_log_events_not_host_output() {
    let ws = Workspace::new();
    let host = Host::start(&[&faults_paths_manifest(&ws)]);
    assert_eq!(get(host.url("/print")).await.status, 200);
    assert!(
        host.log_contains("a line on the guest's stderr"),
        "{}",
        host.logs()
    );
    let logs = host.logs();
    for (stream, text) in [
        ("stdout", "a line on the guest's stdout"),
        ("stderr", "a line on the guest's stderr"),
    ] {
        let line = logs
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no {stream} event: {logs}"));
        for field in [
            "\"target\":\"wasmhive::guest\"",
            &format!("\"stream\":\"{stream}\""),
            "\"component\":\"faults\"",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
        let trace = line.split("\"trace_id\":\"").nth(1).unwrap_or_default();
        assert!(
            trace.len() > 32 && trace[..32].chars().all(|c| c.is_ascii_hexdigit()),
            "no trace id in {line}"
        );
    }
    // Never raw on the host's own stdout.
    assert!(
        !host.stdout().contains("a line on the guest"),
        "{}",
        host.stdout()
    );
}

/// A guest that reads its body without blocking and takes an empty read for the end
/// (as wasmCloud's HTTP key-value template does) gets the whole body even when the
/// client sends the body after the head (Python's `http.client` does; so do many
/// proxies): the host receives a body of a known length up to `limits.request_buffer`
/// (64 KiB) before the guest starts. 100 requests out of 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_after_the_head_reaches_a_guest_that_reads_without_blocking() {
    let ws = Workspace::new();
    let m = ws.write(
        "eager.toml",
        r#"
manifest_version = 1
[app]
name = "eager"
version = "1.0.0"
[components.eager]
source = "{component:eager-body}"
routes = ["POST /eager"]
"#,
    );
    let host = Host::start(&[&m]);
    let target = host.http.trim_start_matches("http://").to_string();
    for i in 0..100 {
        let body = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 50));
        let mut s = tokio::net::TcpStream::connect(&target).await.unwrap();
        s.set_nodelay(true).unwrap();
        let head = format!(
            "POST /eager HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        // The client's own pause between head and body (what it does, not a wait
        // for the host).
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(body.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(wasmhive_e2e::PATIENCE, s.read_to_end(&mut got))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text}");
        let head_end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        assert_eq!(
            String::from_utf8_lossy(&dechunk(&got[head_end + 4..])),
            format!("{}:{body}", body.len()),
            "request {i}"
        );
    }
}

/// A guest that sends the same `content-length` twice (RFC 9110 §8.6: identical
/// values are one) is served; conflicting values are still refused to the guest.
#[tokio::test]
async fn identical_duplicate_content_lengths_are_one() {
    let ws = Workspace::new();
    let host = Host::start(&[&faults_paths_manifest(&ws)]);
    for path in ["/dup-length", "/dup-length-list"] {
        let r = get(host.url(path)).await;
        assert_eq!(r, (200, "hello"), "{path}");
        assert_eq!(r.header("content-length"), Some("5"), "{path}");
    }
    let r = get(host.url("/conflicting-length")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(r.text.starts_with("refused:"), "{}", r.text);
}
