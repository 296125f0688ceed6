//! WASI 0.3 components (`wasi:http/handler@0.3`), through the example `hello-p3`:
//! detection at deploy, streaming both ways, many concurrent requests in few
//! instances, instance reuse and its limits, traps and deadlines contained, and the
//! same grants and limits as WASI 0.2: outbound hosts, forbidden headers, memory.

use wasmhive_e2e::{Host, PATIENCE, Upstream, Workspace, client, eventually, get, send};

/// The hello-p3 app; `extra` goes into `[components.api.limits]` (or later tables).
fn manifest(ws: &Workspace, extra: &str) -> std::path::PathBuf {
    manifest_with(ws, "", extra)
}

/// Like [`manifest`], with `component` added to `[components.api]` itself.
fn manifest_with(ws: &Workspace, component: &str, extra: &str) -> std::path::PathBuf {
    ws.write(
        "p3.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "p3"
version = "0.1.0"
[components.api]
source = "{{component:hello-p3}}"
routes = ["GET /hello", "GET /hello/{{name}}", "POST /echo", "GET /sleep", "GET /trap", "GET /spin", "GET /count", "GET /env/{{name}}", "GET /headers", "GET /set-header", "GET /fetch", "GET /alloc", "GET /trap-after-head"]
env = {{ GREETING = "hi from the manifest" }}
{component}
[components.api.limits]
timeout = "2s"
{extra}
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_is_detected_and_serves_its_routes() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    assert_eq!(
        get(host.url("/hello")).await,
        (200, "hello from wasi 0.3\n")
    );
    assert_eq!(get(host.url("/hello/ada")).await, (200, "hello, ada\n"));
    let s = host.component_status("p3", "api");
    assert_eq!(s["flavor"], "p3", "{s:#}");
    let text = String::from_utf8_lossy(&host.cli(&["status"]).stdout).to_string();
    assert!(text.contains(" p3 "), "{text}");
}

/// WASI 0.2 and 0.3 components run on separate engines (ADR 0009); a restart must
/// still find a p3 component's compiled artifact instead of compiling it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_comes_from_the_compile_cache_after_a_restart() {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let host = Host::start_with(wasmhive_e2e::HostOptions {
        manifests: vec![manifest(&ws, "")],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    });
    assert_eq!(
        host.component_status("p3", "api")["loaded_from"],
        "compiled"
    );
    assert_eq!(host.stop().code(), Some(0));

    let host = Host::start_with(wasmhive_e2e::HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    });
    let s = host.component_status("p3", "api");
    assert_eq!(s["loaded_from"], "cache", "{s:#}");
    assert_eq!(s["flavor"], "p3", "{s:#}");
    assert_eq!(
        get(host.url("/hello")).await,
        (200, "hello from wasi 0.3\n")
    );
}

/// One app with a WASI 0.2 and a WASI 0.3 component: both serve, side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p2_and_p3_components_serve_side_by_side() {
    let ws = Workspace::new();
    let m = ws.write(
        "mixed.toml",
        r#"
manifest_version = 1
[app]
name = "mixed"
version = "0.1.0"
[components.old]
source = "{component:hello}"
routes = ["GET /hello"]
[components.new]
source = "{component:hello-p3}"
routes = ["GET /hello/{name}"]
"#,
    );
    let host = Host::start(&[&m]);
    for _ in 0..3 {
        assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));
        assert_eq!(get(host.url("/hello/ada")).await, (200, "hello, ada\n"));
    }
    assert_eq!(host.component_status("mixed", "old")["flavor"], "p2");
    assert_eq!(host.component_status("mixed", "new")["flavor"], "p3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_echoes_one_mebibyte_byte_for_byte() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let r = client()
        .post(host.url("/echo"))
        .header("content-type", "application/x-test")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-test");
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the echo differs from what was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sleeps_share_instances_and_finish_together() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    // The guest sleeps on purpose: the requests must overlap.
    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(get(host.url("/sleep?ms=1000"))))
        .collect();
    // While they sleep, the host shows all 50 in flight in fewer instances.
    let s = eventually("all 50 requests in flight at once", PATIENCE, async || {
        let s = host.component_status("p3", "api");
        if s["in_flight"] == 50 {
            return Ok(s);
        }
        // Once one has answered, the 50 can no longer be in flight at once.
        assert!(
            !requests.iter().any(|r| r.is_finished()),
            "a request answered before all 50 were in flight: {s:#}"
        );
        Err(format!("{s:#}"))
    })
    .await;
    let instances = s["instances"].as_u64().unwrap();
    assert!(
        (1..50).contains(&instances),
        "50 sleeping requests should need fewer than 50 instances: {s:#}"
    );
    // One sleep, not 50 one after another (or 50 / max_concurrent): each answers
    // within its 2 s deadline (`limits.timeout`), else it would be a 504.
    for r in requests {
        assert_eq!(r.await.unwrap(), (200, "slept 1000\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_a_p3_instance_is_reused_and_max_requests_1_makes_it_fresh() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    let mut counts = Vec::new();
    for _ in 0..5 {
        counts.push(get(host.url("/count")).await.text);
    }
    assert_eq!(
        counts,
        ["1\n", "2\n", "3\n", "4\n", "5\n"],
        "reused by default"
    );
    drop(host);

    let ws = Workspace::new();
    let host = Host::start(&[&manifest(
        &ws,
        "[components.api.instances]\nmax_requests = 1",
    )]);
    for _ in 0..5 {
        assert_eq!(
            get(host.url("/count")).await,
            (200, "1\n"),
            "with max_requests = 1 no guest global survives a request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trap_in_a_reused_p3_instance_fails_only_its_request() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    assert_eq!(get(host.url("/count")).await.text, "1\n");
    assert_eq!(get(host.url("/count")).await.text, "2\n");
    let status = get(host.url("/trap")).await.status;
    assert_eq!(status, 500);
    // The trapped instance is gone: the count starts again in a new one.
    assert_eq!(get(host.url("/count")).await.text, "1\n");
    for _ in 0..100 {
        assert_eq!(get(host.url("/hello")).await.status, 200);
    }
    assert!(host.log_contains("WASI 0.3 instance failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_request_past_its_deadline_is_504_and_the_next_is_served() {
    // The guest would sleep 10 s; its 2 s deadline answers 504 instead (a 200 would
    // mean the deadline was not enforced).
    deadline_stops("/sleep?ms=10000", 1).await;
}

/// Requests `path`, which must run past the deadline: 504, one failure counted, and
/// the host then serves `/hello` `served_after` times.
async fn deadline_stops(path: &str, served_after: usize) {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    let status = get(host.url(path)).await.status;
    assert_eq!(status, 504);
    let s = host.component_status("p3", "api");
    assert_eq!(s["failures"], 1, "{s:#}");
    for _ in 0..served_after {
        assert_eq!(
            get(host.url("/hello")).await,
            (200, "hello from wasi 0.3\n")
        );
    }
}

/// A guest that computes forever, never yielding, is stopped by the epoch deadline:
/// the p3 engine is built lazily, and its epoch must be ticking too. Without that, the
/// spinning instance would keep its worker thread and the requests routed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_guest_spinning_past_its_deadline_is_stopped() {
    deadline_stops("/spin", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_instances_bounds_p3_instances_and_max_concurrent_the_requests_in_each() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(
        &ws,
        "[components.api.scale]\nmax_instances = 2\nqueue = 0\n[components.api.instances]\nmax_concurrent = 4",
    )]);
    // The guest sleeps on purpose: the requests must overlap.
    let requests: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get(host.url("/sleep?ms=1000"))))
        .collect();
    // The most instances seen while the requests run.
    let mut most = 0;
    let mut instances = || {
        let s = host.component_status("p3", "api");
        most = most.max(s["instances"].as_u64().unwrap());
        s
    };
    eventually("8 requests in flight", PATIENCE, async || {
        let s = instances();
        if s["in_flight"] == 8 {
            return Ok(());
        }
        // Once one has answered, the 8 can no longer be in flight at once.
        assert!(
            !requests.iter().any(|r| r.is_finished()),
            "a request answered before all 8 were in flight: {s:#}"
        );
        Err(format!("{s:#}"))
    })
    .await;
    // 2 instances × 4 at once: the bulkhead admits 8, a ninth is shed.
    let status = get(host.url("/hello")).await.status;
    assert_eq!(status, 503, "the ninth request finds the bulkhead full");
    eventually("the 8 requests to answer", PATIENCE, async || {
        instances();
        match requests.iter().filter(|r| !r.is_finished()).count() {
            0 => Ok(()),
            n => Err(format!("{n} still running")),
        }
    })
    .await;
    for r in requests {
        assert_eq!(r.await.unwrap(), (200, "slept 1000\n"));
    }
    assert!((1..=2).contains(&most), "instances seen: {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_is_refused_for_a_p2_component() {
    let ws = Workspace::new();
    let m = ws.write(
        "p2.toml",
        r#"
manifest_version = 1
[app]
name = "p2"
version = "0.1.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
[components.hello.instances]
max_concurrent = 4
"#,
    );
    let out = Host::start(&[]).cli(&["deploy", m.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_concurrent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_sees_only_the_env_its_manifest_lists() {
    let ws = Workspace::new();
    let host = Host::start_with(wasmhive_e2e::HostOptions {
        manifests: vec![manifest(&ws, "")],
        env: vec![("HOST_SECRET".into(), "not for guests".into())],
        ..Default::default()
    });
    assert_eq!(
        get(host.url("/env/GREETING")).await,
        (200, "hi from the manifest\n")
    );
    for name in ["HOST_SECRET", "PATH", "HOME"] {
        assert_eq!(
            get(host.url(&format!("/env/{name}"))).await,
            (404, "unset\n"),
            "{name} must not reach the guest"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_reaches_only_the_outbound_hosts_its_manifest_lists() {
    let allowed = Upstream::start("from upstream");
    let unlisted = Upstream::start("should never be reached");
    let ws = Workspace::new();
    let m = manifest_with(
        &ws,
        &format!("allowed_outbound_hosts = [\"{}\"]", allowed.url),
        "",
    );
    let host = Host::start(&[&m]);
    assert_eq!(
        get(host.url(&format!("/fetch?url={}/x", allowed.url))).await,
        (200, "status=200\nfrom upstream")
    );
    assert_eq!(
        get(host.url(&format!("/fetch?url={}/x", unlisted.url))).await,
        (502, "error=HttpRequestDenied")
    );
    assert_eq!(unlisted.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert!(
        host.log_contains("outbound request denied"),
        "{}",
        host.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_neither_sees_nor_sets_forbidden_headers() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    let r = send(
        client()
            .get(host.url("/headers"))
            .header("x-custom", "yes")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("upgrade", "websocket")
            .header("te", "trailers")
            .header("connection", "keep-alive")
            .header("keep-alive", "timeout=5"),
    )
    .await;
    assert_eq!(r.status, 200, "{r}");
    let names: Vec<&str> = r.text.lines().collect();
    assert!(names.contains(&"x-custom"), "{names:?}");
    for forbidden in [
        "proxy-authorization",
        "upgrade",
        "te",
        "host",
        "connection",
        "keep-alive",
    ] {
        assert!(
            !names.contains(&forbidden),
            "{forbidden} reached the guest: {names:?}"
        );
    }

    for forbidden in ["connection", "keep-alive", "transfer-encoding", "proxy-foo"] {
        let r = get(host.url(&format!("/set-header?name={forbidden}"))).await;
        assert_eq!(r.status, 200, "{r}");
        assert!(
            !r.headers.contains_key(forbidden),
            "{forbidden} reached the client"
        );
        assert_eq!(r.text, "refused: forbidden\n", "{forbidden}");
    }
    let r = get(host.url("/set-header?name=x-allowed")).await;
    assert_eq!(r.header("x-allowed"), Some("1"), "{r:?}");
    assert_eq!(r.text, "set\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_component_past_its_memory_limit_is_contained() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "memory = \"32MiB\"")]);
    assert_eq!(get(host.url("/alloc?mb=4")).await, (200, "allocated 4\n"));
    let status = get(host.url("/alloc?mb=64")).await.status;
    assert_eq!(status, 500);
    assert!(host.log_contains("memory limit"), "{}", host.logs());
    for _ in 0..3 {
        assert_eq!(
            get(host.url("/hello")).await,
            (200, "hello from wasi 0.3\n")
        );
    }
}

/// A WASI 0.3 guest that traps after sending its response head: as for WASI 0.2, the
/// client's body fails (it does not end cleanly), the invocation counts as a failure
/// and is logged once, and the component serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_p3_failure_after_the_response_head_fails_the_response() {
    let ws = Workspace::new();
    let host = Host::start(&[&manifest(&ws, "")]);
    let outcome = client().get(host.url("/trap-after-head")).send().await;
    let clean = match outcome {
        Ok(r) => r.text().await.is_ok(),
        Err(_) => false,
    };
    assert!(!clean, "a truncated body must not end cleanly");
    assert_eq!(
        get(host.url("/hello")).await,
        (200, "hello from wasi 0.3\n")
    );
    let st = host.component_status("p3", "api");
    assert_eq!(st["failures"], 1, "{st:#}");
    assert!(
        host.log_contains("invocation failed after its response head"),
        "{}",
        host.logs()
    );
    let failures = host
        .logs()
        .lines()
        .filter(|l| l.contains("invocation failed"))
        .count();
    assert_eq!(failures, 1, "logged once: {}", host.logs());
}
