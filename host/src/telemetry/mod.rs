//! Logging: `tracing` to stderr, as text on a terminal and JSON lines otherwise.
//!
//! Filter with `WASMHIVE_LOG` (or `RUST_LOG`), e.g. `WASMHIVE_LOG=debug`. Guest
//! stdout/stderr arrive as events with target `wasmhive::guest` and the component's
//! app, name and version as fields.

pub mod metrics;
pub mod trace;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Turns off backtrace capture for errors (not for panics) unless `RUST_LIB_BACKTRACE`
/// is set: with `RUST_BACKTRACE=1` in a developer's shell, every error the host or
/// wasmtime creates would otherwise capture and symbolize a native backtrace, and
/// errors handed to guests (a failed body read's `to-debug-string`) would carry it:
/// hundreds of lines of the host's internals, and ~180 MB of symbol data loaded.
/// `RUST_BACKTRACE` still shows panics' backtraces in the host's log.
///
/// Call first thing in `main`, before any thread is started.
pub fn no_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called at the start of `main` (see above): no other thread exists
        // that could read or write the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Default filter when neither `WASMHIVE_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn,wasmtime_wasi_http=warn";

/// Installs the global subscriber. Call once, early.
pub fn init(format: LogFormat) {
    let filter = std::env::var("WASMHIVE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
