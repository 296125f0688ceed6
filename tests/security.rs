//! The runtime's security floor as a user meets it (docs/SECURITY.md).

use wasmhive_e2e::{Host, Workspace, get};

/// Deploys a component built from `wat` next to a working app and returns the CLI's
/// error.
async fn refused(ws: &Workspace, host: &Host, name: &str, wat_text: &str) -> String {
    let wasm = wat::parse_str(wat_text).expect("valid wat");
    std::fs::write(ws.path().join(format!("{name}.wasm")), wasm).unwrap();
    let manifest = ws.write(
        &format!("{name}.toml"),
        &format!(
            "manifest_version = 1\n[app]\nname = \"{name}\"\nversion = \"1.0.0\"\n\
             [components.c]\nsource = \"{name}.wasm\"\nroutes = [\"/{name}\"]\n"
        ),
    );
    let out = host.cli(&["deploy", manifest.to_str().unwrap()]);
    assert!(!out.status.success(), "deploy of {name} should be refused");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_using_turned_off_proposals_are_refused_at_deploy() {
    let ws = Workspace::new();
    let hello = ws.write(
        "hello.toml",
        r#"manifest_version = 1
[app]
name = "hello"
version = "1.0.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
"#,
    );
    let host = Host::start(&[&hello]);

    // The GC proposal: a struct type in a core module of the component.
    let e = refused(
        &ws,
        &host,
        "gc",
        "(component (core module (type (struct (field i32)))))",
    )
    .await;
    assert!(e.contains("not a valid WebAssembly component"), "{e}");
    assert!(e.contains("without the GC"), "{e}");
    assert!(e.contains("docs/SECURITY.md"), "{e}");

    // Exception handling.
    let e = refused(&ws, &host, "exn", "(component (core module (tag)))").await;
    assert!(e.contains("docs/SECURITY.md"), "{e}");

    // Nothing else changed: the app deployed before still serves, the refused ones
    // have no routes.
    assert_eq!(get(host.url("/hello")).await.status, 200);
    assert_eq!(get(host.url("/gc")).await.status, 404);
}

/// A guest whose request body fails (the client cut it short) learns a short error,
/// not the host's internals, even with `RUST_BACKTRACE=1` in the host's environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_body_read_hands_the_guest_no_host_backtrace() {
    use std::io::Write;
    let ws = Workspace::new();
    let manifest = ws.write(
        "echo.toml",
        r#"manifest_version = 1
[app]
name = "echo"
version = "1.0.0"
[components.echo]
source = "{component:echo-body}"
routes = ["POST /echo"]
# The guest reads the client's body as it arrives (no buffering before it starts),
# so it is the one that meets the broken body.
limits = { request_buffer = "0" }
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
"#,
    );
    let host = Host::start_with(wasmhive_e2e::HostOptions {
        manifests: vec![manifest],
        env: vec![("RUST_BACKTRACE".into(), "1".into())],
        ..Default::default()
    });
    let addr = host.http.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).unwrap();
    socket
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789")
        .unwrap();
    socket.flush().unwrap();
    // The client gives up after 10 of 1000 bytes.
    socket.shutdown(std::net::Shutdown::Both).unwrap();
    drop(socket);

    // echo-body panics with the error's debug string when a read fails.
    assert!(host.log_contains("read failed:"), "{}", host.logs());
    let logs = host.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("read failed:"))
        .expect("the guest's line");
    assert!(
        line.len() < 600,
        "a short error, not a host backtrace: {line}"
    );
    // What the guest printed (its stderr, one log event per line) holds nothing of the
    // host: no backtrace, no source paths of the host or its libraries.
    let guest: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"wasmhive::guest\""))
        .collect();
    for needle in [
        "Stack backtrace",
        "/rustc/",
        "registry/src",
        "host/src",
        "wasmtime",
    ] {
        assert!(
            !guest.iter().any(|l| l.contains(needle)),
            "{needle:?} reached the guest: {guest:#?}"
        );
    }
    // The host keeps serving.
    assert_eq!(get(host.url("/hello")).await.status, 200);
}

/// Headers NATS cannot carry are refused with a clear error (async-nats panics on
/// them: this took the admin API's connection down), on NATS and the local bus alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_headers_nats_cannot_carry_is_a_clear_error() {
    let server = wasmhive_e2e::NatsServer::start();
    for bus in [
        wasmhive_e2e::BusChoice::Nats(server.url.clone()),
        wasmhive_e2e::BusChoice::Local,
    ] {
        let host = Host::start_with(wasmhive_e2e::HostOptions {
            bus: bus.clone(),
            ..Default::default()
        });
        for (name, value) in [
            ("bad name", "v"),
            ("a:b", "v"),
            ("ok", "line\r\nInjected: 1"),
        ] {
            let r = wasmhive_e2e::send(
                host.admin_request(reqwest::Method::POST, "/v1/publish")
                    .json(&serde_json::json!({"subject": "x.y", "data": "d", "headers": [[name, value]]})),
            )
            .await;
            assert_eq!(r.status, 400, "{bus:?} {name:?}: {r}");
            assert!(r.text.contains("invalid header"), "{r}");
        }
        // The host is fine, and a valid header still goes through.
        let r = wasmhive_e2e::send(
            host.admin_request(reqwest::Method::POST, "/v1/publish")
                .json(&serde_json::json!({"subject": "x.y", "data": "d", "headers": [["k", "v"]]})),
        )
        .await;
        assert_eq!(r.status, 200, "{r}");
    }
}
