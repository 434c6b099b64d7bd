//! Command-line interface: parses arguments and runs the subcommand.
//!
//! `sluice plugin build` and `plugin new` run the plugin developer's tools of
//! the `sluice-plugin-tools` crate (`plugin-tools/`); this module is the only
//! part of the daemon's crate that uses them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

#[cfg(feature = "plugin-tools")]
use sluice_plugin_tools::build::{self as plugin_build, BuildOptions, WasmTarget};
#[cfg(feature = "plugin-tools")]
use sluice_plugin_tools::new::{self as plugin_new, NewOptions, SdkChoice};

use crate::config::Config;
use crate::plugin_runtime::cache::default_cache_dir;
use crate::plugin_runtime::{PluginRuntime, RuntimeConfig};
use crate::signing::{self, TrustedKey};

/// Sluice: ingests RabbitMQ event streams into Postgres and customer-managed stores
/// through WebAssembly source and writer plugins.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SLUICE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `sluice=debug,info` (`RUST_LOG` syntax; `RUST_LOG` is used when unset).
    #[arg(long, global = true, env = "SLUICE_LOG")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the daemon: consumes every pipeline's queue until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "config.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Checks a configuration and every plugin it names, reporting every problem
    /// at once. Exits 0 when all is well, 1 otherwise. Connects to nothing.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "config.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Lists what the daemon would load from its plugin folder: each file's
    /// plugin name, version, world, WIT version, content hash, status (loaded,
    /// or refused and why) and, with the configuration's `trusted_keys`, who
    /// signed it. Exits 2 if any file is refused.
    Plugins {
        /// The configuration whose `plugin_dir` to list.
        #[arg(
            long,
            short,
            default_value = "config.toml",
            env = "SLUICE_CONFIG",
            conflicts_with = "dir"
        )]
        config: PathBuf,
        /// A plugin folder to list instead (signatures are not checked).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A live view of a running daemon, from its admin server's `/status`:
    /// per pipeline, messages/s in, rows/s written, dead letters/s, batch
    /// latency, unacked messages, queue depth, stalls and retries, and the
    /// plugin versions running. Keys: q quit, s sort, up/down select.
    Top {
        /// The daemon's admin address (`host:port`) [default: the
        /// configuration's `daemon.admin_addr`].
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// The configuration whose `admin_addr` to read (without --admin).
        #[arg(long, short, default_value = "config.toml", env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Print one snapshot as plain text (rates over one second) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Plugin development: create plugin crates, and build them into components.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Creates a minisign key pair for signing plugins: a secret key (mode
    /// 0600, without a password: keep it in your CI's secret store) and the
    /// public key that daemons list in `trusted_keys`. Existing files are
    /// never overwritten. The `minisign` tool reads both.
    Keygen {
        /// The folder both files go to, as `sluice.key` and `sluice.pub`
        /// [default: the current directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The secret key file [default: DIR/sluice.key].
        #[arg(long, short = 's', value_name = "FILE")]
        secret_key: Option<PathBuf>,
        /// The public key file [default: DIR/sluice.pub].
        #[arg(long, short = 'p', value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Signs plugin files: writes `FILE.minisig` beside each (minisign's
    /// format; `minisign -Vm FILE -p KEY.pub` verifies it). Deploy both
    /// files, the signature first.
    Sign {
        /// The plugin files (`.wasm`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The secret key (from `sluice plugin keygen`, or `minisign -G`; a
        /// password-protected key asks for its password).
        #[arg(long, short = 'k', value_name = "SECRET_KEY")]
        key: PathBuf,
        /// The signature's trusted comment, signed with the file and shown by
        /// `sluice plugins` [default: `timestamp:<now>\tfile:<name>\thashed`,
        /// as minisign].
        #[arg(long, short = 't', value_name = "TEXT")]
        trusted_comment: Option<String>,
    },
    /// Builds plugin crates (cdylib, using sluice-plugin-sdk) into WebAssembly
    /// components, `<out>/<package>.wasm`. Uses an installed rustup wasm target when
    /// there is one, and otherwise fetches a toolchain itself (once, cached).
    #[cfg(feature = "plugin-tools")]
    Build {
        /// Plugin crate folders (each with a Cargo.toml).
        #[arg(required = true)]
        crates: Vec<PathBuf>,
        /// Where the `.wasm` files go (the daemon's plugin folder, for instance).
        #[arg(long, short)]
        out: PathBuf,
        /// Force a target: wasm32-wasip2, wasm32-wasip1 or wasm32-unknown-unknown.
        #[arg(long)]
        target: Option<WasmTarget>,
        /// Build without optimisations (faster to compile, slower to run).
        #[arg(long)]
        debug: bool,
        /// Where the toolchain and build artifacts are cached [default:
        /// `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`].
        #[arg(long, env = "SLUICE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Creates a plugin crate, PARENT/NAME, from a template that builds and
    /// tests as it is: a source (decodes `id,value` lines into rows) or a writer
    /// (stores rows as JSON documents in Postgres, through a granted connection).
    #[cfg(feature = "plugin-tools")]
    New {
        /// What the plugin is.
        #[arg(long, value_enum)]
        kind: plugin_new::Kind,
        /// The crate's name, which is also the plugin's name: lowercase ASCII
        /// letters, digits, `-` and `_`, starting with a letter.
        name: String,
        /// The plugin's language: a Rust crate, or a Python project (tested with
        /// pytest, built with componentize-py).
        #[arg(long, value_enum, default_value = "rust")]
        lang: plugin_new::Lang,
        /// The folder to create the crate in [default: the current directory].
        #[arg(long, value_name = "PARENT")]
        dir: Option<PathBuf>,
        /// The plugin SDK to depend on [default: the SDK of the source tree this
        /// binary was built from, if it is there, else the SDK embedded in the
        /// binary, written to <cache>/sdk/<version>].
        #[arg(long, value_name = "PATH", conflicts_with = "embedded_sdk")]
        sdk: Option<PathBuf>,
        /// Use the SDK embedded in the binary even when the source tree is there.
        #[arg(long)]
        embedded_sdk: bool,
        /// Where the embedded SDK is written (in `sdk/<version>`) [default:
        /// `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`].
        #[arg(long, env = "SLUICE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
}

/// The whole program: runs the command line and turns an error into its message
/// (the whole chain: "loading plugins/x.wasm: corrupt or truncated component: ...")
/// and exit code 1.
pub fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "sluice: error: {}",
                crate::telemetry::error_chain(error.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    crate::telemetry::init(cli.log_format, cli.log_level.as_deref())?;
    match cli.command {
        Command::Run { config } => {
            tokio_runtime()?.block_on(crate::daemon::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => check(&config),
        Command::Top {
            admin,
            config,
            once,
        } => {
            let addr = crate::top::admin_addr(admin.as_deref(), &config)?;
            crate::top::run(&addr, once)
        }
        Command::Plugins { config, dir } => {
            let (dir, trusted_keys) = match dir {
                Some(dir) => (dir, None),
                None => {
                    let daemon = Config::load(&config)
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .daemon;
                    (daemon.plugin_dir, daemon.trusted_keys)
                }
            };
            list_plugins(dir, trusted_keys)
        }
        Command::Plugin(PluginCommand::Keygen {
            out,
            secret_key,
            public_key,
        }) => {
            let out = out.unwrap_or_else(|| PathBuf::from("."));
            let secret_key = secret_key.unwrap_or_else(|| out.join("sluice.key"));
            let public_key = public_key.unwrap_or_else(|| out.join("sluice.pub"));
            let id = signing::keygen(&secret_key, &public_key)?;
            println!(
                "key {id}: secret key {} (keep it secret: it signs plugins), public key {} (list it in daemon.trusted_keys)",
                secret_key.display(),
                public_key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Sign {
            files,
            key,
            trusted_comment,
        }) => {
            for file in files {
                let signed = signing::sign(&file, &key, trusted_comment.as_deref())?;
                println!(
                    "{}: signed by key {}, trusted comment {:?}",
                    signed.signature.display(),
                    signed.key_id,
                    signed.trusted_comment
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "plugin-tools")]
        Command::Plugin(PluginCommand::Build {
            crates,
            out,
            target,
            debug,
            cache_dir,
        }) => {
            let opts = BuildOptions {
                crates,
                out_dir: out,
                target,
                profile_debug: debug,
                cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
            };
            for built in plugin_build::build(&opts)? {
                println!(
                    "{} {} ({} bytes, {}, {:?} route)",
                    built.package,
                    built.output.display(),
                    built.bytes,
                    built.target,
                    built.route
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "plugin-tools")]
        Command::Plugin(PluginCommand::New {
            kind,
            name,
            lang,
            dir,
            sdk,
            embedded_sdk,
            cache_dir,
        }) => {
            let sdk = match (sdk, embedded_sdk) {
                (Some(path), _) => SdkChoice::Path(path),
                (None, true) => SdkChoice::Embedded,
                (None, false) => SdkChoice::Auto,
            };
            let created = plugin_new::create(&NewOptions {
                kind,
                name,
                lang,
                parent: dir,
                sdk,
                cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
            })?;
            print!("{created}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            println!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    tokio_runtime()?.block_on(async {
        let runtime = PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(config.daemon.cache_dir.clone()),
            memory_limit: config.daemon.plugin_memory_limit,
            call_time_limit: config.daemon.plugin_call_timeout,
            call_deadline: config.daemon.plugin_call_deadline,
            store_call_timeout: config.daemon.store_call_timeout,
            metrics: None,
        })?;
        let (problems, registry) = crate::check::check_with_registry(&config, &runtime).await;
        let code = if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
        println!("{}", check_report(&config, problems));
        print_signers(&config, registry.as_ref());
        Ok(code)
    })
}

/// What `sluice check` prints: `<file>: ok (N pipelines)`, or the problems as
/// a refused configuration lists them.
fn check_report(config: &Config, problems: Vec<crate::config::Problem>) -> String {
    if problems.is_empty() {
        let n = config.pipelines.len();
        format!(
            "{}: ok ({n} pipeline{})",
            config.file.display(),
            if n == 1 { "" } else { "s" }
        )
    } else {
        crate::config::ConfigError {
            file: config.file.clone(),
            problems,
        }
        .to_string()
    }
}

/// Who signed each plugin file `sluice check` accepted (the refused ones are
/// among its problems), or that plugins are not verified.
fn print_signers(config: &Config, registry: Option<&crate::reload::PluginRegistry>) {
    let dir = &config.daemon.plugin_dir;
    let Some(keys) = &config.daemon.trusted_keys else {
        println!(
            "plugins are not verified: no daemon.trusted_keys, so any file in {} runs",
            dir.display()
        );
        return;
    };
    let Some(registry) = registry else {
        return;
    };
    println!("signatures (trusted keys: {}):", key_list(keys));
    for file in registry.status() {
        if let (Some(_), Some(signer)) = (&file.plugin, &file.signer) {
            println!(
                "  plugin_dir/{}: signed by {signer}",
                crate::reload::file_name(&file.path)
            );
        }
    }
}

fn key_list(keys: &[TrustedKey]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("{} ({})", k.file_name(), k.id))
        .collect();
    keys.join(", ")
}

fn runtime_for_cli() -> anyhow::Result<Arc<PluginRuntime>> {
    let cache_dir = default_cache_dir().join("components");
    PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache_dir),
        ..RuntimeConfig::default()
    })
}

/// The grants a plugin's imports need (`postgres,http`), or `-`.
fn needs(plugin: &crate::plugin_runtime::LoadedPlugin) -> String {
    let names: Vec<&str> = plugin.needs.iter().map(|n| n.capability.as_str()).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

fn list_plugins(dir: PathBuf, trusted_keys: Option<Vec<TrustedKey>>) -> anyhow::Result<ExitCode> {
    tokio_runtime()?.block_on(async {
        let runtime = runtime_for_cli()?;
        // The same scan the daemon does, so the listing says what it would load.
        let trust = match &trusted_keys {
            Some(keys) => format!(
                "signatures: required, by a trusted key ({})",
                key_list(keys)
            ),
            None => "signatures: not verified (no daemon.trusted_keys)".to_string(),
        };
        let mut registry = crate::reload::PluginRegistry::new(dir);
        registry.set_trusted_keys(trusted_keys);
        registry.scan(&runtime, None).await?;
        let mut refused = 0;
        println!(
            "{:<20} {:<9} {:<7} {:<6} {:<13} {:<8} {:<13} FILE",
            "NAME", "VERSION", "WORLD", "WIT", "SHA256", "STATUS", "NEEDS"
        );
        for file in registry.status() {
            let name = file
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match (&file.plugin, &file.refused) {
                (Some(p), None) => println!(
                    "{:<20} {:<9} {:<7} {:<6} {:<13} {:<8} {:<13} {name}{}",
                    p.info.name,
                    p.info.version,
                    p.kind.as_str(),
                    p.wit_version,
                    &p.sha256[..12],
                    "loaded",
                    needs(p),
                    file.signer
                        .as_ref()
                        .map(|s| format!(" (signed by {s})"))
                        .unwrap_or_default(),
                ),
                (_, Some(reason)) => {
                    refused += 1;
                    println!(
                        "{:<20} {:<9} {:<7} {:<6} {:<13} {:<8} {:<13} {name}: {reason}",
                        "-", "-", "-", "-", "-", "refused", "-"
                    );
                }
                (None, None) => {}
            }
        }
        println!("{trust}");
        Ok(if refused == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Problem;

    fn config(pipelines: usize) -> Config {
        let mut text = String::from(
            "[connections.rabbit]\ntype = \"amqp\"\nurl = \"amqp://guest@127.0.0.1:5672/%2f\"\n",
        );
        for i in 0..pipelines {
            text.push_str(&format!(
                "[[pipelines]]\nname = \"p{i}\"\nconnection = \"rabbit\"\nqueue = {{ name = \"q{i}\" }}\nsource = {{ plugin = \"json-source\" }}\nwriters = [{{ plugin = \"postgres-writer\" }}]\n"
            ));
        }
        Config::from_str_with_env(&text, std::path::Path::new("/etc/sluice.toml"), |_| None)
            .unwrap()
    }

    #[test]
    fn check_counts_one_problem_and_one_pipeline_in_the_singular() {
        let one = vec![Problem::new(
            "pipelines[0].writers[0].config",
            "unknown key `tabel`",
        )];
        assert_eq!(
            check_report(&config(1), one),
            "/etc/sluice.toml: 1 problem:\n  - pipelines[0].writers[0].config: unknown key `tabel`"
        );
        let two = vec![Problem::new("a", "x"), Problem::new("b", "y")];
        assert!(check_report(&config(1), two).starts_with("/etc/sluice.toml: 2 problems:\n"));
        assert_eq!(
            check_report(&config(1), vec![]),
            "/etc/sluice.toml: ok (1 pipeline)"
        );
        assert_eq!(
            check_report(&config(2), vec![]),
            "/etc/sluice.toml: ok (2 pipelines)"
        );
    }
}
