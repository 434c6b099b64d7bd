//! The `log` import: a plugin's records go into the host's structured log, tagged
//! with the plugin and the pipeline it serves.

use crate::plugin_runtime::bindings::v0_1_0::source::sluice::plugin::log::{Host, Level};
use crate::plugin_runtime::state::PluginState;

/// The SDK's panic hook logs at error level with this prefix; the host keeps the
/// message to explain the trap that follows (with `panic = "abort"` it is otherwise
/// lost).
const PANIC_PREFIX: &str = "panic: ";

/// Longest record kept; a plugin cannot flood the log with megabyte lines.
const MAX_RECORD: usize = 4096;

impl Host for PluginState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_RECORD {
            let mut cut = MAX_RECORD;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.label.plugin;
        let pipeline = &*self.label.pipeline;
        match level {
            Level::Trace => {
                tracing::trace!(target: "sluice::plugin", plugin, pipeline, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "sluice::plugin", plugin, pipeline, "{message}")
            }
            Level::Info => tracing::info!(target: "sluice::plugin", plugin, pipeline, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::plugin", plugin, pipeline, "{message}"),
            Level::Error => {
                tracing::error!(target: "sluice::plugin", plugin, pipeline, "{message}");
                if let Some(panic) = message.strip_prefix(PANIC_PREFIX) {
                    self.last_panic = Some(panic.to_string());
                }
            }
        }
        Ok(())
    }
}

// The `types` interface has no functions; its host trait is empty.
impl crate::plugin_runtime::bindings::v0_1_0::types::Host for PluginState {}
