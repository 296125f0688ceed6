//! Instance reuse is a property of the invocation, not of the HTTP path:
//! `instances.max_requests` applies to message handlers too.

use wasmhive_e2e::{Host, Workspace};

fn manifest(ws: &Workspace, name: &str, instances: &str) -> std::path::PathBuf {
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
{instances}
[components.messenger.messaging]
subscribe = ["{name}.>"]
"#
        ),
    )
}

/// What the messenger fixture answers `count` with on `subject`: the messages the
/// instance that handled it has handled (1 in a fresh instance).
fn count(host: &Host, subject: &str) -> String {
    let out = host.cli(&["publish", "--request", "--timeout", "10s", subject, "count"]);
    assert!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn message_handlers_reuse_instances_when_the_manifest_allows_it() {
    let ws = Workspace::new();
    let reused = manifest(
        &ws,
        "reused",
        // A long idle_timeout: a slow machine must not drop the idle instance between
        // two messages (the CLI starts a process per message).
        "[components.messenger.instances]\nmax_requests = 3\nidle_timeout = \"1m\"",
    );
    let fresh = manifest(&ws, "fresh", "");
    let host = Host::start(&[&reused, &fresh]);

    // One message at a time: the same instance serves three, then a new one.
    let counts: Vec<String> = (0..4).map(|_| count(&host, "reused.x")).collect();
    assert_eq!(counts, ["count=1", "count=2", "count=3", "count=1"]);

    // Without [instances], every message gets a fresh instance (WASI 0.2 default).
    let counts: Vec<String> = (0..3).map(|_| count(&host, "fresh.x")).collect();
    assert_eq!(counts, ["count=1", "count=1", "count=1"]);

    // Both were invocations like any other.
    assert_eq!(
        host.component_status("reused", "messenger")["invocations"],
        4
    );
    assert_eq!(
        host.component_status("fresh", "messenger")["invocations"],
        3
    );
}
