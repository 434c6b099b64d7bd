//! A Sluice source plugin: decodes message bodies of `id,value` lines into rows,
//! one row per line.
//!
//! Start here and make it decode your own messages: change the schema in
//! `configure` and the parsing in `decode`, then run `cargo test`.

use serde::Deserialize;
use sluice_plugin_sdk::config::{self, Problems};
use sluice_plugin_sdk::rows::RowWriter;
use sluice_plugin_sdk::{ColumnType, Message, PluginError, Schema, Source};

/// The source. The host creates one per consumer and calls `decode` on it for
/// each batch; what it keeps in `self` lasts from batch to batch.
pub struct Lines {
    separator: char,
}

/// The pipeline's `[pipelines.source.config]` table. Every key is optional here;
/// a key without `Option` (or `#[serde(default)]`) is required. Unknown keys and
/// values of the wrong type are reported by `config::parse`, all at once.
#[derive(Deserialize)]
struct Config {
    /// The name of the data set; postgres-writer makes it the table name.
    schema: Option<String>,
    /// One character between the id and the value, `,` by default.
    separator: Option<char>,
}

impl Source for Lines {
    /// Reads the pipeline's `[pipelines.source.config]` table (a JSON object in a
    /// string, `"{}"` when there is none) and declares the schema of the rows.
    /// `sluice check` calls it too, so mistakes show up before the daemon runs.
    fn configure(config: &str) -> Result<(Self, Schema), PluginError> {
        let config: Config = config::parse(config)?;
        // Rules serde cannot express, each at its key, reported together (here
        // one; `problems.add` as many as there are).
        let mut problems = Problems::new();
        let name = config.schema.unwrap_or_else(|| "lines".to_owned());
        if !Schema::is_valid_name(&name) {
            problems.add(
                "schema",
                format!("{name:?} is not a lowercase name like \"lines\""),
            );
        }
        problems.check()?;
        let separator = config.separator.unwrap_or(',');
        // Writers land rows idempotently on the key columns: a line whose id was
        // stored already is not stored again (redeliveries are harmless).
        let schema = Schema::new(name, 1)
            .key("id", ColumnType::Text)
            .required("value", ColumnType::Text)
            .column("routing_key", ColumnType::Text);
        Ok((Lines { separator }, schema))
    }

    /// Appends the rows of one message: every column in schema order, then
    /// `end_row()`. `Err(reason)` rejects the message: its rows are dropped and
    /// it goes to the dead-letter queue with the reason in its headers.
    fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
        let body = std::str::from_utf8(&message.body).map_err(|e| format!("not UTF-8: {e}"))?;
        for (n, line) in body.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (id, value) = line
                .split_once(self.separator)
                .ok_or_else(|| format!("line {}: expected `id{}value`", n + 1, self.separator))?;
            let id = id.trim();
            if id.is_empty() {
                return Err(format!("line {}: the id is empty", n + 1));
            }
            rows.text(id).text(value.trim());
            match message.routing_key.as_str() {
                "" => rows.null(),
                key => rows.text(key),
            };
            rows.end_row();
        }
        Ok(())
    }
}

// Exports `Lines` as the component's `source` interface (on wasm32; natively,
// in `cargo test`, it exports nothing).
sluice_plugin_sdk::export_source!(Lines);

#[cfg(test)]
mod tests {
    use sluice_plugin_sdk::Message;
    use sluice_plugin_sdk::rows::OwnedValue;
    use sluice_plugin_sdk::testing::run_source;

    use super::Lines;

    fn text(s: &str) -> OwnedValue {
        OwnedValue::Text(s.into())
    }

    #[test]
    fn one_row_per_line() {
        let message = Message::new("a,1\n\nb, two \n").with_routing_key("lines.in");
        let run = run_source::<Lines>("{}", &[message]).unwrap();
        assert_eq!(run.schema.name, "lines");
        assert_eq!(
            run.rows,
            [
                [text("a"), text("1"), text("lines.in")],
                [text("b"), text("two"), text("lines.in")],
            ]
        );
    }

    #[test]
    fn a_bad_line_rejects_its_message_and_only_it() {
        let run = run_source::<Lines>(
            r#"{"schema": "readings", "separator": ";"}"#,
            &[Message::new("a;1\nno separator"), Message::new("c;3")],
        )
        .unwrap();
        assert_eq!(run.schema.name, "readings");
        assert_eq!(run.rejection(0), Some("line 2: expected `id;value`"));
        assert_eq!(run.rows_of(1), [[text("c"), text("3"), OwnedValue::Null]]);
    }

    #[test]
    fn configuration_mistakes_are_explained() {
        let err = run_source::<Lines>(r#"{"separator": "::", "shema": "x"}"#, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: separator: invalid value: string \"::\", expected a character; \
             shema: unknown key `shema` (expected one of: schema, separator)"
        );
        let err = run_source::<Lines>(r#"{"schema": "Bad Name"}"#, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: schema: \"Bad Name\" is not a lowercase name like \"lines\""
        );
    }
}
