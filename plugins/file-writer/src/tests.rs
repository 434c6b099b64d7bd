//! In a temporary directory per test.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use sluice_plugin_sdk::rows::OwnedValue as V;
use sluice_plugin_sdk::testing::row_batch;
use sluice_plugin_sdk::{ColumnType, PluginError, Schema, Writer};

use super::FileWriter;
use crate::files::OPEN;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-file-writer-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn config(&self, extra: &str) -> String {
        format!(r#"{{"dir":"{}"{extra}}}"#, self.0.display())
    }

    /// File names, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every line of every file (finished or not), header lines included.
    fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for name in self.names() {
            let text = fs::read_to_string(self.0.join(name)).unwrap();
            lines.extend(text.lines().map(str::to_owned));
        }
        lines
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn schema() -> Schema {
    Schema::new("cdr", 1)
        .key("call_id", ColumnType::Text)
        .required("seconds", ColumnType::Int32)
        .column("cost", ColumnType::Numeric)
}

fn rows(range: std::ops::Range<i32>) -> Vec<Vec<V>> {
    range
        .map(|i| {
            vec![
                V::Text(format!("c-{i}")),
                V::Int32(i),
                if i % 2 == 0 {
                    V::Numeric("0.50".into())
                } else {
                    V::Null
                },
            ]
        })
        .collect()
}

fn set_mtime(path: &Path, ago: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

#[test]
fn ndjson_lines_land_in_an_open_file_finished_at_rotation() {
    let dir = TempDir::new();
    let mut writer = FileWriter::open(&dir.config(r#","rotate_bytes":200"#), &schema()).unwrap();
    assert_eq!(writer.write(&row_batch(&rows(0..2))).unwrap(), []);
    let names = dir.names();
    assert_eq!(names.len(), 1);
    let open = &names[0];
    assert!(
        open.starts_with("cdr-") && open.ends_with(&format!("-{}.ndjson{OPEN}", writer.instance())),
        "{open}"
    );
    assert_eq!(
        dir.lines(),
        [
            r#"{"call_id":"c-0","seconds":0,"cost":"0.50"}"#,
            r#"{"call_id":"c-1","seconds":1,"cost":null}"#
        ]
    );
    // Past rotate_bytes: the file is finished (renamed) right after the write.
    writer.write(&row_batch(&rows(2..8))).unwrap();
    let names = dir.names();
    assert_eq!(names, [open.strip_suffix(OPEN).unwrap()]);
    writer.write(&row_batch(&rows(8..9))).unwrap();
    assert_eq!(dir.names().len(), 2);
    assert_eq!(dir.lines().len(), 9);
    drop(writer);
    assert!(
        dir.names().iter().all(|n| !n.ends_with(OPEN)),
        "{:?}",
        dir.names()
    );
}

#[test]
fn csv_has_a_header_and_quotes() {
    let dir = TempDir::new();
    let mut writer = FileWriter::open(
        &dir.config(r#","format":"csv","prefix":"calls""#),
        &schema(),
    )
    .unwrap();
    let batch = row_batch(&[
        vec![V::Text("a,\"b\"".into()), V::Int32(1), V::Null],
        vec![
            V::Text("line\nbreak".into()),
            V::Int32(2),
            V::Numeric("1".into()),
        ],
    ]);
    writer.write(&batch).unwrap();
    drop(writer);
    let names = dir.names();
    assert!(
        names[0].starts_with("calls-") && names[0].ends_with(".csv"),
        "{names:?}"
    );
    assert_eq!(
        fs::read_to_string(dir.0.join(&names[0])).unwrap(),
        "call_id,seconds,cost\r\n\"a,\"\"b\"\"\",1,\r\n\"line\nbreak\",2,1\r\n"
    );
}

#[test]
fn rows_already_written_are_skipped_in_this_and_in_a_new_instance() {
    for format in ["ndjson", "csv"] {
        let dir = TempDir::new();
        let config = dir.config(&format!(r#","format":"{format}""#));
        let mut writer = FileWriter::open(&config, &schema()).unwrap();
        writer.write(&row_batch(&rows(0..10))).unwrap();
        writer.write(&row_batch(&rows(5..15))).unwrap();
        // A duplicate key within one batch: the first row wins.
        let mut twice = rows(20..21);
        twice.push(vec![V::Text("c-20".into()), V::Int32(99), V::Null]);
        writer.write(&row_batch(&twice)).unwrap();
        // A crash: the instance is gone without finishing its file.
        std::mem::forget(writer);
        let mut again = FileWriter::open(&config, &schema()).unwrap();
        assert_eq!(again.keys_remembered(), 16, "{format}");
        again.write(&row_batch(&rows(0..16))).unwrap();
        drop(again);
        // Two files (the crashed instance's, the new one's), each with its header.
        let headers = if format == "csv" { 2 } else { 0 };
        assert_eq!(
            dir.lines().len(),
            17 + headers,
            "{format}: {:?}",
            dir.lines()
        );
    }
}

#[test]
fn a_batch_mixing_written_and_new_keys_keeps_the_new_rows_in_order() {
    let dir = TempDir::new();
    let mut writer = FileWriter::open(&dir.config(""), &schema()).unwrap();
    let evens: Vec<Vec<V>> = rows(0..10).into_iter().step_by(2).collect();
    writer.write(&row_batch(&evens)).unwrap();
    // 0..10 again (evens written, odds new), then 7 a second time and 10 new.
    let mut batch = rows(0..11);
    batch.insert(9, rows(7..8).remove(0));
    writer.write(&row_batch(&batch)).unwrap();
    drop(writer);
    let ids: Vec<String> = dir
        .lines()
        .iter()
        .map(|l| l.split('"').nth(3).unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "c-0", "c-2", "c-4", "c-6", "c-8", "c-1", "c-3", "c-5", "c-7", "c-9", "c-10"
        ]
    );
    assert_eq!(
        dir.lines()[5..7],
        [
            r#"{"call_id":"c-1","seconds":1,"cost":null}"#,
            r#"{"call_id":"c-3","seconds":3,"cost":null}"#
        ]
    );
}

#[test]
fn a_file_created_after_a_quiet_spell_is_seen_when_the_directory_changes() {
    let dir = TempDir::new();
    let config = dir.config("");
    let mut b = FileWriter::open(&config, &schema()).unwrap();
    b.write(&row_batch(&rows(0..1))).unwrap();
    // Long enough after b's file was created that b stops listing the
    // directory at each write.
    std::thread::sleep(super::RELIST_GRACE * 3);
    b.write(&row_batch(&rows(1..2))).unwrap();
    b.write(&row_batch(&rows(2..3))).unwrap();
    let mut a = FileWriter::open(&config, &schema()).unwrap();
    a.write(&row_batch(&rows(10..12))).unwrap();
    // a's new file changed the directory: b lists it and skips a's rows.
    b.write(&row_batch(&rows(10..13))).unwrap();
    // An append to a file b knows does not change the directory: b still sees it.
    a.write(&row_batch(&rows(20..21))).unwrap();
    b.write(&row_batch(&rows(20..21))).unwrap();
    drop((a, b));
    assert_eq!(dir.lines().len(), 3 + 2 + 1 + 1, "{:?}", dir.lines());
}

#[test]
fn instances_sharing_the_directory_see_each_others_rows() {
    let dir = TempDir::new();
    let config = dir.config("");
    let mut a = FileWriter::open(&config, &schema()).unwrap();
    let mut b = FileWriter::open(&config, &schema()).unwrap();
    assert_ne!(a.instance(), b.instance());
    a.write(&row_batch(&rows(0..5))).unwrap();
    // A message of `a`'s batch redelivered to `b` (a's consumer lost its channel).
    b.write(&row_batch(&rows(3..8))).unwrap();
    drop((a, b));
    assert_eq!(dir.names().len(), 2);
    assert_eq!(dir.lines().len(), 8);
}

#[test]
fn a_crashed_writers_leftover_is_cut_after_its_last_record_and_finished() {
    let dir = TempDir::new();
    let config = dir.config(r#","rotate_after":"1m""#);
    let leftover = "cdr-20261127T100001.000000Z-00000000000000aa.ndjson";
    let young = "cdr-20261127T100002.000000Z-00000000000000bb.ndjson";
    let empty = "cdr-20261127T100003.000000Z-00000000000000cc.ndjson";
    fs::write(
        dir.0.join(format!("{leftover}{OPEN}")),
        "{\"call_id\":\"c-1\",\"seconds\":1,\"cost\":null}\n{\"call_id\":\"c-2\",\"sec",
    )
    .unwrap();
    fs::write(
        dir.0.join(format!("{young}{OPEN}")),
        "{\"call_id\":\"c-3\",\"seconds\":3,\"cost\":null}\n",
    )
    .unwrap();
    fs::write(dir.0.join(format!("{empty}{OPEN}")), "{\"call_id\":").unwrap();
    fs::write(dir.0.join("notes.txt"), "not ours").unwrap();
    set_mtime(
        &dir.0.join(format!("{leftover}{OPEN}")),
        Duration::from_secs(200),
    );
    set_mtime(
        &dir.0.join(format!("{empty}{OPEN}")),
        Duration::from_secs(200),
    );

    let mut writer = FileWriter::open(&config, &schema()).unwrap();
    // The old leftover is finished; the young one may be a live writer's: untouched.
    assert_eq!(
        dir.names(),
        [
            leftover.to_owned(),
            format!("{young}{OPEN}"),
            "notes.txt".to_owned()
        ]
    );
    assert_eq!(
        fs::read_to_string(dir.0.join(leftover)).unwrap(),
        "{\"call_id\":\"c-1\",\"seconds\":1,\"cost\":null}\n"
    );
    // c-1 and c-3 are known; c-2 was never complete, so it is written.
    writer.write(&row_batch(&rows(1..4))).unwrap();
    drop(writer);
    let lines = dir.lines();
    assert_eq!(lines.iter().filter(|l| l.contains("\"c-2\"")).count(), 1);
    assert_eq!(lines.iter().filter(|l| l.contains("\"c-1\"")).count(), 1);
    assert_eq!(lines.iter().filter(|l| l.contains("\"c-3\"")).count(), 1);
}

#[test]
fn files_older_than_the_window_are_not_read() {
    let dir = TempDir::new();
    let config = dir.config(r#","dedupe_window":"1m""#);
    let mut writer = FileWriter::open(&config, &schema()).unwrap();
    writer.write(&row_batch(&rows(0..3))).unwrap();
    drop(writer);
    let name = dir.names().remove(0);
    set_mtime(&dir.0.join(name), Duration::from_secs(120));
    let mut writer = FileWriter::open(&config, &schema()).unwrap();
    assert_eq!(writer.keys_remembered(), 0);
    writer.write(&row_batch(&rows(0..3))).unwrap();
    drop(writer);
    assert_eq!(
        dir.lines().len(),
        6,
        "documented: past the window, rows come again"
    );
}

#[test]
fn rotation_by_age() {
    let dir = TempDir::new();
    let mut writer = FileWriter::open(&dir.config(r#","rotate_after":"50ms""#), &schema()).unwrap();
    writer.write(&row_batch(&rows(0..1))).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    writer.write(&row_batch(&rows(1..2))).unwrap();
    let names = dir.names();
    assert_eq!(names.len(), 2);
    assert!(
        !names[0].ends_with(OPEN) && names[1].ends_with(OPEN),
        "{names:?}"
    );
}

#[test]
fn a_missing_directory_is_a_configuration_error() {
    let err = FileWriter::open(r#"{"dir":"/nonexistent/sluice"}"#, &schema())
        .err()
        .unwrap();
    assert!(
        matches!(&err, PluginError::InvalidConfig(m) if m.contains("grants.directory")),
        "{err:?}"
    );
}

#[test]
fn keys_of_a_batch_not_written_are_not_kept() {
    let dir = TempDir::new();
    let mut writer = FileWriter::open(&dir.config(""), &schema()).unwrap();
    writer.write(&row_batch(&rows(0..1))).unwrap();
    // A malformed batch, its last row cut short: the rows before it were encoded
    // (and their keys noted) before the reader found it. Its first key was
    // written before: it must stay.
    let mut bad = row_batch(&rows(0..3));
    bad.data.truncate(bad.data.len() - 1);
    let err = writer.write(&bad).unwrap_err();
    assert!(
        matches!(&err, PluginError::Fatal(m) if m.contains("row 2, column 2")),
        "{err:?}"
    );
    assert_eq!(writer.keys_remembered(), 1);
    assert_eq!(dir.lines().len(), 1);
    writer.write(&row_batch(&rows(0..3))).unwrap();
    assert_eq!(writer.keys_remembered(), 3);
    drop(writer);
    assert_eq!(dir.lines().len(), 3);
}
