//! The plugin developer's tools behind `sluice plugin build` and `sluice plugin
//! new`: plugin crates and Python projects compiled into WebAssembly components
//! (a wasm toolchain fetched when none is installed, componentizing, componentize-py),
//! and new plugins created from templates.
//!
//! A crate of its own so that the daemon's crate holds only what `sluice run`
//! needs: the `sluice` CLI links this one for its `plugin build` and `plugin new`
//! commands, and nothing the daemon runs depends on it. Where the tools cache
//! things is the caller's to say (`cache_dir`): the CLI passes Sluice's cache
//! folder, which the daemon's component cache lives in too.

pub mod build;
pub mod new;
