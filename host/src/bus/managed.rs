//! A `nats-server` the host starts for itself when no `--nats` URL is given and the
//! binary is on PATH: loopback only, a free port, JetStream on with its store under
//! the data dir. It stops with the host, after the host's drain (on Linux it runs in
//! its own process group, so a terminal's Ctrl-C reaches only the host; if the host
//! is killed, the child gets SIGTERM when its parent dies). Elsewhere it shares the
//! host's process group and gets the terminal's signals with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// `nats-server` on PATH, if any.
pub fn find_nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A running managed server.
pub struct ManagedNats {
    child: Child,
    url: String,
}

impl ManagedNats {
    /// Starts `server` on a free loopback port with JetStream in `store` and waits
    /// until it accepts connections.
    pub async fn start(server: &Path, store: &Path) -> anyhow::Result<ManagedNats> {
        std::fs::create_dir_all(store)
            .with_context(|| format!("cannot create {}", store.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for nats-server")?
            .port();
        let mut cmd = Command::new(server);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Its own process group: a terminal's Ctrl-C goes to the host's group, and
        // the server must outlive the host's drain (in-flight handlers still publish
        // and ack); the host stops it afterwards.
        // Linux only: there the parent-death signal below still stops it if the host
        // dies without cleaning up; elsewhere it stays in the host's group.
        #[cfg(target_os = "linux")]
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", server.display()))?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("{} exited at start-up ({status})", server.display());
            }
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("{} did not start listening on {addr}", server.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ManagedNats {
            child,
            url: format!("nats://{addr}"),
        })
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// How long a managed server gets to stop cleanly (flushing JetStream state).
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for ManagedNats {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
            // Wait for a clean exit (bounded) before `kill_on_drop` gets to SIGKILL it.
            let deadline = std::time::Instant::now() + STOP_GRACE;
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!("managed nats-server did not stop within {STOP_GRACE:?}; killing it");
        }
    }
}
