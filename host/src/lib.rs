//! Sluice: an ingestion daemon that pipes RabbitMQ messages through WebAssembly
//! source and writer plugins into Postgres and customer-managed stores.

pub mod admin;
pub mod capabilities;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod pinning;
pub mod pipeline;
pub mod plugin_runtime;
pub mod queue_input;
pub mod reload;
pub mod resolution;
pub mod service;
pub mod signing;
pub mod stream_input;
pub mod telemetry;
pub mod top;
