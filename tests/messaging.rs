//! Messaging: components subscribed to subjects handle messages, reply, publish and
//! send requests, on a real nats-server and on the in-process bus. Users reach them
//! with a NATS client or `wasmhive publish`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use wasmhive_e2e::{
    BusChoice, Host, HostOptions, NatsServer, PATIENCE, Workspace, eventually, get,
};

/// The messenger fixture subscribed to `subscribe`, allowed to publish to `publish`.
fn messenger(
    ws: &Workspace,
    name: &str,
    subscribe: &[&str],
    publish: &[&str],
    extra: &str,
) -> std::path::PathBuf {
    let list = |l: &[&str]| {
        l.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ws.write(
        &format!("{name}.toml"),
        &format!(
            r#"
manifest_version = 1
[app]
name = "{name}"
version = "1.0.0"
[components.messenger]
source = "{{component:messenger}}"
{extra}
[components.messenger.messaging]
subscribe = [{}]
publish = [{}]
"#,
            list(subscribe),
            list(publish)
        ),
    )
}

fn host_on(bus: BusChoice, manifests: &[&std::path::Path]) -> Host {
    Host::start_with(HostOptions {
        manifests: manifests.iter().map(|p| p.to_path_buf()).collect(),
        bus,
        ..Default::default()
    })
}

async fn nats(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(&server.url)
        .await
        .expect("connect to nats")
}

async fn request(c: &async_nats::Client, subject: &str, body: &str) -> String {
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        c.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .expect("reply in time")
    .unwrap_or_else(|e| panic!("request {subject}: {e}"));
    String::from_utf8(reply.payload.to_vec()).unwrap()
}

/// `wasmhive publish --request SUBJECT DATA` against `host`.
fn cli_request(host: &Host, subject: &str, data: &str) -> String {
    let out = host.cli(&["publish", "--request", "--timeout", "10s", subject, data]);
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_replies_to_the_reply_subject_over_nats() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "echo", &["echo.>"], &[], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    assert!(
        host.stdout()
            .contains(&format!("bus:   nats {}", server.url)),
        "{}",
        host.stdout()
    );
    let c = nats(&server).await;

    assert_eq!(request(&c, "echo.hi", "hello").await, "echo.hi|hello");

    // The same with an explicit reply subject a client listens on.
    let mut replies = c.subscribe("my.replies").await.unwrap();
    c.publish_with_reply("echo.there", "my.replies", "again".into())
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.payload, "echo.there|again");

    let s = host.component_status("echo", "messenger");
    assert_eq!(s["invocations"], 2, "{s:#}");
    assert_eq!(s["flavor"], "msg", "{s:#}");
    assert!(
        host.log_contains("handled echo.hi"),
        "wasi:logging reaches the host log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guest_sends_requests_with_a_timeout() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "caller", &["call"], &["svc.>"], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;

    // A responder written with a plain NATS client, and one that never answers.
    let mut svc = c.subscribe("svc.time").await.unwrap();
    let responder = c.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let body = format!("42 for {}", String::from_utf8_lossy(&m.payload));
            responder
                .publish(m.reply.unwrap(), body.into())
                .await
                .unwrap();
        }
    });
    let _silent = c.subscribe("svc.slow").await.unwrap();
    c.flush().await.unwrap();

    assert_eq!(
        request(&c, "call", "request:svc.time:2000:q").await,
        "reply=42 for q"
    );
    assert_eq!(
        request(&c, "call", "request:svc.none:2000:q").await,
        "error=no responders on svc.none"
    );
    let timed_out = request(&c, "call", "request:svc.slow:300:q").await;
    assert!(
        timed_out.starts_with("error=request to svc.slow timed out"),
        "{timed_out}"
    );
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_match_nats_wildcards() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "wild", &["orders.*.cancelled", "audit.>"], &[], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;

    assert_eq!(
        request(&c, "orders.42.cancelled", "x").await,
        "orders.42.cancelled|x"
    );
    assert_eq!(request(&c, "audit.a.b.c", "y").await, "audit.a.b.c|y");
    for unmatched in ["orders.cancelled", "orders.1.2.cancelled", "audit"] {
        let r = c.request(unmatched.to_string(), "z".into()).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
            "{unmatched} must not be delivered: {r:?}"
        );
    }
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_group_shares_messages_between_hosts_exactly_once() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(
        &ws,
        "workers",
        &["work.*"],
        &["processed"],
        r#"env = { FORWARD_TO = "processed" }"#,
    );
    let a = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let b = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    let mut processed = c.subscribe("processed").await.unwrap();
    c.flush().await.unwrap();

    const N: usize = 1000;
    for i in 0..N {
        c.publish(format!("work.{}", i % 7), format!("id={i}").into())
            .await
            .unwrap();
    }
    c.flush().await.unwrap();
    let mut seen = Vec::with_capacity(N);
    while seen.len() < N {
        let m = tokio::time::timeout(Duration::from_secs(60), processed.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} messages processed", seen.len()))
            .unwrap();
        seen.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    // Nothing more arrives: no message was handled twice. (Not a synchronisation: a
    // quiet window to see that something does not happen.)
    let extra = tokio::time::timeout(Duration::from_millis(500), processed.next()).await;
    assert!(extra.is_err(), "a message was processed twice: {extra:?}");
    let distinct: BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), N);

    let handled_a = a.component_status("workers", "messenger")["invocations"]
        .as_u64()
        .unwrap();
    let handled_b = b.component_status("workers", "messenger")["invocations"]
        .as_u64()
        .unwrap();
    assert_eq!(handled_a + handled_b, N as u64);
    assert!(
        handled_a > 0 && handled_b > 0,
        "both hosts share the work: {handled_a} + {handled_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_to_a_subject_not_granted_fails_and_sends_nothing() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "limited", &["cmd"], &["allowed.>"], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    let mut secret = c.subscribe("secret.>").await.unwrap();
    let mut allowed = c.subscribe("allowed.>").await.unwrap();
    c.flush().await.unwrap();

    let r = request(&c, "cmd", "publish:secret.x:data").await;
    assert_eq!(
        r,
        "error=publish to \"secret.x\" denied: not granted by this component's messaging.publish"
    );
    assert_eq!(request(&c, "cmd", "publish:allowed.x:data").await, "ok");
    let m = tokio::time::timeout(Duration::from_secs(10), allowed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, "data");
    // Not a synchronisation: a quiet window to see that nothing arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), secret.next())
            .await
            .is_err(),
        "nothing reached the denied subject"
    );
    assert!(host.log_contains("publish denied"), "{}", host.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_wakes_a_component_from_zero() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(
        &ws,
        "sleepy",
        &["wake"],
        &[],
        "[components.messenger.scale]\nidle_timeout = \"300ms\"",
    );
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    host.wait_status("sleepy", "messenger", "scale to zero", |s| {
        s["state"] == "zero"
    })
    .await;
    let c = nats(&server).await;
    assert_eq!(request(&c, "wake", "up").await, "wake|up");
    let s = host.component_status("sleepy", "messenger");
    assert_eq!(s["cold_starts"], 1, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_handlers_are_contained() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "shaky", &["shaky"], &[], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    c.publish("shaky", "fail".into()).await.unwrap();
    c.publish("shaky", "trap".into()).await.unwrap();
    c.flush().await.unwrap();
    // The host keeps handling messages afterwards.
    assert_eq!(request(&c, "shaky", "fine").await, "shaky|fine");
    host.wait_status("shaky", "messenger", "two failures", |s| s["failures"] == 2)
        .await;
    assert!(host.log_contains("asked to fail"), "{}", host.logs());
    assert!(
        host.log_contains("message handler failed"),
        "{}",
        host.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_host_survives_a_nats_restart_and_resubscribes() {
    let mut server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "resilient", &["ping"], &[], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    assert_eq!(request(&c, "ping", "1").await, "ping|1");
    server.restart();
    let c = nats(&server).await;
    // Subscriptions come back once the host has reconnected.
    let r = eventually(
        "a reply after the restart",
        PATIENCE,
        async || match tokio::time::timeout(Duration::from_secs(2), c.request("ping", "2".into()))
            .await
        {
            Ok(Ok(r)) => Ok(r),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(r.payload, "ping|2");
    // HTTP kept working throughout.
    assert_eq!(get(host.admin_url("/healthz")).await.status, 200);
}

// The same semantics on the in-process bus, reached with `wasmhive publish`.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_bus_delivers_replies_wildcards_and_requests_between_components() {
    let ws = Workspace::new();
    let m = ws.write(
        "local.toml",
        r#"
manifest_version = 1
[app]
name = "local"
version = "1.0.0"
[components.front]
source = "{component:messenger}"
[components.front.messaging]
subscribe = ["front.*"]
publish = ["back.>"]
[components.back]
source = "{component:messenger}"
[components.back.messaging]
subscribe = ["back.>"]
"#,
    );
    let host = host_on(BusChoice::Local, &[&m]);
    assert!(host.stdout().contains("bus:   local"), "{}", host.stdout());

    assert_eq!(cli_request(&host, "front.a", "hi"), "front.a|hi");
    // One component requests from another through the bus.
    assert_eq!(
        cli_request(&host, "front.b", "request:back.x.y:2000:q"),
        "reply=back.x.y|q"
    );
    // Not granted.
    assert_eq!(
        cli_request(&host, "front.c", "publish:elsewhere:data"),
        "error=publish to \"elsewhere\" denied: not granted by this component's messaging.publish"
    );
    // No subscriber: the CLI reports no responders.
    let out = host.cli(&["publish", "--request", "front.a.b", "x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no responders"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A plain publish is accepted.
    let out = host.cli(&["publish", "front.z", "fire-and-forget"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "published to front.z"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_nats_flags_the_host_manages_its_own_nats_server() {
    let ws = Workspace::new();
    let m = messenger(&ws, "auto", &["auto"], &[], "");
    let host = host_on(BusChoice::Auto, &[&m]);
    let banner = host.stdout();
    assert!(
        banner.contains("(managed nats-server, JetStream on)"),
        "{banner}"
    );
    let url = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("bus:   nats "))
        .and_then(|l| l.split_whitespace().next())
        .expect("nats url in banner")
        .to_string();
    let c = async_nats::connect(&url).await.unwrap();
    assert_eq!(request(&c, "auto", "x").await, "auto|x");
    assert_eq!(cli_request(&host, "auto", "y"), "auto|y");
    host.stop();
    // The managed server stops with the host.
    let addr = url.trim_start_matches("nats://").to_string();
    eventually("the managed nats-server to stop", PATIENCE, async || {
        match std::net::TcpStream::connect(&addr) {
            Ok(_) => Err(format!("{addr} still accepts connections")),
            Err(_) => Ok(()),
        }
    })
    .await;
}

#[test]
fn durable_delivery_needs_nats() {
    let ws = Workspace::new();
    let m = ws.write(
        "durable.toml",
        r#"
manifest_version = 1
[app]
name = "durable"
version = "1.0.0"
[components.messenger]
source = "{component:messenger}"
[components.messenger.messaging]
subscribe = ["x"]
durable = true
"#,
    );
    let err = match Host::try_start(HostOptions {
        manifests: vec![m],
        ..Default::default()
    }) {
        Ok(_) => panic!("durable = true must be refused on the local bus"),
        Err(e) => e,
    };
    assert!(
        err.contains("durable = true needs NATS with JetStream"),
        "{err}"
    );
}

// Durable delivery (JetStream).

/// A durable messenger on `jobs.*` that forwards each body to `processed`.
fn durable_worker(ws: &Workspace, extra: &str) -> std::path::PathBuf {
    ws.write(
        "jobs.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "jobs"
version = "1.0.0"
[components.worker]
source = "{{component:messenger}}"
env = {{ FORWARD_TO = "processed" }}
[components.worker.limits]
timeout = "2s"
[components.worker.messaging]
subscribe = ["jobs.*"]
publish = ["processed"]
durable = true
{extra}
"#
        ),
    )
}

/// Keeps everything published to `processed` in a stream, so the test can count what
/// was processed even across its own reconnects.
async fn capture_processed(js: &async_nats::jetstream::Context) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TEST_PROCESSED".into(),
        subjects: vec!["processed".into()],
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Bodies captured so far (duplicates included).
async fn processed(js: &async_nats::jetstream::Context) -> Vec<String> {
    let stream = js.get_stream("TEST_PROCESSED").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .unwrap();
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            out.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Waits until `n` distinct bodies were processed and returns all of them.
async fn wait_distinct(js: &async_nats::jetstream::Context, n: usize) -> Vec<String> {
    eventually(
        &format!("{n} distinct jobs processed"),
        PATIENCE,
        async || {
            let all = processed(js).await;
            let distinct = all.iter().collect::<BTreeSet<_>>().len();
            if distinct >= n {
                return Ok(all);
            }
            let mut jobs = js
                .get_stream("WASMHIVE_EVENTS")
                .await
                .map_err(|e| e.to_string())?;
            let state = jobs.info().await.map_err(|e| e.to_string())?.state.clone();
            Err(format!(
                "{distinct} processed; jobs stream state: {state:?}"
            ))
        },
    )
    .await
}

/// Publishes jobs `range` and waits until JetStream has stored each (trying again
/// while the server restarts).
async fn publish_jobs(js: &async_nats::jetstream::Context, range: std::ops::Range<usize>) {
    for i in range {
        eventually(&format!("job {i} stored"), PATIENCE, async || {
            js.publish(format!("jobs.{}", i % 5), format!("id={i}").into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
    }
}

/// Waits until consumer `name` of the events stream has nothing left to deliver and
/// nothing awaiting an ack: JetStream will deliver none of its messages again.
async fn drained(js: &async_nats::jetstream::Context, name: &str) {
    eventually(&format!("consumer {name} drained"), PATIENCE, async || {
        let stream = js
            .get_stream("WASMHIVE_EVENTS")
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(name).await.map_err(|e| e.to_string())?;
        let info = consumer.info().await.map_err(|e| e.to_string())?;
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            Ok(())
        } else {
            Err(format!(
                "ack pending {}, pending {}",
                info.num_ack_pending, info.num_pending
            ))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_messages_survive_a_host_crash() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let m = durable_worker(&ws, "[components.worker.scale]\nmax_instances = 1");
    let opts = HostOptions {
        manifests: vec![m],
        data_dir: Some(data.path().to_path_buf()),
        bus: BusChoice::Nats(server.url.clone()),
        ..Default::default()
    };
    let host = Host::start_with(opts.clone());
    let c = nats(&server).await;
    let js = async_nats::jetstream::new(c.clone());
    capture_processed(&js).await;
    let mut live = c.subscribe("processed").await.unwrap();
    c.flush().await.unwrap();

    publish_jobs(&js, 0..1000).await;
    // Kill the host (SIGKILL, no cleanup) once it is under way.
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(60), live.next())
            .await
            .unwrap();
    }
    host.kill();
    let before_restart: BTreeSet<_> = processed(&js).await.into_iter().collect();
    assert!(before_restart.len() < 1000, "the crash happened mid-stream");

    // Restarted on the same data dir, it restores the deployment and carries on.
    let host = Host::start_with(HostOptions {
        manifests: vec![],
        ..opts
    });
    let all = wait_distinct(&js, 1000).await;
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(distinct.len(), 1000);
    assert!(distinct.iter().all(|id| id.starts_with("id=")));
    let after = host.component_status("jobs", "worker")["invocations"]
        .as_u64()
        .unwrap();
    assert!(after > 0, "the restarted host processed the rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_failing_every_time_is_dead_lettered_after_max_deliver() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = durable_worker(&ws, "max_deliver = 3\nbackoff = [\"100ms\", \"200ms\"]");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    let mut dlq = c.subscribe("wasmhive.dlq.>").await.unwrap();
    c.flush().await.unwrap();
    let js = async_nats::jetstream::new(c.clone());
    let published = std::time::Instant::now();
    js.publish("jobs.bad", "fail-1".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let dead = tokio::time::timeout(Duration::from_secs(30), dlq.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dead.subject.as_str(), "wasmhive.dlq.jobs.worker");
    // Two redeliveries after the backoff delays (100 ms, then 200 ms): a lower bound
    // on the documented delays.
    assert!(
        published.elapsed() >= Duration::from_millis(300),
        "redelivered without the backoff: {:?}",
        published.elapsed()
    );
    assert_eq!(dead.payload, "fail-1");
    let h = dead.headers.expect("dead-letter headers");
    assert_eq!(h.get("Wasmhive-Deliveries").map(|v| v.as_str()), Some("3"));
    assert_eq!(
        h.get("Wasmhive-Subject").map(|v| v.as_str()),
        Some("jobs.bad")
    );
    assert_eq!(
        h.get("Wasmhive-Component").map(|v| v.as_str()),
        Some("jobs/worker@1.0.0")
    );
    assert!(
        h.get("Wasmhive-Error")
            .unwrap()
            .as_str()
            .contains("asked to fail")
    );
    // Kept in the dead-letter stream, and not delivered again: terminated, so the
    // consumer has nothing left for it.
    let stream = js.get_stream("WASMHIVE_DLQ").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, 1);
    drained(&js, "jobs_worker").await;
    let s = host.component_status("jobs", "worker");
    assert_eq!(s["invocations"], 3, "{s:#}");
    assert_eq!(s["failures"], 3, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_delivery_loses_nothing_across_a_nats_restart() {
    let mut server = NatsServer::start();
    let ws = Workspace::new();
    let m = durable_worker(&ws, "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    let js = async_nats::jetstream::new(c.clone());
    publish_jobs(&js, 0..500).await;
    server.restart();
    publish_jobs(&js, 500..1000).await;

    // The stream keeps a message until its consumer acks it, and the host acks only
    // after the handler returned ok: a drained consumer and stream with no dead
    // letters means every one of the 1,000 jobs was handled successfully at least
    // once. (Counting
    // the handler's own `processed` publishes would not prove more: they are core
    // NATS publishes, which a restarting server may drop.)
    drained(&js, "jobs_worker").await;
    let state = eventually("the jobs stream empty", PATIENCE, async || {
        let mut jobs = js
            .get_stream("WASMHIVE_EVENTS")
            .await
            .map_err(|e| e.to_string())?;
        let state = jobs.info().await.map_err(|e| e.to_string())?.state.clone();
        if state.messages == 0 {
            Ok(state)
        } else {
            Err(format!("{state:?}"))
        }
    })
    .await;
    // At least 1,000: a publish retried across the restart may be stored twice.
    assert!(
        state.last_sequence >= 1000,
        "all 1,000 jobs reached the stream: {state:?}"
    );
    let dlq = js.get_stream("WASMHIVE_DLQ").await.unwrap();
    assert_eq!(
        dlq.cached_info().state.messages,
        0,
        "nothing was dead-lettered"
    );
    let s = host.component_status("jobs", "worker");
    assert!(s["invocations"].as_u64().unwrap() >= 1000, "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_event_reaches_every_durable_subscriber_once() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let svc = |name: &str, subject: &str| {
        ws.write(
            &format!("{name}.toml"),
            &format!(
                r#"
manifest_version = 1
[app]
name = "{name}"
version = "1.0.0"
[components.svc]
source = "{{component:messenger}}"
env = {{ FORWARD_TO = "seen.{name}" }}
[components.svc.messaging]
subscribe = ["{subject}"]
publish = ["seen.{name}"]
durable = true
"#
            ),
        )
    };
    let (a, b) = (
        svc("inventory", "orders.created"),
        svc("billing", "orders.*"),
    );
    let _host = host_on(BusChoice::Nats(server.url.clone()), &[&a, &b]);
    let c = nats(&server).await;
    let mut seen = c.subscribe("seen.*").await.unwrap();
    c.flush().await.unwrap();
    let js = async_nats::jetstream::new(c.clone());
    for i in 0..50 {
        js.publish("orders.created", format!("order-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut counts = std::collections::BTreeMap::<String, Vec<String>>::new();
    while counts.values().map(Vec::len).sum::<usize>() < 100 {
        let m = tokio::time::timeout(Duration::from_secs(30), seen.next())
            .await
            .unwrap_or_else(|_| panic!("fan-out incomplete: {counts:?}"))
            .unwrap();
        counts
            .entry(m.subject.to_string())
            .or_default()
            .push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    // Nothing more arrives: each service handled each event exactly once. (Not a
    // synchronisation: a quiet window to see that something does not happen.)
    let extra = tokio::time::timeout(Duration::from_millis(500), seen.next()).await;
    assert!(extra.is_err(), "an event was handled twice: {extra:?}");
    for service in ["seen.inventory", "seen.billing"] {
        let got = &counts[service];
        assert_eq!(got.len(), 50, "{service}: {got:?}");
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 50, "{service}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_context_travels_in_nats_headers() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "traced", &["traced"], &[], "");
    let _host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        c.request_with_headers("traced", headers, "x".into()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(reply.payload, "traced|x");
    let tp = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string())
        .expect("the guest's reply carries the trace");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(!tp.contains("00f067aa0ba902b7"), "a new span: {tp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_host_authenticates_to_nats_and_fails_fast_on_bad_credentials() {
    let server = NatsServer::start_with(&["--user", "hive", "--pass", "s3cret"]);
    let ws = Workspace::new();
    let m = messenger(&ws, "authed", &["authed"], &[], "");
    let host = Host::start_with(HostOptions {
        manifests: vec![m.clone()],
        bus: BusChoice::Nats(server.url.clone()),
        args: vec![
            "--nats-user".into(),
            "hive".into(),
            "--nats-password".into(),
            "s3cret".into(),
        ],
        ..Default::default()
    });
    let c = async_nats::ConnectOptions::with_user_and_password("hive".into(), "s3cret".into())
        .connect(&server.url)
        .await
        .unwrap();
    assert_eq!(request(&c, "authed", "x").await, "authed|x");
    drop(host);

    let err = match Host::try_start(HostOptions {
        manifests: vec![m],
        bus: BusChoice::Nats(server.url.clone()),
        args: vec![
            "--nats-user".into(),
            "hive".into(),
            "--nats-password".into(),
            "wrong".into(),
        ],
        ..Default::default()
    }) {
        Ok(_) => panic!("a wrong password must stop the host"),
        Err(e) => e,
    };
    assert!(err.contains("cannot connect to NATS"), "{err}");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // Fails fast, no retry loop: it exits by itself, it is not killed for never
    // becoming ready.
    assert!(err.starts_with("host exited before it was ready"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_waits_for_message_handlers_in_flight() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "graceful", &["slow"], &[], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let c = nats(&server).await;
    let reply = tokio::spawn({
        let c = c.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                c.request("slow", "sleep:1500".into()),
            )
            .await
        }
    });
    // SIGTERM while the handler sleeps (on purpose, for 1.5 s); the host waits for it
    // before exiting.
    host.wait_status("graceful", "messenger", "the handler running", |s| {
        s["in_flight"] == 1
    })
    .await;
    let status = tokio::task::spawn_blocking(move || host.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let reply = reply.await.unwrap().expect("in time").expect("a reply");
    assert_eq!(reply.payload, "slow|sleep:1500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wasmhive_subscribe_prints_what_is_published_without_taking_it() {
    let server = NatsServer::start();
    let ws = Workspace::new();
    let m = messenger(&ws, "m", &["demo.*"], &[], "");
    let host = host_on(BusChoice::Nats(server.url.clone()), &[&m]);
    let mut watcher = host
        .cli_command(&["subscribe", "demo.*", "--count", "2", "--for", "30s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the watcher has seen two messages (it subscribes asynchronously).
    let mut sent = 0;
    eventually("the watcher to print two messages", PATIENCE, async || {
        if let Some(status) = watcher.try_wait().unwrap() {
            return Ok(status);
        }
        sent += 1;
        let out = host.cli(&["publish", "demo.x", &format!("m{sent}")]);
        assert!(out.status.success());
        Err(format!("{sent} published, the watcher is still running"))
    })
    .await;
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first: u32 = lines[0].strip_prefix("demo.x m").unwrap().parse().unwrap();
    assert_eq!(lines[1], format!("demo.x m{}", first + 1), "{text}");
    // The messenger's queue group still got every message.
    assert!(host.log_contains("handled demo.x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redeploy_does_not_hold_back_durable_messages() {
    // A long timeout makes the ack wait long (timeout + 5 s): a message stranded with
    // a replaced subscription would only come back after it.
    let server = NatsServer::start();
    let ws = Workspace::new();
    let text = std::fs::read_to_string(durable_worker(&ws, "")).unwrap();
    let m = ws.write(
        "jobs-slow-ack.toml",
        &text.replace("timeout = \"2s\"", "timeout = \"60s\""),
    );
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Host::start_with(HostOptions {
            manifests: vec![m.clone()],
            data_dir: Some(data.path().to_path_buf()),
            bus: BusChoice::Nats(server.url.clone()),
            ..Default::default()
        })
    };
    // The second start restores the app from the data dir and then deploys the
    // manifest again: two subscriptions in quick succession, as `just up` does.
    drop(start());
    let host = start();
    let c = nats(&server).await;
    let mut processed = c.subscribe("processed").await.unwrap();
    c.flush().await.unwrap();
    for round in 0..3 {
        if round > 0 {
            let out = host.cli(&["deploy", m.to_str().unwrap()]);
            assert!(out.status.success(), "{out:?}");
        }
        // Not at once: a replaced subscription's pull request stays open at the
        // server for up to 2 s by design (the host's short pull requests), and no
        // user-visible state says when it has gone, so time has to pass.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let body = format!("job-{round}");
        c.publish("jobs.x", body.clone().into()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(20), processed.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the message waited for the ack wait"))
            .unwrap();
        assert_eq!(got.payload, body.as_bytes());
    }
}

/// A component written for wasmCloud 1.x, importing `wasmcloud:bus/lattice` 1.0.0 and
/// 2.0.0 to set link names: its HTTP key-value counter and its message handler (config,
/// key-value, publish) run unmodified, with the grants of its manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wasmcloud_component_setting_link_names_runs_unmodified() {
    let ws = Workspace::new();
    let m = ws.write(
        "compat.toml",
        r#"
manifest_version = 1
[app]
name = "compat"
version = "1.0.0"
[components.counter]
source = "{component:wasmcloud-compat}"
routes = ["GET /count"]
[components.counter.keyvalue]
buckets = ["default"]
[components.counter.config]
greeting = "howdy"
[components.counter.messaging]
subscribe = ["compat.in"]
publish = ["compat.out"]
"#,
    );
    let host = host_on(BusChoice::Local, &[&m]);
    assert_eq!(get(host.url("/count")).await, (200, "1"));
    assert_eq!(get(host.url("/count")).await, (200, "2"));
    let out = host.cli(&["publish", "--request", "--timeout", "5s", "compat.in", "hi"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "howdy #1: hi (direct targets refused)"
    );
    // Its link names changed nothing: the bucket it counts in is its own `default`.
    let kv = host.cli(&["kv", "get", "compat", "counter", "default", "counter"]);
    assert_eq!(String::from_utf8_lossy(&kv.stdout).trim(), "2");
}
