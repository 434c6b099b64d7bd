//! Reading the server's errors: which row of a `COPY` it refused, whether it was a
//! duplicate key, and the reason a rejected row carries to the dead-letter exchange.

use sluice_plugin_sdk::postgres::{PgError, PgErrorKind};

/// `unique_violation`: the key is already in the table (a redelivered or retried
/// batch), or twice in the batch.
const UNIQUE_VIOLATION: &str = "23505";
/// `invalid_binary_representation` and `bad_copy_file_format`: Postgres could not
/// read the stream. That is this writer's fault (or a column type changed under
/// it), never the row's, so it must not reject rows one after the other.
const STREAM_UNREADABLE: [&str; 2] = ["22P03", "22P04"];

/// Whether `error` says a row refused its data (and retrying it cannot help).
pub fn is_refused_row(error: &PgError) -> bool {
    error.kind == PgErrorKind::Data
        && !error
            .code
            .as_deref()
            .is_some_and(|code| STREAM_UNREADABLE.contains(&code))
}

/// Whether `error` is a duplicate key.
pub fn is_unique_violation(error: &PgError) -> bool {
    error.code.as_deref() == Some(UNIQUE_VIOLATION)
}

/// Where in a `COPY` stream the server failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPosition<'a> {
    /// The tuple, from 1 (the server counts tuples of a binary COPY as lines).
    pub line: u64,
    /// The column being read, when the value itself was refused.
    pub column: Option<&'a str>,
}

/// Finds the `COPY <table>, line <n>[, column <c>]` entry of an error context. The
/// context may hold several entries, one a line (a trigger's, then the COPY's).
pub fn copy_position(context: &str) -> Option<CopyPosition<'_>> {
    context.lines().find_map(|entry| {
        let entry = entry.strip_prefix("COPY ")?;
        // The table name may contain anything, column names (ours) may not contain
        // ", line ": the last occurrence is the real one.
        let after = &entry[entry.rfind(", line ")? + ", line ".len()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let line = after[..digits].parse().ok()?;
        let rest = &after[digits..];
        let column = rest.strip_prefix(", column ").map(|c| {
            // Text-format COPY appends `: "value"`; cut it (our names have no ':').
            c.split_once(": ").map_or(c, |(name, _)| name)
        });
        Some(CopyPosition { line, column })
    })
}

/// The row, among `rows` rows sent, that the error names, from 0; `None` when it
/// names none of them.
pub fn refused_index(error: &PgError, rows: usize) -> Option<usize> {
    let line = copy_position(error.context.as_deref()?)?.line;
    (1..=rows as u64).contains(&line).then(|| line as usize - 1)
}

/// The reason a refused row is rejected with: the server's message, the column,
/// the detail and the SQLSTATE, e.g. `numeric field overflow (column amount: A field
/// with precision 5, scale 2 must round to an absolute value less than 10^3.)
/// [SQLSTATE 22003]`.
pub fn reason(error: &PgError) -> String {
    let mut reason = format!("postgres refused the row: {}", error.message);
    let column = error
        .context
        .as_deref()
        .and_then(copy_position)
        .and_then(|p| p.column);
    match (column, error.detail.as_deref()) {
        (Some(column), Some(detail)) => reason.push_str(&format!(" (column {column}: {detail})")),
        (Some(column), None) => reason.push_str(&format!(" (column {column})")),
        (None, Some(detail)) => reason.push_str(&format!(" ({detail})")),
        (None, None) => {}
    }
    if let Some(code) = &error.code {
        reason.push_str(&format!(" [SQLSTATE {code}]"));
    }
    reason
}

/// A one-line description of a failure that is not a row's fault.
pub fn describe(error: &PgError) -> String {
    let mut text = error.message.clone();
    if let Some(detail) = &error.detail {
        text.push_str(&format!(" ({detail})"));
    }
    if let Some(code) = &error.code {
        text.push_str(&format!(" [SQLSTATE {code}]"));
    }
    if let Some(context) = &error.context {
        text.push_str(&format!(", in {}", context.replace('\n', "; ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str, context: Option<&str>) -> PgError {
        PgError {
            kind: PgErrorKind::Data,
            code: Some(code.into()),
            message: "numeric field overflow".into(),
            detail: Some(
                "A field with precision 5, scale 2 must round to an absolute value less than 10^3."
                    .into(),
            ),
            context: context.map(str::to_string),
        }
    }

    #[test]
    fn reads_the_line_and_column_postgres_reports() {
        // As Postgres 15 words them for a binary COPY.
        assert_eq!(
            copy_position("COPY t, line 2, column n"),
            Some(CopyPosition {
                line: 2,
                column: Some("n")
            })
        );
        assert_eq!(
            copy_position("COPY cdr, line 12"),
            Some(CopyPosition {
                line: 12,
                column: None
            })
        );
        // Text format adds the value.
        assert_eq!(
            copy_position(r#"COPY t, line 3, column amount: "12,5""#),
            Some(CopyPosition {
                line: 3,
                column: Some("amount")
            })
        );
        // A table named to confuse.
        assert_eq!(
            copy_position("COPY odd, line 9, line 4, column c"),
            Some(CopyPosition {
                line: 4,
                column: Some("c")
            })
        );
        // The COPY entry after a trigger's.
        assert_eq!(
            copy_position("PL/pgSQL function f() line 3 at RAISE\nCOPY t, line 7"),
            Some(CopyPosition {
                line: 7,
                column: None
            })
        );
        assert_eq!(copy_position("SQL statement \"INSERT INTO t\""), None);
        assert_eq!(copy_position("COPY t, line x"), None);
        assert_eq!(copy_position(""), None);
    }

    #[test]
    fn refused_index_is_zero_based_and_within_the_rows_sent() {
        assert_eq!(
            refused_index(&error("22003", Some("COPY t, line 1")), 3),
            Some(0)
        );
        assert_eq!(
            refused_index(&error("22003", Some("COPY t, line 3")), 3),
            Some(2)
        );
        assert_eq!(
            refused_index(&error("22003", Some("COPY t, line 4")), 3),
            None
        );
        assert_eq!(
            refused_index(&error("22003", Some("COPY t, line 0")), 3),
            None
        );
        assert_eq!(refused_index(&error("22003", None), 3), None);
    }

    #[test]
    fn unreadable_streams_are_not_refused_rows() {
        assert!(is_refused_row(&error("22003", None)));
        assert!(is_refused_row(&error("23514", None)));
        assert!(!is_refused_row(&error(
            "22P03",
            Some("COPY t, line 1, column n")
        )));
        assert!(!is_refused_row(&PgError {
            kind: PgErrorKind::Other,
            ..error("42P01", None)
        }));
        assert!(is_unique_violation(&error("23505", None)));
        assert!(!is_unique_violation(&error("23514", None)));
    }

    #[test]
    fn reason_names_message_column_detail_and_code() {
        assert_eq!(
            reason(&error("22003", Some("COPY t, line 2, column n"))),
            "postgres refused the row: numeric field overflow (column n: A field with precision 5, scale 2 must round to an absolute value less than 10^3.) [SQLSTATE 22003]"
        );
        let plain = PgError {
            detail: None,
            context: None,
            ..error("23514", None)
        };
        assert_eq!(
            reason(&plain),
            "postgres refused the row: numeric field overflow [SQLSTATE 23514]"
        );
    }
}
