//! Rollouts: canary (weighted steps, analysed, promoted or aborted), blue-green
//! (preview, then promote), with clients that keep being answered throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmhive_e2e::{Host, HostOptions, Workspace, get};

/// Version `version` of app `svc`: the faults fixture answering `/maybe` with `label`,
/// failing `fail_rate` percent of requests, under `rollout` (a `[rollout]` body).
fn svc(
    ws: &Workspace,
    version: &str,
    label: &str,
    fail_rate: u32,
    rollout: &str,
) -> std::path::PathBuf {
    svc_with(
        ws,
        version,
        label,
        &format!("FAIL_RATE = \"{fail_rate}\""),
        rollout,
    )
}

/// [`svc`] with `env` (TOML inline-table entries) for the api component.
fn svc_with(
    ws: &Workspace,
    version: &str,
    label: &str,
    env: &str,
    rollout: &str,
) -> std::path::PathBuf {
    ws.write(
        &format!("svc-{version}.toml"),
        &format!(
            r#"
manifest_version = 1
[app]
name = "svc"
version = "{version}"
[rollout]
{rollout}
[components.api]
source = "{{component:faults}}"
routes = ["GET /maybe"]
env = {{ LABEL = "{label}", {env} }}
[components.front]
source = "{{component:outbound-call}}"
routes = ["GET /call"]
[components.front.calls.api]
"#
        ),
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Clients asking `/maybe` in a loop until stopped; each returns the (status, body)
/// pairs it saw.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>,
}

impl Load {
    fn start(host: &Host, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (url, stop) = (host.url("/maybe"), stop.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = get(&url).await;
                        seen.push((r.status, r.text.clone()));
                    }
                    seen
                })
            })
            .collect();
        Load { stop, clients }
    }

    async fn finish(self) -> Vec<(u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for c in self.clients {
            all.extend(c.await.unwrap());
        }
        all
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_is_promoted_step_by_step_with_no_failed_request() {
    let ws = Workspace::new();
    let rollout = r#"strategy = "canary"
steps = ["25%", "50%"]
step_interval = "300ms"
min_requests = 20
max_error_rate = "1%""#;
    let host = Host::start(&[&svc(&ws, "1.0.0", "v1", 0, rollout)]);
    let load = Load::start(&host, 8);
    let out = host.cli(&[
        "deploy",
        svc(&ws, "2.0.0", "v2", 0, rollout).to_str().unwrap(),
        "--wait",
    ]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("step 1 at 25%") && text.contains("step 2 at 50%"),
        "{text}"
    );
    assert!(text.contains("promoted"), "{text}");
    let seen = load.finish().await;
    assert!(seen.iter().all(|(s, _)| *s == 200), "no failed request");
    assert!(seen.iter().any(|(_, b)| b == "v1") && seen.iter().any(|(_, b)| b == "v2"));
    assert_eq!(get(host.url("/maybe")).await, (200, "v2"));
    assert_eq!(host.status()["apps"][0]["version"], "2.0.0");
    let history = stdout(&host.cli(&["history", "svc"]));
    assert!(history.contains("rollout from 1.0.0"), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_canary_is_aborted_by_analysis_and_the_old_version_serves_all() {
    let ws = Workspace::new();
    let rollout = r#"strategy = "canary"
steps = ["50%"]
step_interval = "300ms"
min_requests = 20
max_error_rate = "1%""#;
    let host = Host::start(&[&svc(&ws, "1.0.0", "v1", 0, rollout)]);
    let load = Load::start(&host, 8);
    let out = host.cli(&[
        "deploy",
        svc(&ws, "2.0.0", "v2", 50, rollout).to_str().unwrap(),
        "--wait",
    ]);
    assert!(
        !out.status.success(),
        "an aborted rollout fails --wait: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("was aborted"), "{}", stderr(&out));
    let seen = load.finish().await;
    // The only failures are the new version's own.
    assert!(
        seen.iter().all(|(s, b)| *s == 200 || b == "failed"),
        "{seen:?}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&host.cli(&["rollout", "status", "svc", "--json"]).stdout).unwrap();
    assert_eq!(status["phase"], "aborted");
    assert_eq!(
        status["analysis"].as_array().unwrap().len(),
        1,
        "aborted within one step"
    );
    for _ in 0..100 {
        assert_eq!(get(host.url("/maybe")).await, (200, "v1"));
    }
    let metrics = host.admin_get("/metrics").await.text;
    assert!(
        metrics.contains("wasmhive_rollout_aborts_total{app=\"svc\"} 1"),
        "{metrics}"
    );
    assert_eq!(host.status()["apps"][0]["version"], "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_weights_are_honoured_and_a_restart_comes_back_on_the_old_version() {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let rollout = r#"strategy = "canary"
steps = ["25%"]
step_interval = "1h""#;
    let opts = HostOptions {
        manifests: vec![svc(&ws, "1.0.0", "v1", 0, rollout)],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let host = Host::start_with(opts.clone());
    let out = host.cli(&[
        "deploy",
        svc(&ws, "2.0.0", "v2", 0, rollout).to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("canary rollout of svc started"),
        "{}",
        stdout(&out)
    );

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = host.url("/maybe");
        tasks.push(tokio::spawn(async move {
            let mut new = 0;
            for _ in 0..250 {
                let r = get(&url).await;
                assert_eq!(r.status, 200);
                new += usize::from(r.text == "v2");
            }
            new
        }));
    }
    let mut new = 0;
    for t in tasks {
        new += t.await.unwrap();
    }
    let share = new as f64 / 2000.0 * 100.0;
    assert!((20.0..=30.0).contains(&share), "25% step, got {share:.1}%");
    let app = &host.status()["apps"][0];
    assert_eq!(app["version"], "1.0.0");
    assert_eq!(app["rollout"]["version"], "2.0.0");
    assert_eq!(app["rollout"]["weight_percent"], 25.0);
    let metrics = host.admin_get("/metrics").await.text;
    assert!(
        metrics.contains("wasmhive_rollout_weight{app=\"svc\"} 0.25"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wasmhive_rollout_step{app=\"svc\"} 1"),
        "{metrics}"
    );
    for version in ["1.0.0", "2.0.0"] {
        let series = format!(
            "wasmhive_requests_total{{app=\"svc\",component=\"api\",trigger=\"http\",status=\"200\",version=\"{version}\"}}"
        );
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    // The preview header reaches the new version whatever the weight.
    for _ in 0..20 {
        let r = wasmhive_e2e::send(
            wasmhive_e2e::client()
                .get(host.url("/maybe"))
                .header("x-preview", "2.0.0"),
        )
        .await;
        assert_eq!(r, (200, "v2"));
    }
    // An immediate deploy is refused while the rollout runs, unless forced.
    let v3 = svc(&ws, "3.0.0", "v3", 0, "");
    let out = host.cli(&["deploy", v3.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("rollout of svc to 2.0.0 is in progress"),
        "{}",
        stderr(&out)
    );

    // A host restarted mid-rollout serves the old version, with no rollout.
    host.kill();
    let host = Host::start_with(HostOptions {
        manifests: vec![],
        ..opts
    });
    for _ in 0..50 {
        assert_eq!(get(host.url("/maybe")).await, (200, "v1"));
    }
    assert!(!host.cli(&["rollout", "status", "svc"]).status.success());

    let out = host.cli(&["deploy", v3.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(host.url("/maybe")).await, (200, "v3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_previews_then_switches_with_no_failed_request() {
    let ws = Workspace::new();
    let rollout = r#"strategy = "blue-green"
preview_header = "x-color""#;
    let blue = svc(&ws, "1.0.0", "blue", 0, rollout);
    let host = Host::start(&[&blue]);
    // A rollout needs a new version label.
    let out = host.cli(&["deploy", blue.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs a new version label"),
        "{}",
        stderr(&out)
    );
    let out = host.cli(&[
        "deploy",
        svc(&ws, "2.0.0", "green", 0, rollout).to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for _ in 0..50 {
        assert_eq!(get(host.url("/maybe")).await, (200, "blue"));
    }
    let preview = wasmhive_e2e::send(
        wasmhive_e2e::client()
            .get(host.url("/maybe"))
            .header("x-color", "2.0.0"),
    )
    .await;
    assert_eq!(preview, (200, "green"));
    let status = stdout(&host.cli(&["rollout", "status", "svc"]));
    assert!(
        status.contains("blue-green rollout 1.0.0 -> 2.0.0: running"),
        "{status}"
    );
    // Service calls stay within a version: the new front calls the new api.
    let call = host.url("/call?url=http://api/maybe");
    assert_eq!(get(&call).await, (200, "status=200\nblue"));
    let previewed =
        wasmhive_e2e::send(wasmhive_e2e::client().get(&call).header("x-color", "2.0.0")).await;
    assert_eq!(previewed, (200, "status=200\ngreen"));

    let load = Load::start(&host, 8);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let out = host.cli(&["promote", "svc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = load.finish().await;
    assert!(seen.iter().all(|(s, _)| *s == 200), "no failed request");
    assert_eq!(get(host.url("/maybe")).await, (200, "green"));
    let status = stdout(&host.cli(&["rollout", "status", "svc"]));
    assert!(status.contains("promoted"), "{status}");
    // Nothing is left to promote or abort.
    assert!(!host.cli(&["abort", "svc"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sticky_routing_keeps_a_caller_on_one_version_and_a_slow_canary_fails_its_latency_gate() {
    let ws = Workspace::new();
    let sticky = r#"strategy = "canary"
steps = ["50%"]
step_interval = "1h"
sticky = "header:x-user""#;
    let host = Host::start(&[&svc(&ws, "1.0.0", "v1", 0, sticky)]);
    let out = host.cli(&[
        "deploy",
        svc(&ws, "2.0.0", "v2", 0, sticky).to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut versions = std::collections::BTreeSet::new();
    for user in 0..20 {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let r = wasmhive_e2e::send(
                wasmhive_e2e::client()
                    .get(host.url("/maybe"))
                    .header("x-user", format!("user-{user}")),
            )
            .await;
            assert_eq!(r.status, 200);
            seen.insert(r.text.clone());
        }
        assert_eq!(seen.len(), 1, "user-{user} saw {seen:?}");
        versions.extend(seen);
    }
    assert_eq!(
        versions.len(),
        2,
        "the users are split between the versions"
    );
    assert!(host.cli(&["abort", "svc"]).status.success());

    // A canary slower than its latency gate is aborted.
    let gated = r#"strategy = "canary"
steps = ["50%"]
step_interval = "300ms"
min_requests = 10
max_p99 = "50ms""#;
    let out = host.cli(&[
        "deploy",
        "--force",
        "--strategy",
        "immediate",
        svc(&ws, "1.1.0", "v1", 0, gated).to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let load = Load::start(&host, 8);
    let out = host.cli(&[
        "deploy",
        svc_with(&ws, "3.0.0", "slow", "SLEEP_MS = \"200\"", gated)
            .to_str()
            .unwrap(),
        "--wait",
    ]);
    let seen = load.finish().await;
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(stderr(&out).contains("p99 up to"), "{}", stderr(&out));
    assert!(seen.iter().all(|(s, _)| *s == 200), "slow, not failing");
    assert_eq!(get(host.url("/maybe")).await, (200, "v1"));
}
