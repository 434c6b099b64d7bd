//! Plugin instances: one wasmtime `Store` each, owned by one task, re-created after
//! any failure.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use super::bindings::v0_1_0::writer;
use super::bindings::{v0_1_0, v0_2_0};
use super::state::{CallDeadline, PluginLabel, PluginState};
use super::{
    DecodedBatch, LoadedPlugin, Message, MessageOutcome, PluginError, PluginInfo, PluginKind,
    PluginPre, PluginRuntime, RowBatch, RowRejection, Schema, SourcePre, versions,
};
use crate::capabilities::{Granted, Grants};

/// Why a call into a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin trapped (a panic, an `unreachable`, an out-of-bounds access).
    #[error("plugin {plugin} trapped in `{func}`: {reason}")]
    Trap {
        /// `name@version`.
        plugin: String,
        /// The export called.
        func: &'static str,
        /// The panic message, or the trap and the plugin's last output.
        reason: String,
    },
    /// The plugin ran past its time limit and was interrupted.
    #[error("plugin {plugin} ran past its time limit of {limit:?} in `{func}` and was stopped")]
    Timeout {
        /// `name@version`.
        plugin: String,
        /// The export called.
        func: &'static str,
        /// The limit.
        limit: Duration,
    },
    /// The call ran past its wall-clock deadline (`plugin_call_deadline`: time
    /// the plugin slept or waited on its own I/O counts, time in granted store
    /// calls does not) and was stopped.
    #[error(
        "plugin {plugin} ran past its wall-clock deadline of {limit:?} in `{func}` (plugin_call_deadline; time asleep or waiting on its own I/O counts) and was stopped"
    )]
    Deadline {
        /// `name@version`.
        plugin: String,
        /// The export called.
        func: &'static str,
        /// The deadline.
        limit: Duration,
    },
    /// The plugin tried to grow its memory past the limit and was stopped.
    #[error(
        "plugin {plugin} went over its memory limit of {limit_mib} MiB in `{func}` and was stopped"
    )]
    OutOfMemory {
        /// `name@version`.
        plugin: String,
        /// The export called.
        func: &'static str,
        /// The limit, in MiB.
        limit_mib: usize,
    },
    /// The plugin answered with an error of its own.
    #[error("plugin {plugin} failed in `{func}`: {}", describe(error))]
    Failed {
        /// `name@version`.
        plugin: String,
        /// The export called.
        func: &'static str,
        /// What it said.
        error: PluginError,
    },
    /// The plugin answered something the contract does not allow.
    #[error("plugin {plugin} broke the contract in `{func}`: {reason}")]
    Contract {
        /// `name@version`.
        plugin: String,
        /// The export called.
        func: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The host could not set up what the plugin was granted (a granted
    /// directory that cannot be created). Not the plugin's fault; it did not run.
    #[error("plugin {plugin} cannot be opened: {reason}")]
    Capability {
        /// `name@version`.
        plugin: String,
        /// What could not be set up.
        reason: String,
    },
}

impl CallError {
    /// The export whose call failed (`decode`, `write`, `configure`, `open`,
    /// `instantiate`, `about`).
    pub fn func(&self) -> &'static str {
        match self {
            CallError::Trap { func, .. }
            | CallError::Timeout { func, .. }
            | CallError::Deadline { func, .. }
            | CallError::OutOfMemory { func, .. }
            | CallError::Failed { func, .. }
            | CallError::Contract { func, .. } => func,
            CallError::Capability { .. } => "open",
        }
    }

    /// The kind of failure, as metrics label it: `trap`, `timeout`, `deadline`,
    /// `memory`, `failed`, `contract` or `capability`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trap { .. } => "trap",
            CallError::Timeout { .. } => "timeout",
            CallError::Deadline { .. } => "deadline",
            CallError::OutOfMemory { .. } => "memory",
            CallError::Failed { .. } => "failed",
            CallError::Contract { .. } => "contract",
            CallError::Capability { .. } => "capability",
        }
    }

    /// Whether the plugin crashed or misbehaved (trap, timeout, deadline, memory
    /// limit, contract) rather than answering with an error of its own.
    pub fn is_crash(&self) -> bool {
        !matches!(
            self,
            CallError::Failed { .. } | CallError::Capability { .. }
        )
    }

    /// Whether the plugin itself said to retry later (a store unavailable).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            CallError::Failed {
                error: PluginError::Retriable(_),
                ..
            }
        )
    }

    /// Whether the plugin's configuration is at fault (retrying cannot help).
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            CallError::Failed {
                error: PluginError::InvalidConfig(_),
                ..
            }
        )
    }
}

fn describe(error: &PluginError) -> String {
    match error {
        PluginError::InvalidConfig(m) => format!("invalid configuration: {m}"),
        PluginError::Retriable(m) => format!("retriable: {m}"),
        PluginError::Fatal(m) => m.clone(),
    }
}

/// Prepares a store for a call: a fresh time budget and deadline, and no
/// leftovers of the last. Returns what runs the call ([`Call::run`]).
fn begin_call(store: &mut Store<PluginState>) -> Call {
    let data = store.data_mut();
    data.clock.start();
    data.deadline.start();
    data.output.clear();
    data.last_panic = None;
    data.limiter.hit = None;
    let call = Call {
        deadline: data.deadline.clone(),
        files_inline: data.files_inline,
    };
    store.set_epoch_deadline(1);
    call
}

/// What a call has left over once it returned: the count of log records it
/// dropped, reported now (`capabilities::log`).
fn end_call(store: &mut Store<PluginState>) {
    store.data_mut().log.call_ended();
}

/// One call into an instance, from [`begin_call`].
struct Call {
    deadline: Arc<CallDeadline>,
    files_inline: bool,
}

impl Call {
    /// Runs `call` to its end, or until its wall-clock deadline passes
    /// (`state::CallDeadline`): then the call's future is dropped, which unwinds
    /// the plugin out of whatever it was doing (asleep in `wasi:io/poll`,
    /// waiting on a socket, running) and fails the call; [`call_error`] says
    /// why. The instance is dropped after it like after any trap.
    ///
    /// An instance whose WASI context has `files_inline` (a writer with a
    /// directory grant) does its filesystem work on the thread that polls the
    /// call, so the call runs inside `tokio::task::block_in_place`: tokio hands
    /// the worker's other tasks to another thread first, and a slow or hung
    /// `fsync` then holds this thread only, never a worker (the admin server,
    /// the health checks and the other consumers go on). `Handle::block_on`
    /// drives the call and its deadline there; the plugin's `wasi:http`,
    /// sockets, Postgres calls and the deadline's timer still run on tokio's
    /// drivers, which the workers drive. The whole call, the plugin's own code
    /// included, runs off the workers; the deadline stops it as anywhere else,
    /// except during a filesystem call that blocks in the kernel (a hung NFS
    /// `fsync`): no future is polled until that returns, and a thread cannot be
    /// interrupted. The CPU-time limit works as for any call: epoch checks run
    /// in the plugin's code whatever the thread, and time in host calls is told
    /// apart as ever (`state::CallClock`).
    ///
    /// Elsewhere, or when this thread cannot block in place (a current-thread
    /// runtime, where `block_in_place` panics; a context with `files_inline` is
    /// only built on a multi-thread one), the call is awaited as it is.
    async fn run<T>(&self, call: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
        let bounded = async {
            tokio::select! {
                biased;
                result = call => result,
                () = self.deadline.passed() => Err(wasmtime::Error::msg(format!(
                    "wall-clock deadline of {:?} passed",
                    self.deadline.limit()
                ))),
            }
        };
        if self.files_inline && super::can_block_in_place() {
            tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(bounded))
        } else {
            bounded.await
        }
    }
}

/// Explains a failed call from what the store saw.
fn call_error(
    plugin: &str,
    func: &'static str,
    store: &Store<PluginState>,
    error: wasmtime::Error,
) -> CallError {
    let data = store.data();
    let plugin = plugin.to_string();
    if data.deadline.has_passed() {
        return CallError::Deadline {
            plugin,
            func,
            limit: data.deadline.limit(),
        };
    }
    if data.clock.exceeded {
        return CallError::Timeout {
            plugin,
            func,
            limit: data.clock.limit(),
        };
    }
    if data.limiter.hit.is_some() {
        return CallError::OutOfMemory {
            plugin,
            func,
            limit_mib: data.limiter.limit() >> 20,
        };
    }
    let reason = match (&data.last_panic, data.output.text()) {
        (Some(panic), _) => format!("panicked: {panic}"),
        (None, Some(output)) => format!("{}; its last output: {output}", trap_text(&error)),
        (None, None) => trap_text(&error),
    };
    CallError::Trap {
        plugin,
        func,
        reason,
    }
}

fn trap_text(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        // A trap reads `wasm trap: …` on its own.
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    }
}

/// The outcome of a call to an export that answers `result<T, plugin-error>`:
/// the plugin's own error, or a trap explained from the store.
fn answer<T>(
    plugin: &str,
    func: &'static str,
    store: &Store<PluginState>,
    result: wasmtime::Result<Result<T, PluginError>>,
) -> Result<T, CallError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(CallError::Failed {
            plugin: plugin.to_string(),
            func,
            error,
        }),
        Err(e) => Err(call_error(plugin, func, store, e)),
    }
}

/// Calls `about` on a fresh instance, with no capability granted.
pub(super) async fn about(
    runtime: &Arc<PluginRuntime>,
    pre: &PluginPre,
) -> Result<PluginInfo, CallError> {
    let label = Arc::new(PluginLabel {
        plugin: "(loading)".into(),
        pipeline: "".into(),
    });
    let mut store = runtime.new_store(label, Arc::new(Grants::none()), Granted::nothing());
    let call = begin_call(&mut store);
    let result = call
        .run(async {
            match pre {
                PluginPre::Source(SourcePre::V0_1_0(pre)) => {
                    let b = pre.instantiate_async(&mut store).await?;
                    let i = b.sluice_plugin_source().call_about(&mut store).await?;
                    Ok((i.name, i.version, i.description))
                }
                PluginPre::Source(SourcePre::V0_2_0(pre)) => {
                    let b = pre.instantiate_async(&mut store).await?;
                    let i = b.sluice_plugin_source().call_about(&mut store).await?;
                    Ok((i.name, i.version, i.description))
                }
                PluginPre::Writer(pre) => {
                    let b = pre.instantiate_async(&mut store).await?;
                    let i = b.sluice_plugin_writer().call_about(&mut store).await?;
                    Ok((i.name, i.version, i.description))
                }
            }
        })
        .await;
    end_call(&mut store);
    let (name, version, description) =
        result.map_err(|e| call_error("(loading)", "about", &store, e))?;
    Ok(PluginInfo {
        name,
        version,
        description,
    })
}

/// Checks a schema a source declared: names, keys, nullability.
pub fn validate_schema(schema: &Schema) -> Result<(), String> {
    let mut problems = Vec::new();
    let valid_name = |n: &str| {
        n.len() <= 63
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !valid_name(&schema.name) {
        problems.push(format!(
            "schema name `{}` is not lowercase letters, digits and `_`",
            schema.name
        ));
    }
    if schema.columns.is_empty() {
        problems.push("it has no columns".to_string());
    }
    let mut seen = std::collections::HashSet::new();
    for c in &schema.columns {
        if !valid_name(&c.name) {
            problems.push(format!(
                "column name `{}` is not lowercase letters, digits and `_`",
                c.name
            ));
        }
        if !seen.insert(c.name.as_str()) {
            problems.push(format!("column `{}` is declared twice", c.name));
        }
        if c.key && c.nullable {
            problems.push(format!("key column `{}` is nullable", c.name));
        }
    }
    if !schema.columns.iter().any(|c| c.key) {
        problems.push("it has no key column (writes could not be idempotent)".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn label_for(plugin: &LoadedPlugin, pipeline: &str) -> Arc<PluginLabel> {
    Arc::new(PluginLabel {
        plugin: plugin.info.label().into(),
        pipeline: pipeline.into(),
    })
}

/// A source instance's bindings, of the WIT version the plugin implements.
enum SourceBindings {
    V0_1_0(v0_1_0::source::SourcePlugin),
    V0_2_0(v0_2_0::source::SourcePlugin),
}

/// A source plugin instance for one pipeline.
pub struct SourceInstance {
    runtime: Arc<PluginRuntime>,
    plugin: Arc<LoadedPlugin>,
    pre: SourcePre,
    label: Arc<PluginLabel>,
    config: String,
    live: Option<(Store<PluginState>, SourceBindings, Schema)>,
}

impl SourceInstance {
    /// An instance of `plugin` configured with `config` (a JSON object). Nothing
    /// runs until the first call.
    ///
    /// # Panics
    /// If `plugin` is not a source: callers check `plugin.kind` first.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        plugin: Arc<LoadedPlugin>,
        pipeline: &str,
        config: String,
    ) -> Self {
        let PluginPre::Source(pre) = plugin.pre.clone() else {
            panic!(
                "{} is a {} plugin, not a source",
                plugin.info.label(),
                plugin.kind
            );
        };
        let label = label_for(&plugin, pipeline);
        Self {
            runtime,
            plugin,
            pre,
            label,
            config,
            live: None,
        }
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    async fn live(
        &mut self,
    ) -> Result<&mut (Store<PluginState>, SourceBindings, Schema), CallError> {
        if self.live.is_none() {
            let name = self.plugin.info.label();
            let mut store = self.runtime.new_store(
                self.label.clone(),
                Arc::new(Grants::none()),
                Granted::nothing(),
            );
            let call = begin_call(&mut store);
            let instantiated = call
                .run(async {
                    Ok(match &self.pre {
                        SourcePre::V0_1_0(pre) => {
                            SourceBindings::V0_1_0(pre.instantiate_async(&mut store).await?)
                        }
                        SourcePre::V0_2_0(pre) => {
                            SourceBindings::V0_2_0(pre.instantiate_async(&mut store).await?)
                        }
                    })
                })
                .await;
            end_call(&mut store);
            let bindings = match instantiated {
                Ok(b) => b,
                Err(e) => return Err(call_error(&name, "instantiate", &store, e)),
            };
            let call = begin_call(&mut store);
            let result = call
                .run(async {
                    match &bindings {
                        SourceBindings::V0_1_0(b) => {
                            b.sluice_plugin_source()
                                .call_configure(&mut store, &self.config)
                                .await
                        }
                        SourceBindings::V0_2_0(b) => Ok(b
                            .sluice_plugin_source()
                            .call_configure(&mut store, &self.config)
                            .await?
                            .map(versions::schema_from_v0_2_0)
                            .map_err(versions::error_from_v0_2_0)),
                    }
                })
                .await;
            end_call(&mut store);
            let schema = answer(&name, "configure", &store, result)?;
            validate_schema(&schema).map_err(|reason| CallError::Contract {
                plugin: name.clone(),
                func: "configure",
                reason: format!("it declared an invalid schema: {reason}"),
            })?;
            self.live = Some((store, bindings, schema));
        }
        Ok(self.live.as_mut().expect("just set"))
    }

    /// The schema the plugin declares for its configuration (instantiating and
    /// configuring it if needed).
    pub async fn schema(&mut self) -> Result<Schema, CallError> {
        Ok(self.live().await?.2.clone())
    }

    /// Decodes a batch. On any failure the instance is dropped; the next call
    /// gets a fresh one.
    pub async fn decode(&mut self, messages: &[Message]) -> Result<DecodedBatch, CallError> {
        let name = self.plugin.info.label();
        let (store, bindings, _) = self.live().await?;
        let call = begin_call(store);
        let result = call
            .run(async {
                match bindings {
                    SourceBindings::V0_1_0(b) => {
                        // 0.1.0 has no `content-encoding`: its messages are copies
                        // without it (only such plugins pay for the copy).
                        let old: Vec<_> =
                            messages.iter().map(versions::message_to_v0_1_0).collect();
                        b.sluice_plugin_source()
                            .call_decode(&mut *store, &old)
                            .await
                            .map(versions::decoded_from_v0_1_0)
                    }
                    SourceBindings::V0_2_0(b) => b
                        .sluice_plugin_source()
                        .call_decode(&mut *store, messages)
                        .await
                        .map(versions::decoded_from_v0_2_0),
                }
            })
            .await;
        end_call(store);
        let decoded = match result {
            Ok(decoded) => decoded,
            Err(e) => {
                let error = call_error(&name, "decode", store, e);
                self.live = None;
                return Err(error);
            }
        };
        if let Err(reason) = check_decoded(messages.len(), &decoded) {
            self.live = None;
            return Err(CallError::Contract {
                plugin: name,
                func: "decode",
                reason,
            });
        }
        Ok(decoded)
    }
}

fn check_decoded(messages: usize, decoded: &DecodedBatch) -> Result<(), String> {
    if decoded.outcomes.len() != messages {
        return Err(format!(
            "{} outcomes for {messages} messages",
            decoded.outcomes.len()
        ));
    }
    let rows: u64 = decoded
        .outcomes
        .iter()
        .map(|o| match o {
            MessageOutcome::Rows(n) => u64::from(*n),
            MessageOutcome::Partial(p) => u64::from(p.rows),
            MessageOutcome::Rejected(_) => 0,
        })
        .sum();
    if rows != u64::from(decoded.rows.count) {
        return Err(format!(
            "outcomes announce {rows} rows but the batch holds {}",
            decoded.rows.count
        ));
    }
    Ok(())
}

/// A writer plugin instance for one pipeline, with its grants.
pub struct WriterInstance {
    runtime: Arc<PluginRuntime>,
    plugin: Arc<LoadedPlugin>,
    pre: writer::WriterPluginPre<PluginState>,
    label: Arc<PluginLabel>,
    grants: Arc<Grants>,
    config: String,
    schema: Schema,
    live: Option<(Store<PluginState>, writer::WriterPlugin)>,
}

impl WriterInstance {
    /// An instance of `plugin` for rows of `schema`, configured with `config` (a
    /// JSON object) and allowed what `grants` says. Nothing runs until the first
    /// call.
    ///
    /// # Panics
    /// If `plugin` is not a writer: callers check `plugin.kind` first.
    pub fn new(
        runtime: Arc<PluginRuntime>,
        plugin: Arc<LoadedPlugin>,
        pipeline: &str,
        config: String,
        schema: Schema,
        grants: Grants,
    ) -> Self {
        let PluginPre::Writer(pre) = plugin.pre.clone() else {
            panic!(
                "{} is a {} plugin, not a writer",
                plugin.info.label(),
                plugin.kind
            );
        };
        assert_eq!(plugin.kind, PluginKind::Writer);
        let label = label_for(&plugin, pipeline);
        Self {
            runtime,
            plugin,
            pre,
            label,
            grants: Arc::new(grants),
            config,
            schema,
            live: None,
        }
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Instantiates and opens the writer if it is not open yet.
    pub async fn open(&mut self) -> Result<(), CallError> {
        if self.live.is_some() {
            return Ok(());
        }
        let name = self.plugin.info.label();
        let granted =
            self.grants
                .grant(&self.label)
                .await
                .map_err(|reason| CallError::Capability {
                    plugin: name.clone(),
                    reason,
                })?;
        let mut store = self
            .runtime
            .new_store(self.label.clone(), self.grants.clone(), granted);
        let call = begin_call(&mut store);
        let instantiated = call.run(self.pre.instantiate_async(&mut store)).await;
        end_call(&mut store);
        let bindings = match instantiated {
            Ok(b) => b,
            Err(e) => return Err(call_error(&name, "instantiate", &store, e)),
        };
        let call = begin_call(&mut store);
        let result = call
            .run(
                bindings
                    .sluice_plugin_writer()
                    .call_open(&mut store, &self.config, &self.schema),
            )
            .await;
        end_call(&mut store);
        answer(&name, "open", &store, result)?;
        self.live = Some((store, bindings));
        Ok(())
    }

    /// Writes a batch. On any failure the instance (and its connections) is
    /// dropped; the next call opens a fresh one.
    pub async fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, CallError> {
        self.open().await?;
        let name = self.plugin.info.label();
        let (store, bindings) = self.live.as_mut().expect("opened above");
        let call = begin_call(store);
        let result = call
            .run(
                bindings
                    .sluice_plugin_writer()
                    .call_write(&mut *store, batch),
            )
            .await;
        end_call(store);
        let error = match result {
            Ok(Ok(rejections)) => {
                if let Some(bad) = rejections.iter().find(|r| r.row >= batch.count) {
                    let reason = format!("rejected row {} of a batch of {}", bad.row, batch.count);
                    self.live = None;
                    return Err(CallError::Contract {
                        plugin: name,
                        func: "write",
                        reason,
                    });
                }
                return Ok(rejections);
            }
            Ok(Err(error)) => CallError::Failed {
                plugin: name,
                func: "write",
                error,
            },
            Err(e) => call_error(&name, "write", store, e),
        };
        self.live = None;
        Err(error)
    }
}

#[cfg(test)]
mod trap_text_tests {
    use super::*;

    #[test]
    fn a_trap_says_wasm_trap_once() {
        let error = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        let text = trap_text(&error);
        assert!(text.starts_with("wasm trap: "), "{text}");
        assert_eq!(text.matches("wasm trap").count(), 1, "{text}");
    }
}
