//! Shared fixtures for Sluice's integration tests and benchmarks: the built
//! plugins, a private Postgres schema per test, CDR messages.

pub mod cluster;
pub mod daemon;
pub mod rabbit_node;
pub mod stores;
pub mod streams;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_plugin_tools::build::{self as plugin_build, BuildOptions};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The plugin crates the tests use, relative to the workspace root.
pub const TEST_PLUGIN_CRATES: &[&str] = &[
    "plugins/json-source",
    "plugins/postgres-writer",
    "tests/plugins/chaos-source",
    "tests/plugins/chaos-writer",
    "tests/plugins/not-a-plugin",
    "tests/plugins/marked-source",
    "tests/plugins/grant-probe",
    "tests/plugins/legacy-source",
    "plugins/clickhouse-writer",
    "plugins/redis-writer",
    "plugins/file-writer",
];

/// The folder with every test plugin built as a component (`<name>.wasm`).
///
/// Built once per test process with `sluice plugin build` (the same code path
/// users run); cargo makes it a no-op when nothing changed. A file lock keeps
/// concurrent test processes from building at the same time.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let dir = root.join("target").join("test-plugins");
        std::fs::create_dir_all(&dir).expect("creating target/test-plugins");
        let lock = std::fs::File::create(dir.join(".lock")).expect("creating the build lock");
        lock.lock().expect("locking target/test-plugins");
        let crates = TEST_PLUGIN_CRATES.iter().map(|c| root.join(c)).collect();
        if let Err(e) = plugin_build::build(&build_options(crates, &dir)) {
            panic!("building the test plugins failed: {e:#}");
        }
        dir
    })
}

/// What `sluice plugin build CRATE... --out OUT` builds with, release builds
/// cached where the CLI caches them (`SLUICE_CACHE_DIR`, else the user's cache).
pub fn build_options(crates: Vec<PathBuf>, out: &Path) -> BuildOptions {
    BuildOptions::new(
        crates,
        out,
        sluice::plugin_runtime::cache::default_cache_dir(),
    )
}

/// The Python plugins the tests use (built with componentize-py), relative to
/// the workspace root.
pub const TEST_PYTHON_PLUGINS: &[&str] = &[
    "plugins/python-csv-source",
    "tests/python-plugins/py-chaos-source",
    "tests/python-plugins/py-grant-writer",
];

/// A folder with the Python test plugins built (`<name>.wasm`), and
/// `postgres-writer` beside them, for daemons that run Python plugins.
///
/// Apart from [`plugins_dir`] so that the daemons of the other tests do not
/// compile these 18 MB components. Built once per test process with `sluice
/// plugin build`, which keeps the last component while its sources are unchanged.
pub fn python_plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let writer = std::fs::read(plugin("postgres-writer")).expect("reading postgres-writer");
        let dir = root.join("target").join("test-python-plugins");
        std::fs::create_dir_all(&dir).expect("creating target/test-python-plugins");
        let lock = std::fs::File::create(dir.join(".lock")).expect("creating the build lock");
        lock.lock().expect("locking target/test-python-plugins");
        let projects = TEST_PYTHON_PLUGINS.iter().map(|c| root.join(c)).collect();
        if let Err(e) = plugin_build::build(&build_options(projects, &dir)) {
            panic!("building the Python test plugins failed: {e:#}");
        }
        let copy = dir.join("postgres-writer.wasm");
        if std::fs::read(&copy).ok().as_deref() != Some(writer.as_slice()) {
            let tmp = dir.join("postgres-writer.wasm.tmp");
            std::fs::write(&tmp, &writer).expect("copying postgres-writer");
            std::fs::rename(&tmp, &copy).expect("copying postgres-writer");
        }
        dir
    })
}

/// The built component of the Python plugin `name` (e.g. `python-csv-source`).
pub fn python_plugin(name: &str) -> PathBuf {
    python_plugins_dir().join(format!("{name}.wasm"))
}

/// The built component of `name` (e.g. `json-source`).
pub fn plugin(name: &str) -> PathBuf {
    plugins_dir().join(format!("{name}.wasm"))
}

/// A name no other test (in this or another process) uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connection string of the local Postgres the tests use.
pub fn postgres_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Connection string of the local RabbitMQ the tests use.
/// RabbitMQ's stream protocol (`SLUICE_TEST_STREAM_URL`, default the local
/// broker's port 5552; `scripts/services.sh` enables the `rabbitmq_stream` plugin).
pub fn stream_url() -> String {
    std::env::var("SLUICE_TEST_STREAM_URL")
        .unwrap_or_else(|_| "rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f".to_string())
}

pub fn amqp_url() -> String {
    std::env::var("SLUICE_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A private Postgres schema for one test, dropped by [`TestSchema::drop_now`].
pub struct TestSchema {
    /// Its name.
    pub name: String,
    /// A client for the test's own checks.
    pub client: tokio_postgres::Client,
}

impl TestSchema {
    /// Creates a uniquely named schema.
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_named(&unique_name("sluice_test")).await
    }

    /// Creates the schema `name` (which must be unique to the test).
    pub async fn create_named(name: &str) -> anyhow::Result<Self> {
        let (client, connection) =
            tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await?;
        Ok(Self {
            name: name.to_string(),
            client,
        })
    }

    /// Rows of `table`, or 0 while it does not exist yet.
    pub async fn count_or_zero(&self, table: &str) -> i64 {
        self.count(table).await.unwrap_or(0)
    }

    /// `SELECT count(*)` of a table in this schema.
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(&format!("SELECT count(*) FROM {}.{table}", self.name), &[])
            .await?;
        Ok(row.get(0))
    }

    /// Drops the schema and everything in it.
    pub async fn drop_now(self) -> anyhow::Result<()> {
        self.client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await?;
        Ok(())
    }
}

/// A call detail record as JSON, about 230 bytes, the benchmark's and tests' message.
pub fn cdr_json(i: u64) -> String {
    format!(
        concat!(
            r#"{{"call":{{"id":"c-{:012}","caller":"+3361{:07}","callee":"+3362{:07}"}},"#,
            r#""start":"2026-11-27T10:{:02}:{:02}Z","duration":{},"cell":"FR-PAR-{:04}","#,
            r#""cost":"{}.{:02}","type":"voice","roaming":{}}}"#
        ),
        i,
        i % 10_000_000,
        (i * 7) % 10_000_000,
        (i / 60) % 60,
        i % 60,
        i % 3600,
        i % 5000,
        i % 10,
        i % 100,
        i.is_multiple_of(7)
    )
}

/// The json-source configuration matching [`cdr_json`], as JSON text.
pub fn cdr_source_config(version: u32, extra_columns: &str) -> String {
    format!(
        r#"{{"schema":"cdr","version":{version},"columns":[
            {{"name":"call_id","type":"text","key":true,"path":"call.id"}},
            {{"name":"caller","type":"text","path":"call.caller","nullable":false}},
            {{"name":"callee","type":"text","path":"call.callee","nullable":false}},
            {{"name":"started_at","type":"timestamp","path":"start","nullable":false}},
            {{"name":"duration_s","type":"int32","path":"duration","nullable":false}},
            {{"name":"cell","type":"text"}},
            {{"name":"cost","type":"numeric"}},
            {{"name":"call_type","type":"text","path":"type"}},
            {{"name":"roaming","type":"bool"}}{extra_columns}
        ]}}"#
    )
}
