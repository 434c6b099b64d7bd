//! What a plugin instance may reach, and the host side of each capability.
//!
//! Everything is denied by default. A writer reaches what its configuration
//! grants it (`grants` in the writer's table) and nothing else:
//!
//! - `postgres`: connections by name ([`postgres`]);
//! - `http`: requests under base URLs, through `wasi:http` ([`http`]);
//! - `tcp`: connections to `host:port`s, through `wasi:sockets` ([`tcp`]);
//! - `directory`: one folder, seen by the plugin as `/data` ([`wasi`]).
//!
//! Sources get nothing: no filesystem, network, environment or clock through
//! WASI (see [`wasi`]). The network grants resolve their host names when a
//! writer instance is opened ([`net`]). A writer whose component imports
//! `wasi:http` or `wasi:sockets` without the matching grant is refused when its
//! pipeline starts ([`check_writer_grants`]).
//!
//! `sluice check` opens writers under a dry run ([`Grants::dry_run`],
//! [`dry_run`]): every grant is checked as at run time, and nothing granted is
//! reached.

pub mod dry_run;
pub mod http;
pub mod log;
pub mod net;
pub mod postgres;
pub mod tcp;
pub mod wasi;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime_wasi::WasiCtx;

use self::dry_run::DryRun;
pub use self::net::{HttpGrant, HttpScheme, TcpGrant};
use self::wasi::OutputTail;
use crate::plugin_runtime::LoadedPlugin;
use crate::plugin_runtime::state::PluginLabel;

/// The capabilities granted to one plugin instance (a writer in a pipeline).
///
/// Equal grants give the same capabilities; whether they run under a dry run
/// (`sluice check`) is not part of what they grant.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Postgres connections the plugin may open, by the name it asks for.
    pub postgres: BTreeMap<String, postgres::PostgresGrant>,
    /// Base URLs the plugin may send HTTP requests under (`wasi:http`).
    pub http: Vec<HttpGrant>,
    /// `host:port`s the plugin may open TCP connections to (`wasi:sockets`).
    pub tcp: Vec<TcpGrant>,
    /// The folder the plugin sees as `/data`, read and write (absolute).
    pub directory: Option<PathBuf>,
    /// Set for `sluice check`: the grants are checked, nothing granted is
    /// reached, and what was withheld is recorded here ([`dry_run`]).
    pub(crate) dry_run: Option<Arc<DryRun>>,
}

impl PartialEq for Grants {
    fn eq(&self, other: &Self) -> bool {
        // Spelled out (no `..`) so a new field cannot be left out of the
        // comparison unnoticed.
        let Self {
            postgres,
            http,
            tcp,
            directory,
            dry_run: _,
        } = self;
        *postgres == other.postgres
            && *http == other.http
            && *tcp == other.tcp
            && *directory == other.directory
    }
}

impl Grants {
    /// No capability at all: what source plugins get.
    pub fn none() -> Self {
        Self::default()
    }

    /// Grants a Postgres connection under `name`.
    pub fn with_postgres(
        mut self,
        name: impl Into<String>,
        grant: postgres::PostgresGrant,
    ) -> Self {
        self.postgres.insert(name.into(), grant);
        self
    }

    /// Grants HTTP requests under a base URL.
    pub fn with_http(mut self, grant: HttpGrant) -> Self {
        self.http.push(grant);
        self
    }

    /// Grants TCP connections to a host and port.
    pub fn with_tcp(mut self, grant: TcpGrant) -> Self {
        self.tcp.push(grant);
        self
    }

    /// Grants a directory, seen by the plugin as `/data`.
    pub fn with_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.directory = Some(dir.into());
        self
    }

    /// The same grants under a dry run that records in `run` what it withheld:
    /// what `sluice check` opens writers with ([`dry_run`]).
    pub fn dry_run(&self, run: Arc<DryRun>) -> Self {
        Self {
            dry_run: Some(run),
            ..self.clone()
        }
    }

    /// Whether the grants give the plugin `capability`.
    pub fn gives(&self, capability: Capability) -> bool {
        match capability {
            Capability::Postgres => !self.postgres.is_empty(),
            Capability::Http => !self.http.is_empty(),
            Capability::Tcp => !self.tcp.is_empty(),
        }
    }

    /// Whether the plugin gets the real wall and monotonic clocks: with any
    /// network or directory grant (timeouts, timestamps, file times need them).
    /// Otherwise its clocks are frozen at the epoch.
    pub fn gives_real_clocks(&self) -> bool {
        !self.http.is_empty() || !self.tcp.is_empty() || self.directory.is_some()
    }

    /// Sets up what the grants give an instance of the plugin `label` names:
    /// resolves the granted hosts, creates the granted directory if missing, and
    /// builds the WASI context. The error says what could not be set up. Under
    /// a dry run nothing is resolved or created.
    pub(crate) async fn grant(
        self: &Arc<Self>,
        label: &Arc<PluginLabel>,
    ) -> Result<Granted, String> {
        let output = OutputTail::default();
        let net = if self.dry_run.is_some() {
            net::NetAccess::unresolved(label.clone(), self.clone())
        } else {
            net::NetAccess::prepare(label.clone(), self.clone()).await
        };
        let files_inline = wasi::files_inline(self);
        let wasi = wasi::ctx(&output, self, &net, files_inline)?;
        Ok(Granted {
            wasi,
            output,
            http: http::HttpHooks::new(net),
            files_inline,
        })
    }
}

/// What an instance gets from its grants, ready for its store.
pub(crate) struct Granted {
    pub(crate) wasi: WasiCtx,
    pub(crate) output: OutputTail,
    pub(crate) http: http::HttpHooks,
    /// Whether `wasi` runs filesystem calls on the calling thread
    /// ([`wasi::files_inline`]): the instance's calls must then run inside
    /// `block_in_place`.
    pub(crate) files_inline: bool,
}

impl Granted {
    /// Nothing: sources, and the `about` call at load.
    pub(crate) fn nothing() -> Self {
        let output = OutputTail::default();
        Self {
            wasi: wasi::locked_down_ctx(&output),
            output,
            http: http::HttpHooks::none(),
            files_inline: false,
        }
    }
}

/// A capability that a plugin's imports ask for and grants give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// `sluice:plugin/postgres`: granted by `grants.postgres`.
    Postgres,
    /// `wasi:http/*`: granted by `grants.http`.
    Http,
    /// `wasi:sockets/*`: granted by `grants.tcp`.
    Tcp,
}

impl Capability {
    /// Its key in `grants`: `postgres`, `http` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Postgres => "postgres",
            Capability::Http => "http",
            Capability::Tcp => "tcp",
        }
    }

    /// The capability an import (`wasi:http/outgoing-handler@0.2.12`) asks
    /// for, if any. WASI's cli, io, clocks, random and filesystem are not
    /// capabilities: every std plugin imports them, and they give nothing
    /// without a grant.
    pub fn of_import(import: &str) -> Option<Capability> {
        if import.starts_with("wasi:http/") {
            Some(Capability::Http)
        } else if import.starts_with("wasi:sockets/") {
            Some(Capability::Tcp)
        } else if import.split('@').next() == Some("sluice:plugin/postgres") {
            Some(Capability::Postgres)
        } else {
            None
        }
    }

    /// The import that says the most about it, preferred in messages.
    fn telling_import(self) -> &'static str {
        match self {
            Capability::Postgres => "sluice:plugin/postgres",
            Capability::Http => "wasi:http/outgoing-handler",
            Capability::Tcp => "wasi:sockets/tcp",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A capability a plugin imports, and the import that asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// The capability.
    pub capability: Capability,
    /// An import that asks for it (`wasi:http/outgoing-handler@0.2.12`).
    pub import: String,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.capability, self.import)
    }
}

/// The capabilities a component's imports ask for, one [`Need`] each, in the
/// order of [`Capability`].
pub fn needs_of<'a>(imports: impl IntoIterator<Item = &'a str>) -> Vec<Need> {
    let mut found: BTreeMap<Capability, &str> = BTreeMap::new();
    for import in imports {
        let Some(capability) = Capability::of_import(import) else {
            continue;
        };
        let telling = import.split('@').next() == Some(capability.telling_import());
        let entry = found.entry(capability).or_insert(import);
        if telling {
            *entry = import;
        }
    }
    found
        .into_iter()
        .map(|(capability, import)| Need {
            capability,
            import: import.to_string(),
        })
        .collect()
}

/// Refuses a writer whose component imports `wasi:http` or `wasi:sockets` when
/// `grants` (those of the writer at `at`, like `pipelines[0].writers[1]`) give
/// no `http` or `tcp`: the plugin could not do its job, and says so only when
/// it first tries. Both `sluice run` (when a pipeline starts) and `sluice
/// check` use it. Postgres is not checked here: a writer may import it and be
/// configured for another store, and its grants are checked by name when it
/// opens a connection.
pub fn check_writer_grants(plugin: &LoadedPlugin, grants: &Grants, at: &str) -> Result<(), String> {
    let missing: Vec<String> = plugin
        .needs
        .iter()
        .filter(|need| need.capability != Capability::Postgres && !grants.gives(need.capability))
        .map(|need| {
            let example = match need.capability {
                Capability::Http => "[\"https://host:port/path\"]",
                _ => "[\"host:port\"]",
            };
            format!(
                "writer {} ({}) imports {} but its grants in {at} give no {}; add grants.{} = {example} or use another plugin",
                plugin.info.label(),
                plugin
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| plugin.path.display().to_string()),
                need.import,
                need.capability,
                need.capability,
            )
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

/// What can be told of a granted directory without creating it (`sluice
/// check`): a path that exists and is not a directory cannot become one.
pub fn check_directory(dir: &Path) -> Result<(), String> {
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "the granted directory {} exists and is not a directory",
            dir.display()
        ));
    }
    Ok(())
}

/// Creates a granted directory if it is missing. The error names it.
pub fn prepare_directory(dir: &Path) -> Result<(), String> {
    check_directory(dir)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the granted directory {}: {e}", dir.display()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::Future;
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    /// Runs `f` with the thread's log going to a string: warnings and worse.
    /// Tests run on a current-thread runtime, so tasks `f` spawns log here too.
    pub(crate) async fn capture_warnings<F: Future>(f: F) -> (F::Output, String) {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let output = f.await;
        drop(guard);
        let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (output, text)
    }

    #[test]
    fn needs_come_from_imports_with_the_telling_one_named() {
        let needs = needs_of([
            "wasi:io/poll@0.2.12",
            "wasi:sockets/network@0.2.12",
            "wasi:http/types@0.2.12",
            "wasi:http/outgoing-handler@0.2.12",
            "sluice:plugin/postgres@0.1.0",
            "wasi:sockets/tcp@0.2.12",
            "wasi:filesystem/preopens@0.2.6",
        ]);
        let shown: Vec<String> = needs.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "postgres (sluice:plugin/postgres@0.1.0)",
                "http (wasi:http/outgoing-handler@0.2.12)",
                "tcp (wasi:sockets/tcp@0.2.12)",
            ]
        );
    }

    #[test]
    fn real_clocks_come_with_network_or_directory_grants() {
        assert!(!Grants::none().gives_real_clocks());
        let pg = postgres::PostgresGrant::from_url("postgres://u@h/db").unwrap();
        assert!(!Grants::none().with_postgres("w", pg).gives_real_clocks());
        assert!(Grants::none().with_directory("/tmp/x").gives_real_clocks());
        let tcp = TcpGrant::parse("127.0.0.1:6379").unwrap();
        assert!(Grants::none().with_tcp(tcp).gives_real_clocks());
    }

    #[test]
    fn a_directory_that_cannot_be_created_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = prepare_directory(&file.join("sub")).unwrap_err();
        assert!(
            err.contains(&file.join("sub").display().to_string()),
            "{err}"
        );
        let err = prepare_directory(&file).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
