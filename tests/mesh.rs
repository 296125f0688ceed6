//! Calls between services by name (`http://NAME/...`), in process, with the caller's
//! resilience policy: timeout, retries (idempotent only), circuit breaker, fallback.

use std::time::{Duration, Instant};

use wasmhive_e2e::{Host, Workspace, client};

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

async fn get(host: &Host, path: &str) -> (u16, String) {
    let r = client().get(host.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
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
    let started = Instant::now();
    let r = get(&host, "/call?url=http://analytics/faults/sleep?ms=3000").await;
    assert_eq!(r, (200, "status=200\n{\"likes\":0,\"comments\":0}".into()));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // Healthy: the real answer.
    assert_eq!(
        get(&host, "/call?url=http://analytics/faults/ok").await,
        (200, "status=200\nok".into())
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
        let (status, body) = get(&host, "/call?url=http://analytics/faults/trap").await;
        assert_eq!(status, 200);
        assert!(body.starts_with("status=500"), "{body}");
    }
    assert_eq!(invocations(&host, "analytics"), 3);
    // Open: calls fail fast and analytics is not touched.
    for _ in 0..5 {
        assert_eq!(
            get(&host, "/call?url=http://analytics/faults/ok").await,
            (200, "status=503\ncircuit open\n".into())
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
    let metrics = client()
        .get(host.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"wasmhive_circuit_open{app="shop",component="search",target="analytics"} 1"#
        ),
        "{metrics}"
    );
    // After open_for a probe goes through; a healthy answer closes the circuit.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&host, "/call?url=http://analytics/faults/ok").await,
        (200, "status=200\nok".into())
    );
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
        get(&host, "/call?url=http://flaky/flaky/get-1?fail=2").await,
        (200, "status=200\nattempt=3".into())
    );
    assert_eq!(get(&host, "/flaky-count/get-1").await, (200, "3".into()));
    // A POST without an idempotency key: exactly once, failure passed back.
    assert_eq!(
        get(
            &host,
            "/call?url=http://flaky/flaky/post-1?fail=1&method=POST"
        )
        .await,
        (200, "status=503\nattempt=1".into())
    );
    assert_eq!(get(&host, "/flaky-count/post-1").await, (200, "1".into()));
    // With an Idempotency-Key it may be retried.
    assert_eq!(
        get(
            &host,
            "/call?url=http://flaky/flaky/post-2?fail=1&method=POST&header=Idempotency-Key:order-7"
        )
        .await,
        (200, "status=200\nattempt=2".into())
    );
    assert_eq!(get(&host, "/flaky-count/post-2").await, (200, "2".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_listed_services_can_be_called() {
    let ws = Workspace::new();
    let m = shop(&ws, "[components.search.calls.analytics]");
    let host = Host::start(&[&m]);
    assert_eq!(
        get(&host, "/call?url=http://analytics/faults/ok").await,
        (200, "status=200\nok".into())
    );
    assert_eq!(
        get(&host, "/call?url=http://inspect/inspect/x").await,
        (502, "error=HttpRequestDenied".into())
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
    let (status, body) = get(
        &host,
        "/fanout?url=http://analytics/faults/sleep?ms=300&url=http://flaky/flaky/fan&url=http://inspect/inspect/x",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "200 slept 300 ms", "{body}");
    assert_eq!(lines[1], "200 attempt=1", "{body}");
    assert!(lines[2].starts_with("200 {"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_context_and_request_id_reach_the_callee() {
    let ws = Workspace::new();
    let m = shop(&ws, "[components.search.calls.inspect]");
    let host = Host::start(&[&m]);
    let r = client()
        .get(host.url("/call?url=http://inspect/inspect/x"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let json = body
        .strip_prefix("status=200\n")
        .unwrap_or_else(|| panic!("{body}"));
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
