//! Sluice's file writer: appends rows to NDJSON or CSV files in a directory the
//! host grants, each file complete or absent, and no row twice within a window.
//!
//! # Configuration
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "file-writer"
//! grants = { directory = "out/cdr" }   # seen by the plugin as /data
//! config = { format = "ndjson", prefix = "cdr", rotate_bytes = 67108864, rotate_after = "5m" }
//! ```
//!
//! Keys: `format` (`ndjson` or `csv`), `prefix`, `rotate_bytes`, `rotate_after`,
//! `dedupe_window`, `dir` (default `/data`): see [`config`]. Value formats: see
//! [`encode`].
//!
//! # Files
//!
//! Each writer instance (one per consumer, in every daemon sharing the
//! directory) appends to its own file, `<prefix>-<start-utc>-<instance-id>.<ext>.open`
//! (see [`files`]). Each batch is appended in one write and `fsync`ed before the
//! write returns; a failed write is cut off again, so the host's retry finds the
//! file as it was. When the file reaches `rotate_bytes`, or is older than
//! `rotate_after` at a write, it is renamed to its final name without `.open`.
//! So a file without `.open` is complete and never changes again: ship or read
//! those. CSV files start with a header line.
//!
//! After a crash, a `.open` file may end in a half-written record. Every instance,
//! when it opens and when it rotates, finishes the `.open` files of others that
//! have not changed for `rotate_after` plus one minute (their writer is gone: a
//! live one would have rotated them at its next write): it cuts them after their
//! last complete record, then renames them (or deletes them if no record is left).
//!
//! # Exactly once, within the dedupe window
//!
//! The writer keeps the keys (the schema's key columns) of the rows in the
//! directory's files changed within `dedupe_window` (default 15 minutes): it
//! reads them when it opens, follows what other instances append before each
//! write, and adds its own. A row whose key is already there is skipped, and so is
//! the second row of a key within one batch (the first write wins). So a message
//! redelivered after a crash or a lost acknowledgement, within the window, does
//! not produce a second line. **The bound**: a redelivery later than
//! `dedupe_window` after the first write, or after its file was moved out of the
//! directory, is written again. Keep finished files in the directory for at
//! least the window, and make the window longer than the time a message may
//! wait unacknowledged (consumer timeouts, a daemon down).
//!
//! To follow the other instances, a write looks at their files within the
//! window (a `stat` each) and lists the directory when it changed (a file
//! created, finished or removed) and for 2 s after. A listing costs about 4 us
//! per file in the directory (one host call per entry; finished files older
//! than the window are not looked at beyond that): with 1000 files kept there
//! and a listing at each write, batches of 1000 rows went at 190,000 rows a
//! second instead of 820,000 in the benchmark (BENCHMARKS.md, section 4). Move
//! finished files out of the directory once the window is past.
//!
//! Keys are kept as 128-bit keyed hashes (SipHash-1-3 under a random key, see
//! `src/keys.rs`: two different keys are taken for one with a probability of
//! about n² / 2¹²⁹ for n keys), 30 to 60 bytes a key in memory (a list and its
//! index, both grown by doubling): size the window for the rows written by all
//! instances within it, and the plugin's memory limit accordingly. Opening
//! reads the window's files, which takes longer the more they hold.
//!
//! The keys of a batch go into the set together once the whole batch is read
//! (a key repeated within the batch is found there: the first row wins), and
//! come out again if the batch is not written (a failed append; a malformed
//! batch adds none): the host's retry of it then finds none of its rows written.
//!
//! # Clocks
//!
//! File names, rotation by age and the window use the wall clock. The host gives
//! writers with a directory grant the real clock (others see the Unix epoch).

pub mod config;
mod dir;
pub mod encode;
pub mod files;
mod keys;

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_plugin_sdk::rows::{DecodeError, RowBatch, ValueReader};
use sluice_plugin_sdk::{ColumnType, PluginError, RowRejection, Schema, Writer};

use crate::config::{Config, Format};
use crate::dir::{Dir, File};
use crate::encode::Encoder;
use crate::files::{FileName, OPEN};
use crate::keys::{KeyHasher, KeySet};

/// A `.open` file unchanged for `rotate_after` plus this long is a crashed
/// writer's leftover.
const LEFTOVER_GRACE: Duration = Duration::from_secs(60);

/// The directory is listed again at each write until its modification time is
/// this much older than the last listing: a file created within the same tick
/// of the file system's clock as the change before it leaves that time as it
/// was (ticks are milliseconds on Linux, up to 2 s on some file systems).
const RELIST_GRACE: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(2)
};

/// The file being written.
struct Current {
    file: File,
    base: String,
    start_micros: i64,
    /// Where the file ends: the next batch is written there.
    size: u64,
    id: u32,
    /// A failed append could not be cut off: it must be before anything else.
    cut_pending: bool,
}

/// A file whose keys are in the dedupe set.
struct Tracked {
    id: u32,
    /// Bytes of complete records read (or written) so far.
    offset: u64,
    mtime: SystemTime,
    format: Format,
    /// CSV: the key columns' positions, once the header was read.
    key_positions: Option<Vec<usize>>,
    /// The file cannot be read for keys (no key column in its header).
    unusable: bool,
    /// Finished (renamed) and read to its end: it never changes again.
    done: bool,
}

/// The writer: one per plugin instance.
pub struct FileWriter {
    config: Config,
    dir: Dir,
    names: Vec<String>,
    types: Vec<ColumnType>,
    /// Per column: whether it is a key column.
    is_key: Vec<bool>,
    key_names: Vec<String>,
    instance: String,
    encoder: Encoder,
    current: Option<Current>,
    last_start: i64,
    /// The keys of the window, with the id of the file holding each.
    keys: KeySet,
    files: HashMap<String, Tracked>,
    /// This writer's files in the directory at the last listing (name, parsed).
    listing: Vec<(String, FileName)>,
    /// The directory's modification time at the last listing, and the time
    /// just before the listing.
    listed: Option<(SystemTime, SystemTime)>,
    /// Finished files seen older than the window: they never change, so they
    /// are not looked at again (while listings have them).
    outside: HashSet<String>,
    next_id: u32,
    hasher: KeyHasher,
    /// The batch's records, reused between writes.
    buf: Vec<u8>,
    key_buf: Vec<u8>,
    /// The keys the batch being written added to `keys` (while encoding: the
    /// keys of its rows).
    new_keys: Vec<u128>,
    /// Where each row of the batch ends in `buf`, while encoding.
    row_ends: Vec<usize>,
    /// Whether each row's key was new, while encoding.
    added: Vec<bool>,
}

impl Writer for FileWriter {
    fn open(config: &str, schema: &Schema) -> Result<Self, PluginError> {
        let config = Config::parse(config, &schema.name)?;
        let key_columns: Vec<usize> = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
            .collect();
        if key_columns.is_empty() {
            return Err(PluginError::InvalidConfig(format!(
                "schema {} has no key column: file-writer dedupes on it",
                schema.name
            )));
        }
        let dir = match Dir::open(&config.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(PluginError::InvalidConfig(format!(
                    "`dir` {} is not a directory",
                    config.dir
                )));
            }
            Err(e) => {
                return Err(PluginError::InvalidConfig(format!(
                    "`dir` {} cannot be used ({e}): grant the writer a directory (grants.directory), which it sees as /data",
                    config.dir
                )));
            }
        };
        let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
        let mut writer = FileWriter {
            encoder: Encoder::new(config.format, &names),
            key_names: key_columns.iter().map(|&i| names[i].clone()).collect(),
            is_key: (0..names.len()).map(|i| key_columns.contains(&i)).collect(),
            names,
            types: schema.column_types(),
            config,
            dir,
            instance: files::instance_id(),
            current: None,
            last_start: 0,
            keys: KeySet::default(),
            files: HashMap::new(),
            listing: Vec::new(),
            listed: None,
            outside: HashSet::new(),
            next_id: 0,
            hasher: KeyHasher::random(),
            buf: Vec::new(),
            key_buf: Vec::new(),
            new_keys: Vec::new(),
            row_ends: Vec::new(),
            added: Vec::new(),
        };
        let now = SystemTime::now();
        writer
            .finish_leftovers(now)
            .map_err(|e| io_error("finishing leftover files", e))?;
        writer
            .refresh(now)
            .map_err(|e| io_error("reading the keys of recent files", e))?;
        sluice_plugin_sdk::info!(
            "instance {}: {} keys of {} files within the dedupe window",
            writer.instance,
            writer.keys.len(),
            writer.files.len()
        );
        Ok(writer)
    }

    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        let now = SystemTime::now();
        self.refresh(now)
            .map_err(|e| io_error("reading what other instances wrote", e))?;
        if let Some(current) = &self.current {
            let age = micros(now).saturating_sub(current.start_micros);
            if age >= self.config.rotate_after.as_micros() as i64
                || current.size >= self.config.rotate_bytes
            {
                self.rotate(now)?;
            }
        }

        // The file the batch goes to: the current one, or the one `create` makes.
        let id = self.current.as_ref().map_or(self.next_id, |c| c.id);
        let skipped = match self.encode(batch, id) {
            Ok(skipped) => skipped,
            // A malformed batch added no keys.
            Err(e) => {
                return Err(PluginError::Fatal(format!(
                    "the row batch is malformed: {e}"
                )));
            }
        };
        if skipped > 0 {
            sluice_plugin_sdk::debug!("skipped {skipped} rows whose key is already written");
        }
        if self.buf.is_empty() {
            return Ok(Vec::new());
        }
        if self.current.is_none()
            && let Err(e) = self.create(now)
        {
            self.forget_new_keys();
            return Err(e);
        }
        let current = self.current.as_mut().expect("created above");
        debug_assert_eq!(current.id, id);
        if let Err(e) = current.cut_back() {
            let e = io_error(&format!("cutting {}{OPEN} back", current.base), e);
            self.forget_new_keys();
            return Err(e);
        }
        let before = current.size;
        // One positional write of the whole batch (one host call in wasm), then
        // one fsync.
        let written = current
            .file
            .write_all_at(&self.buf, before)
            .and_then(|()| current.file.sync_data());
        if let Err(e) = written {
            // Nothing of the batch may stay: the host retries it.
            current.cut_pending = true;
            let _ = current.cut_back();
            let e = io_error(&format!("appending to {}{OPEN}", current.base), e);
            self.forget_new_keys();
            return Err(e);
        }
        current.size += self.buf.len() as u64;
        // The batch's keys, in `keys` since `encode`, stay.
        self.new_keys.clear();
        if let Some(tracked) = self.files.get_mut(&current.base) {
            tracked.offset = current.size;
            tracked.mtime = now;
        }
        if current.size >= self.config.rotate_bytes
            && let Err(e) = self.rotate(now)
        {
            // The batch is durable in the .open file; the next write tries again.
            sluice_plugin_sdk::warn!("{e}");
        }
        Ok(Vec::new())
    }
}

impl Drop for FileWriter {
    /// Finishes the current file when the instance is dropped in an orderly way
    /// (a host may also just discard the instance: then a later rotation of
    /// another instance finishes it).
    fn drop(&mut self) {
        let _ = self.finish_current(SystemTime::now());
    }
}

impl Current {
    /// Cuts off what a failed append left, if that is still to do.
    fn cut_back(&mut self) -> io::Result<()> {
        if self.cut_pending {
            self.file.set_len(self.size)?;
            self.file.sync_data()?;
            self.cut_pending = false;
        }
        Ok(())
    }
}

impl FileWriter {
    /// Encodes the batch's rows into `buf`, in one pass over the row encoding,
    /// and adds their keys to `keys` (for the file `id`), listing them in
    /// `new_keys` so that a failed write takes them out again. A row whose key is
    /// in `keys` already (written before, or earlier in this batch) is left out.
    /// Returns how many rows were left out.
    fn encode(&mut self, batch: &RowBatch, id: u32) -> Result<u32, DecodeError> {
        if let Err(e) = self.encode_rows(batch) {
            // None of its keys went into the set.
            self.new_keys.clear();
            return Err(e);
        }
        // The whole batch is well formed: its keys go into the set together.
        self.keys.insert_all(&self.new_keys, id, &mut self.added);
        if !self.added.contains(&false) {
            return Ok(0);
        }
        // Cut the rows whose key was there out of `buf`, and their keys out of
        // `new_keys` (the keys this batch added).
        let (mut kept, mut start, mut skipped) = (0, 0, 0);
        for (row, &end) in self.row_ends.iter().enumerate() {
            if self.added[row] {
                self.buf.copy_within(start..end, kept);
                self.new_keys[row - skipped] = self.new_keys[row];
                kept += end - start;
            } else {
                skipped += 1;
            }
            start = end;
        }
        self.buf.truncate(kept);
        self.new_keys.truncate(self.row_ends.len() - skipped);
        Ok(skipped as u32)
    }

    /// Encodes each row into `buf`, noting where it ends in `row_ends` and its
    /// key's hash in `new_keys`.
    fn encode_rows(&mut self, batch: &RowBatch) -> Result<(), DecodeError> {
        self.buf.clear();
        self.new_keys.clear();
        self.row_ends.clear();
        let mut reader = ValueReader::new(&self.types, batch);
        while reader.next_row()? {
            self.key_buf.clear();
            for column in 0..self.types.len() {
                let value = reader.next_value()?;
                if self.is_key[column] {
                    keys::push_value(&mut self.key_buf, value);
                }
                self.encoder.value(column, value, &mut self.buf);
            }
            self.encoder.end_row(&mut self.buf);
            self.new_keys.push(self.hasher.hash(&self.key_buf));
            self.row_ends.push(self.buf.len());
        }
        Ok(())
    }

    /// Takes the keys of a batch that was not written out of `keys` again.
    fn forget_new_keys(&mut self) {
        for hash in self.new_keys.drain(..) {
            self.keys.remove(hash);
        }
    }

    /// This instance's id, part of its file names.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How many keys the dedupe set holds.
    pub fn keys_remembered(&self) -> usize {
        self.keys.len()
    }

    /// Starts a new `.open` file (with the CSV header).
    fn create(&mut self, now: SystemTime) -> Result<(), PluginError> {
        let start = micros(now).max(self.last_start + 1);
        self.last_start = start;
        let base = files::name(
            &self.config.prefix,
            start,
            &self.instance,
            self.config.format,
        );
        let file = self
            .dir
            .create_new(&format!("{base}{OPEN}"))
            .map_err(|e| io_error(&format!("creating {base}{OPEN}"), e))?;
        let mut header = Vec::new();
        self.encoder.header(&self.names, &mut header);
        if !header.is_empty() {
            file.write_all_at(&header, 0)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_error(&format!("writing the header of {base}{OPEN}"), e))?;
        }
        self.dir.sync();
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(
            base.clone(),
            Tracked {
                id,
                offset: header.len() as u64,
                mtime: now,
                format: self.config.format,
                key_positions: Some(Vec::new()),
                unusable: false,
                done: false,
            },
        );
        self.current = Some(Current {
            file,
            base,
            start_micros: start,
            size: header.len() as u64,
            id,
            cut_pending: false,
        });
        Ok(())
    }

    /// Finishes the current file, then others' leftovers.
    fn rotate(&mut self, now: SystemTime) -> Result<(), PluginError> {
        self.finish_current(now)
            .map_err(|e| io_error("finishing the current file", e))?;
        self.finish_leftovers(now)
            .map_err(|e| io_error("finishing leftover files", e))
    }

    fn finish_current(&mut self, now: SystemTime) -> io::Result<()> {
        let Some(current) = &mut self.current else {
            return Ok(());
        };
        current.cut_back()?;
        current.file.sync_all()?;
        let current = self.current.take().expect("checked above");
        drop(current.file);
        // `false`: another instance took it for a leftover (we were idle that long).
        self.dir
            .rename(&format!("{}{OPEN}", current.base), &current.base)?;
        self.dir.sync();
        if let Some(tracked) = self.files.get_mut(&current.base) {
            tracked.mtime = now;
        }
        Ok(())
    }

    /// Finishes other instances' `.open` files that nobody wrote to for longer
    /// than `rotate_after` plus a grace period.
    fn finish_leftovers(&mut self, now: SystemTime) -> io::Result<()> {
        let limit = self.config.rotate_after + LEFTOVER_GRACE;
        for name in self.dir.names()? {
            let Some(parsed) = files::parse(&self.config.prefix, &name) else {
                continue;
            };
            if !parsed.open || self.current.as_ref().is_some_and(|c| c.base == parsed.base) {
                continue;
            }
            let Ok(Some(meta)) = self.dir.stat(&name) else {
                continue;
            };
            if now.duration_since(meta.mtime).is_ok_and(|age| age > limit) {
                finish_leftover(&self.dir, &parsed)?;
            }
        }
        Ok(())
    }

    /// Reads the keys of the directory's files changed within the window that
    /// were added since the last look; forgets files older than the window.
    ///
    /// The directory is listed only when it changed (a file created, renamed
    /// or removed: its modification time moved) or changed shortly before the
    /// last listing (see [`RELIST_GRACE`]); the files already known are looked
    /// at each time, since other instances append to theirs.
    fn refresh(&mut self, now: SystemTime) -> io::Result<()> {
        let dir_mtime = self.dir.mtime()?;
        // (A modification time ahead of our clock, as a file server's may be,
        // counts as recent.)
        let changed = self.listed.is_none_or(|(mtime, _)| mtime != dir_mtime);
        let recent = self.listed.is_some_and(|(_, at)| {
            !at.duration_since(dir_mtime)
                .is_ok_and(|d| d >= RELIST_GRACE)
        });
        if changed || recent {
            let prefix = &self.config.prefix;
            self.listing = self
                .dir
                .names()?
                .into_iter()
                .filter_map(|name| files::parse(prefix, &name).map(|parsed| (name, parsed)))
                .collect();
            self.listed = Some((dir_mtime, now));
            // Forget the names gone (only when something was removed or renamed
            // could one be: not at each listing within the grace).
            if changed {
                let listed: HashSet<&str> = self.listing.iter().map(|(n, _)| n.as_str()).collect();
                self.outside.retain(|name| listed.contains(name.as_str()));
            }
        }
        let listing = std::mem::take(&mut self.listing);
        let followed = self.follow(&listing, now);
        self.listing = listing;
        followed
    }

    /// [`refresh`](Self::refresh) for the files of `listing`.
    fn follow(&mut self, listing: &[(String, FileName)], now: SystemTime) -> io::Result<()> {
        let window = self.config.dedupe_window;
        let too_old = |mtime: SystemTime| now.duration_since(mtime).is_ok_and(|age| age > window);
        for (name, parsed) in listing {
            if self.current.as_ref().is_some_and(|c| c.base == parsed.base)
                || self.outside.contains(name)
            {
                continue;
            }
            // A finished file read to its end never changes (nor its mtime):
            // no need to look at it again.
            if self.files.get(&parsed.base).is_some_and(|t| t.done) {
                continue;
            }
            // Gone since the listing (renamed: finished): the next look finds it.
            let Some(meta) = self.dir.stat(name)? else {
                continue;
            };
            let mtime = meta.mtime;
            let tracked = match self.files.get_mut(&parsed.base) {
                Some(t) => t,
                None if too_old(mtime) => {
                    if !parsed.open {
                        self.outside.insert(name.clone());
                    }
                    continue;
                }
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.files.entry(parsed.base.clone()).or_insert(Tracked {
                        id,
                        offset: 0,
                        mtime,
                        format: parsed.format,
                        key_positions: None,
                        unusable: false,
                        done: false,
                    })
                }
            };
            tracked.mtime = mtime;
            if tracked.unusable || meta.len <= tracked.offset {
                tracked.done = !parsed.open;
                continue;
            }
            // Renamed (finished) since the listing: the next look finds it.
            let Some(file) = self.dir.open_file(name, false)? else {
                continue;
            };
            let data = file.read_at(tracked.offset, meta.len - tracked.offset)?;
            drop(file);
            let complete = encode::complete_len(tracked.format, &data);
            let id = tracked.id;
            for record in encode::records(tracked.format, &data[..complete]) {
                let texts = match tracked.format {
                    Format::Ndjson => {
                        let names: Vec<&str> = self.key_names.iter().map(String::as_str).collect();
                        encode::ndjson_key_texts(record, &names)
                    }
                    Format::Csv => {
                        let fields = encode::csv_fields(record);
                        match &tracked.key_positions {
                            None => {
                                let positions: Option<Vec<usize>> = self
                                    .key_names
                                    .iter()
                                    .map(|k| fields.iter().position(|f| f == k.as_bytes()))
                                    .collect();
                                match positions {
                                    Some(p) => tracked.key_positions = Some(p),
                                    None => {
                                        sluice_plugin_sdk::warn!(
                                            "{}: its header lacks a key column ({}): its rows are not deduplicated",
                                            parsed.base,
                                            self.key_names.join(", ")
                                        );
                                        tracked.unusable = true;
                                        break;
                                    }
                                }
                                continue;
                            }
                            Some(p) => p.iter().map(|&i| fields.get(i).cloned()).collect(),
                        }
                    }
                };
                let Some(texts) = texts else { continue };
                self.key_buf.clear();
                for text in &texts {
                    keys::push_text(&mut self.key_buf, text);
                }
                self.keys.insert(self.hasher.hash(&self.key_buf), id);
            }
            tracked.offset += complete as u64;
            // A finished file ends with a complete record: nothing more to read.
            tracked.done = !parsed.open;
        }
        // Forget the files, and their keys, that left the window.
        let current = self.current.as_ref().map(|c| c.base.as_str());
        let expired: HashSet<u32> = self
            .files
            .iter()
            .filter(|(base, t)| Some(base.as_str()) != current && too_old(t.mtime))
            .map(|(_, t)| t.id)
            .collect();
        if !expired.is_empty() {
            self.files.retain(|_, t| !expired.contains(&t.id));
            self.keys.retain(|id| !expired.contains(&id));
        }
        Ok(())
    }
}

/// Cuts a leftover `.open` file after its last complete record and gives it its
/// final name, or deletes it if it holds no record. Another instance doing the
/// same at the same time is fine.
fn finish_leftover(dir: &Dir, parsed: &FileName) -> io::Result<()> {
    let open = format!("{}{OPEN}", parsed.base);
    let Some(file) = dir.open_file(&open, true)? else {
        return Ok(());
    };
    let data = file.read_at(0, u64::MAX)?;
    let complete = encode::complete_len(parsed.format, &data);
    let records = encode::records(parsed.format, &data[..complete]).len();
    let header = usize::from(parsed.format == Format::Csv);
    if records <= header {
        drop(file);
        sluice_plugin_sdk::info!("removing {}{OPEN}: a leftover without rows", parsed.base);
        return dir.remove(&open);
    }
    if complete < data.len() {
        file.set_len(complete as u64)?;
    }
    file.sync_all()?;
    drop(file);
    sluice_plugin_sdk::info!(
        "finishing {}{OPEN}, left by a writer that stopped ({} bytes of an unfinished record cut)",
        parsed.base,
        data.len() - complete
    );
    dir.rename(&open, &parsed.base)?;
    dir.sync();
    Ok(())
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A failed file operation: a full disk or an interrupted call may pass, a
/// permission problem or a missing directory needs the operator.
fn io_error(doing: &str, e: io::Error) -> PluginError {
    use io::ErrorKind as K;
    let message = format!("{doing}: {e}");
    match e.kind() {
        K::PermissionDenied | K::ReadOnlyFilesystem | K::NotFound => PluginError::Fatal(message),
        _ => PluginError::Retriable(message),
    }
}

// Only for wasm: natively, the exports' symbol names break the cdylib's link.
#[cfg(target_arch = "wasm32")]
sluice_plugin_sdk::export_writer!(FileWriter);

#[cfg(test)]
mod tests;
