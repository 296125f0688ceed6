//! Calls between services by name (`http://NAME/...`), in process, with the caller's
//! resilience policy: timeout, retries (idempotent only), circuit breaker, fallback.

use wasmhive_e2e::{Host, PATIENCE, Workspace, client, eventually, get, send};

/// The shop: `search` (outbound-call) may call what `calls` lists; `analytics`
/// (faults), `flaky` (fails N times per key) and `inspect` (echoes the request).
fn shop(ws: &Workspace, calls: &str) -> std::path::PathBuf {
    ws.write(
        "shop.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "shop"
version = "1.0.0"
[components.search]
source = "{{component:outbound-call}}"
routes = ["/call", "/fanout"]
{calls}
[components.analytics]
source = "{{component:faults}}"
routes = ["/faults/{{*what}}"]
[components.flaky]
source = "{{component:flaky}}"
routes = ["/flaky/{{*key}}", "GET /flaky-count/{{*key}}"]
[components.flaky.keyvalue]
buckets = ["calls"]
[components.inspect]
source = "{{component:inspect-request}}"
routes = ["/inspect/{{*rest}}"]
"#
        ),
    )
}

fn invocations(host: &Host, component: &str) -> u64 {
    host.component_status("shop", component)["invocations"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_service_times_out_and_the_caller_gets_the_fallback() {
    let ws = Workspace::new();
    let m = shop(
        &ws,
        r#"[components.search.calls.analytics]
timeout = "300ms"
fallback = { status = 200, headers = { "content-type" = "application/json" }, body = '{"likes":0,"comments":0}' }"#,
    );
    let host = Host::start(&[&m]);
    // A direct request to analytics, sleeping as long as the call below will ask for:
    // the caller must have its answer before this one is done.
    let direct = tokio::spawn(get(host.url("/faults/sleep?ms=3000")));
    host.wait_status("shop", "analytics", "the direct request running", |s| {
        s["in_flight"] == 1
    })
    .await;
    let r = get(host.url("/call?url=http://analytics/faults/sleep?ms=3000")).await;
    assert_eq!(r, (200, "status=200\n{\"likes\":0,\"comments\":0}"));
    assert!(
        !direct.is_finished(),
        "the fallback came before analytics' own answer to an earlier request"
    );
    assert_eq!(direct.await.unwrap(), (200, "slept 3000 ms"));
    // Healthy: the real answer.
    assert_eq!(
        get(host.url("/call?url=http://analytics/faults/ok")).await,
        (200, "status=200\nok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_service_opens_the_circuit_and_a_healthy_probe_closes_it() {
    let ws = Workspace::new();
    let m = shop(
        &ws,
        r#"[components.search.calls.analytics]
circuit_breaker = { failures = 3, window = "10s", open_for = "1s" }"#,
    );
    let host = Host::start(&[&m]);
    for _ in 0..3 {
        let r = get(host.url("/call?url=http://analytics/faults/trap")).await;
        assert_eq!(r.status, 200, "{r}");
        assert!(r.text.starts_with("status=500"), "{r}");
    }
    assert_eq!(invocations(&host, "analytics"), 3);
    // Open: calls fail fast and analytics is not touched.
    for _ in 0..5 {
        assert_eq!(
            get(host.url("/call?url=http://analytics/faults/ok")).await,
            (200, "status=503\ncircuit open\n")
        );
    }
    assert_eq!(
        invocations(&host, "analytics"),
        3,
        "no call reached analytics while open"
    );
    let s = host.component_status("shop", "search");
    assert_eq!(
        s["circuits"],
        serde_json::json!([["analytics", "open"]]),
        "{s:#}"
    );
    let metrics = host.admin_get("/metrics").await.text;
    assert!(
        metrics.contains(
            r#"wasmhive_circuit_open{app="shop",component="search",target="analytics"} 1"#
        ),
        "{metrics}"
    );
    // After open_for a probe goes through; a healthy answer closes the circuit. (Calls
    // before that still fail fast, without reaching analytics.)
    eventually("a probe after open_for", PATIENCE, async || {
        let r = get(host.url("/call?url=http://analytics/faults/ok")).await;
        match r.text.as_str() {
            "status=200\nok" if r.status == 200 => Ok(()),
            "status=503\ncircuit open\n" if r.status == 200 => Err(r.to_string()),
            _ => panic!("neither open nor closed: {r}"),
        }
    })
    .await;
    assert_eq!(invocations(&host, "analytics"), 4);
    let s = host.component_status("shop", "search");
    assert_eq!(
        s["circuits"],
        serde_json::json!([["analytics", "closed"]]),
        "{s:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_calls_are_retried_and_a_plain_post_is_sent_once() {
    let ws = Workspace::new();
    let m = shop(
        &ws,
        r#"[components.search.calls.flaky]
retries = { attempts = 3, backoff = "10ms", max_backoff = "50ms" }"#,
    );
    let host = Host::start(&[&m]);
    // A GET that fails twice succeeds on the third attempt.
    assert_eq!(
        get(host.url("/call?url=http://flaky/flaky/get-1?fail=2")).await,
        (200, "status=200\nattempt=3")
    );
    assert_eq!(get(host.url("/flaky-count/get-1")).await, (200, "3"));
    // A POST without an idempotency key: exactly once, failure passed back.
    assert_eq!(
        get(host.url("/call?url=http://flaky/flaky/post-1?fail=1&method=POST")).await,
        (200, "status=503\nattempt=1")
    );
    assert_eq!(get(host.url("/flaky-count/post-1")).await, (200, "1"));
    // With an Idempotency-Key it may be retried.
    assert_eq!(
        get(host.url(
            "/call?url=http://flaky/flaky/post-2?fail=1&method=POST&header=Idempotency-Key:order-7"
        ))
        .await,
        (200, "status=200\nattempt=2")
    );
    assert_eq!(get(host.url("/flaky-count/post-2")).await, (200, "2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_listed_services_can_be_called() {
    let ws = Workspace::new();
    let m = shop(&ws, "[components.search.calls.analytics]");
    let host = Host::start(&[&m]);
    assert_eq!(
        get(host.url("/call?url=http://analytics/faults/ok")).await,
        (200, "status=200\nok")
    );
    assert_eq!(
        get(host.url("/call?url=http://inspect/inspect/x")).await,
        (502, "error=HttpRequestDenied")
    );
    assert_eq!(invocations(&host, "inspect"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fan_out_to_three_services_returns_all_three() {
    let ws = Workspace::new();
    let m = shop(
        &ws,
        "[components.search.calls.analytics]\n[components.search.calls.flaky]\n[components.search.calls.inspect]",
    );
    let host = Host::start(&[&m]);
    // Analytics sleeps 300 ms on purpose: the slowest of the three still comes first.
    let r = get(host.url(
        "/fanout?url=http://analytics/faults/sleep?ms=300&url=http://flaky/flaky/fan&url=http://inspect/inspect/x",
    ))
    .await;
    assert_eq!(r.status, 200, "{r}");
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines[0], "200 slept 300 ms", "{r}");
    assert_eq!(lines[1], "200 attempt=1", "{r}");
    assert!(lines[2].starts_with("200 {"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_context_and_request_id_reach_the_callee() {
    let ws = Workspace::new();
    let m = shop(&ws, "[components.search.calls.inspect]");
    let host = Host::start(&[&m]);
    let r = send(
        client()
            .get(host.url("/call?url=http://inspect/inspect/x"))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-request-id", "req-42"),
    )
    .await;
    let json = r
        .text
        .strip_prefix("status=200\n")
        .unwrap_or_else(|| panic!("{r}"));
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let header = |name: &str| wasmhive_e2e::seen_header(&v, name);
    let tp = header("traceparent");
    assert_eq!(tp.len(), 1, "{v:#}");
    assert!(
        tp[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp:?}"
    );
    assert_eq!(header("x-request-id"), vec!["req-42"]);
    // The callee saw the route it matched, like a request from outside.
    assert_eq!(header("wasmhive-param-rest"), vec!["x"]);
}
