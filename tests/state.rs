//! State: each component's own key-value buckets (durable, namespaced, atomic),
//! configuration with `${VAR}` expansion, and secrets that never leak.

use std::collections::BTreeSet;

use wasmhive_e2e::{BusChoice, Host, HostOptions, NatsServer, Reply, Workspace, client, send};

/// Which key-value backend a test runs against.
enum Backend {
    /// The embedded store (in-process bus).
    Redb,
    /// JetStream key-value on a real nats-server (`--nats URL` picks it).
    JetStream(NatsServer),
}

impl Backend {
    fn options(&self, mut opts: HostOptions) -> HostOptions {
        opts.bus = match self {
            Backend::Redb => BusChoice::Local,
            Backend::JetStream(s) => BusChoice::Nats(s.url.clone()),
        };
        opts
    }

    fn start(&self, opts: HostOptions) -> Host {
        let kind = match self {
            Backend::Redb => "kv:    redb",
            Backend::JetStream(_) => "kv:    jetstream",
        };
        let host = Host::start_with(self.options(opts));
        assert!(host.stdout().contains(kind), "{}", host.stdout());
        host
    }

    fn start_manifests(&self, manifests: &[&std::path::Path]) -> Host {
        self.start(HostOptions {
            manifests: manifests.iter().map(|p| p.to_path_buf()).collect(),
            ..Default::default()
        })
    }
}

/// Runs each scenario once per backend: `NAME_redb` and `NAME_jetstream`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Redb).await;
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::JetStream(wasmhive_e2e::NatsServer::start())).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_counter_survives_a_host_kill_and_restart,
    buckets_belong_to_their_component,
    two_apps_with_the_same_bucket_name_share_nothing_on_one_host,
    a_thousand_concurrent_increments_count_exactly,
    batches_paging_cas_and_limits,
    an_operator_reads_and_seeds_a_components_bucket,
);

/// The kv-store fixture as component `store` of `app`, on its own paths, with
/// `extra` manifest lines.
fn root_app(ws: &Workspace, app: &str, extra: &str) -> std::path::PathBuf {
    ws.write(
        &format!("{app}.toml"),
        &format!(
            r#"
manifest_version = 1
[app]
name = "{app}"
version = "1.0.0"
[components.store]
source = "{{component:kv-store}}"
routes = ["/kv/{{*rest}}", "/config/{{*rest}}", "/config-runtime/{{*rest}}", "GET /config-all"]
{extra}
"#
        ),
    )
}

/// `METHOD url` with `body` as it is (the fixture's bodies are plain text).
async fn call(method: reqwest::Method, url: String, body: &str) -> Reply {
    send(client().request(method, url).body(body.to_string())).await
}

use reqwest::Method;

async fn a_counter_survives_a_host_kill_and_restart(backend: Backend) {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let m = root_app(
        &ws,
        "counter",
        "[components.store.keyvalue]\nbuckets = [\"counts\"]",
    );
    let opts = HostOptions {
        manifests: vec![m],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let host = backend.start(opts.clone());
    for i in 1..=5 {
        let r = call(Method::POST, host.url("/kv/counts/incr/visits"), "").await;
        assert_eq!(r, (200, i.to_string()));
    }
    host.kill();
    let host = backend.start(HostOptions {
        manifests: vec![],
        ..opts
    });
    assert_eq!(
        call(Method::POST, host.url("/kv/counts/incr/visits"), "").await,
        (200, "6")
    );
}

async fn buckets_belong_to_their_component(backend: Backend) {
    let ws = Workspace::new();
    let a = root_app(
        &ws,
        "alpha",
        "[components.store.keyvalue]\nbuckets = [\"orders\"]",
    );
    let host = backend.start_manifests(&[&a]);
    assert_eq!(
        call(Method::PUT, host.url("/kv/orders/set/o1"), "alpha's order").await,
        (200, "ok")
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/orders/get/o1"), "").await,
        (200, "alpha's order")
    );
    // An unlisted bucket (including the default one) is refused with an error the
    // guest sees.
    assert_eq!(
        call(Method::GET, host.url("/kv/payments/get/o1"), "").await,
        (403, "error=access-denied")
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/_/get/o1"), "").await,
        (403, "error=access-denied")
    );
    assert!(
        host.log_contains("key-value bucket denied"),
        "{}",
        host.logs()
    );
}

async fn two_apps_with_the_same_bucket_name_share_nothing_on_one_host(backend: Backend) {
    // Same host, same data dir, two apps, each with a bucket called "orders".
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let a = root_app(
        &ws,
        "alpha",
        "[components.store.keyvalue]\nbuckets = [\"orders\"]",
    );
    let host = backend.start(HostOptions {
        manifests: vec![a],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    });
    assert_eq!(
        call(Method::PUT, host.url("/kv/orders/set/k"), "from alpha")
            .await
            .status,
        200
    );
    let out = host.cli(&["undeploy", "alpha"]);
    assert!(out.status.success());
    let b = root_app(
        &ws,
        "beta",
        "[components.store.keyvalue]\nbuckets = [\"orders\"]",
    );
    let out = host.cli(&["deploy", b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/orders/get/k"), "").await,
        (404, "none")
    );
}

async fn a_thousand_concurrent_increments_count_exactly(backend: Backend) {
    let ws = Workspace::new();
    let m = root_app(
        &ws,
        "counter",
        "[components.store.keyvalue]\nbuckets = [\"counts\"]\n[components.store.scale]\nmax_instances = 50\nqueue = 2000\nqueue_timeout = \"60s\"",
    );
    let host = backend.start_manifests(&[&m]);
    let url = host.url("/kv/counts/incr/n");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { call(Method::POST, url, "").await },
        ));
    }
    let mut seen = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{r}");
        seen.insert(r.text.parse::<u64>().unwrap());
    }
    // Every increment returned a distinct value: 1..=1000.
    assert_eq!(seen.len(), 1000);
    assert_eq!(seen.iter().next_back(), Some(&1000));
    assert_eq!(
        call(Method::GET, host.url("/kv/counts/get/n"), "").await,
        (200, "1000")
    );
}

async fn batches_paging_cas_and_limits(backend: Backend) {
    let ws = Workspace::new();
    let m = root_app(
        &ws,
        "batch",
        "[components.store.keyvalue]\nbuckets = [\"\", \"big\"]\nmax_value_size = \"1KiB\"",
    );
    let host = backend.start_manifests(&[&m]);

    // Batch set/get/delete on the default bucket ("" and "_" in the fixture's paths).
    let body = "a=1\nb=2\nc=3\n";
    assert_eq!(
        call(Method::POST, host.url("/kv/_/set-many"), body).await,
        (200, "ok")
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/_/get-many?keys=a,x,c"), "").await,
        (200, r#"[["a","1"],null,["c","3"]]"#)
    );
    assert_eq!(
        call(Method::POST, host.url("/kv/_/delete-many?keys=a,b"), "")
            .await
            .status,
        200
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/_/exists/a"), "").await,
        (200, "false")
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/_/exists/c"), "").await,
        (200, "true")
    );

    // list-keys pages through 2,500 keys (the host returns 1,000 per page).
    for chunk in 0..5 {
        let lines: String = (chunk * 500..(chunk + 1) * 500)
            .map(|i| format!("k{i:05}=v\n"))
            .collect();
        assert_eq!(
            call(Method::POST, host.url("/kv/big/set-many"), &lines)
                .await
                .status,
            200
        );
    }
    let mut keys = Vec::new();
    let mut cursor: Option<u64> = Some(0);
    let mut pages = 0;
    while let Some(c) = cursor {
        let r = call(
            Method::GET,
            host.url(&format!("/kv/big/keys?cursor={c}")),
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{r}");
        let v = r.json();
        keys.extend(
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string()),
        );
        cursor = v["cursor"].as_u64();
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(keys.len(), 2500);
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 2500);

    // Compare-and-swap (a host extension).
    assert_eq!(
        call(Method::POST, host.url("/kv/_/cas/lock?new=me"), "").await,
        (200, "true")
    );
    assert_eq!(
        call(Method::POST, host.url("/kv/_/cas/lock?new=you"), "").await,
        (200, "false")
    );
    assert_eq!(
        call(
            Method::POST,
            host.url("/kv/_/cas/lock?expected=me&new=you"),
            ""
        )
        .await,
        (200, "true")
    );
    assert_eq!(
        call(Method::GET, host.url("/kv/_/get/lock"), "").await,
        (200, "you")
    );

    // A value over max_value_size is an error the guest sees; nothing is stored.
    let r = call(Method::PUT, host.url("/kv/_/set/huge"), &"x".repeat(2048)).await;
    assert_eq!(r.status, 500, "{r}");
    assert!(r.text.contains("max_value_size"), "{r}");
    assert_eq!(
        call(Method::GET, host.url("/kv/_/get/huge"), "").await,
        (404, "none")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_values_and_secrets_reach_the_guest_and_secrets_never_leak() {
    let secret = "sk-live-7d2f9a0c4b1e";
    let ws = Workspace::new();
    let secret_file = ws.write("db-password.txt", "file-secret-55e1\n");
    let m = root_app(
        &ws,
        "configured",
        &format!(
            r#"[components.store.keyvalue]
buckets = ["unused"]
[components.store.config]
currency = "EUR"
payment_url = "http://${{PAYMENT_HOST}}/pay"
[components.store.secrets]
api_key = {{ env = "ORDERS_API_KEY" }}
db_password = {{ file = "{}" }}"#,
            secret_file.display()
        ),
    );
    // The operator lets deploys read these variables (and no others).
    let host_config = ws.write(
        "host.toml",
        "[config]\nenv_prefixes = [\"PAYMENT_\", \"ORDERS_\"]\n",
    );
    let config_args = vec!["--config".to_string(), host_config.display().to_string()];
    let host = Host::start_with(HostOptions {
        manifests: vec![m.clone()],
        env: vec![
            ("PAYMENT_HOST".into(), "payments.internal:8080".into()),
            ("ORDERS_API_KEY".into(), secret.into()),
        ],
        args: config_args.clone(),
        ..Default::default()
    });
    assert_eq!(
        call(Method::GET, host.url("/config/currency"), "").await,
        (200, "EUR")
    );
    assert_eq!(
        call(Method::GET, host.url("/config/payment_url"), "").await,
        (200, "http://payments.internal:8080/pay")
    );
    assert_eq!(
        call(Method::GET, host.url("/config-runtime/currency"), "").await,
        (200, "EUR")
    );
    assert_eq!(
        call(Method::GET, host.url("/config/missing"), "").await,
        (404, "none")
    );
    assert_eq!(
        call(Method::GET, host.url("/config/api_key"), "").await,
        (200, secret)
    );
    assert_eq!(
        call(Method::GET, host.url("/config/db_password"), "").await,
        (200, "file-secret-55e1")
    );
    let all = call(Method::GET, host.url("/config-all"), "").await.text;
    assert!(all.contains("\"currency\""), "{all}");

    // Never in logs, status or the deploy record.
    let status = String::from_utf8_lossy(&host.cli(&["status", "--json"]).stdout).to_string();
    let record = std::fs::read_to_string(host.data_dir.join("apps/configured.json")).unwrap();
    for (what, text) in [
        ("logs", host.logs()),
        ("stdout", host.stdout()),
        ("status", status),
        ("record", record),
    ] {
        assert!(!text.contains(secret), "secret in {what}");
        assert!(!text.contains("file-secret-55e1"), "file secret in {what}");
    }
    // wasi:logging lines carry the component.
    assert!(host.log_contains("GET /config/currency"), "{}", host.logs());
    let line = host
        .logs()
        .lines()
        .find(|l| l.contains("GET /config/currency"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("\"component\":\"store\"")
            && line.contains("\"app\":\"configured\"")
            && line.contains("\"version\":\"1.0.0\"")
            && line
                .split("\"trace_id\":\"")
                .nth(1)
                .is_some_and(|t| t.len() > 32 && t[..32].chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    drop(host);

    // A missing environment variable refuses the deploy, naming the field and not
    // printing any secret.
    let err = match Host::try_start(HostOptions {
        manifests: vec![m],
        env: vec![("ORDERS_API_KEY".into(), secret.into())],
        args: config_args,
        ..Default::default()
    }) {
        Ok(_) => panic!("PAYMENT_HOST is unset: the deploy must be refused"),
        Err(e) => e,
    };
    assert!(
        err.contains("config.payment_url: environment variable PAYMENT_HOST is not set"),
        "{err}"
    );
    assert!(!err.contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reads_only_what_the_host_allows() {
    let ws = Workspace::new();
    let host = Host::start(&[]);
    let try_deploy = |name: &str, section: &str| {
        let section = format!("[components.store.keyvalue]\nbuckets = [\"b\"]\n{section}");
        let m = root_app(&ws, name, &section);
        let out = host.cli(&["deploy", m.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Files outside the manifest's directory tree: refused, naming the field.
    for (name, path) in [
        ("passwd", "/etc/passwd"),
        ("dotdot", "../../../../etc/hostname"),
    ] {
        let (ok, err) = try_deploy(
            name,
            &format!("[components.store.secrets]\nleak = {{ file = \"{path}\" }}"),
        );
        assert!(!ok, "{path} was read");
        assert!(
            err.contains("secrets.leak") && err.contains("is outside"),
            "{err}"
        );
        assert!(!err.contains("root:"), "{err}");
    }
    // Environment variables: none unless the operator allows a prefix.
    let (ok, err) = try_deploy("home", "[components.store.config]\nhome = \"${HOME}\"");
    assert!(!ok);
    assert!(
        err.contains("config.home: $HOME: this host lets deploys read no environment variables"),
        "{err}"
    );
    let (ok, err) = try_deploy(
        "envsecret",
        "[components.store.secrets]\npath = { env = \"PATH\" }",
    );
    assert!(!ok);
    assert!(err.contains("secrets.path: $PATH"), "{err}");
    // A file beside the manifest is fine.
    ws.write("beside.txt", "ok-value\n");
    let (ok, err) = try_deploy(
        "beside",
        "[components.store.secrets]\nv = { file = \"beside.txt\" }",
    );
    assert!(ok, "{err}");
    assert_eq!(
        call(Method::GET, host.url("/config/v"), "").await,
        (200, "ok-value")
    );
}

#[test]
fn importing_keyvalue_without_buckets_is_refused_at_deploy() {
    let ws = Workspace::new();
    let m = root_app(&ws, "nobuckets", "");
    let err = match Host::try_start(HostOptions {
        manifests: vec![m],
        ..Default::default()
    }) {
        Ok(_) => panic!("a component importing wasi:keyvalue without buckets must be refused"),
        Err(e) => e,
    };
    assert!(err.contains("grants no buckets"), "{err}");
}

/// `wasmhive kv list|get|set|delete` on a component's own bucket: a value seeded by
/// the operator is what the component reads, and what the component writes is what
/// the operator reads; only the buckets the manifest lists, within its value size.
async fn an_operator_reads_and_seeds_a_components_bucket(backend: Backend) {
    let ws = Workspace::new();
    let m = root_app(
        &ws,
        "seeded",
        "[components.store.keyvalue]\nbuckets = [\"notes\"]\nmax_value_size = \"1KiB\"",
    );
    let host = backend.start_manifests(&[&m]);
    let kv = |args: &[&str]| {
        let mut all = vec!["kv"];
        all.extend_from_slice(args);
        host.cli(&all)
    };
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Seeded by the operator (a key with a space and a slash), read by the component.
    ok(kv(&[
        "set",
        "seeded",
        "store",
        "notes",
        "greeting",
        "hello there",
    ]));
    ok(kv(&["set", "seeded", "store", "notes", "a b/c", "odd key"]));
    let r = call(Method::GET, host.url("/kv/notes/get/greeting"), "").await;
    assert_eq!((r.status, r.text.as_str()), (200, "hello there"), "{r}");

    // Written by the component, read by the operator.
    let r = call(Method::PUT, host.url("/kv/notes/set/count"), "42").await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        ok(kv(&["get", "seeded", "store", "notes", "count"])),
        "42\n"
    );
    assert_eq!(
        ok(kv(&["get", "seeded", "store", "notes", "a b/c"])),
        "odd key\n"
    );
    assert_eq!(
        ok(kv(&["list", "seeded", "store", "notes"])),
        "a b/c\ncount\ngreeting\n"
    );

    // Bytes that are not UTF-8: base64, or raw with --raw (stdin with `-`).
    let mut child = host
        .cli_command(&["kv", "set", "seeded", "store", "notes", "bin", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&[0xff, 0x00, 0x01])
            .unwrap();
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(
        ok(kv(&["get", "seeded", "store", "notes", "bin"])),
        "/wAB\n"
    );
    let raw = kv(&["get", "seeded", "store", "notes", "bin", "--raw"]);
    assert_eq!(raw.stdout, vec![0xff, 0x00, 0x01]);

    // Delete; a missing key, an unlisted bucket and a value over the limit fail.
    ok(kv(&["delete", "seeded", "store", "notes", "greeting"]));
    let r = call(Method::GET, host.url("/kv/notes/get/greeting"), "").await;
    assert_eq!(r.status, 404, "{r}");
    let out = kv(&["get", "seeded", "store", "notes", "greeting"]);
    assert!(!out.status.success());
    let out = kv(&["list", "seeded", "store", "secrets"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"secrets\"") && err.contains("keyvalue.buckets"),
        "{err}"
    );
    let big = "x".repeat(2000);
    let out = kv(&["set", "seeded", "store", "notes", "big", &big]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_value_size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
