//! A source for the hot-reload tests: each message body is an id, and each row
//! is `(id, mark)`. The mark is a constant that the tests overwrite in the built
//! `.wasm` file (same length, so the file stays valid), which makes versions of
//! the plugin that differ visibly without building it ten times.

use sluice_plugin_sdk::rows::RowWriter;
use sluice_plugin_sdk::{ColumnType, Message, PluginError, Schema, Source};

/// What the tests search for and replace in the built file.
pub static MARK: [u8; 20] = *b"SLUICE-MARK-00000000";

fn mark() -> String {
    // A volatile read: the value must come from the data segment the tests
    // patch, not be folded into the code at compile time.
    let bytes = unsafe { std::ptr::read_volatile(&MARK) };
    String::from_utf8_lossy(&bytes[12..]).into_owned()
}

/// The marked source.
pub struct Marked {
    mark: String,
}

impl Source for Marked {
    fn configure(_config: &str) -> Result<(Self, Schema), PluginError> {
        let mark = mark();
        // The version the tests deploy as "a plugin that traps when opened".
        if mark == "99999999" {
            panic!("marked-source: version 99999999 traps when configured");
        }
        let schema = Schema::new("marked", 1)
            .key("id", ColumnType::Text)
            .required("mark", ColumnType::Text);
        Ok((Marked { mark }, schema))
    }

    fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
        let id =
            std::str::from_utf8(&message.body).map_err(|e| format!("body is not UTF-8: {e}"))?;
        rows.text(id).text(&self.mark).end_row();
        Ok(())
    }
}

sluice_plugin_sdk::export_source!(Marked);
