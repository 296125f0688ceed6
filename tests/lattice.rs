//! The lattice: hosts that share one NATS (`up --nats URL --lattice NAME --host-name
//! NAME --label KEY=VALUE`) act as one. A deploy to any host is served by every host,
//! including one started later; placement (`[components.NAME.placement]`, `hosts = N`,
//! `labels = {...}`) decides which hosts run a component, and a request to a host
//! that does not run it is forwarded to one that does (a service call too). Hosts see
//! each other (`wasmhive hosts --json`, `GET /v1/hosts`); a killed host's components
//! move to a survivor within 15 s and durable messages survive it. Two lattices on one
//! NATS share nothing; a record a host cannot use (a blob that is missing) is refused
//! by each host, which keeps serving the version it has. With a three-node NATS
//! cluster, losing one node does not stop deploys or key-value.
//!
//! Every test starts its own nats-server (or cluster) and hosts, in a lattice of its
//! own name, and waits for what a user can observe: an answer from a gateway, a status
//! field, the hosts listing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sha2::Digest;
use wasmhive_e2e::{
    BusChoice, Host, HostOptions, NatsCluster, NatsServer, PATIENCE, Workspace, eventually,
    seen_header,
};

/// The contract: a host whose heartbeat is 10 s old is gone, and its components run on
/// a survivor within 15 s of its death.
const FAILOVER: Duration = Duration::from_secs(15);

/// The bound on one request in these tests: an answer that takes longer is a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A host of a test, with the name it joined the lattice under.
type Member = (&'static str, Host);

/// Options for a host joining `lattice` on `nats` as `name`, with `labels`
/// (`KEY=VALUE` each) and `extra` arguments after `up`.
fn member_options(
    nats: &str,
    lattice: &str,
    name: &str,
    labels: &[&str],
    extra: &[&str],
) -> HostOptions {
    let mut args = vec![
        "--lattice".to_string(),
        lattice.to_string(),
        "--host-name".to_string(),
        name.to_string(),
    ];
    for label in labels {
        args.push("--label".to_string());
        args.push(label.to_string());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    HostOptions {
        bus: BusChoice::Nats(nats.to_string()),
        args,
        ..Default::default()
    }
}

/// Starts a host joining `lattice` on `nats` as `name` with `labels`.
fn join(nats: &NatsServer, lattice: &str, name: &'static str, labels: &[&str]) -> Member {
    (
        name,
        Host::start_with(member_options(&nats.url, lattice, name, labels, &[])),
    )
}

/// The hello app as `app` (component `hello` on `GET /hello` and `GET /hello/{name}`,
/// greeting with `greeting`), with `extra` manifest lines after the component.
fn hello_app(ws: &Workspace, app: &str, version: &str, greeting: &str, extra: &str) -> PathBuf {
    ws.write(
        &format!("{app}-{version}.toml"),
        &format!(
            r#"
manifest_version = 1
[app]
name = "{app}"
version = "{version}"
[components.hello]
source = "{{component:hello}}"
routes = ["GET /hello", "GET /hello/{{name}}"]
env = {{ GREETING = "{greeting}" }}
{extra}
"#
        ),
    )
}

/// `wasmhive deploy MANIFEST` against `host`; panics with its stderr if it fails.
fn deploy(host: &Host, manifest: &Path) -> String {
    let out = host.cli(&["deploy", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy {} failed: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client whose requests end after [`REQUEST_TIMEOUT`].
fn quick_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

/// `GET url`: the status and body, or why there was no answer (no panic, for waits).
async fn try_get(url: &str) -> Result<(u16, String), String> {
    let response = quick_client()
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET {url} -> {status}: reading the body: {e}"))?;
    Ok((status, text))
}

/// `method url` with `body`: the status and body, or why there was no answer.
async fn try_send(method: reqwest::Method, url: &str, body: &str) -> Result<(u16, String), String> {
    let response = quick_client()
        .request(method.clone(), url)
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| format!("{method} {url} -> {status}: reading the body: {e}"))?;
    Ok((status, text))
}

/// Waits until host `name` answers `GET path` with `status` and `body`.
async fn wait_answer(name: &str, host: &Host, path: &str, status: u16, body: &str) {
    eventually(
        &format!("host {name} to answer GET {path} with {status} {body:?}"),
        PATIENCE,
        async || match try_get(&host.url(path)).await {
            Ok((s, t)) if s == status && t == body => Ok(()),
            Ok((s, t)) => Err(format!("{s} {t:?}")),
            Err(e) => Err(e),
        },
    )
    .await
}

/// Waits until host `name` answers `GET path` with `status` (whatever the body).
async fn wait_status(name: &str, host: &Host, path: &str, status: u16) {
    eventually(
        &format!("host {name} to answer GET {path} with {status}"),
        PATIENCE,
        async || match try_get(&host.url(path)).await {
            Ok((s, _)) if s == status => Ok(()),
            Ok((s, t)) => Err(format!("{s} {t:?}")),
            Err(e) => Err(e),
        },
    )
    .await
}

/// `wasmhive hosts --json` against `host` (no panic, for waits).
fn hosts_json(host: &Host) -> Result<Value, String> {
    let out = host.cli(&["hosts", "--json"]);
    if !out.status.success() {
        return Err(format!(
            "hosts --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "hosts --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The host names in a hosts listing.
fn listed_names(listing: &Value) -> BTreeSet<String> {
    listing["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["name"].as_str().map(str::to_string))
        .collect()
}

/// One host's entry in a hosts listing, by name.
fn listed<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name} in {listing:#}"))
}

/// Waits until `hosts --json` on host `name` says lattice `lattice` and lists exactly
/// `want`, and returns the listing.
async fn wait_listing(name: &str, host: &Host, lattice: &str, want: &[&str]) -> Value {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(
        &format!("hosts --json on {name} to list exactly {want:?} in lattice {lattice}"),
        PATIENCE,
        async || {
            let listing = hosts_json(host)?;
            if listing["lattice"] == lattice && listed_names(&listing) == want {
                Ok(listing)
            } else {
                Err(format!("{listing:#}"))
            }
        },
    )
    .await
}

/// `component` of `app` in a status document, if the host has that app.
fn component_in(status: &Value, app: &str, component: &str) -> Option<Value> {
    status["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["name"] == app)
        .flat_map(|a| a["components"].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == component)
}

/// The version of `app` in a status document, if the host has it.
fn app_version(status: &Value, app: &str) -> Option<String> {
    status["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["name"] == app)
        .and_then(|a| a["version"].as_str().map(str::to_string))
}

/// Where a component runs, as the hosts' status documents agree on it.
#[derive(Debug)]
struct Placement {
    /// The `hosts` list every host shows (sorted).
    hosts: Vec<String>,
    /// The hosts whose status says `placed_here: true` (sorted).
    placed_here: Vec<String>,
}

/// What `members`' status documents say about `app`/`component`, if they agree: every
/// host has it, every host shows the same `hosts` list, and exactly the hosts on that
/// list say `placed_here: true`.
fn placement(members: &[Member], app: &str, component: &str) -> Result<Placement, String> {
    let mut lists = BTreeMap::new();
    let mut placed_here = Vec::new();
    for (name, host) in members {
        let status = host.status();
        let c = component_in(&status, app, component)
            .ok_or_else(|| format!("host {name} does not have {app}/{component} yet"))?;
        let mut list: Vec<String> = c["hosts"]
            .as_array()
            .ok_or_else(|| format!("host {name}: no hosts list in {c:#}"))?
            .iter()
            .map(|h| h.as_str().unwrap_or_default().to_string())
            .collect();
        list.sort();
        lists.insert(name.to_string(), list);
        match c["placed_here"].as_bool() {
            Some(true) => placed_here.push(name.to_string()),
            Some(false) => {}
            None => return Err(format!("host {name}: no placed_here in {c:#}")),
        }
    }
    let first = lists.values().next().cloned().unwrap_or_default();
    if lists.values().any(|l| *l != first) {
        return Err(format!("the hosts disagree on where it runs: {lists:?}"));
    }
    placed_here.sort();
    if placed_here != first {
        return Err(format!(
            "every host says it runs on {first:?}, but placed_here on {placed_here:?}"
        ));
    }
    Ok(Placement {
        hosts: first,
        placed_here,
    })
}

/// Waits (up to `within`) until `members` agree on where `app`/`component` runs and
/// that satisfies `want` (`what` says what that means).
async fn wait_placement(
    members: &[Member],
    app: &str,
    component: &str,
    within: Duration,
    what: &str,
    want: impl Fn(&Placement) -> bool,
) -> Placement {
    eventually(
        &format!("{app}/{component} placed {what}"),
        within,
        async || {
            let p = placement(members, app, component)?;
            if want(&p) {
                Ok(p)
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_once_served_by_every_host() {
    let nats = NatsServer::start();
    let lattice = "deploy1";
    let a = join(&nats, lattice, "a", &["zone=eu-1"]);
    let b = join(&nats, lattice, "b", &[]);
    let c = join(&nats, lattice, "c", &[]);
    let ws = Workspace::new();
    deploy(&a.1, &hello_app(&ws, "hello", "1.0.0", "hello", ""));

    // Deployed on a only; b and c serve it too, and show it in their status.
    for (name, host) in [&a, &b, &c] {
        wait_answer(name, host, "/hello/lattice", 200, "hello, lattice\n").await;
        assert_eq!(
            app_version(&host.status(), "hello").as_deref(),
            Some("1.0.0"),
            "host {name}"
        );
    }

    // A host that joins after the deploy serves it as well.
    let d = join(&nats, lattice, "d", &[]);
    wait_answer(d.0, &d.1, "/hello", 200, "hello, world\n").await;

    // Every host sees all four.
    for (name, host) in [&a, &b, &c, &d] {
        wait_listing(name, host, lattice, &["a", "b", "c", "d"]).await;
    }
    let listing = hosts_json(&d.1).unwrap();
    let entry = listed(&listing, "a");
    assert_eq!(entry["labels"], json!({"zone": "eu-1"}), "{listing:#}");
    assert_eq!(listed(&listing, "b")["labels"], json!({}), "{listing:#}");
    assert!(
        entry["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{listing:#}"
    );
    assert!(entry["version"].is_string(), "{listing:#}");
    for field in [
        "uptime_ms",
        "components",
        "in_flight",
        "last_heartbeat_ms_ago",
    ] {
        assert!(entry[field].is_u64(), "{field}: {listing:#}");
    }
    assert!(
        entry["last_heartbeat_ms_ago"].as_u64().unwrap() < 10_000,
        "a live host's heartbeat is recent: {listing:#}"
    );
    // Ids are distinct.
    let ids: BTreeSet<_> = listing["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 4, "{listing:#}");

    // The admin API says the same.
    let api = a.1.admin_get("/v1/hosts").await;
    assert_eq!(api.status, 200, "{api}");
    assert_eq!(api.json()["lattice"], lattice, "{api}");
    assert_eq!(
        listed_names(&api.json()),
        BTreeSet::from(["a", "b", "c", "d"].map(String::from)),
        "{api}"
    );

    // Each host's status names its lattice and itself.
    for (name, host) in [&a, &b, &c, &d] {
        let status = host.status();
        assert_eq!(status["lattice"]["name"], lattice, "{status:#}");
        assert_eq!(status["lattice"]["host_name"], *name, "{status:#}");
        assert_eq!(
            status["lattice"]["host_id"],
            listed(&listing, name)["id"],
            "host {name}'s id in its status and in the listing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_component_on_one_host_is_reachable_from_every_gateway() {
    let nats = NatsServer::start();
    let lattice = "place1";
    let members = vec![
        join(&nats, lattice, "a", &[]),
        join(&nats, lattice, "b", &[]),
        join(&nats, lattice, "c", &[]),
    ];
    let ws = Workspace::new();
    let m = hello_app(
        &ws,
        "solo",
        "1.0.0",
        "hi",
        "[components.hello.placement]\nhosts = 1",
    );
    deploy(&members[1].1, &m);

    for (name, host) in &members {
        wait_answer(name, host, "/hello/gateway", 200, "hi, gateway\n").await;
    }
    let p = wait_placement(
        &members,
        "solo",
        "hello",
        PATIENCE,
        "on exactly one host",
        |p| p.hosts.len() == 1,
    )
    .await;
    assert_eq!(p.placed_here, p.hosts, "{p:?}");
    // Through every gateway, the same answer: the one host serves them all.
    for (name, host) in &members {
        for _ in 0..3 {
            assert_eq!(
                try_get(&host.url("/hello/gateway")).await,
                Ok((200, "hi, gateway\n".to_string())),
                "through host {name} (the component runs on {:?})",
                p.hosts
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_place_only_on_matching_hosts_and_nobody_is_reported() {
    let nats = NatsServer::start();
    let lattice = "labels1";
    let members = vec![
        join(&nats, lattice, "a", &["zone=eu-1"]),
        join(&nats, lattice, "b", &["zone=us-1"]),
        join(&nats, lattice, "c", &[]),
    ];
    let ws = Workspace::new();
    let m = ws.write(
        "zoned.toml",
        r#"
manifest_version = 1
[app]
name = "zoned"
version = "1.0.0"
[components.eu]
source = "{component:hello}"
routes = ["GET /eu"]
env = { GREETING = "eu" }
[components.eu.placement]
labels = { zone = "eu-1" }
[components.mars]
source = "{component:hello}"
routes = ["GET /mars"]
env = { GREETING = "mars" }
[components.mars.placement]
labels = { zone = "mars" }
"#,
    );
    deploy(&members[2].1, &m);

    // Only a matches zone=eu-1; every gateway reaches it there.
    for (name, host) in &members {
        wait_answer(name, host, "/eu", 200, "eu, world\n").await;
    }
    let eu = wait_placement(&members, "zoned", "eu", PATIENCE, "on a", |p| {
        p.hosts == ["a"]
    })
    .await;
    assert_eq!(eu.placed_here, ["a"], "{eu:?}");

    // No host is in zone mars: nobody runs it, and its route answers 503 at once
    // (neither 404, which would say there is no such route, nor a hang).
    wait_placement(&members, "zoned", "mars", PATIENCE, "nowhere", |p| {
        p.hosts.is_empty()
    })
    .await;
    for (name, host) in &members {
        wait_status(name, host, "/mars", 503).await;
    }

    // The listing shows each host's labels.
    let listing = wait_listing("c", &members[2].1, lattice, &["a", "b", "c"]).await;
    assert_eq!(listed(&listing, "a")["labels"], json!({"zone": "eu-1"}));
    assert_eq!(listed(&listing, "b")["labels"], json!({"zone": "us-1"}));
    assert_eq!(listed(&listing, "c")["labels"], json!({}));
    // ...and names what runs nowhere.
    assert_eq!(listing["unplaced"], json!(["zoned/mars"]), "{listing:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_call_crosses_hosts() {
    let nats = NatsServer::start();
    let lattice = "mesh1";
    let members = vec![
        join(&nats, lattice, "a", &["role=front"]),
        join(&nats, lattice, "b", &["role=back"]),
        join(&nats, lattice, "c", &[]),
    ];
    let ws = Workspace::new();
    let m = ws.write(
        "split.toml",
        r#"
manifest_version = 1
[app]
name = "split"
version = "1.0.0"
[components.search]
source = "{component:outbound-call}"
routes = ["/call"]
[components.search.calls.inspect]
[components.search.placement]
labels = { role = "front" }
[components.inspect]
source = "{component:inspect-request}"
routes = ["/inspect/{*rest}"]
[components.inspect.placement]
labels = { role = "back" }
"#,
    );
    deploy(&members[0].1, &m);
    wait_placement(&members, "split", "search", PATIENCE, "on a", |p| {
        p.hosts == ["a"]
    })
    .await;
    wait_placement(&members, "split", "inspect", PATIENCE, "on b", |p| {
        p.hosts == ["b"]
    })
    .await;

    // Through c (which runs neither): c forwards to search on a, which calls inspect
    // on b by name.
    let gateway = &members[2].1;
    let text = eventually(
        "a call from search (on a) to inspect (on b), through c",
        PATIENCE,
        async || match try_get(&gateway.url("/call?url=http://inspect/inspect/x")).await {
            Ok((200, t)) if t.starts_with("status=200\n") => Ok(t),
            Ok((s, t)) => Err(format!("{s} {t:?}")),
            Err(e) => Err(e),
        },
    )
    .await;
    let report: Value = serde_json::from_str(text.strip_prefix("status=200\n").unwrap())
        .unwrap_or_else(|e| panic!("inspect's answer is not JSON ({e}): {text}"));
    // The callee saw the route it matched, as with a call on one host.
    assert_eq!(seen_header(&report, "wasmhive-param-rest"), vec!["x"]);

    // The call is counted as forwarded.
    eventually(
        "a remote call to inspect in some host's status",
        PATIENCE,
        async || {
            let mut seen = Vec::new();
            for (name, host) in &members {
                let c = component_in(&host.status(), "split", "inspect")
                    .ok_or_else(|| format!("host {name} has no split/inspect"))?;
                seen.push((name.to_string(), c["calls"].clone()));
            }
            let remote: u64 = seen
                .iter()
                .map(|(_, calls)| calls["remote"].as_u64().unwrap_or(0))
                .sum();
            if remote >= 1 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

/// A steady load: sequential `GET`s of one URL, each bounded by a timeout, recording
/// when each ended and whether it got the expected answer.
/// When each request ended and how.
type Outcomes = Arc<Mutex<Vec<(Instant, Result<(), String>)>>>;

struct Load {
    outcomes: Outcomes,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(url: String, want: &'static str) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let outcomes = outcomes.clone();
            let stop = stop.clone();
            async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match client.get(&url).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            match r.text().await {
                                Ok(t) if status == 200 && t == want => Ok(()),
                                Ok(t) => Err(format!("{status} {t:?}")),
                                Err(e) => Err(format!("{status}, body: {e}")),
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    outcomes.lock().unwrap().push((Instant::now(), outcome));
                    // Pacing, so that the load stays steady and small (not a wait for
                    // anything).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Load {
            outcomes,
            stop,
            task,
        }
    }

    /// Requests that ended after `t`: (succeeded, failed).
    fn since(&self, t: Instant) -> (usize, usize) {
        let outcomes = self.outcomes.lock().unwrap();
        let after = outcomes.iter().filter(|(at, _)| *at > t);
        let ok = after.clone().filter(|(_, o)| o.is_ok()).count();
        (ok, after.count() - ok)
    }

    /// When the first request that ended after `t` succeeded, if one has.
    fn first_success_after(&self, t: Instant) -> Option<Instant> {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .find(|(at, o)| *at > t && o.is_ok())
            .map(|(at, _)| *at)
    }

    /// Stops the load and returns every outcome.
    async fn stop(self) -> Vec<(Instant, Result<(), String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_host_is_replaced() {
    let nats = NatsServer::start();
    let lattice = "failover1";
    let mut members = vec![
        join(&nats, lattice, "a", &[]),
        join(&nats, lattice, "b", &[]),
        join(&nats, lattice, "c", &[]),
    ];
    let ws = Workspace::new();
    let m = hello_app(
        &ws,
        "solo",
        "1.0.0",
        "hi",
        "[components.hello.placement]\nhosts = 1",
    );
    deploy(&members[0].1, &m);
    let before = wait_placement(
        &members,
        "solo",
        "hello",
        PATIENCE,
        "on exactly one host",
        |p| p.hosts.len() == 1,
    )
    .await;
    let victim_name = before.hosts[0].clone();
    let victim = members.iter().position(|(n, _)| *n == victim_name).unwrap();
    // A gateway that survives: it does not run the component, so it forwards.
    let gateway_name = members[(victim + 1) % members.len()].0;
    let gateway_url = {
        let (_, gateway) = members.iter().find(|(n, _)| *n == gateway_name).unwrap();
        wait_answer(gateway_name, gateway, "/hello/load", 200, "hi, load\n").await;
        gateway.url("/hello/load")
    };

    let load = Load::start(gateway_url, "hi, load\n");
    let started = Instant::now();
    eventually(
        "the steady load to be served",
        PATIENCE,
        async || match load.since(started) {
            (ok, _) if ok >= 5 => Ok(()),
            (ok, failed) => Err(format!("{ok} ok, {failed} failed")),
        },
    )
    .await;

    let (_, host) = members.remove(victim);
    let killed = Instant::now();
    host.kill();

    // Within 15 s of the kill, a survivor runs it (and everyone agrees)...
    let after = wait_placement(
        &members,
        "solo",
        "hello",
        FAILOVER.saturating_sub(killed.elapsed()),
        &format!("on a survivor within {FAILOVER:?} of killing {victim_name}"),
        |p| p.hosts.len() == 1,
    )
    .await;
    let moved = Instant::now();
    assert_ne!(after.hosts, before.hosts, "{after:?}");
    // ...and requests through the gateway succeed again.
    let recovered = eventually(
        &format!("a request through {gateway_name} to succeed within {FAILOVER:?} of the kill"),
        FAILOVER.saturating_sub(killed.elapsed()),
        async || {
            load.first_success_after(moved)
                .ok_or_else(|| format!("{:?} (ok, failed) since the move", load.since(moved)))
        },
    )
    .await;
    // They keep succeeding.
    eventually(
        "20 more requests after the failover",
        PATIENCE,
        async || match load.since(recovered) {
            (ok, failed) if ok + failed >= 20 => Ok(()),
            (ok, failed) => Err(format!("{ok} ok, {failed} failed")),
        },
    )
    .await;
    let outcomes = load.stop().await;

    let gap: Vec<_> = outcomes
        .iter()
        .filter(|(at, o)| *at > killed && *at < recovered && o.is_err())
        .collect();
    eprintln!(
        "failover from {victim_name} to {:?}: {} of {} requests failed between the kill and \
         the first success after it ({:?}); first failure: {:?}",
        after.hosts,
        gap.len(),
        outcomes
            .iter()
            .filter(|(at, _)| *at > killed && *at < recovered)
            .count(),
        recovered - killed,
        gap.first().map(|(_, o)| o)
    );
    let failed_after: Vec<_> = outcomes
        .iter()
        .filter(|(at, o)| *at > recovered && o.is_err())
        .map(|(_, o)| o)
        .collect();
    assert!(
        failed_after.is_empty(),
        "requests failed after the failover: {failed_after:?}"
    );
    for (name, host) in &members {
        assert_eq!(
            try_get(&host.url("/hello/after")).await,
            Ok((200, "hi, after\n".to_string())),
            "through host {name}"
        );
    }
}

/// Bodies published to the subject stream `stream` captures, duplicates included.
async fn captured(js: &async_nats::jetstream::Context, stream: &str) -> Vec<String> {
    let stream = js.get_stream(stream).await.unwrap();
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

/// Publishes jobs `range` (`id=N` on `jobs.{N % 5}`) and waits until JetStream has
/// stored each (trying again until the hosts have created the stream that takes them).
async fn publish_jobs(js: &async_nats::jetstream::Context, range: std::ops::Range<usize>) {
    for i in range {
        eventually(&format!("job {i} stored"), PATIENCE, async || {
            js.publish(
                format!("wasmhive.durable1.app.jobs.{}", i % 5),
                format!("id={i}").into(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_messages_survive_a_host_kill() {
    const N: usize = 200;
    let nats = NatsServer::start();
    let lattice = "durable1";
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    // Everything the workers forward is kept, so it can be counted at the end.
    // A named lattice's app subjects live under `wasmhive.<lattice>.app.` on NATS.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TEST_DONE".into(),
        subjects: vec!["wasmhive.durable1.app.done".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut live = client
        .subscribe("wasmhive.durable1.app.done")
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut members = vec![
        join(&nats, lattice, "a", &[]),
        join(&nats, lattice, "b", &[]),
        join(&nats, lattice, "c", &[]),
    ];
    let ws = Workspace::new();
    let m = ws.write(
        "jobs.toml",
        r#"
manifest_version = 1
[app]
name = "jobs"
version = "1.0.0"
[components.worker]
source = "{component:messenger}"
env = { FORWARD_TO = "done" }
[components.worker.limits]
timeout = "2s"
[components.worker.messaging]
subscribe = ["jobs.*"]
publish = ["done"]
durable = true
"#,
    );
    deploy(&members[0].1, &m);
    wait_placement(&members, "jobs", "worker", PATIENCE, "on every host", |p| {
        p.hosts == ["a", "b", "c"]
    })
    .await;

    publish_jobs(&js, 0..N / 2).await;
    // Kill b (SIGKILL, no cleanup) once the work is under way.
    for _ in 0..20 {
        tokio::time::timeout(PATIENCE, live.next())
            .await
            .expect("jobs being processed")
            .unwrap();
    }
    let (_, b) = members.remove(1);
    b.kill();
    publish_jobs(&js, N / 2..N).await;

    let all = eventually(
        &format!("{N} distinct jobs processed"),
        PATIENCE,
        async || {
            let all = captured(&js, "TEST_DONE").await;
            let distinct = all.iter().collect::<BTreeSet<_>>().len();
            if distinct >= N {
                Ok(all)
            } else {
                Err(format!("{distinct} distinct of {} processed", all.len()))
            }
        },
    )
    .await;
    let mut counts = BTreeMap::<&str, usize>::new();
    for id in &all {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let expected: BTreeSet<String> = (0..N).map(|i| format!("id={i}")).collect();
    assert_eq!(
        counts
            .keys()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>(),
        expected,
        "every job, and nothing else, was handled"
    );
    let duplicates = all.len() - counts.len();
    eprintln!(
        "{N} jobs, {} handled in all: {duplicates} handled twice or more (b was killed midway)",
        all.len()
    );
    // At least once, and a redelivery only for what b held when it died.
    let most = counts.values().max().copied().unwrap_or(0);
    assert!(
        most <= 2,
        "a job was handled {most} times: {:?}",
        counts.iter().filter(|(_, n)| **n > 2).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_lattices_do_not_see_each_other() {
    let nats = NatsServer::start();
    let a = join(&nats, "l1", "a", &[]);
    let b = join(&nats, "l2", "b", &[]);
    let ws = Workspace::new();
    deploy(&a.1, &hello_app(&ws, "hello", "1.0.0", "hello", ""));
    wait_answer(a.0, &a.1, "/hello", 200, "hello, world\n").await;
    // Another host of l1 gets the deploy: by now it has reached the lattice, so b not
    // having it is not a matter of time.
    let a2 = join(&nats, "l1", "a2", &[]);
    wait_answer(a2.0, &a2.1, "/hello", 200, "hello, world\n").await;

    let status = b.1.status();
    assert_eq!(status["apps"], json!([]), "{status:#}");
    assert_eq!(status["lattice"]["name"], "l2", "{status:#}");
    assert_eq!(
        try_get(&b.1.url("/hello")).await.map(|(s, _)| s),
        Ok(404),
        "l2 has no such route"
    );

    // Each lattice lists its own hosts only.
    wait_listing("a", &a.1, "l1", &["a", "a2"]).await;
    wait_listing("b", &b.1, "l2", &["b"]).await;

    // The same app name in l2 is another app.
    deploy(&b.1, &hello_app(&ws, "hello", "7.0.0", "bonjour", ""));
    wait_answer(b.0, &b.1, "/hello", 200, "bonjour, world\n").await;
    for (name, host) in [&a, &a2] {
        assert_eq!(
            try_get(&host.url("/hello")).await,
            Ok((200, "hello, world\n".to_string())),
            "host {name} of l1"
        );
        assert_eq!(
            app_version(&host.status(), "hello").as_deref(),
            Some("1.0.0"),
            "host {name} of l1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_without_a_lattice_says_so() {
    let host = Host::start(&[]);
    let status = host.status();
    assert_eq!(status["lattice"], Value::Null, "{status:#}");
    assert_eq!(status["refused"], json!([]), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_record_is_refused_by_each_host_and_the_good_version_keeps_serving() {
    let nats = NatsServer::start();
    let lattice = "refuse1";
    let members = vec![
        join(&nats, lattice, "a", &[]),
        join(&nats, lattice, "b", &[]),
        join(&nats, lattice, "c", &[]),
    ];
    let ws = Workspace::new();
    deploy(
        &members[0].1,
        &hello_app(&ws, "hello", "1.0.0", "hello", ""),
    );
    for (name, host) in &members {
        wait_answer(name, host, "/hello", 200, "hello, world\n").await;
    }

    // Version 2.0.0 written straight into the lattice's record of the app (as a
    // broken or malicious writer could), naming a blob nobody uploaded.
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = format!("wasmhive_{lattice}_apps");
    let kv = js
        .get_key_value(&bucket)
        .await
        .unwrap_or_else(|e| panic!("the lattice's apps bucket {bucket}: {e}"));
    let good = kv
        .get("hello")
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no record of hello in {bucket}"));
    let mut record: Value = serde_json::from_slice(&good)
        .unwrap_or_else(|e| panic!("the record is not JSON ({e}): {good:?}"));
    let mut manifest: toml::Table = toml::from_str(
        record["manifest"]
            .as_str()
            .unwrap_or_else(|| panic!("no manifest text in {record:#}")),
    )
    .unwrap();
    manifest["app"]
        .as_table_mut()
        .unwrap()
        .insert("version".into(), "2.0.0".into());
    record["manifest"] = toml::to_string(&manifest).unwrap().into();
    let missing = hex::encode(sha2::Sha256::digest(b"a blob that was never uploaded"));
    let sources = record["sources"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("no sources in the record"));
    assert!(!sources.is_empty(), "no sources in the record");
    for digest in sources.values_mut() {
        *digest = format!("sha256:{missing}").into();
    }
    record["origin"] = "x.toml".into();
    kv.put("hello", serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();

    // Each host refuses it, saying why, and keeps serving 1.0.0.
    for (name, host) in &members {
        let refusal = eventually(
            &format!("host {name} to report the record of hello refused"),
            PATIENCE,
            async || {
                let status = host.status();
                status["refused"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["app"] == "hello")
                    .cloned()
                    .ok_or_else(|| format!("{:#}", status["refused"]))
            },
        )
        .await;
        let reason = refusal["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&missing[..12]),
            "host {name}: the reason names the missing blob (sha256:{missing}): {refusal:#}"
        );
        assert_eq!(
            try_get(&host.url("/hello")).await,
            Ok((200, "hello, world\n".to_string())),
            "host {name}"
        );
        assert_eq!(
            app_version(&host.status(), "hello").as_deref(),
            Some("1.0.0"),
            "host {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lattice_survives_losing_one_nats_node() {
    let mut cluster = NatsCluster::start();
    let lattice = "cluster1";
    // Each host lists the nodes starting with a different one.
    let members: Vec<Member> = ["a", "b", "c"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            (
                name,
                Host::start_with(member_options(
                    &cluster.url_list(i),
                    lattice,
                    name,
                    &[],
                    &["--lattice-replicas", "3"],
                )),
            )
        })
        .collect();
    let ws = Workspace::new();
    let app = |version: &str, greeting: &str| {
        hello_app(
            &ws,
            "clustered",
            version,
            greeting,
            r#"
[components.store]
source = "{component:kv-store}"
routes = ["/kv/{*rest}"]
[components.store.keyvalue]
buckets = ["notes"]
[components.worker]
source = "{component:messenger}"
env = { FORWARD_TO = "cluster.processed" }
[components.worker.messaging]
subscribe = ["cluster.jobs.*"]
publish = ["cluster.processed"]
durable = true
"#,
        )
    };
    deploy(&members[0].1, &app("1.0.0", "v1"));
    for (name, host) in &members {
        wait_answer(name, host, "/hello", 200, "v1, world\n").await;
    }
    assert_eq!(
        try_send(
            reqwest::Method::PUT,
            &members[0].1.url("/kv/notes/set/k"),
            "before"
        )
        .await,
        Ok((200, "ok".to_string()))
    );

    cluster.kill(0);
    cluster.wait_healthy();

    // A new version deployed through b reaches every host. (The host's client may
    // still be moving to another node: a failed attempt is reported and tried again,
    // as a user would.)
    let v2 = app("2.0.0", "v2");
    eventually(
        "a deploy to succeed after losing a node",
        PATIENCE,
        async || {
            let out = members[1].1.cli(&["deploy", v2.to_str().unwrap()]);
            if out.status.success() {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                eprintln!("deploy after losing a node failed (trying again): {err}");
                Err(err)
            }
        },
    )
    .await;
    for (name, host) in &members {
        wait_answer(name, host, "/hello", 200, "v2, world\n").await;
        assert_eq!(
            app_version(&host.status(), "clustered").as_deref(),
            Some("2.0.0"),
            "host {name}"
        );
    }

    // Key-value kept what it had and takes new writes.
    for (name, host) in &members {
        wait_answer(name, host, "/kv/notes/get/k", 200, "before").await;
    }
    eventually(
        "a write after losing a node",
        PATIENCE,
        async || match try_send(
            reqwest::Method::PUT,
            &members[2].1.url("/kv/notes/set/k2"),
            "after",
        )
        .await
        {
            Ok((200, t)) if t == "ok" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    wait_answer("a", &members[0].1, "/kv/notes/get/k2", 200, "after").await;

    // Durable delivery goes on: jobs published (to JetStream, through a node that is
    // up) are each handled.
    let client = async_nats::connect(cluster.urls[1].as_str())
        .await
        .expect("connect");
    let mut processed = client
        .subscribe("wasmhive.cluster1.app.cluster.processed")
        .await
        .expect("subscribe");
    let js = async_nats::jetstream::new(client.clone());
    for i in 0..20 {
        eventually(&format!("job {i} stored"), PATIENCE, async || {
            js.publish(
                format!("wasmhive.cluster1.app.cluster.jobs.{i}"),
                format!("job {i}").into(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
        .await;
    }
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 20 && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), processed.next()).await {
            seen.insert(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    assert_eq!(seen.len(), 20, "jobs handled after losing a node: {seen:?}");

    // The hosts still see each other.
    wait_listing("a", &members[0].1, lattice, &["a", "b", "c"]).await;
}

/// A body larger than one forwarded message (256 KiB) crosses hosts both ways, intact:
/// 5 MiB up to a component on another host and echoed back through the forwarding
/// gateway, once with a length and once chunked (no length, sent as it is produced).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_bodies_cross_hosts_both_ways() {
    let nats = NatsServer::start();
    let lattice = "bodies1";
    let members = [
        join(&nats, lattice, "a", &["role=echo"]),
        join(&nats, lattice, "b", &[]),
    ];
    let ws = Workspace::new();
    let m = ws.write(
        "echo.toml",
        r#"
manifest_version = 1
[app]
name = "echo"
version = "1.0.0"
[components.echo]
source = "{component:echo-body}"
routes = ["POST /echo"]
# Bodies up to 4 MiB arrive whole at the gateway: one frame, larger than NATS's 1 MiB
# message, that forwarding must cut.
limits = { request_buffer = "4MiB" }
[components.echo.placement]
labels = { role = "echo" }
"#,
    );
    deploy(&members[0].1, &m);
    let b = &members[1].1;
    eventually(
        "host b to know echo runs on a only",
        PATIENCE,
        async || match component_in(&b.status(), "echo", "echo") {
            Some(c) if c["hosts"] == json!(["a"]) && c["placed_here"] == false => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let body: Vec<u8> = (0..5usize << 20).map(|i| (i * 7 % 251) as u8).collect();

    let r = quick_client()
        .post(b.url("/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("echo with a length");
    assert_eq!(r.status(), 200);
    let back = r.bytes().await.expect("echoed body");
    assert_eq!(back.len(), body.len(), "length of the echo through b");
    assert!(back[..] == body[..], "the echo through b differs");

    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
        .chunks(100_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let r = quick_client()
        .post(b.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("chunked echo");
    assert_eq!(r.status(), 200);
    let back = r.bytes().await.expect("echoed body");
    assert!(back[..] == body[..], "the chunked echo through b differs");

    // 3 MiB: received whole by b (request_buffer), forwarded in pieces.
    let r = quick_client()
        .post(b.url("/echo"))
        .body(body[..3 << 20].to_vec())
        .send()
        .await
        .expect("echo of a buffered body");
    assert_eq!(r.status(), 200);
    let back = r.bytes().await.expect("echoed body");
    assert!(
        back[..] == body[..3 << 20],
        "the buffered echo through b differs"
    );

    // The serving host is a: it counted both invocations, b none.
    let served = component_in(&members[0].1.status(), "echo", "echo").unwrap();
    assert_eq!(served["invocations"], 3, "{served:#}");
    let forwarded = component_in(&b.status(), "echo", "echo").unwrap();
    assert_eq!(forwarded["invocations"], 0, "{forwarded:#}");
}

/// `wasmhive deploy --nats URL --lattice NAME` writes the app to the lattice with no
/// host at all; a host that starts afterwards serves it, and one running already
/// picks up the next version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_with_no_host_reaches_hosts_started_later() {
    let nats = NatsServer::start();
    let lattice = "hostless1";
    let ws = Workspace::new();
    let cli_deploy = |manifest: &Path| {
        let out = std::process::Command::new(wasmhive_e2e::binary())
            .args(["deploy", manifest.to_str().unwrap(), "--nats", &nats.url])
            .args(["--lattice", lattice, "--data-dir"])
            .arg(ws.path().join("cli-data"))
            .env_remove("WASMHIVE_ADMIN_TOKEN")
            .output()
            .expect("run wasmhive deploy");
        assert!(
            out.status.success(),
            "deploy --nats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed = cli_deploy(&hello_app(&ws, "nohost", "1.0.0", "hi", ""));
    assert!(printed.contains("to lattice hostless1"), "{printed}");

    let (_, a) = join(&nats, lattice, "a", &[]);
    // Served as soon as it is ready: the record was read before `ready`.
    assert_eq!(
        try_get(&a.url("/hello/x")).await,
        Ok((200, "hi, x\n".to_string()))
    );
    cli_deploy(&hello_app(&ws, "nohost", "2.0.0", "hey", ""));
    wait_answer("a", &a, "/hello/x", 200, "hey, x\n").await;

    // A broken manifest is refused before anything is written.
    let bad = ws.write(
        "bad.toml",
        "manifest_version = 1\n[app]\nname = \"nohost\"\nversion = \"3.0.0\"\n[components.hello]\nsource = \"{component:hello}\"\nroutes = [\"GET hello\"]\n",
    );
    let out = std::process::Command::new(wasmhive_e2e::binary())
        .args(["deploy", bad.to_str().unwrap(), "--nats", &nats.url])
        .args(["--lattice", lattice])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:7"), "{err}");
    assert_eq!(app_version(&a.status(), "nohost").as_deref(), Some("2.0.0"));
}

/// Service calls to a `hosts = 1` component whose host is SIGKILLed under steady
/// load: idempotent calls (GET, with the caller's retry policy) see no failure; the
/// test reports how many non-idempotent calls (POST, never retried by the mesh)
/// failed. A call that found no host listening was never delivered, so the lattice
/// sends it to a standby host that may run the component, whatever its method; only
/// calls in flight on the killed host are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_calls_survive_the_callee_host_dying() {
    let nats = NatsServer::start();
    let lattice = "meshfail1";
    let mut members = vec![
        join(&nats, lattice, "a", &["role=front"]),
        join(&nats, lattice, "b", &["role=back"]),
        join(&nats, lattice, "c", &["role=back"]),
    ];
    let ws = Workspace::new();
    let m = ws.write(
        "calls.toml",
        r#"
manifest_version = 1
[app]
name = "calls"
version = "1.0.0"
[components.front]
source = "{component:outbound-call}"
routes = ["/call"]
[components.front.calls.back]
timeout = "1s"
retries = { attempts = 5, backoff = "100ms", max_backoff = "500ms" }
[components.front.placement]
labels = { role = "front" }
[components.back]
source = "{component:hello}"
routes = ["/hello/{name}"]
env = { GREETING = "hi" }
[components.back.limits]
timeout = "2s"
[components.back.placement]
hosts = 1
labels = { role = "back" }
"#,
    );
    deploy(&members[0].1, &m);
    let before = wait_placement(&members, "calls", "back", PATIENCE, "on b or c", |p| {
        p.hosts.len() == 1 && p.hosts[0] != "a"
    })
    .await;
    let a = members[0].1.url("");
    let get_url = format!("{a}/call?url=http://back/hello/g");
    let post_url = format!("{a}/call?url=http://back/hello/p&method=POST");
    wait_answer(
        "a",
        &members[0].1,
        "/call?url=http://back/hello/g",
        200,
        "status=200\nhi, g\n",
    )
    .await;

    let gets = Load::start(get_url, "status=200\nhi, g\n");
    let posts = Load::start(post_url, "status=200\nhi, p\n");
    let started = Instant::now();
    eventually("both loads to be served", PATIENCE, async || {
        match (gets.since(started), posts.since(started)) {
            ((g, _), (p, _)) if g >= 5 && p >= 5 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let victim = members
        .iter()
        .position(|(n, _)| *n == before.hosts[0])
        .unwrap();
    let (victim_name, host) = members.remove(victim);
    let killed = Instant::now();
    host.kill();
    wait_placement(
        &members,
        "calls",
        "back",
        FAILOVER.saturating_sub(killed.elapsed()),
        &format!("on the other back host within {FAILOVER:?} of killing {victim_name}"),
        |p| p.hosts.len() == 1 && p.hosts[0] != victim_name && p.hosts[0] != "a",
    )
    .await;
    let moved = Instant::now();
    eventually(
        "20 more calls of each kind after the move",
        PATIENCE,
        async || match (gets.since(moved), posts.since(moved)) {
            ((g1, g2), (p1, p2)) if g1 + g2 >= 20 && p1 + p2 >= 20 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    let gets = gets.stop().await;
    let posts = posts.stop().await;
    let failed = |o: &[(Instant, Result<(), String>)]| -> Vec<String> {
        o.iter()
            .filter_map(|(_, r)| r.as_ref().err().cloned())
            .collect()
    };
    let (get_failed, post_failed) = (failed(&gets), failed(&posts));
    eprintln!(
        "service calls while {victim_name} died: {} GETs, {} failed; {} POSTs, {} failed {:?}",
        gets.len(),
        get_failed.len(),
        posts.len(),
        post_failed.len(),
        post_failed.first()
    );
    assert!(
        get_failed.is_empty(),
        "idempotent calls failed across the failover: {get_failed:?}"
    );
    assert!(posts.iter().any(|(at, r)| *at > moved && r.is_ok()));
}

/// `wasmhive stop` in a lattice stops the component on every host (its routes answer
/// 503 everywhere) and stays stopped on a host that restarts; `wasmhive start` on any
/// host starts it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_and_start_reach_every_host_and_survive_a_restart() {
    let nats = NatsServer::start();
    let lattice = "stop1";
    let ws = Workspace::new();
    let c_options = HostOptions {
        data_dir: Some(ws.path().join("c-data")),
        ..member_options(&nats.url, lattice, "c", &[], &[])
    };
    let a = join(&nats, lattice, "a", &[]).1;
    let b = join(&nats, lattice, "b", &[]).1;
    let c = Host::start_with(c_options.clone());
    deploy(&a, &hello_app(&ws, "stoppable", "1.0.0", "hi", ""));
    for (name, host) in [("a", &a), ("b", &b), ("c", &c)] {
        wait_answer(name, host, "/hello/x", 200, "hi, x\n").await;
    }

    let out = b.cli(&["stop", "stoppable", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, host) in [("a", &a), ("b", &b), ("c", &c)] {
        wait_status(name, host, "/hello/x", 503).await;
    }

    // A restarted host reads the stop from the lattice.
    c.stop();
    let c = Host::start_with(c_options);
    assert_eq!(
        component_in(&c.status(), "stoppable", "hello").unwrap()["state"],
        "stopped"
    );
    wait_status("c", &c, "/hello/x", 503).await;

    let out = c.cli(&["start", "stoppable", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, host) in [("a", &a), ("b", &b), ("c", &c)] {
        wait_answer(name, host, "/hello/x", 200, "hi, x\n").await;
    }
}

/// Two named lattices on one NATS keep their messages apart: each has its own subject
/// space (`wasmhive.<lattice>.app.<subject>` on NATS, the plain subject for the
/// component) and its own durable streams, so the same durable app deploys in both,
/// and a job published in one is handled only there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_lattices_keep_their_messages_apart() {
    let nats = NatsServer::start();
    let (_, a) = join(&nats, "msg1", "a", &[]);
    let (_, b) = join(&nats, "msg2", "b", &[]);
    let ws = Workspace::new();
    let app = ws.write(
        "jobs.toml",
        r#"
manifest_version = 1
[app]
name = "jobs"
version = "1.0.0"
[components.worker]
source = "{component:messenger}"
env = { FORWARD_TO = "processed" }
[components.worker.messaging]
subscribe = ["jobs.*"]
publish = ["processed"]
durable = true
[components.echo]
source = "{component:messenger}"
[components.echo.messaging]
subscribe = ["echo.>"]
"#,
    );
    deploy(&a, &app);
    deploy(&b, &app);

    // Request/reply through each host stays in its lattice: both answer with the
    // plain subject their component saw.
    for (name, host) in [("a", &a), ("b", &b)] {
        eventually(&format!("echo through {name}"), PATIENCE, async || {
            let out = host.cli(&["publish", "--request", "--timeout", "2s", "echo.x", "hi"]);
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && text == "echo.x|hi" {
                Ok(())
            } else {
                Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr)))
            }
        })
        .await;
    }

    // Jobs published to lattice msg1's space (as an outside publisher would) are
    // handled by msg1's worker only, and what it publishes stays in msg1's space.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let mut processed = client
        .subscribe("wasmhive.msg1.app.processed")
        .await
        .unwrap();
    let mut leaked = client.subscribe("processed").await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    for i in 0..10 {
        js.publish(
            format!("wasmhive.msg1.app.jobs.{i}"),
            format!("job {i}").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored in msg1's stream");
    }
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < 10 && Instant::now() < deadline {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), processed.next()).await {
            seen.insert(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(
        component_in(&a.status(), "jobs", "worker").unwrap()["invocations"],
        10
    );
    assert_eq!(
        component_in(&b.status(), "jobs", "worker").unwrap()["invocations"],
        0
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), leaked.next())
            .await
            .is_err(),
        "a lattice's message reached the plain subject"
    );
    // Each lattice has its own durable streams.
    for stream in ["WASMHIVE_msg1_EVENTS", "WASMHIVE_msg2_EVENTS"] {
        js.get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
    }
}

/// The NATS permissions the README lists for a host of lattice `perm1` (in an
/// account of its own) are enough: a host logged in as a user with only those joins,
/// takes a deploy, serves, keeps key-value data and handles durable messages; and
/// that user cannot read another lattice's subjects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_confined_to_its_lattice_by_nats_permissions_works() {
    let ws = Workspace::new();
    // NATS wildcards are whole tokens, and a bucket's name is one token: key-value
    // and object stores are confined by the account (JetStream state is per
    // account), subjects by these permissions.
    let allow = r#"[
        "wasmhive.perm1.>", "_INBOX.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>",
        "$KV.>", "$O.>"
    ]"#;
    let config = ws.write(
        "nats.conf",
        &format!(
            r#"
accounts {{
  LATTICES {{
    jetstream: enabled
    users: [
      {{ user: "perm1", password: "secret-perm1", permissions: {{
          publish: {{ allow: {allow} }}
          subscribe: {{ allow: {allow} }}
      }} }}
      {{ user: "admin", password: "secret-admin" }}
    ]
  }}
}}
"#
        ),
    );
    let nats = NatsServer::start_with(&["-c", config.to_str().unwrap()]);
    let host = Host::start_with(HostOptions {
        env: vec![
            ("WASMHIVE_NATS_USER".into(), "perm1".into()),
            ("WASMHIVE_NATS_PASSWORD".into(), "secret-perm1".into()),
        ],
        ..member_options(&nats.url, "perm1", "a", &[], &[])
    });
    let app = ws.write(
        "perm.toml",
        r#"
manifest_version = 1
[app]
name = "perm"
version = "1.0.0"
[components.hello]
source = "{component:hello}"
routes = ["GET /hello"]
[components.store]
source = "{component:kv-store}"
routes = ["/kv/{*rest}"]
[components.store.keyvalue]
buckets = ["notes"]
[components.worker]
source = "{component:messenger}"
env = { FORWARD_TO = "processed" }
[components.worker.messaging]
subscribe = ["jobs.*"]
publish = ["processed"]
durable = true
"#,
    );
    deploy(&host, &app);
    wait_answer("a", &host, "/hello", 200, "hello, world\n").await;
    assert_eq!(
        try_send(reqwest::Method::PUT, &host.url("/kv/notes/set/k"), "v").await,
        Ok((200, "ok".to_string()))
    );
    wait_answer("a", &host, "/kv/notes/get/k", 200, "v").await;

    let admin =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "secret-admin".into())
            .connect(nats.url.as_str())
            .await
            .unwrap();
    let mut processed = admin
        .subscribe("wasmhive.perm1.app.processed")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(admin.clone());
    js.publish("wasmhive.perm1.app.jobs.1", "job 1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, processed.next())
        .await
        .expect("the job handled in time")
        .unwrap();
    assert_eq!(got.payload, "job 1");

    // The lattice's user cannot listen to another lattice.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let confined =
        async_nats::ConnectOptions::with_user_and_password("perm1".into(), "secret-perm1".into())
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event.to_string());
                }
            })
            .connect(nats.url.as_str())
            .await
            .unwrap();
    let _sub = confined.subscribe("wasmhive.perm2.app.>").await.unwrap();
    confined.flush().await.unwrap();
    let refused = tokio::time::timeout(PATIENCE, async {
        while let Some(e) = rx.recv().await {
            if e.to_lowercase().contains("permission") {
                return e;
            }
        }
        String::new()
    })
    .await
    .expect("a permissions violation reported for another lattice's subjects");
    assert!(refused.to_lowercase().contains("permission"), "{refused}");
}

/// Hosts started while their NATS is down serve alone, say `joining lattice` in
/// /readyz once NATS is up until they have joined, then act as one lattice: a deploy
/// to one is served by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hosts_started_before_nats_join_when_it_appears() {
    let mut nats = NatsServer::not_started();
    let lattice = "late1";
    let a = Host::start_with(member_options(&nats.url, lattice, "a", &[], &[]));
    let b = Host::start_with(member_options(&nats.url, lattice, "b", &[], &[]));
    for host in [&a, &b] {
        let r = wasmhive_e2e::get(host.admin_url("/readyz")).await;
        assert_eq!(r.status, 503, "{r}");
    }
    nats.restart();
    for (name, host) in [("a", &a), ("b", &b)] {
        eventually(
            &format!("host {name} ready in its lattice"),
            PATIENCE,
            async || {
                let r = wasmhive_e2e::get(host.admin_url("/readyz")).await;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{r}"))
                }
            },
        )
        .await;
        assert_eq!(host.status()["lattice"]["name"], lattice);
    }
    let ws = Workspace::new();
    deploy(&a, &hello_app(&ws, "late", "1.0.0", "hi", ""));
    wait_answer("b", &b, "/hello/x", 200, "hi, x\n").await;
    wait_listing("a", &a, lattice, &["a", "b"]).await;
}

/// A rollback asked of any host goes back to the lattice's previous version on every
/// host; the history is the lattice's, not one host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_reaches_every_host() {
    let nats = NatsServer::start();
    let lattice = "rollback1";
    let a = join(&nats, lattice, "a", &[]);
    let b = join(&nats, lattice, "b", &[]);
    let ws = Workspace::new();
    deploy(&a.1, &hello_app(&ws, "hello", "1.0.0", "hello", ""));
    deploy(&a.1, &hello_app(&ws, "hello", "2.0.0", "bonjour", ""));
    for (name, host) in [&a, &b] {
        wait_answer(name, host, "/hello", 200, "bonjour, world\n").await;
    }
    let out = b.1.cli(&["history", "hello"]);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listing.contains("2.0.0") && listing.contains("1.0.0"),
        "host b sees the versions deployed through a: {listing}"
    );
    let out = b.1.cli(&["rollback", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, host) in [&a, &b] {
        wait_answer(name, host, "/hello", 200, "hello, world\n").await;
    }
}
