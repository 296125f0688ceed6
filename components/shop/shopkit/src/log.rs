//! Log lines through `wasi:logging` (the host tags them with the app, component and
//! trace id).

use crate::bindings::wasi::logging::logging::{Level, log};

/// An `info` line.
pub fn info(context: &str, message: &str) {
    log(Level::Info, context, message);
}

/// A `warn` line.
pub fn warn(context: &str, message: &str) {
    log(Level::Warn, context, message);
}

/// An `error` line.
pub fn error(context: &str, message: &str) {
    log(Level::Error, context, message);
}
