//! Faults with real processes: what a user notices when the infrastructure fails.

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
