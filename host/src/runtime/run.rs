//! Running a component's command export (`wasi:cli/run@0.2.x`) for a job, always in a
//! fresh instance (argv, environment and stdin are the run's own) that is dropped
//! after the run.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};
use wasmtime_wasi::p2::bindings::CommandIndices;

use super::invoke::{ExportCall, InvokeError, PreparedComponent, RunOptions};
use super::{InstanceState, RuntimeError};
use crate::capability::Invocation;
use crate::capability::wasi::CommandIo;

/// The export called (any 0.2.x).
const EXPORT: &str = "wasi:cli/run@0.2";

/// The command export's indices, looked up and type-checked once per prepared
/// component.
pub(super) type Indices = CommandIndices;

/// The command's indices if the component exports `wasi:cli/run` (`Ok(None)` if
/// not); an export of that name with the wrong type refuses the component.
pub(super) fn indices(
    pre: &InstancePre<InstanceState>,
    exports: &[String],
) -> Result<Option<Indices>, RuntimeError> {
    if !exports.iter().any(|e| e.starts_with(EXPORT)) {
        return Ok(None);
    }
    CommandIndices::new(pre)
        .map(Some)
        .map_err(|e| RuntimeError::Link(format!("{EXPORT}.x: {e:#}")))
}

struct Run(Indices);

impl ExportCall for Run {
    type Output = i32;

    async fn call(
        self,
        store: &mut Store<InstanceState>,
        instance: Instance,
    ) -> wasmtime::Result<i32> {
        let command = self.0.load(&mut *store, &instance)?;
        match command.wasi_cli_run().call_run(store).await {
            Ok(Ok(())) => Ok(0),
            Ok(Err(())) => Ok(1),
            // `exit(code)` ends the run with that code (the instance is dropped).
            Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                Some(exit) => Ok(exit.0),
                None => Err(e),
            },
        }
    }
}

/// How a command run is bounded.
pub struct CommandRun {
    /// The run's argv, environment, stdin and output.
    pub io: Arc<CommandIo>,
    /// Its deadline (`None`: the component's `limits.timeout`).
    pub timeout: Option<Duration>,
    /// Stops the run (`concurrency = "replace"`, a cancelled `wasmhive run`).
    pub cancel: CancellationToken,
    /// Its trace context.
    pub traceparent: Option<http::HeaderValue>,
}

impl PreparedComponent {
    /// Whether the component exports `wasi:cli/run`.
    pub fn is_command(&self) -> bool {
        self.inner.command.is_some()
    }

    /// Runs the component's `wasi:cli/run` to its end in a fresh instance; returns its
    /// exit code (0: `Ok`, 1: `Err`, else what it passed to `exit`). A trap, the
    /// deadline and a cancellation are errors. `guard` is held until the instance is
    /// done.
    pub async fn run_command<G: Send + 'static>(
        &self,
        run: CommandRun,
        guard: G,
    ) -> Result<i32, InvokeError> {
        let Some(indices) = self.inner.command.clone() else {
            return Err(InvokeError::NotExported("command (wasi:cli/run)"));
        };
        let invocation = Invocation {
            traceparent: run.traceparent,
            command: Some(run.io),
            ..Invocation::default()
        };
        let options = RunOptions {
            timeout: run.timeout.unwrap_or_else(|| self.timeout()),
            fresh: true,
            cancel: Some(run.cancel),
        };
        self.run_with(invocation, guard, Run(indices), options)
            .await
    }
}
