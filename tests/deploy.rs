//! Deploying: manifests checked with errors that point at the field, refused deploys
//! that leave the running version alone, atomic upgrades, undeploy, the compile cache
//! across restarts, graceful shutdown, and `validate`.

use wasmhive_e2e::{Host, HostOptions, Workspace, get};

fn hello(ws: &Workspace, file: &str, version: &str, greeting: &str) -> std::path::PathBuf {
    ws.write(
        file,
        &format!(
            r#"
manifest_version = 1
[app]
name = "hello"
version = "{version}"
[components.hello]
source = "{{component:hello}}"
routes = ["GET /hello", "GET /hello/{{name}}"]
env = {{ GREETING = "{greeting}" }}
"#
        ),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test]
async fn a_bad_manifest_is_refused_with_the_field_and_line() {
    let ws = Workspace::new();
    let host = Host::start(&[]);
    let bad = ws.write(
        "bad.toml",
        r#"manifest_version = 1
[app]
name = "hello"
version = "0.1.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
[components.hello.limits]
timeout = "ten seconds"
"#,
    );
    let out = host.cli(&["deploy", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.toml:9:"), "{err}");
    assert!(err.contains("components.hello.limits.timeout"), "{err}");

    let typo = ws.write(
        "typo.toml",
        r#"manifest_version = 1
[app]
name = "hello"
version = "0.1.0"
[components.hello]
source = "{component:hello}"
rotues = ["GET /hello"]
"#,
    );
    let out = host.cli(&["deploy", typo.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("typo.toml:7:") && err.contains("rotues"),
        "{err}"
    );

    // Nothing was deployed.
    assert_eq!(host.status()["apps"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_refused_deploy_leaves_the_old_version_serving() {
    let ws = Workspace::new();
    let v1 = hello(&ws, "v1.toml", "1.0.0", "hello");
    let host = Host::start(&[&v1]);
    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));

    // Not wasm at all.
    std::fs::write(ws.path().join("garbage.wasm"), b"this is not a component").unwrap();
    let garbage = ws.write(
        "garbage.toml",
        r#"manifest_version = 1
[app]
name = "hello"
version = "2.0.0"
[components.hello]
source = "garbage.wasm"
routes = ["GET /hello"]
"#,
    );
    let out = host.cli(&["deploy", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    // Refused at upload, naming the component, the file and why.
    assert!(
        stderr(&out).contains("component hello")
            && stderr(&out).contains("garbage.wasm")
            && stderr(&out).contains("not a WebAssembly component"),
        "{}",
        stderr(&out)
    );
    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));

    // A component importing something the host does not provide.
    let unknown = ws.write(
        "unknown.toml",
        r#"manifest_version = 1
[app]
name = "hello"
version = "2.0.0"
[components.hello]
source = "{component:unknown-import}"
routes = ["GET /hello"]
"#,
    );
    let out = host.cli(&["deploy", unknown.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("acme:missing/lookup"),
        "{}",
        stderr(&out)
    );
    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));
    let st = host.status();
    assert_eq!(st["apps"][0]["version"], "1.0.0");
}

#[tokio::test]
async fn deploy_swaps_versions_and_undeploy_removes_routes() {
    let ws = Workspace::new();
    let host = Host::start(&[]);
    assert_eq!(get(host.url("/hello")).await.status, 404);

    let v1 = hello(&ws, "v1.toml", "1.0.0", "hello");
    let out = host.cli(&["deploy", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));

    let v2 = hello(&ws, "v2.toml", "2.0.0", "bonjour");
    let out = host.cli(&["deploy", v2.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("replaced 1.0.0"), "{stdout}");
    assert_eq!(get(host.url("/hello")).await, (200, "bonjour, world\n"));
    assert_eq!(host.status()["apps"][0]["version"], "2.0.0");

    let out = host.cli(&["undeploy", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(host.url("/hello")).await.status, 404);
    let out = host.cli(&["undeploy", "hello"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no app named"), "{}", stderr(&out));
}

#[tokio::test]
async fn requests_in_flight_finish_on_the_old_version() {
    let ws = Workspace::new();
    let slow = |version: &str, file: &str| {
        ws.write(
            file,
            &format!(
                r#"manifest_version = 1
[app]
name = "slow"
version = "{version}"
[components.faults]
source = "{{component:faults}}"
routes = ["/sleep"]
"#
            ),
        )
    };
    let host = Host::start(&[&slow("1.0.0", "v1.toml")]);
    // The guest sleeps on purpose, so that the request is still running at the deploy.
    let in_flight = tokio::spawn(get(host.url("/sleep?ms=1500")));
    host.wait_status("slow", "faults", "the request in flight", |s| {
        s["in_flight"] == 1
    })
    .await;
    let out = host.cli(&["deploy", slow("2.0.0", "v2.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert_eq!(host.status()["apps"][0]["version"], "2.0.0");
}

#[tokio::test]
async fn routes_claimed_by_another_app_are_refused() {
    let ws = Workspace::new();
    let host = Host::start(&[&hello(&ws, "a.toml", "1.0.0", "hello")]);
    let other = ws.write(
        "other.toml",
        r#"manifest_version = 1
[app]
name = "other"
version = "1.0.0"
[components.greeter]
source = "{component:hello}"
routes = ["/hello"]
"#,
    );
    let out = host.cli(&["deploy", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("app hello, component hello"), "{err}");
    assert_eq!(host.status()["apps"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_restart_reuses_the_compile_cache_and_the_deployments() {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let m = hello(&ws, "hello.toml", "1.0.0", "hello");
    let host = Host::start_with(HostOptions {
        manifests: vec![m.clone()],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    });
    assert_eq!(
        host.component_status("hello", "hello")["loaded_from"],
        "compiled"
    );
    assert_eq!(host.stop().code(), Some(0));

    // Restart without naming the manifest: the deployment is restored from the data
    // dir, and the component comes from the compile cache.
    let host = Host::start_with(HostOptions {
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    });
    assert_eq!(
        host.component_status("hello", "hello")["loaded_from"],
        "cache"
    );
    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight_and_exits_zero() {
    let ws = Workspace::new();
    let m = ws.write(
        "slow.toml",
        r#"manifest_version = 1
[app]
name = "slow"
version = "1.0.0"
[components.faults]
source = "{component:faults}"
routes = ["/sleep"]
"#,
    );
    let host = Host::start(&[&m]);
    // The guest sleeps on purpose, so that the request is still running at SIGTERM.
    let in_flight = tokio::spawn(get(host.url("/sleep?ms=1500")));
    host.wait_status("slow", "faults", "the request in flight", |s| {
        s["in_flight"] == 1
    })
    .await;
    let status = tokio::task::spawn_blocking(move || host.stop())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(in_flight.await.unwrap(), (200, "slept 1500 ms"));
}

#[tokio::test]
async fn validate_checks_a_manifest_offline() {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let run = |m: &std::path::Path| {
        std::process::Command::new(wasmhive_e2e::binary())
            .args([
                "validate",
                m.to_str().unwrap(),
                "--data-dir",
                data.path().to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let out = run(&hello(&ws, "ok.toml", "1.0.0", "hello"));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("app hello 1.0.0 is valid"), "{stdout}");
    assert!(stdout.contains("GET /hello/{name}"), "{stdout}");

    let dup = ws.write(
        "dup.toml",
        r#"manifest_version = 1
[app]
name = "dup"
version = "1.0.0"
[components.a]
source = "{component:hello}"
routes = ["GET /x/{id}"]
[components.b]
source = "{component:hello}"
routes = ["GET /x/{name}"]
"#,
    );
    let out = run(&dup);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("dup.toml:10:") && err.contains("components.b.routes[0]"),
        "{err}"
    );

    let unknown = ws.write(
        "unknown.toml",
        r#"manifest_version = 1
[app]
name = "u"
version = "1.0.0"
[components.u]
source = "{component:unknown-import}"
"#,
    );
    let out = run(&unknown);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("acme:missing/lookup"),
        "{}",
        stderr(&out)
    );

    // Exports vs triggers: routes need an HTTP handler, subscriptions a message handler.
    let mismatched = |name: &str, source: &str, trigger: &str| {
        ws.write(
            &format!("{name}.toml"),
            &format!(
                "manifest_version = 1\n[app]\nname = \"{name}\"\nversion = \"1.0.0\"\n[components.c]\nsource = \"{{component:{source}}}\"\n{trigger}\n"
            ),
        )
    };
    let out = run(&mismatched("routes", "messenger", "routes = [\"/x\"]"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("exports no HTTP handler"),
        "{}",
        stderr(&out)
    );
    let out = run(&mismatched(
        "subs",
        "hello",
        "[components.c.messaging]\nsubscribe = [\"x\"]",
    ));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("exports no message handler"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let host = Host::start(&[]);
    assert_eq!(get(host.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(host.admin_url("/readyz")).await.status, 200);
}

#[test]
fn the_example_manifests_are_valid() {
    let data = tempfile::tempdir().unwrap();
    let dir = wasmhive_e2e::repo_root().join("manifests");
    // shop-secure.toml reads keys the tour's script makes (manifests/keys/).
    let keys = std::process::Command::new("python3")
        .arg(wasmhive_e2e::repo_root().join("scripts/mint_token.py"))
        .arg("validate-test")
        .output()
        .expect("python3 runs");
    assert!(keys.status.success(), "{}", stderr(&keys));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let out = std::process::Command::new(wasmhive_e2e::binary())
            .args([
                "validate",
                path.to_str().unwrap(),
                "--data-dir",
                data.path().to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the example manifests in {}",
        dir.display()
    );
}

/// `wasmhive history` lists the versions that went live; `wasmhive rollback` deploys
/// the previous one (or `--to` a named one) from the host's history, with no upload
/// and no compile, while clients keep getting answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_redeploys_an_earlier_version_from_the_history() {
    let ws = Workspace::new();
    let host = Host::start(&[]);
    for (file, version, greeting) in [
        ("v1.toml", "1.0.0", "hello"),
        ("v2.toml", "2.0.0", "bonjour"),
        ("v3.toml", "3.0.0", "hallo"),
    ] {
        let m = hello(&ws, file, version, greeting);
        let out = host.cli(&["deploy", m.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = host.cli(&["history", "hello", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions: Vec<&str> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["3.0.0", "2.0.0", "1.0.0"], "newest first");
    assert_eq!(history["current"], "3.0.0");

    // Clients keep asking during the rollbacks: every answer is one version's.
    let url = host.url("/hello");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut answers = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get(&url).await;
                assert_eq!(r.status, 200, "{r:?}");
                assert!(
                    ["hallo, world\n", "bonjour, world\n", "hello, world\n"]
                        .contains(&r.text.as_str()),
                    "{r:?}"
                );
                answers += 1;
            }
            answers
        }));
    }

    let out = host.cli(&["rollback", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        report.contains("deployed hello 2.0.0 (replaced 3.0.0)"),
        "{report}"
    );
    assert!(
        !report.contains("loaded from compiled"),
        "no compile: {report}"
    );
    assert_eq!(get(host.url("/hello")).await, (200, "bonjour, world\n"));

    let out = host.cli(&["rollback", "hello", "--to", "1.0.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(host.url("/hello")).await, (200, "hello, world\n"));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        assert!(c.await.unwrap() > 0);
    }

    let out = host.cli(&["history", "hello"]);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listing.starts_with("hello: running 1.0.0"), "{listing}");
    assert!(listing.contains("rollback from 2.0.0"), "{listing}");

    let out = host.cli(&["rollback", "hello", "--to", "9.9.9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no version \"9.9.9\" in its history"),
        "{}",
        stderr(&out)
    );
    let out = host.cli(&["rollback", "nope"]);
    assert!(
        stderr(&out).contains("no app named \"nope\""),
        "{}",
        stderr(&out)
    );
}
