//! Faults with real processes: what a user notices when the infrastructure fails.

use futures::StreamExt;
use wasmhive_e2e::{
    BusChoice, Gate, Host, HostOptions, NatsServer, PATIENCE, Workspace, eventually, get,
};

/// nats-server killed (SIGKILL) and started again on the same port and store: the
/// host keeps serving HTTP, says the bus is down in `/readyz` and `status` while it is,
/// reconnects by itself, and its message handler answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_going_down_is_reported_and_survived() {
    let mut server = NatsServer::start();
    let ws = Workspace::new();
    let manifest = ws.write(
        "app.toml",
        r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
[components.messenger]
source = "{component:messenger}"
[components.messenger.messaging]
subscribe = ["echo.>"]
"#,
    );
    let host = Host::start_with(HostOptions {
        manifests: vec![manifest],
        bus: BusChoice::Nats(server.url.clone()),
        ..Default::default()
    });
    let echo = |data: &'static str| {
        let out = host.cli(&["publish", "--request", "--timeout", "2s", "echo.x", data]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert_eq!(get(host.admin_url("/readyz")).await.status, 200);
    assert_eq!(echo("before"), (true, "echo.x|before".to_string()));

    server.stop();
    eventually("readyz to report the bus down", PATIENCE, async || {
        let r = get(host.admin_url("/readyz")).await;
        if r.status == 503 && r.text.contains("bus down") {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await;
    assert_eq!(host.status()["bus"]["connected"], false);
    // HTTP does not need the bus.
    assert_eq!(get(host.url("/hello")).await.status, 200);

    server.restart();
    eventually("readyz to recover", PATIENCE, async || {
        let r = get(host.admin_url("/readyz")).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await;
    assert_eq!(host.status()["bus"]["connected"], true);
    // The subscription came back by itself.
    eventually(
        "the handler to answer again",
        PATIENCE,
        async || match echo("after") {
            (true, out) if out == "echo.x|after" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
}

/// nats-server not running when the host starts: the host starts anyway, serves HTTP,
/// reports the bus down in `/readyz` and `status`, and once the server appears it
/// connects, its core subscription answers and its durable one handles every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_before_nats_connects_when_it_appears() {
    let mut server = NatsServer::not_started();
    let ws = Workspace::new();
    let manifest = ws.write(
        "app.toml",
        r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
[components.messenger]
source = "{component:messenger}"
[components.messenger.messaging]
subscribe = ["echo.>"]
[components.worker]
source = "{component:messenger}"
[components.worker.messaging]
subscribe = ["jobs.*"]
durable = true
"#,
    );
    let host = Host::start_with(HostOptions {
        manifests: vec![manifest],
        bus: BusChoice::Nats(server.url.clone()),
        ..Default::default()
    });
    assert_eq!(get(host.url("/hello")).await.status, 200);
    let ready = get(host.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503, "{ready}");
    assert!(ready.text.contains("bus down"), "{ready}");
    assert_eq!(host.status()["bus"]["connected"], false);
    assert!(
        host.log_contains("NATS is not reachable"),
        "{}",
        host.logs()
    );

    server.restart();
    eventually("readyz to report the bus up", PATIENCE, async || {
        let r = get(host.admin_url("/readyz")).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await;
    assert_eq!(host.status()["bus"]["connected"], true);
    eventually("the core subscription to answer", PATIENCE, async || {
        let out = host.cli(&["publish", "--request", "--timeout", "2s", "echo.x", "hi"]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && text == "echo.x|hi" {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    // The durable subscription was set up once NATS came: its consumer exists and the
    // host is pulling from it.
    let client = async_nats::connect(&server.url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    eventually(
        "the host to pull from its durable consumer",
        PATIENCE,
        async || {
            let stream = js
                .get_stream("WASMHIVE_EVENTS")
                .await
                .map_err(|e| e.to_string())?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_consumer("app_worker")
                .await
                .map_err(|e| e.to_string())?;
            let info = consumer.info().await.map_err(|e| e.to_string())?;
            if info.num_waiting >= 1 {
                Ok(())
            } else {
                Err(format!("{info:?}"))
            }
        },
    )
    .await;
    for i in 0..100 {
        js.publish(format!("jobs.{i}"), format!("job {i}").into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    eventually("every job handled and acked", PATIENCE, async || {
        let mut stream = js
            .get_stream("WASMHIVE_EVENTS")
            .await
            .map_err(|e| e.to_string())?;
        let state = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .clone();
        let handled = host.component_status("app", "worker")["invocations"]
            .as_u64()
            .unwrap_or(0);
        if state.messages == 0 && handled >= 100 {
            Ok(())
        } else {
            Err(format!("stream {state:?}, handled {handled}"))
        }
    })
    .await;
}

/// The host killed (SIGKILL) while a deploy is compiling a new version: started again
/// on the same data dir, it serves one whole version, the old or the new, never a mix,
/// and takes the next deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_deploy_comes_back_on_a_whole_version() {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let v1 = ws.write(
        "v1.toml",
        r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
env = { GREETING = "one" }
"#,
    );
    // v2 adds a large component (the Python one, ~18 MB) whose compile takes a while.
    let analytics = wasmhive_e2e::repo_root().join("components/target/python/analytics.wasm");
    assert!(
        analytics.is_file(),
        "{} (just build-python)",
        analytics.display()
    );
    let v2 = ws.write(
        "v2.toml",
        &format!(
            r#"manifest_version = 1
[app]
name = "app"
version = "2.0.0"
[components.hello]
source = "{{component:hello}}"
routes = ["GET /hello"]
env = {{ GREETING = "two" }}
[components.analytics]
source = "{}"
routes = ["/v1/reviews/{{*rest}}"]
[components.analytics.keyvalue]
buckets = ["reviews"]
"#,
            analytics.display()
        ),
    );
    let options = HostOptions {
        manifests: vec![v1.clone()],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let host = Host::start_with(options.clone());
    assert_eq!(get(host.url("/hello")).await.text, "one, world\n");

    // Deploy v2 in the background and kill the host once the deploy has begun (its
    // component uploaded, so the host is compiling or about to).
    let deploy = host
        .cli_command(&["deploy", v2.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let blobs = data.path().join("blobs");
    eventually("the new component to be uploaded", PATIENCE, async || {
        let count = std::fs::read_dir(blobs.join("sha256"))
            .map(|d| d.count())
            .unwrap_or(0);
        if count >= 2 {
            Ok(())
        } else {
            Err(format!("{count} blobs"))
        }
    })
    .await;
    host.kill();
    let _ = deploy.wait_with_output();

    // Back on the same data dir, without the start-up manifest: what it restores.
    let host = Host::start_with(HostOptions {
        manifests: vec![],
        ..options.clone()
    });
    let status = host.status();
    let app = &status["apps"][0];
    let hello = get(host.url("/hello")).await;
    match app["version"].as_str() {
        Some("1.0.0") => {
            assert_eq!(hello.text, "one, world\n");
            assert_eq!(app["components"].as_array().unwrap().len(), 1, "{status:#}");
        }
        Some("2.0.0") => {
            assert_eq!(hello.text, "two, world\n");
            assert_eq!(app["components"].as_array().unwrap().len(), 2, "{status:#}");
        }
        other => panic!("no whole version: {other:?} in {status:#}"),
    }
    // And it takes the next deploy.
    let out = host.cli(&["deploy", v2.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(host.url("/hello")).await.text, "two, world\n");
}

/// The host's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// A client that streams a request body without end to a guest that never reads it:
/// the host takes only what the guest asks for (back-pressure, no buffering of the
/// body), answers when the guest does, and keeps serving other components meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_reads_its_body_does_not_make_the_host_buffer_it() {
    let ws = Workspace::new();
    let manifest = ws.write(
        "app.toml",
        r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.faults]
source = "{component:faults}"
routes = ["/sleep"]
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
"#,
    );
    let host = Host::start(&[&manifest]);
    assert_eq!(get(host.url("/hello")).await.status, 200);
    let before = rss_mib(host.pid());

    // Up to 4 GiB in 1 MiB chunks, as fast as loopback takes them.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let chunks = futures::stream::iter(0..4096u32).map(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 1 << 20]))
    });
    let upload = tokio::spawn(
        wasmhive_e2e::client()
            .post(host.url("/sleep?ms=3000"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send(),
    );
    // While the guest sleeps without reading: other components answer.
    for _ in 0..5 {
        assert_eq!(get(host.url("/hello")).await.status, 200);
    }
    let answered = upload.await.unwrap();
    let grew = rss_mib(host.pid()).saturating_sub(before);
    let sent_mib = sent.load(std::sync::atomic::Ordering::Relaxed);
    // The guest answered 200 after its sleep, or the host cut the unread upload off
    // once it answered; either way it never held the body.
    if let Ok(r) = &answered {
        assert_eq!(r.status(), 200);
    }
    eprintln!("sent {sent_mib} MiB, the host grew by {grew} MiB");
    assert!(
        grew < 64,
        "the host grew by {grew} MiB while the client sent {sent_mib} MiB"
    );
    assert_eq!(get(host.url("/hello")).await.status, 200);
}

/// A guest that writes its response forever: it writes only as fast as the client
/// reads (the host buffers nothing ahead: its memory stays flat while the client
/// pauses), other components are served meanwhile, and it cannot outlive its reader:
/// when the client goes away its instance ends; a client that keeps reading sees the
/// body cut (an error, not a clean end) at the component's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_writes_forever_is_bounded_by_its_reader_and_its_deadline() {
    let ws = Workspace::new();
    let manifest = ws.write(
        "app.toml",
        r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.faults]
source = "{component:faults}"
routes = ["/stream-forever"]
[components.faults.limits]
timeout = "4s"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
"#,
    );
    let host = Host::start(&[&manifest]);
    assert_eq!(get(host.url("/hello")).await.status, 200);
    let before = rss_mib(host.pid());

    // Read 8 MiB, then stop reading with the response open.
    let mut response = wasmhive_e2e::client()
        .get(host.url("/stream-forever"))
        .send()
        .await
        .expect("response head");
    assert_eq!(response.status(), 200);
    let mut read = 0usize;
    while read < 8 << 20 {
        read += response
            .chunk()
            .await
            .expect("body")
            .expect("more body")
            .len();
    }
    // The guest is blocked on back-pressure, not filling the host's memory.
    for _ in 0..5 {
        assert_eq!(get(host.url("/hello")).await.status, 200);
    }
    let grew = rss_mib(host.pid()).saturating_sub(before);
    assert!(
        grew < 64,
        "the host grew by {grew} MiB while the client paused"
    );
    assert_eq!(host.component_status("app", "faults")["in_flight"], 1);
    // The client goes away: the guest's next write fails and its instance ends.
    drop(response);
    host.wait_status("app", "faults", "nothing in flight", |s| {
        s["in_flight"] == 0
    })
    .await;

    // A client that keeps reading: the deadline cuts the body.
    let mut response = wasmhive_e2e::client()
        .get(host.url("/stream-forever"))
        .send()
        .await
        .expect("response head");
    let ended = loop {
        match response.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break "a clean end",
            Err(_) => break "an error",
        }
    };
    assert_eq!(ended, "an error", "an endless body cut at the deadline");
    host.wait_status("app", "faults", "nothing in flight", |s| {
        s["in_flight"] == 0
    })
    .await;
    assert_eq!(get(host.url("/hello")).await.status, 200);
}

/// A guest that starts many outgoing requests at once has at most
/// `max_outgoing_requests` open: the rest wait their turn (the upstream never sees
/// more), other components are served meanwhile, and all of them complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_opening_many_outgoing_requests_holds_at_most_its_limit() {
    let gate = Gate::start();
    let ws = Workspace::new();
    let manifest = ws.write(
        "app.toml",
        &format!(
            r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.caller]
source = "{{component:outbound-call}}"
routes = ["/fanout"]
allowed_outbound_hosts = ["{}"]
max_outgoing_requests = 8
[components.hello]
source = "{{component:hello}}"
routes = ["GET /hello"]
"#,
            gate.url
        ),
    );
    let host = Host::start(&[&manifest]);
    let urls: Vec<String> = (0..40).map(|i| format!("url={}/{i}", gate.url)).collect();
    let fanout = tokio::spawn(get(host.url(&format!("/fanout?{}", urls.join("&")))));
    gate.wait_for(8).await;
    for _ in 0..5 {
        assert_eq!(get(host.url("/hello")).await.status, 200);
    }
    assert_eq!(gate.waiting(), 8, "arrivals {:?}", gate.arrivals());
    assert_eq!(gate.arrivals().len(), 8);
    gate.release();
    let reply = fanout.await.unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let expected: String = (0..40).map(|i| format!("200 /{i}\n")).collect();
    assert_eq!(reply.text, expected);
}

/// A small tmpfs mounted for one test, unmounted when dropped. Mounting needs root
/// (CI and `just test` run as root on their machines); without it the test fails
/// saying so rather than skipping.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill a disk and needs root to do so: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).and_then(|_| f.flush()).is_ok() {}
    let _ = f.sync_all();
}

/// The data dir's disk full: a key-value write fails with an error the guest sees
/// (and the client gets its 500), reads and other components keep working, writes
/// work again once there is room, and nothing committed before is lost across a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_and_loses_nothing() {
    let disk = Tmpfs::mount("256m");
    let data = disk.path().join("data");
    let ws = Workspace::new();
    let manifest = ws.write(
        "app.toml",
        r#"manifest_version = 1
[app]
name = "app"
version = "1.0.0"
[components.kv]
source = "{component:kv-store}"
routes = ["/kv/{*rest}"]
[components.kv.keyvalue]
buckets = ["b"]
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
"#,
    );
    let opts = HostOptions {
        manifests: vec![manifest],
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let host = Host::start_with(opts.clone());
    let put = async |key: &str, value: &str| {
        wasmhive_e2e::send(
            wasmhive_e2e::client()
                .put(host.url(&format!("/kv/b/set/{key}")))
                .body(value.to_string()),
        )
        .await
    };
    assert_eq!(put("before", "kept").await.status, 200);

    fill(&disk.path().join("filler"));
    let failed = put("during", &"x".repeat(1 << 20)).await;
    assert_eq!(failed.status, 500, "{failed}");
    assert!(failed.text.starts_with("error="), "{failed}");
    assert_eq!(get(host.url("/kv/b/get/before")).await, (200, "kept"));
    assert_eq!(get(host.url("/hello")).await.status, 200);

    std::fs::remove_file(disk.path().join("filler")).expect("remove filler");
    eventually("writes to work again", PATIENCE, async || {
        let r = put("after", "also kept").await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{r}"))
        }
    })
    .await;
    assert_eq!(get(host.url("/kv/b/get/before")).await, (200, "kept"));

    host.stop();
    let host = Host::start_with(HostOptions {
        manifests: vec![],
        ..opts
    });
    assert_eq!(get(host.url("/kv/b/get/before")).await, (200, "kept"));
    assert_eq!(get(host.url("/kv/b/get/after")).await, (200, "also kept"));
    assert_eq!(get(host.url("/kv/b/get/during")).await.status, 404);
}
