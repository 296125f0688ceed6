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
