//! `wasmhive run` and `wasmhive jobs`: run a job now and follow it, list jobs and
//! their runs, print a finished run's output.

use std::io::Write;

use anyhow::Context as _;
use base64::Engine as _;

use crate::control::api::RunEvent;
use crate::control::client::AdminClient;
use crate::control::jobs::RunBody;
use crate::jobs::{Outcome, RunRecord, Stream};

/// Ends the process with a job's exit code (`main` turns it into the exit status).
#[derive(Debug, thiserror::Error)]
#[error("exit {0}")]
pub struct ExitWith(pub u8);

/// What `wasmhive run` was given.
pub struct RunArgs {
    /// App.
    pub app: String,
    /// Component.
    pub component: String,
    /// argv after the program name, if given.
    pub args: Option<Vec<String>>,
    /// A file whose bytes are the run's stdin (`-`: this process's stdin).
    pub stdin: Option<std::path::PathBuf>,
    /// `K=V` pairs.
    pub env: Vec<(String, String)>,
    /// Print the run id and return.
    pub detach: bool,
}

/// `wasmhive run`: starts the run, prints its output as it comes (stdout to stdout,
/// stderr to stderr) and ends with its exit code: its own, 70 for a trap (the reason
/// on stderr), 124 for the deadline, 69 when it could not start or was stopped.
pub async fn run(admin: &AdminClient, args: RunArgs) -> anyhow::Result<()> {
    let stdin = match &args.stdin {
        None => Vec::new(),
        Some(p) if p.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .context("cannot read stdin")?;
            buf
        }
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
    };
    let body = RunBody {
        args: args.args,
        env: args.env.into_iter().collect(),
        stdin: base64::engine::general_purpose::STANDARD.encode(stdin),
    };
    let mut resp = admin
        .start_run((&args.app, &args.component), &body, !args.detach)
        .await?;
    if args.detach {
        let v: serde_json::Value = resp.json().await.context("invalid run reply")?;
        println!("{}", v["run"].as_str().unwrap_or_default());
        return Ok(());
    }
    let mut pending = Vec::new();
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| anyhow::anyhow!("the host went away mid-run ({e})"))?;
        let Some(chunk) = chunk else {
            anyhow::bail!("the host ended the stream before the run ended (is it shutting down?)");
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let event: RunEvent =
                serde_json::from_slice(&line).context("invalid line from the admin API")?;
            match event {
                RunEvent::Run(id) => tracing::debug!(run = %id, "run started"),
                RunEvent::Output { stream, data } => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap_or_default();
                    write_stream(stream, &bytes);
                }
                RunEvent::Lost(n) => {
                    eprintln!(
                        "wasmhive: {n} chunks of output were dropped while following (the run's history keeps the last 32 KiB of each stream)"
                    );
                }
                RunEvent::Done(record) => return finish(&record),
                RunEvent::Error(e) => anyhow::bail!("{e}"),
            }
        }
    }
}

fn write_stream(stream: Stream, bytes: &[u8]) {
    // A closed pipe (`| head`) is not an error of the run.
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush())
        }
        Stream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(bytes).and_then(|()| err.flush())
        }
    };
}

/// Says how the run ended (when not by a clean exit) and ends with its code.
fn finish(record: &RunRecord) -> anyhow::Result<()> {
    match record.outcome {
        Outcome::Exit => {}
        Outcome::Trap => eprintln!(
            "wasmhive: run {} trapped: {}",
            record.id,
            record.error.as_deref().unwrap_or("")
        ),
        Outcome::Timeout => eprintln!(
            "wasmhive: run {} ran past its deadline and was stopped",
            record.id
        ),
        _ => eprintln!(
            "wasmhive: run {} {}",
            record.id,
            crate::jobs::describe(record)
        ),
    }
    match record.exit_status() {
        0 => Ok(()),
        // Exit codes are 0..=255 to the shell.
        code => Err(ExitWith(code.clamp(1, 255) as u8).into()),
    }
}

/// `wasmhive jobs logs RUN_ID`: the run's kept output (stdout to stdout, stderr to
/// stderr), then how it ended.
pub async fn logs(admin: &AdminClient, id: &str) -> anyhow::Result<()> {
    let record = admin.run_record(id).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let stdout = b64.decode(&record.stdout).unwrap_or_default();
    let stderr = b64.decode(&record.stderr).unwrap_or_default();
    if record.stdout_bytes > stdout.len() as u64 {
        eprintln!(
            "wasmhive: stdout: the last {} of {} bytes",
            stdout.len(),
            record.stdout_bytes
        );
    }
    write_stream(Stream::Stdout, &stdout);
    if record.stderr_bytes > stderr.len() as u64 {
        eprintln!(
            "wasmhive: stderr: the last {} of {} bytes",
            stderr.len(),
            record.stderr_bytes
        );
    }
    write_stream(Stream::Stderr, &stderr);
    eprintln!(
        "wasmhive: run {} of {}/{} ({}, attempt {}): {}",
        record.id,
        record.app,
        record.component,
        record.trigger.as_str(),
        record.attempt,
        crate::jobs::describe(&record)
    );
    Ok(())
}
