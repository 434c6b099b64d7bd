//! Helpers shared by the benchmarks: figures, medians, the machine's state, and a
//! plain-Rust decoder of the CDR messages for the plain-client baselines.

#![allow(dead_code)]

use std::time::Duration;

use std::sync::Arc;
use std::time::Instant;

use sluice::capabilities::Grants;
use sluice::plugin_runtime::{
    Column, ColumnType, LoadedPlugin, PluginRuntime, RowBatch, Schema, WriterInstance,
};
use sluice_plugin_sdk::rows::RowWriter;

/// Median of a few figures (the middle one; the mean of the two middle ones for an
/// even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Rows (or messages) per second.
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// `123456.7` as `123,457`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", x);
    let (sign, digits) = match s.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", s.as_str()),
    };
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// `nproc`, the load average and the date, for the report header.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{} | cpus: {cpus} | load average: {}",
        now_utc(),
        load_average()
    )
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub use sluice_plugin_sdk::time::{civil_from_days, days_from_civil};

/// The nine typed values of a CDR, parsed natively with serde (the plain-client
/// baselines' decoder). Strings borrow from the body.
#[derive(serde::Deserialize, Debug)]
pub struct Cdr<'a> {
    #[serde(borrow)]
    pub call: Call<'a>,
    #[serde(borrow)]
    pub start: &'a str,
    pub duration: i32,
    #[serde(borrow)]
    pub cell: Option<&'a str>,
    #[serde(borrow)]
    pub cost: Option<&'a str>,
    #[serde(borrow, rename = "type")]
    pub call_type: Option<&'a str>,
    pub roaming: Option<bool>,
}

#[derive(serde::Deserialize, Debug)]
pub struct Call<'a> {
    #[serde(borrow)]
    pub id: &'a str,
    #[serde(borrow)]
    pub caller: &'a str,
    #[serde(borrow)]
    pub callee: &'a str,
}

/// A CDR as the nine values a COPY row takes.
pub struct CdrRow<'a> {
    pub call_id: &'a str,
    pub caller: &'a str,
    pub callee: &'a str,
    pub started_at: PgTimestamp,
    pub duration_s: i32,
    pub cell: Option<&'a str>,
    pub cost: Option<PgNumeric>,
    pub call_type: Option<&'a str>,
    pub roaming: Option<bool>,
}

/// The columns of a CDR table, in the order the baselines COPY them.
pub const CDR_COLUMNS: &str =
    "call_id, caller, callee, started_at, duration_s, cell, cost, call_type, roaming";

/// Their types, for a binary COPY.
pub const CDR_TYPES: [tokio_postgres::types::Type; 9] = {
    use tokio_postgres::types::Type;
    [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::TEXT,
        Type::NUMERIC,
        Type::TEXT,
        Type::BOOL,
    ]
};

impl CdrRow<'_> {
    /// The row's values, in [`CDR_COLUMNS`] order, for a binary COPY.
    pub fn values(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 9] {
        [
            &self.call_id,
            &self.caller,
            &self.callee,
            &self.started_at,
            &self.duration_s,
            &self.cell,
            &self.cost,
            &self.call_type,
            &self.roaming,
        ]
    }
}

/// Parses one body into its typed row; `Err` names what is wrong.
pub fn parse_cdr(body: &[u8]) -> Result<CdrRow<'_>, String> {
    let cdr: Cdr<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(CdrRow {
        call_id: cdr.call.id,
        caller: cdr.call.caller,
        callee: cdr.call.callee,
        started_at: PgTimestamp(
            parse_rfc3339_micros(cdr.start)
                .ok_or_else(|| format!("bad timestamp {}", cdr.start))?,
        ),
        duration_s: cdr.duration,
        cell: cdr.cell,
        cost: match cdr.cost {
            Some(c) => Some(PgNumeric::parse(c).ok_or_else(|| format!("bad numeric {c}"))?),
            None => None,
        },
        call_type: cdr.call_type,
        roaming: cdr.roaming,
    })
}

/// Microseconds since 2000-01-01T00:00:00Z (Postgres's epoch) of an RFC 3339 time
/// (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`).
pub fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let mut scale = 100_000i64;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            micros += i64::from(b[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d) - 10_957;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs * 1_000_000 + micros)
}

/// A `timestamptz` for a binary COPY.
#[derive(Debug, Clone, Copy)]
pub struct PgTimestamp(pub i64);

impl tokio_postgres::types::ToSql for PgTimestamp {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i64(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TIMESTAMPTZ
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A `numeric` in Postgres's binary form: base-10000 digits, weight, sign, scale.
#[derive(Debug, Clone)]
pub struct PgNumeric {
    negative: bool,
    weight: i16,
    dscale: u16,
    digits: Vec<i16>,
}

impl PgNumeric {
    /// Parses a plain decimal literal (`-12.340`).
    pub fn parse(s: &str) -> Option<PgNumeric> {
        let (negative, s) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|c| c.is_ascii_digit())
            || !frac.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let int = int.trim_start_matches('0');
        // Digits aligned on groups of four around the decimal point.
        let lead = (4 - int.len() % 4) % 4;
        let trail = (4 - frac.len() % 4) % 4;
        let mut all: Vec<u8> = Vec::with_capacity(lead + int.len() + frac.len() + trail);
        all.extend(std::iter::repeat_n(0, lead));
        all.extend(int.bytes().map(|c| c - b'0'));
        all.extend(frac.bytes().map(|c| c - b'0'));
        all.extend(std::iter::repeat_n(0, trail));
        let mut digits: Vec<i16> = all
            .chunks(4)
            .map(|g| g.iter().fold(0i16, |a, &d| a * 10 + i16::from(d)))
            .collect();
        let mut weight = ((lead + int.len()) / 4) as i16 - 1;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        Some(PgNumeric {
            negative: negative && !digits.is_empty(),
            weight,
            dscale: frac.len() as u16,
            digits,
        })
    }
}

impl tokio_postgres::types::ToSql for PgNumeric {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i16(self.digits.len() as i16);
        out.put_i16(self.weight);
        out.put_u16(if self.negative { 0x4000 } else { 0 });
        out.put_u16(self.dscale);
        for d in &self.digits {
            out.put_i16(*d);
        }
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::NUMERIC
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Peak and current resident memory of a process (`VmHWM`, `VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks(),
    ))
}

/// The machine's busy and total CPU time so far (all cores), from `/proc/stat`.
pub fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    let ticks = clock_ticks();
    Some(((total - idle) / ticks, total / ticks))
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on Linux for every architecture Sluice targets.
    100.0
}

/// CPU time used so far by every process whose command name (`comm`) starts with
/// one of `prefixes`, by pid.
pub fn cpu_by_process(prefixes: &[&str]) -> std::collections::HashMap<u32, (String, Duration)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim().to_string();
        if prefixes.iter().any(|p| comm.starts_with(p))
            && let Some(cpu) = process_cpu(pid)
        {
            out.insert(pid, (comm, cpu));
        }
    }
    out
}

/// CPU time used between two [`cpu_by_process`] snapshots, by command-name prefix
/// (processes that started in between count from zero; ones that ended are lost).
pub fn cpu_delta(
    before: &std::collections::HashMap<u32, (String, Duration)>,
    after: &std::collections::HashMap<u32, (String, Duration)>,
    prefix: &str,
) -> Duration {
    after
        .iter()
        .filter(|(_, (comm, _))| comm.starts_with(prefix))
        .map(|(pid, (_, cpu))| {
            cpu.saturating_sub(before.get(pid).map(|(_, c)| *c).unwrap_or_default())
        })
        .sum()
}

/// A `usize` from the environment variable `name`, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Figures by label, in the order first seen, one value per round.
#[derive(Default)]
pub struct Figures(Vec<(String, Vec<f64>)>);

impl Figures {
    pub fn push(&mut self, label: &str, value: f64) {
        match self.0.iter_mut().find(|(l, _)| l == label) {
            Some((_, v)) => v.push(value),
            None => self.0.push((label.to_string(), vec![value])),
        }
    }

    pub fn get(&self, label: &str) -> &[f64] {
        self.0
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn median(&self, label: &str) -> f64 {
        median(self.get(label))
    }
}

/// Builds (or checks) the test plugins, says where they are and how long that
/// took, and makes the plugin runtime the benches measure in, with its own
/// compiled-component cache.
pub fn bench_runtime() -> anyhow::Result<std::sync::Arc<sluice::plugin_runtime::PluginRuntime>> {
    let started = std::time::Instant::now();
    let plugins_dir = sluice_tests::plugins_dir();
    println!(
        "plugins: {} (built or checked in {:.1} s)",
        plugins_dir.display(),
        started.elapsed().as_secs_f64()
    );
    sluice::plugin_runtime::PluginRuntime::new(sluice::plugin_runtime::RuntimeConfig {
        cache_dir: Some(sluice_tests::workspace_root().join("target/bench-component-cache")),
        ..sluice::plugin_runtime::RuntimeConfig::default()
    })
}

/// The daemon binary, and a warning when it is older than the host sources.
pub fn daemon_binary() -> anyhow::Result<std::path::PathBuf> {
    let bin = match std::env::var_os("SLUICE_BENCH_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => sluice_tests::workspace_root().join("target/release/sluice"),
    };
    if !bin.is_file() {
        anyhow::bail!(
            "{} is missing: build the daemon first with `cargo build --release -p sluice` \
             (or point SLUICE_BENCH_BIN at a sluice binary)",
            bin.display()
        );
    }
    let built = std::fs::metadata(&bin)?.modified()?;
    let newest_source = newest_mtime(&sluice_tests::workspace_root().join("host/src"));
    if newest_source.is_some_and(|s| s > built) {
        println!(
            "WARNING: {} is older than the newest file under host/src: rebuild with \
             `cargo build --release -p sluice` to measure the current code",
            bin.display()
        );
    }
    Ok(bin)
}

pub fn newest_mtime(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// One call detail record as typed values (the writer benchmarks make them
/// directly, without JSON), the values `cdr_json(i)` carries.
#[derive(Clone)]
pub struct CdrRecord {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    /// µs since the Unix epoch.
    pub started_at: i64,
    pub duration_s: i32,
    pub cell: String,
    pub cost: String,
    pub call_type: &'static str,
    pub roaming: bool,
}

/// The CDR schema (as json-source declares it for `cdr_source_config`).
pub fn cdr_schema() -> Schema {
    let col = |name: &str, type_, nullable, key| Column {
        name: name.into(),
        type_,
        nullable,
        key,
    };
    Schema {
        name: "cdr".into(),
        version: 1,
        columns: vec![
            col("call_id", ColumnType::Text, false, true),
            col("caller", ColumnType::Text, false, false),
            col("callee", ColumnType::Text, false, false),
            col("started_at", ColumnType::Timestamp, false, false),
            col("duration_s", ColumnType::Int32, false, false),
            col("cell", ColumnType::Text, true, false),
            col("cost", ColumnType::Numeric, true, false),
            col("call_type", ColumnType::Text, true, false),
            col("roaming", ColumnType::Boolean, true, false),
        ],
    }
}

/// The rows in Sluice's row encoding, one batch per chunk.
pub fn encode_cdr_batches(rows: &[CdrRecord], batch: usize) -> Vec<RowBatch> {
    rows.chunks(batch)
        .map(|chunk| {
            let mut w = RowWriter::with_capacity(chunk.len() * 128);
            for r in chunk {
                w.text(&r.call_id)
                    .text(&r.caller)
                    .text(&r.callee)
                    .timestamp_micros(r.started_at)
                    .int32(r.duration_s)
                    .text(&r.cell)
                    .numeric(&r.cost)
                    .text(r.call_type)
                    .boolean(r.roaming)
                    .end_row();
            }
            let b = w.finish();
            RowBatch {
                count: b.count,
                data: b.data,
            }
        })
        .collect()
}

/// A writer instance of `plugin` for CDR rows, opened (its table, partitions
/// or files set up) before any timing.
pub async fn open_cdr_writer(
    rt: &Arc<PluginRuntime>,
    plugin: &Arc<LoadedPlugin>,
    config: String,
    grants: Grants,
) -> anyhow::Result<WriterInstance> {
    let mut w = WriterInstance::new(
        rt.clone(),
        plugin.clone(),
        "bench",
        config,
        cdr_schema(),
        grants,
    );
    w.open().await?;
    Ok(w)
}

/// Writes every batch through `writer`, then drops it; the time the writes
/// took. The calls run in a spawned task, on a worker thread of the runtime,
/// as a daemon consumer's do (the bench's own future runs on the thread of
/// `block_on`, which is not a worker). A rejected row is an error.
pub async fn write_batches(
    batches: Arc<Vec<RowBatch>>,
    mut writer: WriterInstance,
) -> anyhow::Result<Duration> {
    tokio::spawn(async move {
        let t = Instant::now();
        for b in batches.iter() {
            let rejected = writer.write(b).await?;
            anyhow::ensure!(rejected.is_empty(), "rows rejected: {:?}", &rejected[..1]);
        }
        anyhow::Ok(t.elapsed())
    })
    .await?
}
