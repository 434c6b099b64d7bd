//! Integration tests: the real built plugins in the real runtime, against the
//! local Postgres (and RabbitMQ). Every test makes its own schema, queue and
//! exchange, so tests run in parallel and never see each other's data.

mod amqp_tls;
mod cdr_to_postgres;
mod check;
mod daemon;
mod dead_letters;
mod fan_out;
mod grants;
mod hot_reload;
mod multi_record;
mod observability;
mod partitions;
mod pinning;
mod plugin_deadlines;
mod plugin_limits;
mod plugin_loading;
mod plugin_new;
mod postgres_tls;
mod python_plugins;
mod recovery;
mod service;
mod signing;
mod stalls;
mod streams;
mod top;
mod trust;

use std::sync::Arc;
use std::time::Duration;

use sluice::plugin_runtime::{Message, PluginRuntime, RuntimeConfig};

/// A runtime with tight limits, so the misbehaving plugins are caught fast, and
/// its own compiled-component cache.
fn runtime() -> Arc<PluginRuntime> {
    runtime_with_cache(None)
}

fn runtime_with_cache(cache_dir: Option<std::path::PathBuf>) -> Arc<PluginRuntime> {
    PluginRuntime::new(RuntimeConfig {
        cache_dir,
        memory_limit: 64 << 20,
        call_time_limit: Duration::from_millis(500),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// A message with just a body.
fn message(body: impl Into<Vec<u8>>) -> Message {
    Message {
        body: body.into(),
        exchange: "cdr".into(),
        routing_key: "cdr.voice".into(),
        headers: Vec::new(),
        content_type: Some("application/json".into()),
        content_encoding: None,
        message_id: None,
        timestamp: None,
        redelivered: false,
    }
}
