//! A misbehaving source for the host's tests. The body of each message says what
//! to do: `panic`, `loop`, `alloc`, `probe` (report what the sandbox lets it see),
//! `sleep:MS` (sleep that long with `std::thread::sleep`, then emit a row),
//! `flood:N` (log N warning lines, then emit a row), `reject:BYTES` (reject the
//! message with a reason of that many bytes), or anything else to emit one row
//! keyed by the body. After the number of `sleep:`, `flood:` and `reject:`, a
//! space and any text may follow (`sleep:500 #17`): it makes each message's row
//! key unique, so a soak can count exactly which of them landed.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_plugin_sdk::rows::RowWriter;
use sluice_plugin_sdk::{ColumnType, Message, PluginError, Schema, Source};

/// The chaos source.
pub struct Chaos;

impl Source for Chaos {
    fn configure(config: &str) -> Result<(Self, Schema), PluginError> {
        if config.contains("\"fail\"") {
            return Err(PluginError::InvalidConfig(
                "asked to fail (`fail` in the config)".into(),
            ));
        }
        Ok((
            Chaos,
            Schema::new("chaos", 1)
                .key("id", ColumnType::Text)
                .column("note", ColumnType::Text),
        ))
    }

    fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
        let body = std::str::from_utf8(&message.body).map_err(|e| e.to_string())?;
        match body {
            "panic" => panic!("chaos: asked to panic"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "probe" => {
                let env = std::env::vars().count();
                let file = std::fs::read("/etc/passwd").is_ok();
                let clock = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                rows.text("probe")
                    .text(&format!("env={env} file={file} clock={clock}"))
                    .end_row();
            }
            other => {
                // The number ends at the first space; what follows only tags the message.
                let arg = |rest: &str| rest.split(' ').next().unwrap_or_default().to_string();
                if let Some(ms) = other.strip_prefix("sleep:").map(arg) {
                    let ms: u64 = ms.parse().map_err(|_| format!("bad sleep: {ms}"))?;
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                } else if let Some(n) = other.strip_prefix("flood:").map(arg) {
                    let n: u64 = n.parse().map_err(|_| format!("bad flood: {n}"))?;
                    for i in 0..n {
                        sluice_plugin_sdk::log::warn(&format!("chaos: flood line {i}"));
                    }
                } else if let Some(bytes) = other.strip_prefix("reject:").map(arg) {
                    let bytes: usize = bytes.parse().map_err(|_| format!("bad reject: {bytes}"))?;
                    return Err("r".repeat(bytes));
                }
                rows.text(other).null().end_row();
            }
        }
        Ok(())
    }
}

sluice_plugin_sdk::export_source!(Chaos);
