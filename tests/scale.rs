//! Scaling: scale to zero and wake on demand, single-flight loads, the per-component
//! bulkhead with its bounded queue, load shedding (503 + Retry-After), host-wide
//! limits, and capacity that is never leaked by failing invocations.

use std::time::Duration;

use wasmhive_e2e::{Gate, Host, HostOptions, Workspace, get};

fn outbound_manifest(ws: &Workspace, gates: &[&Gate], scale: &str) -> std::path::PathBuf {
    let hosts = gates
        .iter()
        .map(|g| format!("\"{}\"", g.url))
        .collect::<Vec<_>>()
        .join(", ");
    ws.write(
        "held.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "held"
version = "1.0.0"
[components.caller]
source = "{{component:outbound-call}}"
routes = ["/call"]
allowed_outbound_hosts = [{hosts}]
[components.caller.scale]
{scale}
"#
        ),
    )
}

fn hello_manifest(ws: &Workspace, scale: &str) -> std::path::PathBuf {
    ws.write(
        "hello.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "hello"
version = "0.1.0"
[components.hello]
source = "{{component:hello}}"
routes = ["GET /hello"]
[components.hello.scale]
{scale}
"#
        ),
    )
}

fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_component_scales_to_zero_and_wakes_on_the_next_request() {
    let ws = Workspace::new();
    let m = hello_manifest(&ws, r#"idle_timeout = "3s""#);
    let host = Host::start(&[&m]);

    let s = host.component_status("hello", "hello");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(s["cold_starts"], 0);
    assert_eq!(get(host.url("/hello")).await.status, 200);

    host.wait_status("hello", "hello", "scale to zero", |s| s["state"] == "zero")
        .await;
    let text = host.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("zero"), "{text}");

    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));
    let s = host.component_status("hello", "hello");
    assert_eq!(s["cold_starts"], 1, "{s:#}");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(s["invocations"], 2, "{s:#}");

    // The same counters, scraped.
    let metrics = host.admin_get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text;
    let labels = r#"app="hello",component="hello""#;
    assert_eq!(
        metric(&text, "wasmhive_component_cold_starts_total", labels),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "wasmhive_component_ready", labels),
        Some(1.0),
        "{text}"
    );
    let ok = r#"app="hello",component="hello",trigger="http",status="200",version="0.1.0""#;
    assert_eq!(
        metric(&text, "wasmhive_requests_total", ok),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "wasmhive_request_duration_seconds_count", ok),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_max_instances_is_shed_with_503_and_retry_after() {
    let gate = Gate::start();
    let ws = Workspace::new();
    let m = outbound_manifest(&ws, &[&gate], "max_instances = 2\nqueue = 0");
    let host = Host::start(&[&m]);
    let url = host.url(&format!("/call?url={}/held", gate.url));

    let first = tokio::spawn(get(url.clone()));
    let second = tokio::spawn(get(url.clone()));
    gate.wait_for(2).await;

    let third = get(&url).await;
    assert_eq!(third.status, 503, "{third}");
    assert!(third.header("retry-after").is_some(), "{third:?}");
    let s = host.component_status("held", "caller");
    assert_eq!(s["in_flight"], 2, "{s:#}");
    assert_eq!(s["shed"], 1, "{s:#}");
    assert_eq!(gate.arrivals().len(), 2, "the shed request never ran");

    gate.release();
    for r in [first, second] {
        assert_eq!(r.await.unwrap(), (200, "status=200\n/held"));
    }
    // A slot is released when its instance is gone, just after the response body:
    // wait for that before asking again.
    host.wait_status("held", "caller", "slots released", |s| s["in_flight"] == 0)
        .await;
    assert_eq!(get(&url).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_requests_are_served_in_turn_and_time_out_past_queue_timeout() {
    let gate = Gate::start();
    let stuck = Gate::start();
    let ws = Workspace::new();
    let m = outbound_manifest(
        &ws,
        &[&gate, &stuck],
        "max_instances = 1\nqueue = 2\nqueue_timeout = \"20s\"",
    );
    let host = Host::start(&[&m]);
    let call = |g: &Gate, path: &str| host.url(&format!("/call?url={}/{path}", g.url));

    // One runs, two wait in order, a fourth finds the queue full.
    let r1 = tokio::spawn(get(call(&gate, "1")));
    gate.wait_for(1).await;
    let r2 = tokio::spawn(get(call(&gate, "2")));
    host.wait_status("held", "caller", "one queued", |s| s["queued"] == 1)
        .await;
    let r3 = tokio::spawn(get(call(&gate, "3")));
    host.wait_status("held", "caller", "two queued", |s| s["queued"] == 2)
        .await;
    let r4 = get(call(&gate, "4")).await;
    assert_eq!(r4.status, 503, "queue full: {r4}");
    assert!(r4.header("retry-after").is_some(), "{r4:?}");

    gate.release();
    for (r, path) in [(r1, "/1"), (r2, "/2"), (r3, "/3")] {
        assert_eq!(r.await.unwrap(), (200, format!("status=200\n{path}")));
    }
    assert_eq!(
        gate.arrivals(),
        ["/1", "/2", "/3"],
        "served in arrival order"
    );
    host.wait_status("held", "caller", "queue drained", |s| {
        s["queued"] == 0 && s["in_flight"] == 0
    })
    .await;

    // Past queue_timeout: a short one, on a second deploy of the same app.
    let m = outbound_manifest(
        &ws,
        &[&gate, &stuck],
        "max_instances = 1\nqueue = 5\nqueue_timeout = \"500ms\"",
    );
    let out = host.cli(&["deploy", m.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocker = tokio::spawn(get(call(&stuck, "blocker")));
    stuck.wait_for(1).await;
    let waited = std::time::Instant::now();
    let late = get(call(&gate, "late")).await;
    assert_eq!(late.status, 503, "past queue_timeout: {late}");
    assert!(late.header("retry-after").is_some(), "{late:?}");
    // A lower bound on the documented deadline (queue_timeout): a full queue would
    // have answered 503 at once.
    assert!(
        waited.elapsed() >= Duration::from_millis(450),
        "it waited in the queue first"
    );
    assert!(
        !gate.arrivals().contains(&"/late".to_string()),
        "the timed-out request never ran"
    );
    stuck.release();
    assert_eq!(blocker.await.unwrap().status, 200);
    let s = host.component_status("held", "caller");
    assert_eq!(s["shed"], 1, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_requests_share_one_load() {
    let ws = Workspace::new();
    let m = hello_manifest(
        &ws,
        "idle_timeout = \"2s\"\nmax_instances = 50\nqueue = 1000\nqueue_timeout = \"60s\"",
    );
    let host = Host::start(&[&m]);
    host.wait_status("hello", "hello", "scale to zero", |s| s["state"] == "zero")
        .await;

    let requests: Vec<_> = (0..300)
        .map(|_| tokio::spawn(get(host.url("/hello"))))
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().status, 200);
    }
    let s = host.component_status("hello", "hello");
    assert_eq!(s["cold_starts"], 1, "{s:#}");
    assert_eq!(s["invocations"], 300, "{s:#}");
    assert_eq!(s["shed"], 0, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_instances_keeps_a_component_loaded() {
    let ws = Workspace::new();
    let m = ws.write(
        "pair.toml",
        r#"
manifest_version = 1
[app]
name = "pair"
version = "0.1.0"
[components.warm]
source = "{component:hello}"
routes = ["GET /warm"]
[components.warm.scale]
idle_timeout = "200ms"
min_instances = 1
[components.cold]
source = "{component:hello}"
routes = ["GET /cold"]
[components.cold.scale]
idle_timeout = "200ms"
"#,
    );
    let host = Host::start(&[&m]);
    assert_eq!(get(host.url("/warm")).await.status, 200);
    assert_eq!(get(host.url("/cold")).await.status, 200);
    // The reaper is running: the other component goes to zero, twice over (so the
    // reaper has passed over the idle warm one again and again)...
    host.wait_status("pair", "cold", "cold to zero", |s| s["state"] == "zero")
        .await;
    assert_eq!(get(host.url("/cold")).await.status, 200);
    host.wait_status("pair", "cold", "cold to zero again", |s| {
        s["state"] == "zero" && s["cold_starts"] == 1
    })
    .await;
    // ...and the warm one never does.
    let s = host.component_status("pair", "warm");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(get(host.url("/warm")).await.status, 200);
    let s = host.component_status("pair", "warm");
    assert_eq!(s["cold_starts"], 0, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_invocations_release_their_slots() {
    let ws = Workspace::new();
    let m = ws.write(
        "faults.toml",
        r#"
manifest_version = 1
[app]
name = "faults"
version = "0.1.0"
[components.faults]
source = "{component:faults}"
routes = ["/faults/{*what}"]
[components.faults.limits]
memory = "16MiB"
timeout = "200ms"
[components.faults.scale]
max_instances = 4
queue = 0
"#,
    );
    let host = Host::start(&[&m]);
    // Four workers, each waiting for its answer before the next request: if any
    // failure leaked its slot, a later request would be shed (503).
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let base = host.url("/faults/");
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
                for i in 0..250 {
                    let what = match (w + i) % 50 {
                        0 => "loop",
                        1 => "alloc",
                        _ => "trap",
                    };
                    let s = get(format!("{base}{what}")).await.status;
                    *statuses.entry(s).or_default() += 1;
                }
                statuses
            })
        })
        .collect();
    let mut total = std::collections::BTreeMap::<u16, u32>::new();
    for w in workers {
        for (s, n) in w.await.unwrap() {
            *total.entry(s).or_default() += n;
        }
    }
    assert_eq!(total.get(&503), None, "no request was shed: {total:?}");
    assert_eq!(total.values().sum::<u32>(), 1000);
    assert_eq!(total[&504], 20, "{total:?}");
    assert_eq!(total[&500], 980, "{total:?}");

    // A slot is released just after its response body: wait for the last ones.
    let s = host
        .wait_status("faults", "faults", "slots and instances released", |s| {
            s["in_flight"] == 0 && s["instances"] == 0
        })
        .await;
    assert_eq!(s["failures"], 1000, "{s:#}");
    // All four slots are free: four slow requests run at once (the guest sleeps 100
    // ms on purpose, so that they overlap).
    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(get(host.url("/faults/sleep?ms=100"))))
        .collect();
    for r in slow {
        assert_eq!(r.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn host_wide_limits_shed_with_503() {
    let gate = Gate::start();
    let ws = Workspace::new();
    let config = ws.write(
        "host.toml",
        r#"
[pool]
instances = 2
total_memory = "12MiB"
"#,
    );
    let m = outbound_manifest(&ws, &[&gate], "max_instances = 10\nqueue = 0");
    let faults = ws.write(
        "faults.toml",
        r#"
manifest_version = 1
[app]
name = "faults"
version = "0.1.0"
[components.faults]
source = "{component:faults}"
routes = ["/faults/{*what}"]
[components.faults.limits]
memory = "32MiB"
"#,
    );
    let host = Host::start_with(HostOptions {
        manifests: vec![m, faults],
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let url = host.url(&format!("/call?url={}/x", gate.url));

    // Two invocations fill the host's instance pool; a third, even of another
    // component with its own free slots, is shed.
    let held_requests: Vec<_> = (0..2).map(|_| tokio::spawn(get(url.clone()))).collect();
    gate.wait_for(2).await;
    let r = get(host.url("/faults/ok")).await;
    assert_eq!(r.status, 503, "{r}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    gate.release();
    for r in held_requests {
        assert_eq!(r.await.unwrap().status, 200);
    }
    host.wait_status("held", "caller", "slots released", |s| s["in_flight"] == 0)
        .await;

    // The memory budget: the host has 12 MiB for all instances, less than this
    // component's own 32 MiB limit, so an allocating guest runs out of host budget
    // first: 503 (the host is full), not 500 (the component misbehaved).
    let r = get(host.url("/faults/alloc")).await;
    assert_eq!(r.status, 503, "{r}");
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert!(host.log_contains("memory budget"), "{}", host.logs());
    // And the budget is back once the instance is gone.
    assert_eq!(get(host.url("/faults/ok")).await.status, 200);
}

fn reuse_manifest(ws: &Workspace, instances: &str) -> std::path::PathBuf {
    ws.write(
        "reuse.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "reuse"
version = "1.0.0"
[components.faults]
source = "{{component:faults}}"
routes = ["/faults/{{*what}}"]
[components.faults.limits]
timeout = "1s"
{instances}
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_every_request_gets_a_fresh_instance() {
    let ws = Workspace::new();
    let host = Host::start(&[&reuse_manifest(&ws, "")]);
    for _ in 0..5 {
        let body = get(host.url("/faults/count")).await.text;
        assert_eq!(
            body, "count=1",
            "guest globals never survive a request by default"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_reuse_keeps_an_instance_and_a_trap_drops_only_it() {
    let ws = Workspace::new();
    let m = reuse_manifest(
        &ws,
        "[components.faults.instances]\nmax_requests = 4\nidle_timeout = \"30s\"",
    );
    let host = Host::start(&[&m]);
    let count = async || get(host.url("/faults/count")).await.text;
    let mut counts = Vec::new();
    for _ in 0..8 {
        counts.push(count().await);
    }
    // One instance serves four requests, then a new one takes over.
    assert_eq!(
        counts,
        [
            "count=1", "count=2", "count=3", "count=4", "count=1", "count=2", "count=3", "count=4"
        ]
    );
    // A trap fails its own request and drops that instance; the next requests succeed
    // on a new one.
    assert_eq!(count().await, "count=1");
    assert_eq!(get(host.url("/faults/trap")).await.status, 500);
    assert_eq!(count().await, "count=1");
    for _ in 0..100 {
        assert_eq!(get(host.url("/faults/ok")).await.status, 200);
    }
    // A deadline in a reused instance is contained the same way.
    assert_eq!(get(host.url("/faults/loop")).await.status, 504);
    assert_eq!(count().await, "count=1");
    // Idle reusable instances count as live instances.
    let s = host.component_status("reuse", "faults");
    assert!(s["instances"].as_u64().unwrap() >= 1, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_component_refuses_requests_until_started() {
    let ws = Workspace::new();
    let m = hello_manifest(&ws, "min_instances = 1");
    let host = Host::start(&[&m]);
    assert_eq!(get(host.url("/hello")).await.status, 200);

    let out = host.cli(&["stop", "hello", "hello"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "stopped hello/hello"
    );
    // Stopped, even with min_instances: unloaded, and every request is refused.
    let s = host.component_status("hello", "hello");
    assert_eq!(s["state"], "stopped", "{s:#}");
    for _ in 0..3 {
        let r = get(host.url("/hello")).await;
        assert_eq!(r.status, 503, "{r}");
        assert!(r.headers.contains_key("retry-after"), "{r:?}");
        assert!(r.text.contains("stopped"), "{r}");
    }
    let text = String::from_utf8_lossy(&host.cli(&["status"]).stdout).to_string();
    assert!(text.contains("stopped"), "{text}");

    // Unknown names are an error that names them.
    let out = host.cli(&["stop", "hello", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hello/nope"),
        "{out:?}"
    );

    let out = host.cli(&["start", "hello", "hello"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(get(host.url("/hello")).await.status, 200);
    let s = host.component_status("hello", "hello");
    assert_eq!(s["state"], "ready", "{s:#}");
    assert_eq!(s["cold_starts"], 1, "loaded again after the start: {s:#}");
}
