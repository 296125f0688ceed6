//! Faults with real processes: what a user notices when the infrastructure fails.

use futures::StreamExt;
use wasmhive_e2e::{
    BusChoice, Host, HostOptions, NatsServer, PATIENCE, Workspace, eventually, get,
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
    let deploy = std::process::Command::new(wasmhive_e2e::binary())
        .args(["deploy", v2.to_str().unwrap(), "--admin", &host.admin])
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
