//! The soak: the real daemon for a given time against the local RabbitMQ and
//! Postgres, fed a steady mix of good messages and every poison of issue 12, with
//! the faults the daemon tests use injected on a schedule; then it drains and
//! checks that every published message is accounted for.
//!
//! ```text
//! scripts/soak.sh 10m
//! cargo bench -p sluice-tests --bench soak -- --duration 10m [--poison json,key,...]
//! ```
//!
//! One daemon (target/release/sluice, or `SLUICE_BENCH_BIN`) runs two pipelines,
//! each with its own queue and dead-letter queue, landing rows in one fresh
//! Postgres schema:
//! - `cdr`: json-source -> postgres-writer (table `cdr`, keyed by the call id).
//!   Good CDRs (`--rate` a second) and the poisons `json` (a body that is not
//!   JSON), `key` (a CDR whose call id is 4,096 random hex characters: over the
//!   btree limit), `headers` (130,900 bytes of headers, just under the broker's
//!   frame limit, on a body json-source refuses).
//! - `chaos`: chaos-source -> postgres-writer (table `chaos`, keyed by the body).
//!   Good messages (`ok-<n>`, a tenth of `--rate`) and the poisons `reason`
//!   (`reject:300000`: a 300 KB rejection reason), `sleep` (`sleep:<--sleep-ms>`,
//!   a plugin sleeping past `plugin_call_deadline`, set to half the sleep) and `flood`
//!   (`flood:100000` warning lines from one call).
//!
//! Every body is unique, so each message is found again exactly: as a row (by
//! its key) or as a dead letter (by its body). Faults, one every `--fault-every`
//! in turn: `kill` (kill -9 of the daemon, restarted at once), `connections` (the
//! broker closes the daemon's connections), `backends` (`pg_terminate_backend` of
//! the daemon's Postgres connections), `swap` (a plugin file deployed again with
//! write-then-rename, alternating between two builds: the built component and the
//! same with a custom section appended, so its content hash changes).
//!
//! At `--duration` publishing and faults stop, the queues drain (at most
//! `--drain`), the daemon gets SIGTERM, the dead-letter queues are read, and it
//! prints published, landed, dead-lettered, duplicates, lost, stalls and
//! restarts. It exits 1 when published != landed + dead-lettered or duplicates >
//! 0, 2 when the harness itself failed.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use sluice_tests::daemon::{Broker, Daemon, Setup, close_connections_of, json_to_toml_inline};
use sluice_tests::{TestSchema, cdr_json, cdr_source_config};

use common::{daemon_binary, thousands};

const USAGE: &str = "usage: cargo bench -p sluice-tests --bench soak -- [options]
  --duration D       how long to publish and inject faults (default 10m; 90s, 2m, 1h)
  --poison LIST      poison kinds, comma-separated, or `none`
                     (default json,key,headers,reason,sleep,flood)
  --faults LIST      faults, comma-separated, or `none` (default kill,connections,backends,swap)
  --rate N           good CDR messages a second (default 200; the chaos pipeline gets a tenth)
  --poison-every D   one message of each poison kind this often (default 15s)
  --fault-every D    one fault this often, the kinds in turn (default 20s)
  --stall D          no progress for longer than this while messages wait is a stall (default 10s)
  --drain D          how long to wait for the queues to drain at the end (default 120s)
  --sleep-ms MS      how long the sleeping plugin sleeps (default 12000; the daemon's plugin_call_deadline is set to half of it)
  --keep-logs        keep the config and daemon logs even when the run passed";

/// How many bytes the `headers` poison's header table takes on the wire (the
/// issue's ~130 KB): its content header frame comes about 120 bytes under what
/// RabbitMQ's default `frame_max` (131,072) allows, so it can be published, and
/// the headers a dead letter adds (a reason, the plugin, the pipeline, ...) take
/// it over.
const HEADER_TABLE_BYTES: usize = 130_900;
/// The `reason` poison's rejection reason, in bytes.
const REASON_BYTES: usize = 300_000;
/// The `flood` poison's log lines.
const FLOOD_LINES: usize = 100_000;
/// How long one round of publishing may wait for its confirms.
const PUBLISH_LIMIT: Duration = Duration::from_secs(60);
/// The `key` poison's key length: random hex, over the 2,704-byte btree limit.
const KEY_CHARS: usize = 4_096;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Poison {
    Json,
    Key,
    Headers,
    Reason,
    Sleep,
    Flood,
}

impl Poison {
    const ALL: [Poison; 6] = [
        Poison::Json,
        Poison::Key,
        Poison::Headers,
        Poison::Reason,
        Poison::Sleep,
        Poison::Flood,
    ];

    fn name(self) -> &'static str {
        match self {
            Poison::Json => "json",
            Poison::Key => "key",
            Poison::Headers => "headers",
            Poison::Reason => "reason",
            Poison::Sleep => "sleep",
            Poison::Flood => "flood",
        }
    }

    fn pipe(self) -> Pipe {
        match self {
            Poison::Json | Poison::Key | Poison::Headers => Pipe::Cdr,
            Poison::Reason | Poison::Sleep | Poison::Flood => Pipe::Chaos,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Connections,
    Backends,
    Swap,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::Kill,
        Fault::Connections,
        Fault::Backends,
        Fault::Swap,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Connections => "connections",
            Fault::Backends => "backends",
            Fault::Swap => "swap",
        }
    }
}

struct Options {
    duration: Duration,
    poisons: Vec<Poison>,
    faults: Vec<Fault>,
    rate: u32,
    poison_every: Duration,
    fault_every: Duration,
    stall: Duration,
    drain: Duration,
    sleep_ms: u64,
    keep_logs: bool,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Options> {
        let mut o = Options {
            duration: Duration::from_secs(600),
            poisons: Poison::ALL.to_vec(),
            faults: Fault::ALL.to_vec(),
            rate: 200,
            poison_every: Duration::from_secs(15),
            fault_every: Duration::from_secs(20),
            stall: Duration::from_secs(10),
            drain: Duration::from_secs(120),
            sleep_ms: 12_000,
            keep_logs: false,
        };
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            // `cargo bench` passes `--bench` to every bench binary.
            if arg == "--bench" {
                continue;
            }
            if arg == "--keep-logs" {
                o.keep_logs = true;
                continue;
            }
            if arg == "--help" || arg == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = args
                        .next()
                        .with_context(|| format!("`{arg}` needs a value"))?;
                    (arg.clone(), v)
                }
            };
            let value = value.as_str();
            match name.as_str() {
                "--duration" => o.duration = parse_duration(value)?,
                "--poison" => o.poisons = parse_list(value, &Poison::ALL, Poison::name)?,
                "--faults" => o.faults = parse_list(value, &Fault::ALL, Fault::name)?,
                "--rate" => o.rate = value.parse().context("--rate: a whole number")?,
                "--poison-every" => o.poison_every = parse_duration(value)?,
                "--fault-every" => o.fault_every = parse_duration(value)?,
                "--stall" => o.stall = parse_duration(value)?,
                "--drain" => o.drain = parse_duration(value)?,
                "--sleep-ms" => o.sleep_ms = value.parse().context("--sleep-ms: milliseconds")?,
                other => bail!("unknown option `{other}`"),
            }
        }
        if o.poison_every.is_zero() || o.fault_every.is_zero() {
            bail!("--poison-every and --fault-every must be more than 0");
        }
        Ok(o)
    }
}

/// `90s`, `10m`, `1h`, `500ms`, or a number of seconds.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|at| s.split_at(at))
        .unwrap_or((s, "s"));
    let n: f64 = number
        .parse()
        .with_context(|| format!("`{s}` is not a duration (e.g. 90s, 10m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => bail!("`{s}`: unknown unit `{other}` (ms, s, m, h)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_list<T: Copy>(s: &str, all: &[T], name: fn(T) -> &'static str) -> anyhow::Result<Vec<T>> {
    if s == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            all.iter()
                .copied()
                .find(|&t| name(t) == w)
                .with_context(|| {
                    let names: Vec<&str> = all.iter().map(|&t| name(t)).collect();
                    format!("unknown kind `{w}` (one of {}, or none)", names.join(","))
                })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// What was published

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Pipe {
    Cdr,
    Chaos,
}

impl Pipe {
    fn name(self) -> &'static str {
        match self {
            Pipe::Cdr => "cdr",
            Pipe::Chaos => "chaos",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Good(Pipe),
    Poison(Poison),
}

impl Kind {
    fn pipe(self) -> Pipe {
        match self {
            Kind::Good(p) => p,
            Kind::Poison(p) => p.pipe(),
        }
    }

    fn name(self) -> String {
        match self {
            Kind::Good(p) => format!("good ({})", p.name()),
            Kind::Poison(p) => format!("poison {} ({})", p.name(), p.pipe().name()),
        }
    }
}

/// Every message published, found again by its row key or its body.
#[derive(Default)]
struct Ledger {
    kinds: Vec<Kind>,
    at: Vec<Duration>,
    /// Message by the key its row would have, per pipeline.
    by_row: [HashMap<String, usize>; 2],
    /// Message by body (dead letters carry the original body).
    by_body: HashMap<Vec<u8>, usize>,
    per_pipe: [u64; 2],
    good: [u64; 2],
    /// When each pipeline's poisons were published, and which.
    poisons: [Vec<(Duration, Poison)>; 2],
    /// A small pseudo-random generator for the keys (no need for a crate).
    seed: u64,
}

impl Ledger {
    /// Records one message and returns it ready to publish.
    fn message(
        &mut self,
        kind: Kind,
        at: Duration,
        body: Vec<u8>,
        row_key: Option<String>,
        headers: Option<FieldTable>,
    ) -> (Vec<u8>, BasicProperties) {
        let n = self.kinds.len();
        self.kinds.push(kind);
        self.at.push(at);
        let pipe = kind.pipe();
        if let Some(key) = row_key {
            self.by_row[pipe.index()].insert(key, n);
        }
        self.by_body.insert(body.clone(), n);
        self.per_pipe[pipe.index()] += 1;
        if let Kind::Poison(p) = kind {
            self.poisons[pipe.index()].push((at, p));
        }
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(ShortString::from(format!("soak-{n}")));
        if let Some(h) = headers {
            props = props.with_headers(h);
        }
        (body, props)
    }

    fn good_cdr(&mut self, at: Duration) -> (Vec<u8>, BasicProperties) {
        let i = self.good[0];
        self.good[0] += 1;
        self.message(
            Kind::Good(Pipe::Cdr),
            at,
            cdr_json(i).into_bytes(),
            Some(format!("c-{i:012}")),
            None,
        )
    }

    fn good_chaos(&mut self, at: Duration) -> (Vec<u8>, BasicProperties) {
        let i = self.good[1];
        self.good[1] += 1;
        let body = format!("ok-{i}");
        self.message(
            Kind::Good(Pipe::Chaos),
            at,
            body.clone().into_bytes(),
            Some(body),
            None,
        )
    }

    fn poison(
        &mut self,
        poison: Poison,
        at: Duration,
        sleep_ms: u64,
    ) -> (Vec<u8>, BasicProperties) {
        let n = self.kinds.len();
        let kind = Kind::Poison(poison);
        match poison {
            Poison::Json => {
                let body = format!("{{\"call\": not json, soak {n}");
                self.message(kind, at, body.into_bytes(), None, None)
            }
            Poison::Key => {
                let key = self.random_hex(KEY_CHARS);
                // A whole CDR, valid but for its key's size.
                let body = cdr_json(n as u64).replacen(&format!("c-{n:012}"), &key, 1);
                self.message(kind, at, body.into_bytes(), Some(key), None)
            }
            Poison::Headers => {
                let mut headers = FieldTable::default();
                // Each entry is a 1-byte name length, the name (14 bytes), the
                // type `S`, a 4-byte length and the value.
                let overhead = 1 + 14 + 1 + 4;
                let mut left = HEADER_TABLE_BYTES;
                for h in 0.. {
                    let value = if left >= 2 * (overhead + 2_000) {
                        2_000
                    } else {
                        left - overhead
                    };
                    headers.insert(
                        ShortString::from(format!("x-soak-pad-{h:03}")),
                        AMQPValue::LongString(LongString::from(vec![b'h'; value])),
                    );
                    left -= overhead + value;
                    if left == 0 {
                        break;
                    }
                }
                let body = format!("not json: soak headers {n}");
                self.message(kind, at, body.into_bytes(), None, Some(headers))
            }
            Poison::Reason | Poison::Sleep | Poison::Flood => {
                // chaos-source reads the number up to the space; the rest makes
                // the row key unique.
                let body = match poison {
                    Poison::Reason => format!("reject:{REASON_BYTES} #{n}"),
                    Poison::Sleep => format!("sleep:{sleep_ms} #{n}"),
                    _ => format!("flood:{FLOOD_LINES} #{n}"),
                };
                self.message(kind, at, body.clone().into_bytes(), Some(body), None)
            }
        }
    }

    /// `len` pseudo-random hex characters (xorshift: incompressible enough that
    /// Postgres cannot squeeze the key under the btree limit).
    fn random_hex(&mut self, len: usize) -> String {
        if self.seed == 0 {
            self.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9_7f4a_7c15)
                | 1;
        }
        let mut out = String::with_capacity(len);
        while out.len() < len {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            out.push_str(&format!("{:016x}", self.seed));
        }
        out.truncate(len);
        out
    }
}

// ---------------------------------------------------------------------------
// Faults, stalls, restarts

struct FaultEvent {
    at: Duration,
    fault: Fault,
    what: String,
}

struct Stall {
    pipe: Pipe,
    start: Duration,
    length: Duration,
    ended: bool,
    cause: String,
}

/// Progress of one pipeline: rows landed plus dead letters waiting.
struct StallWatch {
    last_done: u64,
    since: Instant,
    since_at: Duration,
}

struct Exit {
    at: Duration,
    status: String,
    log_tail: String,
}

/// The plugins the soak swaps, and which build of each is deployed.
struct Swaps {
    dir: PathBuf,
    builds: Vec<(&'static str, [Vec<u8>; 2], usize)>,
    next: usize,
}

impl Swaps {
    fn new(dir: &Path) -> anyhow::Result<Swaps> {
        let mut builds = Vec::new();
        for name in ["json-source", "chaos-source", "postgres-writer"] {
            let built = sluice_tests::plugin(name);
            let bytes =
                std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
            let other = with_custom_section(&bytes, "sluice-soak", b"the other build");
            deploy(dir, name, &bytes)?;
            builds.push((name, [bytes, other], 0));
        }
        Ok(Swaps {
            dir: dir.to_path_buf(),
            builds,
            next: 0,
        })
    }

    /// Deploys the other build of the next plugin in turn; says which.
    fn swap(&mut self) -> anyhow::Result<String> {
        let i = self.next % self.builds.len();
        self.next += 1;
        let (name, builds, current) = &mut self.builds[i];
        *current = 1 - *current;
        deploy(&self.dir, name, &builds[*current])?;
        Ok(format!("{name} (build {})", *current + 1))
    }
}

/// Writes `<name>.wasm.tmp`, then renames it over `<name>.wasm`: the deploy
/// contract.
fn deploy(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!("{name}.wasm.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm")))
        .with_context(|| format!("renaming {}", tmp.display()))
}

/// The component with a custom section appended: another build that behaves the
/// same (custom sections may appear anywhere in a component).
fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

// ---------------------------------------------------------------------------
// The run

/// The daemon under test and the world it runs in.
struct World {
    bin: PathBuf,
    cdr: Setup,
    chaos: Setup,
    db: TestSchema,
    broker: Broker,
    daemon: Daemon,
    /// Daemons started so far (for log names).
    starts: usize,
    started: Instant,
    faults: Vec<FaultEvent>,
    exits: Vec<Exit>,
    kills: usize,
}

impl World {
    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    fn setup(&self, pipe: Pipe) -> &Setup {
        match pipe {
            Pipe::Cdr => &self.cdr,
            Pipe::Chaos => &self.chaos,
        }
    }

    fn restart(&mut self) {
        self.starts += 1;
        self.daemon = start_daemon(&self.bin, &self.cdr, self.starts);
    }

    /// Restarts the daemon if it exited by itself, and says so.
    fn check_exit(&mut self) {
        if let Some(status) = self.daemon.exited() {
            let log = self.daemon.log();
            let lines: Vec<&str> = log.lines().collect();
            let exit = Exit {
                at: self.at(),
                status: status.to_string(),
                log_tail: lines[lines.len().saturating_sub(5)..].join("\n    "),
            };
            println!(
                "  {:>6.1} s  the daemon exited by itself ({}); restarting it",
                exit.at.as_secs_f64(),
                exit.status
            );
            self.exits.push(exit);
            self.restart();
        }
    }

    /// Rows landed and dead letters waiting, of one pipeline.
    async fn done(&self, pipe: Pipe) -> (u64, u64, u32) {
        let setup = self.setup(pipe);
        let rows = self.db.count_or_zero(pipe.name()).await as u64;
        let dead = u64::from(self.broker.ready(&setup.dead_queue).await);
        let ready = self.broker.ready(&setup.queue).await;
        (rows, dead, ready)
    }
}

fn start_daemon(bin: &Path, setup: &Setup, n: usize) -> Daemon {
    Daemon::start(
        bin.to_str().unwrap_or("target/release/sluice"),
        setup,
        &format!("daemon-{n}"),
    )
}

async fn run(o: Options) -> anyhow::Result<bool> {
    let bin = daemon_binary()?;
    println!(
        "soak: {} of publishing and faults; poisons: {}; faults: {} (one every {:?}); {} good CDRs/s",
        humantime(o.duration),
        names(&o.poisons, Poison::name),
        names(&o.faults, Fault::name),
        o.fault_every,
        o.rate
    );
    println!("daemon: {}", bin.display());
    println!("started {}", common::machine_line());

    // Names, plugins and config.
    let mut cdr = Setup::new("soak-cdr");
    let chaos = Setup::new("soak-chaos");
    cdr.plugin_dir = cdr.dir.join("plugins");
    // The sleeping plugin is a poison only if its sleep outlasts the call's
    // wall-clock deadline (time asleep is not CPU time).
    cdr.daemon_extra = format!("plugin_call_deadline = \"{}ms\"", o.sleep_ms / 2);
    std::fs::create_dir_all(&cdr.plugin_dir)?;
    let mut swaps = Swaps::new(&cdr.plugin_dir)?;
    let schema = cdr.pg_schema.clone();
    let writer = |table: &str| {
        format!(
            "[[pipelines.writers]]\nplugin = \"postgres-writer\"\ngrants = {{ postgres = [\"warehouse\"] }}\n\
             config = {{ connection = \"warehouse\", schema = \"{schema}\", table = \"{table}\" }}\n"
        )
    };
    let cdr_tables = format!(
        "[pipelines.source]\nplugin = \"json-source\"\nconfig = {}\n\n{}",
        json_to_toml_inline(&cdr_source_config(1, "")),
        writer("cdr")
    );
    let chaos_tables = format!(
        "[pipelines.source]\nplugin = \"chaos-source\"\nconfig = {{}}\n\n{}",
        writer("chaos")
    );
    cdr.write_config_pipelines(&[(&cdr, "", &cdr_tables), (&chaos, "", &chaos_tables)]);
    println!("config and logs: {}", cdr.dir.display());

    let db = TestSchema::create_named(&schema).await?;
    let broker = Broker::connect().await;
    broker.prepare(&cdr).await;
    broker.prepare(&chaos).await;

    let started = Instant::now();
    let daemon = start_daemon(&bin, &cdr, 0);
    let mut w = World {
        bin,
        cdr,
        chaos,
        db,
        broker,
        daemon,
        starts: 0,
        started,
        faults: Vec::new(),
        exits: Vec::new(),
        kills: 0,
    };
    let result = soak(&o, &mut w, &mut swaps).await;
    // Whatever happened, leave nothing running and nothing behind on the servers.
    if w.daemon.exited().is_none() {
        w.daemon.signal("KILL");
        let _ = w.daemon.wait_exit(Duration::from_secs(5));
    }
    let World { cdr, chaos, db, .. } = w;
    // On a fresh connection: the soak's own may be the reason it failed (the
    // broker closes a connection that publishes a frame too large).
    let broker = Broker::connect().await;
    broker.cleanup(&cdr).await;
    broker.cleanup(&chaos).await;
    db.drop_now().await?;
    let _ = std::fs::remove_dir_all(&chaos.dir);
    match &result {
        Ok(true) if !o.keep_logs => {
            let _ = std::fs::remove_dir_all(&cdr.dir);
        }
        _ => println!("(config and daemon logs kept in {})", cdr.dir.display()),
    }
    result
}

async fn soak(o: &Options, w: &mut World, swaps: &mut Swaps) -> anyhow::Result<bool> {
    let mut ledger = Ledger::default();
    let mut watches: Vec<StallWatch> = [Pipe::Cdr, Pipe::Chaos]
        .iter()
        .map(|_| StallWatch {
            last_done: 0,
            since: Instant::now(),
            since_at: Duration::ZERO,
        })
        .collect();
    let mut stalls: Vec<Stall> = Vec::new();
    let tick = Duration::from_millis(100);
    let mut next_poison = o.poison_every / 2;
    let mut next_fault = o.fault_every;
    let mut fault_turn = 0usize;
    let mut next_sample = Duration::from_secs(1);
    let mut next_status = Duration::from_secs(10);
    let mut closing: Option<(Duration, tokio::task::JoinHandle<usize>)> = None;

    println!("\n  time      event");
    // Publishing and faults.
    while w.at() < o.duration {
        let at = w.at();
        let mut batch = [Vec::new(), Vec::new()];
        let due = (at.as_secs_f64() * f64::from(o.rate)) as u64;
        while ledger.good[0] < due {
            batch[0].push(ledger.good_cdr(at));
        }
        let due_chaos = (at.as_secs_f64() * f64::from(o.rate.div_ceil(10))) as u64;
        while ledger.good[1] < due_chaos {
            batch[1].push(ledger.good_chaos(at));
        }
        if at >= next_poison {
            next_poison += o.poison_every;
            for &p in &o.poisons {
                batch[p.pipe().index()].push(ledger.poison(p, at, o.sleep_ms));
            }
        }
        for pipe in [Pipe::Cdr, Pipe::Chaos] {
            let messages = std::mem::take(&mut batch[pipe.index()]);
            if !messages.is_empty() {
                // Bounded: a broker that blocks publishers (a memory or disk
                // alarm) must not hang the soak.
                tokio::time::timeout(
                    PUBLISH_LIMIT,
                    w.broker.publish_messages(&w.setup(pipe).exchange, messages),
                )
                .await
                .map_err(|_| anyhow::anyhow!("no confirms within {PUBLISH_LIMIT:?}"))
                .and_then(|r| r)
                .with_context(|| format!("publishing to pipeline {}", pipe.name()))?;
            }
        }

        if !o.faults.is_empty() && at >= next_fault {
            next_fault += o.fault_every;
            let fault = o.faults[fault_turn % o.faults.len()];
            fault_turn += 1;
            let what = inject(fault, w, swaps, &mut closing).await?;
            println!("  {:>6.1} s  fault: {what}", at.as_secs_f64());
            w.faults.push(FaultEvent { at, fault, what });
        }
        if let Some((when, handle)) = closing.take_if(|(_, h)| h.is_finished()) {
            let closed = handle.await.unwrap_or(0);
            println!(
                "  {:>6.1} s  (the broker closed {closed} connection(s) of the fault at {:.1} s)",
                w.at().as_secs_f64(),
                when.as_secs_f64()
            );
        }
        w.check_exit();

        if w.at() >= next_sample {
            next_sample += Duration::from_secs(1);
            sample(o, w, &ledger, &mut watches, &mut stalls, false).await;
        }
        if w.at() >= next_status {
            next_status += Duration::from_secs(10);
            status(w, &ledger).await;
        }
        tokio::time::sleep(tick.saturating_sub(w.at().saturating_sub(at))).await;
    }
    if let Some((_, handle)) = closing.take() {
        let _ = handle.await;
    }

    // Drain: no more publishing, no more faults.
    println!(
        "  {:>6.1} s  publishing stopped ({} messages); draining (at most {:?})",
        w.at().as_secs_f64(),
        thousands(ledger.kinds.len() as f64),
        o.drain
    );
    let drain_started = Instant::now();
    let drained = loop {
        w.check_exit();
        let mut all = true;
        for pipe in [Pipe::Cdr, Pipe::Chaos] {
            let (rows, dead, ready) = w.done(pipe).await;
            all &= ready == 0 && rows + dead >= ledger.per_pipe[pipe.index()];
        }
        if all {
            break true;
        }
        if drain_started.elapsed() > o.drain {
            break false;
        }
        sample(o, w, &ledger, &mut watches, &mut stalls, false).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    sample(o, w, &ledger, &mut watches, &mut stalls, true).await;
    println!(
        "  {:>6.1} s  {} after {:.1} s; stopping the daemon",
        w.at().as_secs_f64(),
        if drained { "drained" } else { "NOT drained" },
        drain_started.elapsed().as_secs_f64()
    );
    w.daemon.signal("TERM");
    let stopped = w.daemon.wait_exit(Duration::from_secs(30));
    match &stopped {
        Some(s) => println!("  daemon stopped: {s}"),
        None => println!("  the daemon did not stop within 30 s of SIGTERM"),
    }

    count(o, w, &ledger, &stalls).await
}

/// Injects one fault; says what it did.
async fn inject(
    fault: Fault,
    w: &mut World,
    swaps: &mut Swaps,
    closing: &mut Option<(Duration, tokio::task::JoinHandle<usize>)>,
) -> anyhow::Result<String> {
    Ok(match fault {
        Fault::Kill => {
            w.daemon.signal("KILL");
            let _ = w.daemon.wait_exit(Duration::from_secs(5));
            w.kills += 1;
            w.restart();
            "kill -9 of the daemon, restarted".to_string()
        }
        Fault::Connections => {
            if closing.is_some() {
                return Ok("broker closing connections: the last one is still running".into());
            }
            // rabbitmqctl takes seconds: off the publishing loop.
            let names = [w.cdr.pipeline.clone(), w.chaos.pipeline.clone()];
            let handle = tokio::task::spawn_blocking(move || {
                names.iter().map(|p| close_connections_of(p)).sum()
            });
            *closing = Some((w.at(), handle));
            "the broker closes the daemon's connections".to_string()
        }
        Fault::Backends => {
            let killed: i64 = w
                .db
                .client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                    &[&w.cdr.pg_app],
                )
                .await
                .context("terminating the daemon's Postgres backends")?
                .get(0);
            format!("pg_terminate_backend of {killed} daemon backend(s)")
        }
        Fault::Swap => format!("plugin swap: {}", swaps.swap()?),
    })
}

/// One look at both pipelines: closes or notes stalls.
async fn sample(
    o: &Options,
    w: &World,
    ledger: &Ledger,
    watches: &mut [StallWatch],
    stalls: &mut Vec<Stall>,
    last: bool,
) {
    for pipe in [Pipe::Cdr, Pipe::Chaos] {
        let (rows, dead, _ready) = w.done(pipe).await;
        let done = rows + dead;
        let waiting = ledger.per_pipe[pipe.index()].saturating_sub(done);
        let watch = &mut watches[pipe.index()];
        let progressed = done > watch.last_done || waiting == 0;
        watch.last_done = watch.last_done.max(done);
        let length = watch.since.elapsed();
        if (progressed || last) && length > o.stall {
            let stall = Stall {
                pipe,
                start: watch.since_at,
                length,
                ended: progressed,
                cause: cause(w, ledger, pipe, watch.since_at, o.stall),
            };
            println!(
                "  {:>6.1} s  stall: pipeline {} made no progress for {:.1} s{} ({})",
                w.at().as_secs_f64(),
                pipe.name(),
                length.as_secs_f64(),
                if progressed { "" } else { ", still stalled" },
                stall.cause
            );
            stalls.push(stall);
        }
        if progressed {
            watch.since = Instant::now();
            watch.since_at = w.at();
        }
    }
}

/// What preceded a stall that began at `start`: the last fault injected before it
/// was noticed, and the pipeline's poisons published from 15 s before it began
/// until it was noticed.
fn cause(w: &World, ledger: &Ledger, pipe: Pipe, start: Duration, stall: Duration) -> String {
    let noticed = start + stall;
    let relative = |at: Duration| at.as_secs_f64() - start.as_secs_f64();
    let fault = w
        .faults
        .iter()
        .rev()
        .find(|f| f.at <= noticed)
        .map(|f| format!("last fault: {} at {:+.1} s", f.what, relative(f.at)))
        .unwrap_or_else(|| "no fault before it".into());
    let poisons: Vec<String> = ledger.poisons[pipe.index()]
        .iter()
        .filter(|(at, _)| *at + Duration::from_secs(15) >= start && *at <= noticed)
        .map(|&(at, p)| format!("{} at {:+.1} s", p.name(), relative(at)))
        .collect();
    if poisons.is_empty() {
        fault
    } else {
        format!("{fault}; poisons: {}", poisons.join(", "))
    }
}

async fn status(w: &World, ledger: &Ledger) {
    let mut parts = Vec::new();
    for pipe in [Pipe::Cdr, Pipe::Chaos] {
        let (rows, dead, ready) = w.done(pipe).await;
        parts.push(format!(
            "{}: published {} landed {} dead {} ready {}",
            pipe.name(),
            ledger.per_pipe[pipe.index()],
            rows,
            dead,
            ready
        ));
    }
    println!(
        "  {:>6.1} s  {} | load {}",
        w.at().as_secs_f64(),
        parts.join(" | "),
        common::load_average()
    );
}

/// Reads what landed and what was dead-lettered, prints the figures, and says
/// whether every message is accounted for exactly once.
async fn count(o: &Options, w: &World, ledger: &Ledger, stalls: &[Stall]) -> anyhow::Result<bool> {
    let n = ledger.kinds.len();
    let mut landed = vec![false; n];
    let mut dead = vec![0u32; n];
    let mut unexpected_rows = 0u64;
    let mut unexpected_dead = 0u64;
    for pipe in [Pipe::Cdr, Pipe::Chaos] {
        let key = match pipe {
            Pipe::Cdr => "call_id",
            Pipe::Chaos => "id",
        };
        let rows =
            w.db.client
                .query(
                    &format!("SELECT {key} FROM {}.{}", w.db.name, pipe.name()),
                    &[],
                )
                .await
                .unwrap_or_default();
        for row in rows {
            let k: String = row.get(0);
            match ledger.by_row[pipe.index()].get(&k) {
                Some(&i) => landed[i] = true,
                None => unexpected_rows += 1,
            }
        }
    }
    let mut longest_reason = 0usize;
    for pipe in [Pipe::Cdr, Pipe::Chaos] {
        for (body, headers) in w.broker.drain(&w.setup(pipe).dead_queue).await {
            match ledger.by_body.get(body.as_bytes()) {
                Some(&i) => dead[i] += 1,
                None => unexpected_dead += 1,
            }
            if let Some(AMQPValue::LongString(r)) =
                headers.inner().get(&ShortString::from("x-sluice-reason"))
            {
                longest_reason = longest_reason.max(r.as_bytes().len());
            }
        }
    }

    let published = n as u64;
    let landed_n = landed.iter().filter(|&&l| l).count() as u64;
    let dead_n = dead.iter().filter(|&&d| d > 0).count() as u64;
    let both = (0..n).filter(|&i| landed[i] && dead[i] > 0).count() as u64;
    let twice: u64 = dead.iter().map(|&d| u64::from(d.saturating_sub(1))).sum();
    let duplicates = both + twice;
    let lost = (0..n).filter(|&i| !landed[i] && dead[i] == 0).count() as u64;

    // By kind.
    let mut kinds: Vec<Kind> = Vec::new();
    for &k in &ledger.kinds {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let line = "-".repeat(78);
    println!(
        "\n{line}\nSOAK RESULTS ({} of publishing)\n{line}",
        humantime(o.duration)
    );
    println!(
        "  {:<26} {:>9} {:>9} {:>9} {:>9}",
        "kind", "published", "landed", "dead", "lost"
    );
    for k in kinds {
        let of: Vec<usize> = (0..n).filter(|&i| ledger.kinds[i] == k).collect();
        println!(
            "  {:<26} {:>9} {:>9} {:>9} {:>9}",
            k.name(),
            of.len(),
            of.iter().filter(|&&i| landed[i]).count(),
            of.iter().filter(|&&i| dead[i] > 0).count(),
            of.iter().filter(|&&i| !landed[i] && dead[i] == 0).count()
        );
    }
    if let Some(first_lost) = (0..n).find(|&i| !landed[i] && dead[i] == 0) {
        println!(
            "  first lost message: soak-{first_lost} ({}, published at {:.1} s)",
            ledger.kinds[first_lost].name(),
            ledger.at[first_lost].as_secs_f64()
        );
    }
    if unexpected_rows + unexpected_dead > 0 {
        println!(
            "  not published by this run: {unexpected_rows} row(s), {unexpected_dead} dead letter(s)"
        );
    }
    println!("  longest x-sluice-reason received: {longest_reason} bytes");
    let by_fault: Vec<String> = Fault::ALL
        .iter()
        .map(|&k| {
            let c = w.faults.iter().filter(|f| f.fault == k).count();
            format!("{} {c}", k.name())
        })
        .collect();
    println!(
        "  faults injected: {} ({})",
        w.faults.len(),
        by_fault.join(", ")
    );
    let logs = read_logs(&w.cdr.dir);
    println!(
        "  daemon logs: {} start(s), {:.1} MiB, {} lines ({} ERROR); `plugin loaded` {} times \
         ({} at starts, {} swaps deployed), `plugin refused` {} times",
        w.starts + 1,
        logs.bytes as f64 / (1024.0 * 1024.0),
        logs.lines,
        logs.errors,
        logs.loaded,
        3 * (w.starts + 1),
        w.faults.iter().filter(|f| f.fault == Fault::Swap).count(),
        logs.refused
    );
    println!("{line}");

    println!("published: {published}");
    println!("landed: {landed_n}");
    println!("dead-lettered: {dead_n}");
    println!(
        "duplicates: {duplicates} ({both} both landed and dead-lettered, {twice} dead letters received twice)"
    );
    println!("lost: {lost}");
    match stalls.iter().max_by_key(|s| s.length) {
        None => println!("stalls: 0 (none longer than {:?})", o.stall),
        Some(s) => println!(
            "stalls: {} longer than {:?}; longest {:.1} s on pipeline {} from {:.1} s{} ({})",
            stalls.len(),
            o.stall,
            s.length.as_secs_f64(),
            s.pipe.name(),
            s.start.as_secs_f64(),
            if s.ended {
                ""
            } else {
                ", still stalled at the end"
            },
            s.cause
        ),
    }
    println!(
        "restarts: {} caused (kill -9), {} by itself{}",
        w.kills,
        w.exits.len(),
        w.exits
            .iter()
            .map(|e| format!(
                "\n  exited by itself at {:.1} s ({}); log tail:\n    {}",
                e.at.as_secs_f64(),
                e.status,
                e.log_tail
            ))
            .collect::<String>()
    );
    println!("finished {}", common::machine_line());

    let ok = published == landed_n + dead_n && duplicates == 0;
    println!(
        "{}",
        if ok {
            "OK: every message landed or was dead-lettered, once"
        } else {
            "FAILED: published != landed + dead-lettered, or duplicates"
        }
    );
    Ok(ok)
}

#[derive(Default)]
struct LogCounts {
    bytes: u64,
    lines: u64,
    errors: u64,
    loaded: u64,
    refused: u64,
}

/// What the daemons' logs (`daemon-<n>.log`) say, read line by line: a flood can
/// make them large.
fn read_logs(dir: &Path) -> LogCounts {
    use std::io::BufRead as _;
    let mut counts = LogCounts::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return counts;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("daemon-") && name.ends_with(".log")) {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        for line in std::io::BufReader::new(file)
            .split(b'\n')
            .map_while(Result::ok)
        {
            counts.bytes += line.len() as u64 + 1;
            counts.lines += 1;
            let line = String::from_utf8_lossy(&line);
            counts.errors += u64::from(line.contains(" ERROR "));
            counts.loaded += u64::from(line.contains("plugin loaded"));
            counts.refused += u64::from(line.contains("plugin refused"));
        }
    }
    counts
}

fn names<T: Copy>(items: &[T], name: fn(T) -> &'static str) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(|&t| name(t)).collect::<Vec<_>>().join(",")
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{:.0} s", d.as_secs_f64())
    }
}
