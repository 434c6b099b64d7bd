//! Logging into the host's structured log, where each record is tagged with the
//! plugin and the pipeline.
//!
//! Call the functions, or the formatting macros at the crate root
//! ([`info!`](crate::info), [`warn!`](crate::warn), ...). Outside a host (native
//! tests) records go to stderr.
//!
//! ```
//! use sluice_plugin_sdk::log;
//! log::info("connected");
//! sluice_plugin_sdk::warn!("skipped {} rows", 3);
//! ```

use std::fmt;

/// How much a record matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very fine detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// Something failed.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Writes one record. The host may drop records below its configured level.
pub fn log(level: Level, message: &str) {
    // Both worlds import the same `log` interface; use whichever bindings exist
    // (on wasm32 only one can, see the crate's features).
    #[cfg(all(target_arch = "wasm32", feature = "source"))]
    use crate::__bindings_source::sluice::plugin::log as wit;
    #[cfg(all(target_arch = "wasm32", feature = "writer", not(feature = "source")))]
    use crate::__bindings_writer::sluice::plugin::log as wit;

    #[cfg(all(target_arch = "wasm32", any(feature = "source", feature = "writer")))]
    {
        let level = match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        };
        wit::log(level, message);
    }
    #[cfg(not(all(target_arch = "wasm32", any(feature = "source", feature = "writer"))))]
    eprintln!("[plugin {level}] {message}");
}

/// Writes a record at level trace.
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Writes a record at level debug.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Writes a record at level info.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Writes a record at level warn.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Writes a record at level error.
pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Formats a record and writes it at level trace (see [`log`](crate::log)).
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log::trace(&::std::format!($($arg)+)) };
}

/// Formats a record and writes it at level debug (see [`log`](crate::log)).
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::debug(&::std::format!($($arg)+)) };
}

/// Formats a record and writes it at level info (see [`log`](crate::log)).
///
/// ```
/// sluice_plugin_sdk::info!("opened {} connections", 2);
/// ```
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::info(&::std::format!($($arg)+)) };
}

/// Formats a record and writes it at level warn (see [`log`](crate::log)).
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::warn(&::std::format!($($arg)+)) };
}

/// Formats a record and writes it at level error (see [`log`](crate::log)).
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::error(&::std::format!($($arg)+)) };
}

/// Sends every panic's message and location to the host's log before the plugin
/// traps: with `panic = "abort"` in wasm the message is otherwise lost.
#[cfg_attr(not(any(feature = "source", feature = "writer")), allow(dead_code))]
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            error(&panic_message(info));
            previous(info);
        }));
    });
}

#[cfg_attr(not(any(feature = "source", feature = "writer")), allow(dead_code))]
fn panic_message(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not a string)");
    match info.location() {
        Some(at) => format!(
            "panic: {message} at {}:{}:{}",
            at.file(),
            at.line(),
            at.column()
        ),
        None => format!("panic: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[test]
    fn panic_message_has_text_and_location() {
        let seen = Arc::new(Mutex::new(String::new()));
        let sink = seen.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            *sink.lock().unwrap() = super::panic_message(info)
        }));
        let line = line!() + 1;
        let _ = std::panic::catch_unwind(|| panic!("boom {}", 7));
        std::panic::set_hook(previous);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, format!("panic: boom 7 at {}:{line}:45", file!()));
    }
}
