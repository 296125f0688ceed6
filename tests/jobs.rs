//! Jobs: `wasi:cli/run` components run on demand (`wasmhive run`), on a schedule and
//! once per message, with their own env, buckets and grants; history, retries,
//! concurrency, and one run per tick across a lattice.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use wasmhive_e2e::{BusChoice, Host, HostOptions, NatsServer, Upstream, Workspace, eventually};

/// An app `app` with the `job` fixture as component `job`, and `extra` lines (the
/// `[components.job.job]` section and more).
fn job_app(ws: &Workspace, app: &str, extra: &str) -> std::path::PathBuf {
    ws.write(
        &format!("{app}.toml"),
        &format!(
            r#"
manifest_version = 1
[app]
name = "{app}"
version = "1.0.0"
[components.job]
source = "{{component:job}}"
env = {{ GREETING = "hello" }}
[components.job.keyvalue]
buckets = ["data"]
{extra}
"#
        ),
    )
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `wasmhive run APP job -- ARGS...`: (exit code, stdout, stderr).
fn run(host: &Host, app: &str, args: &[&str]) -> (i32, String, String) {
    let out = host
        .cli_command_then(&["run", app, "job"], args)
        .output()
        .expect("run wasmhive run");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The runs of `app/job`, newest first.
async fn runs(host: &Host, app: &str) -> Vec<serde_json::Value> {
    let r = host
        .admin_get(&format!("/v1/apps/{app}/components/job/runs"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["runs"].as_array().cloned().unwrap_or_default()
}

fn outcome(run: &serde_json::Value) -> (&str, Option<i64>) {
    (
        run["outcome"].as_str().unwrap_or_default(),
        run["exit_code"].as_i64(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wasmhive_run_streams_output_and_ends_with_the_runs_exit_code() {
    let ws = Workspace::new();
    let m = job_app(
        &ws,
        "tools",
        "[components.job.job]\nargs = [\"print\", \"from-manifest\"]\ntimeout = \"2s\"",
    );
    let host = Host::start(&[&m]);

    // The manifest's args, then the run's own.
    assert_eq!(run(&host, "tools", &[]).0, 0);
    let (code, out, err) = run(&host, "tools", &["print", "out", "eprint", "err", "args"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "out\njob print out eprint err args\n");
    assert!(err.contains("err\n"), "{err}");

    // The run's exit code, a trap (70, the reason on stderr), the deadline (124).
    assert_eq!(run(&host, "tools", &["exit", "3"]).0, 3);
    let (code, _, err) = run(&host, "tools", &["print", "before", "trap"]);
    assert_eq!(code, 70, "{err}");
    assert!(err.contains("asked to trap"), "the guest's panic: {err}");
    assert!(err.contains("trapped"), "{err}");
    assert!(!err.contains("wasm backtrace"), "a short reason: {err}");
    let (code, _, err) = run(&host, "tools", &["spin"]);
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("deadline"), "{err}");

    // Output arrives as it is written: the first line while the run still sleeps.
    let mut child = host
        .cli_command_then(
            &["run", "tools", "job"],
            &["print", "first", "sleep", "1500", "print", "second"],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came before the run ended"
    );
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    assert!(child.wait().unwrap().success());

    // Every run is in the history, with its trigger, outcome and output.
    let all = runs(&host, "tools").await;
    let outcomes: Vec<_> = all.iter().map(outcome).collect();
    assert!(outcomes.contains(&("exit", Some(3))), "{outcomes:?}");
    assert!(outcomes.contains(&("trap", None)), "{outcomes:?}");
    assert!(outcomes.contains(&("timeout", None)), "{outcomes:?}");
    assert!(all.iter().all(|r| r["trigger"] == "manual"));
    let trap = all.iter().find(|r| r["outcome"] == "trap").unwrap();
    let id = trap["id"].as_str().unwrap();
    let logs = host.cli(&["jobs", "logs", id]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    assert_eq!(text(&logs.stdout), "before\n");
    assert!(text(&logs.stderr).contains("asked to trap"));

    // `--detach` prints the id; stdin and extra env reach the run.
    let input = ws.write("input.txt", "from stdin");
    let out = host
        .cli_command_then(
            &[
                "run",
                "tools",
                "job",
                "--detach",
                "--env",
                "EXTRA=1",
                "--stdin",
                input.to_str().unwrap(),
            ],
            &["stdin", "env", "EXTRA"],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let record = eventually(
        "the detached run to end",
        Duration::from_secs(30),
        async || {
            let r = host.admin_get(&format!("/v1/runs/{id}")).await;
            match r.json()["outcome"].as_str() {
                Some("exit") => Ok(r.json()),
                other => Err(format!("{other:?}: {}", r.text)),
            }
        },
    )
    .await;
    let stdout = base64::engine::general_purpose::STANDARD
        .decode(record["stdout"].as_str().unwrap())
        .unwrap();
    assert_eq!(text(&stdout), "from stdin\nEXTRA=1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_sees_only_its_env_buckets_and_grants_and_reads_seeded_data() {
    let upstream = Upstream::start("fine");
    let ws = Workspace::new();
    let m = ws.write(
        "scoped.toml",
        &format!(
            r#"
manifest_version = 1
[app]
name = "scoped"
version = "1.0.0"
[components.job]
source = "{{component:job}}"
env = {{ GREETING = "hello" }}
allowed_outbound_hosts = ["{}"]
scale = {{ idle_timeout = "1s" }}
[components.job.keyvalue]
buckets = ["data"]
[components.job.job]
"#,
            upstream.url
        ),
    );
    let host = Host::start(&[&m]);
    let seeded = host.cli(&["kv", "set", "scoped", "job", "data", "greeting", "seeded"]);
    assert!(seeded.status.success(), "{}", text(&seeded.stderr));
    let allowed = format!("{}/x", upstream.url);
    let (code, out, err) = run(
        &host,
        "scoped",
        &[
            "env",
            "GREETING",
            "env",
            "HOME",
            "env",
            "PATH",
            "kv-get",
            "data",
            "greeting",
            "kv-get",
            "other",
            "greeting",
            "publish",
            "anything",
            "x",
            "http",
            &allowed,
            "http",
            "http://127.0.0.1:9/",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "GREETING=hello");
    assert_eq!(lines[1], "HOME unset", "nothing of the host's environment");
    assert_eq!(lines[2], "PATH unset");
    assert_eq!(lines[3], "seeded", "`kv set` seeded what the job reads");
    assert!(lines[4].starts_with("error="), "ungranted bucket: {out}");
    assert!(lines[5].contains("denied"), "ungranted subject: {out}");
    assert_eq!(lines[6], "status=200", "a granted host: {out}");
    assert_eq!(
        lines[7], "error=ErrorCode::HttpRequestDenied",
        "an ungranted one: {out}"
    );
    // A run's own variable replaces the component's of the same name.
    let out = host
        .cli_command_then(
            &["run", "scoped", "job", "--env", "GREETING=bye"],
            &["env", "GREETING"],
        )
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "GREETING=bye\n", "{}", text(&out.stderr));

    // A job's component scales to zero after its runs like any other, and the next
    // run loads it again.
    eventually(
        "the job's component at zero",
        Duration::from_secs(30),
        async || {
            let c = host.component_status("scoped", "job");
            if c["state"] == "zero" {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    let cold = host.component_status("scoped", "job")["cold_starts"].as_u64();
    assert_eq!(run(&host, "scoped", &["print", "again"]).1, "again\n");
    assert!(host.component_status("scoped", "job")["cold_starts"].as_u64() > cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_runs_repeat_forbid_skips_overlapping_ticks_and_history_is_bounded() {
    let ws = Workspace::new();
    let m = job_app(
        &ws,
        "ticks",
        r#"[components.job.job]
schedule = "@every 1s"
args = ["print", "tick", "sleep", "2200"]
keep_runs = 6"#,
    );
    let host = Host::start(&[&m]);
    let list = eventually(
        "two finished runs and a skipped tick",
        Duration::from_secs(60),
        async || {
            let all = runs(&host, "ticks").await;
            let done = all.iter().filter(|r| r["outcome"] == "exit").count();
            let skipped = all.iter().filter(|r| r["outcome"] == "skipped").count();
            if done >= 2 && skipped >= 1 {
                Ok(all)
            } else {
                Err(format!("{done} done, {skipped} skipped"))
            }
        },
    )
    .await;
    assert!(list.iter().all(|r| r["trigger"] == "schedule"));
    // No two runs overlapped, and every skipped tick fell inside a run.
    let spans: Vec<(u64, u64)> = list
        .iter()
        .filter(|r| r["outcome"] == "exit")
        .map(|r| {
            let start = r["started_ms"].as_u64().unwrap();
            (start, start + r["duration_ms"].as_u64().unwrap())
        })
        .collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            assert!(a.1 <= b.0 || b.1 <= a.0, "runs overlap: {a:?} {b:?}");
        }
    }
    for s in list.iter().filter(|r| r["outcome"] == "skipped") {
        let running = s["error"].as_str().unwrap();
        assert!(running.contains("was still going"), "{running}");
    }

    // The history keeps `keep_runs` entries, however many ticks there were.
    eventually(
        "more ticks than keep_runs",
        Duration::from_secs(60),
        async || {
            let metrics = host.admin_get("/metrics").await.text;
            let total: f64 = metrics
                .lines()
                .filter(|l| l.starts_with("wasmhive_job_runs_total{app=\"ticks\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if total >= 8.0 {
                Ok(())
            } else {
                Err(format!("{total} runs"))
            }
        },
    )
    .await;
    let all = runs(&host, "ticks").await;
    assert!(
        all.len() <= 6 + 1,
        "history bounded to keep_runs: {}",
        all.len()
    );

    // `jobs` shows the schedule and the next run; `status` too.
    let jobs = host.cli(&["jobs", "ticks"]);
    let listing = text(&jobs.stdout);
    assert!(listing.contains("@every 1s"), "{listing}");
    assert!(listing.contains("skipped"), "{listing}");
    let c = host.component_status("ticks", "job");
    assert_eq!(c["schedule"], "@every 1s");
    assert!(c["next_run_ms"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_scheduled_run_is_retried() {
    let ws = Workspace::new();
    let m = job_app(
        &ws,
        "retry",
        r#"[components.job.job]
schedule = "@every 2s"
args = ["fail-until", "data", "attempts", "3", "4"]
retries = { attempts = 3, backoff = "100ms" }"#,
    );
    let host = Host::start(&[&m]);
    let all = eventually(
        "a third attempt that succeeds",
        Duration::from_secs(60),
        async || {
            let all = runs(&host, "retry").await;
            if all
                .iter()
                .any(|r| r["attempt"] == 3 && outcome(r) == ("exit", Some(0)))
            {
                Ok(all)
            } else {
                Err(format!("{all:?}"))
            }
        },
    )
    .await;
    let mut first: Vec<_> = all
        .iter()
        .filter(|r| r["outcome"] != "skipped")
        .map(|r| (r["attempt"].as_u64().unwrap(), outcome(r)))
        .collect();
    first.sort_by_key(|(a, _)| *a);
    assert_eq!(
        &first[..3],
        &[
            (1, ("exit", Some(4))),
            (2, ("exit", Some(4))),
            (3, ("exit", Some(0)))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_job_sections_are_refused_with_their_line() {
    let ws = Workspace::new();
    let host = Host::start(&[]);
    let deploy = |name: &str, text: &str| {
        let m = ws.write(name, text);
        host.cli(&["deploy", m.to_str().unwrap()])
    };
    let cron = deploy(
        "cron.toml",
        &std::fs::read_to_string(job_app(
            &ws,
            "bad",
            "[components.job.job]\nschedule = \"every morning\"",
        ))
        .unwrap(),
    );
    assert!(!cron.status.success());
    let err = text(&cron.stderr);
    assert!(
        err.contains("cron.toml:12:") && err.contains("components.job.job.schedule"),
        "{err}"
    );
    assert!(err.contains("six fields"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let tz = std::fs::read_to_string(job_app(
        &ws,
        "bad",
        "[components.job.job]\nschedule = \"0 0 7 * * *\"\ntimezone = \"Mars/Olympus\"",
    ))
    .unwrap();
    let tz = deploy("tz.toml", &tz);
    assert!(
        text(&tz.stderr).contains("unknown time zone"),
        "{}",
        text(&tz.stderr)
    );
    // A [job] section on a component without wasi:cli/run.
    let http = deploy(
        "http.toml",
        r#"manifest_version = 1
[app]
name = "notajob"
version = "1"
[components.hello]
source = "{component:hello}"
routes = ["/"]
[components.hello.job]
schedule = "@every 1m"
"#,
    );
    assert!(!http.status.success());
    assert!(
        text(&http.stderr)
            .contains("job is set but the component exports no command (wasi:cli/run"),
        "{}",
        text(&http.stderr)
    );
    // Runs per message need JetStream: refused on the in-process bus, saying so.
    let local = std::fs::read_to_string(job_app(
        &ws,
        "permsg",
        "[components.job.job]\non_message = [\"reports.requested\"]",
    ))
    .unwrap();
    let local = deploy("local.toml", &local);
    assert!(!local.status.success());
    assert!(
        text(&local.stderr).contains("on_message needs NATS with JetStream"),
        "{}",
        text(&local.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_starts_one_run_and_a_failing_one_is_retried_then_dead_lettered() {
    let nats = NatsServer::start();
    let ws = Workspace::new();
    let m = job_app(
        &ws,
        "reports",
        r#"[components.job.job]
on_message = ["reports.*"]
args = ["stdin", "env", "WASMHIVE_SUBJECT", "fail-until", "data", "n", "0", "0"]
[components.job.messaging]
subscribe = []
"#,
    );
    let host = Host::start_with(HostOptions {
        manifests: vec![m],
        bus: BusChoice::Nats(nats.url.clone()),
        ..Default::default()
    });
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut dlq = client.subscribe("wasmhive.dlq.reports.job").await.unwrap();
    for body in ["one", "two", "three"] {
        client
            .publish("reports.requested", body.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let all = eventually("three message runs", Duration::from_secs(60), async || {
        let all = runs(&host, "reports").await;
        if all.len() >= 3 {
            Ok(all)
        } else {
            Err(format!("{all:?}"))
        }
    })
    .await;
    assert_eq!(all.len(), 3, "one run per message: {all:?}");
    let mut bodies = Vec::new();
    for r in &all {
        assert_eq!(r["trigger"], "message");
        assert_eq!(r["subject"], "reports.requested");
        let full = host
            .admin_get(&format!("/v1/runs/{}", r["id"].as_str().unwrap()))
            .await
            .json();
        let out = base64::engine::general_purpose::STANDARD
            .decode(full["stdout"].as_str().unwrap())
            .unwrap();
        let out = text(&out);
        assert!(out.contains("WASMHIVE_SUBJECT=reports.requested"), "{out}");
        bodies.push(out.lines().next().unwrap().to_string());
    }
    bodies.sort();
    assert_eq!(bodies, ["one", "three", "two"]);

    // A run that fails is run again on redelivery (`retries.attempts` deliveries in
    // all), then the message is dead-lettered.
    let failing = job_app(
        &ws,
        "reports",
        r#"[components.job.job]
on_message = ["reports.*"]
args = ["print", "failing", "exit", "9"]
retries = { attempts = 2, backoff = "200ms" }
"#,
    );
    let out = host.cli(&["deploy", failing.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    client
        .publish("reports.failed", "bad".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(60), futures::StreamExt::next(&mut dlq))
        .await
        .expect("dead-lettered within a minute")
        .unwrap();
    assert_eq!(&dead.payload[..], b"bad");
    let failed: Vec<_> = runs(&host, "reports")
        .await
        .into_iter()
        .filter(|r| r["subject"] == "reports.failed")
        .collect();
    assert_eq!(failed.len(), 2, "two deliveries, two runs: {failed:?}");
    assert!(failed.iter().all(|r| outcome(r) == ("exit", Some(9))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lattice_runs_each_tick_once() {
    let nats = NatsServer::start();
    let ws = Workspace::new();
    let m = job_app(
        &ws,
        "once",
        r#"[components.job.job]
schedule = "@every 1s"
args = ["print", "tick"]
concurrency = "allow"
"#,
    );
    let start = |name: &str, manifests: Vec<std::path::PathBuf>| {
        Host::start_with(HostOptions {
            manifests,
            bus: BusChoice::Nats(nats.url.clone()),
            args: vec!["--host-name".into(), name.into()],
            ..Default::default()
        })
    };
    let a = start("a", vec![m]);
    let b = start("b", vec![]);
    eventually(
        "both hosts to run the job",
        Duration::from_secs(60),
        async || {
            let c = a.component_status("once", "job");
            let hosts = c["hosts"].as_array().map_or(0, Vec::len);
            if hosts == 2 {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    let all = eventually("eight runs", Duration::from_secs(60), async || {
        let all = runs(&b, "once").await;
        if all.len() >= 8 {
            Ok(all)
        } else {
            Err(format!("{} runs", all.len()))
        }
    })
    .await;
    let mut ticks: Vec<u64> = all
        .iter()
        .map(|r| {
            r["tick_ms"]
                .as_u64()
                .expect("a scheduled run names its tick")
        })
        .collect();
    let n = ticks.len();
    ticks.sort_unstable();
    ticks.dedup();
    assert_eq!(
        ticks.len(),
        n,
        "one run per tick across both hosts: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replace_stops_the_running_run_for_the_next_tick() {
    let ws = Workspace::new();
    let m = job_app(
        &ws,
        "replace",
        r#"[components.job.job]
schedule = "@every 1s"
args = ["print", "start", "sleep", "30000", "print", "never"]
concurrency = "replace""#,
    );
    let host = Host::start(&[&m]);
    let stopped = eventually(
        "a run replaced by the next tick",
        Duration::from_secs(60),
        async || {
            let all = runs(&host, "replace").await;
            match all.iter().find(|r| r["outcome"] == "stopped") {
                Some(r) => Ok(r.clone()),
                None => Err(format!("{all:?}")),
            }
        },
    )
    .await;
    let full = host
        .admin_get(&format!("/v1/runs/{}", stopped["id"].as_str().unwrap()))
        .await
        .json();
    let out = base64::engine::general_purpose::STANDARD
        .decode(full["stdout"].as_str().unwrap())
        .unwrap();
    assert_eq!(text(&out), "start\n", "stopped mid-sleep: {full}");
    // The tick after it started a run of its own.
    let all = runs(&host, "replace").await;
    assert!(
        all.iter()
            .any(|r| r["tick_ms"].as_u64() > stopped["tick_ms"].as_u64()),
        "{all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_runs_a_tick_missed_while_no_host_ran_the_job() {
    let ws = Workspace::new();
    let data = tempfile::tempdir().unwrap();
    let m = job_app(
        &ws,
        "catchup",
        r#"[components.job.job]
schedule = "@every 2s"
args = ["print", "tick"]
catch_up = true"#,
    );
    let opts = HostOptions {
        manifests: vec![m],
        data_dir: Some(data.path().to_path_buf()),
        ..Default::default()
    };
    let host = Host::start_with(opts.clone());
    eventually(
        "a first scheduled run",
        Duration::from_secs(30),
        async || {
            let all = runs(&host, "catchup").await;
            if all.iter().any(|r| r["outcome"] == "exit") {
                Ok(())
            } else {
                Err(format!("{all:?}"))
            }
        },
    )
    .await;
    host.kill();
    let down = now_ms();
    // The job's period passing while no host runs it is the scenario itself.
    std::thread::sleep(Duration::from_millis(2500));
    let host = Host::start_with(opts);
    let caught = eventually("a caught-up run", Duration::from_secs(30), async || {
        let all = runs(&host, "catchup").await;
        all.iter()
            .find(|r| r["caught_up"] == true && r["outcome"] == "exit")
            .cloned()
            .ok_or_else(|| format!("{all:?}"))
    })
    .await;
    assert_eq!(caught["trigger"], "schedule");
    let tick = caught["tick_ms"].as_u64().unwrap();
    assert!(tick > down, "a tick after the host died: {caught}");
    assert!(
        tick < caught["started_ms"].as_u64().unwrap(),
        "run late: {caught}"
    );
    // One missed tick is made up, not every one.
    let all = runs(&host, "catchup").await;
    assert_eq!(
        all.iter().filter(|r| r["caught_up"] == true).count(),
        1,
        "{all:?}"
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
