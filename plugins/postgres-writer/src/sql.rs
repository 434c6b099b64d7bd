//! The SQL the writer sends: identifier quoting, the column type mapping, and
//! every statement, built once per `open` so that `write` only borrows them.

use std::fmt;

use sluice_plugin_sdk::{Column, ColumnType, Schema};

/// Postgres truncates longer identifiers (with only a NOTICE), so a longer name
/// would silently address another table or column.
pub const IDENTIFIER_MAX_BYTES: usize = 63;

/// The savepoint that brackets each piece of a batch on the slow path, so that a
/// refused piece can be undone without losing the pieces before it.
const SAVEPOINT: &str = "sluice_piece";

/// Appends `name` as a quoted identifier: in double quotes, inner quotes doubled.
/// Quoting always (not only when needed) keeps the case and any character as given.
pub fn push_ident(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// `name` as a quoted identifier.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    push_ident(&mut out, name);
    out
}

/// Why a name cannot be a Postgres identifier, if it cannot.
pub fn identifier_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains('\0') {
        Some("contains a NUL character")
    } else if name.len() > IDENTIFIER_MAX_BYTES {
        Some("is longer than 63 bytes, which Postgres would truncate")
    } else {
        None
    }
}

/// The table the writer lands rows in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The Postgres schema; `None` resolves the table through the `search_path`.
    pub schema: Option<String>,
    /// The table's name.
    pub name: String,
}

impl TableName {
    /// The name as SQL: `"schema"."table"` or `"table"`.
    pub fn quoted(&self) -> String {
        let mut out = String::new();
        if let Some(schema) = &self.schema {
            push_ident(&mut out, schema);
            out.push('.');
        }
        push_ident(&mut out, &self.name);
        out
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted())
    }
}

/// The Postgres type a column of type `ty` gets: its name in DDL, and its
/// `pg_type.typname`, which is what an existing table's column is compared with.
pub fn pg_type(ty: ColumnType) -> (&'static str, &'static str) {
    match ty {
        ColumnType::Boolean => ("boolean", "bool"),
        ColumnType::Int32 => ("integer", "int4"),
        ColumnType::Int64 => ("bigint", "int8"),
        ColumnType::Float64 => ("double precision", "float8"),
        ColumnType::Numeric => ("numeric", "numeric"),
        ColumnType::Text => ("text", "text"),
        ColumnType::Bytes => ("bytea", "bytea"),
        ColumnType::Timestamp => ("timestamptz", "timestamptz"),
        ColumnType::Date => ("date", "date"),
        ColumnType::Uuid => ("uuid", "uuid"),
        ColumnType::Json => ("jsonb", "jsonb"),
    }
}

fn push_column_definition(out: &mut String, column: &Column) {
    push_ident(out, &column.name);
    out.push(' ');
    out.push_str(pg_type(column.ty).0);
    if !column.nullable {
        out.push_str(" NOT NULL");
    }
}

fn push_ident_list<'a>(out: &mut String, names: impl IntoIterator<Item = &'a str>) {
    for (i, name) in names.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_ident(out, name);
    }
}

/// `CREATE TABLE IF NOT EXISTS` for `schema`, keyed on `keys`, and partitioned
/// by range of the column `partition_by` when given.
pub fn create_table(
    table: &TableName,
    schema: &Schema,
    keys: &[&str],
    partition_by: Option<&str>,
) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {table} (");
    for column in &schema.columns {
        push_column_definition(&mut sql, column);
        sql.push_str(", ");
    }
    sql.push_str("PRIMARY KEY (");
    push_ident_list(&mut sql, keys.iter().copied());
    sql.push_str("))");
    if let Some(column) = partition_by {
        sql.push_str(" PARTITION BY RANGE (");
        push_ident(&mut sql, column);
        sql.push(')');
    }
    sql
}

/// One `ALTER TABLE` adding every column of `columns` that is not there yet.
pub fn add_columns(table: &TableName, columns: &[&Column]) -> String {
    let mut sql = format!("ALTER TABLE {table} ");
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("ADD COLUMN IF NOT EXISTS ");
        push_column_definition(&mut sql, column);
    }
    sql
}

/// Serialises `open` between daemons: two racing `CREATE TABLE IF NOT EXISTS`
/// can fail on the catalog's unique index, and evolutions should not interleave.
/// `$1` is [`lock_key`]; the lock ends with the transaction.
pub const LOCK_TABLE_SETUP: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

/// The text whose hash names the advisory lock for `table`.
pub fn lock_key(table: &TableName) -> String {
    format!("sluice postgres-writer {table}")
}

/// The table's live columns: name, `typname`, the type as Postgres shows it,
/// whether it is `NOT NULL`, and whether it gets a value when not set. No rows when
/// the table does not exist. `$1` is the quoted table name. Everything is cast to
/// types the `postgres` capability returns.
pub const TABLE_COLUMNS: &str = "SELECT a.attname::text, t.typname::text, \
     format_type(a.atttypid, a.atttypmod), a.attnotnull, \
     a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' \
     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped \
     ORDER BY a.attnum";

/// The key columns (sorted, comma-separated) of each unique index that
/// `ON CONFLICT (columns)` can use: plain columns only, not partial, not deferrable,
/// valid; `INCLUDE` columns left out. `$1` is the quoted table name.
pub const UNIQUE_KEYS: &str = "SELECT string_agg(a.attname::text, ',' ORDER BY a.attname) \
     FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
     AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]) \
     WHERE i.indrelid = to_regclass($1::text) AND i.indisunique AND i.indimmediate \
     AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
     GROUP BY i.indexrelid";

/// The names of the schema's key columns, in schema order.
pub fn key_names(schema: &Schema) -> impl Iterator<Item = &str> {
    schema
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.as_str())
}

/// The table's key: the schema's key columns, then the partition column when it
/// is not one of them (Postgres requires it in a partitioned table's keys).
pub fn table_keys<'a>(schema: &'a Schema, partition_column: Option<&'a str>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = key_names(schema).collect();
    if let Some(column) = partition_column
        && !keys.contains(&column)
    {
        keys.push(column);
    }
    keys
}

/// What the table is, as `pg_class` says: `r` a plain table, `p` a partitioned
/// one (anything else is not a table), with the partition key's columns. No row
/// when it does not exist. `$1` is the quoted table name.
pub const TABLE_KIND: &str = "SELECT c.relkind::text, \
     (SELECT string_agg(a.attname::text, ',') FROM pg_partitioned_table p \
      JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = ANY (p.partattrs::int2[]) \
      WHERE p.partrelid = c.oid) \
     FROM pg_class c WHERE c.oid = to_regclass($1::text)";

/// The statements `write` runs, built once per `open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statements {
    /// `COPY` of the batch straight into the table (the fast path).
    pub copy_table: String,
    /// Opens a slow-path transaction (and its first savepoint follows).
    pub begin: &'static str,
    /// Opens a slow-path transaction and creates the staging table, when this
    /// connection may not have it yet.
    pub begin_and_create_stage: String,
    /// Drops the staging table, so that it is created again with the table's
    /// current columns.
    pub drop_stage: String,
    /// Starts a piece of the slow path when the staging table is empty.
    pub savepoint: &'static str,
    /// Starts a piece of the slow path when an earlier piece of the same
    /// transaction left rows in the staging table.
    pub savepoint_and_clear_stage: String,
    /// `COPY` of a piece into the staging table.
    pub copy_stage: String,
    /// Moves the staged rows into the table, once per key, skipping keys already
    /// there; then ends the piece.
    pub insert_from_stage: String,
    /// The same, then commits: a whole batch staged without a savepoint.
    pub insert_and_commit: String,
    /// Undoes a refused piece (the transaction goes on).
    pub undo_piece: &'static str,
    /// Ends a slow-path transaction.
    pub commit: &'static str,
    /// Abandons any transaction (a no-op, with a warning, when none is open).
    pub rollback: &'static str,
}

impl Statements {
    /// The statements for landing rows of `schema` in `table`, whose key is `keys`.
    pub fn new(table: &TableName, schema: &Schema, keys: &[&str]) -> Self {
        let target = table.quoted();
        let stage = format!("pg_temp.{}", quote_ident(&stage_name(&table.name)));
        let mut columns = String::new();
        push_ident_list(&mut columns, schema.columns.iter().map(|c| c.name.as_str()));
        let mut key_list = String::new();
        push_ident_list(&mut key_list, keys.iter().copied());
        let keys = key_list;

        Statements {
            copy_table: format!("COPY {target} ({columns}) FROM STDIN (FORMAT binary)"),
            begin: "BEGIN",
            // The staging table lives as long as the connection. Created inside the
            // transaction, it disappears again if that transaction rolls back, so the
            // caller only counts on it after a commit. `LIKE` copies the NOT NULL
            // constraints, so those refusals come from the COPY, with a line number.
            begin_and_create_stage: format!(
                "BEGIN; CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                quote_ident(&stage_name(&table.name))
            ),
            drop_stage: format!("DROP TABLE IF EXISTS {stage}"),
            savepoint: "SAVEPOINT sluice_piece",
            savepoint_and_clear_stage: format!("SAVEPOINT {SAVEPOINT}; TRUNCATE {stage}"),
            copy_stage: format!("COPY {stage} ({columns}) FROM STDIN (FORMAT binary)"),
            // A batch may carry one key twice (a message redelivered within the
            // batch): DO NOTHING skips the second as it skips keys already there,
            // so the first in the batch wins, with no sort (DISTINCT ON) needed.
            insert_from_stage: format!(
                "INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage} \
                 ON CONFLICT ({keys}) DO NOTHING; RELEASE SAVEPOINT {SAVEPOINT}"
            ),
            insert_and_commit: format!(
                "INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage} \
                 ON CONFLICT ({keys}) DO NOTHING; COMMIT"
            ),
            undo_piece: "ROLLBACK TO SAVEPOINT sluice_piece; RELEASE SAVEPOINT sluice_piece",
            commit: "COMMIT",
            rollback: "ROLLBACK",
        }
    }
}

/// The staging table's name: per target table, so that a connection that served
/// another writer before (a pooled one) cannot hand us a staging table of another
/// shape, and cut to the identifier limit on a character boundary.
fn stage_name(table: &str) -> String {
    let mut name = String::from("sluice_stage_");
    for c in table.chars() {
        if name.len() + c.len_utf8() > IDENTIFIER_MAX_BYTES {
            break;
        }
        name.push(c);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: ColumnType, nullable: bool, key: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            nullable,
            key,
        }
    }

    fn schema() -> Schema {
        Schema {
            name: "cdr".into(),
            version: 1,
            columns: vec![
                column("id", ColumnType::Int64, false, true),
                column("site", ColumnType::Text, false, true),
                column("amount", ColumnType::Numeric, true, false),
                column("at", ColumnType::Timestamp, false, false),
            ],
        }
    }

    #[test]
    fn quotes_identifiers_always_and_doubles_inner_quotes() {
        assert_eq!(quote_ident("cdr"), r#""cdr""#);
        assert_eq!(quote_ident("Mixed Case"), r#""Mixed Case""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(
            quote_ident(r#"x"; DROP TABLE t; --"#),
            r#""x""; DROP TABLE t; --""#
        );
        let table = TableName {
            schema: Some("Ops".into()),
            name: "c\"dr".into(),
        };
        assert_eq!(table.quoted(), r#""Ops"."c""dr""#);
        assert_eq!(
            TableName {
                schema: None,
                name: "cdr".into()
            }
            .quoted(),
            r#""cdr""#
        );
    }

    #[test]
    fn identifier_limits() {
        assert_eq!(identifier_problem("cdr"), None);
        assert!(identifier_problem("").is_some());
        assert!(identifier_problem("a\0b").is_some());
        assert_eq!(identifier_problem(&"é".repeat(31)), None); // 62 bytes
        assert!(identifier_problem(&"é".repeat(32)).is_some()); // 64 bytes
    }

    #[test]
    fn every_column_type_has_a_postgres_type() {
        let all = [
            ColumnType::Boolean,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Numeric,
            ColumnType::Text,
            ColumnType::Bytes,
            ColumnType::Timestamp,
            ColumnType::Date,
            ColumnType::Uuid,
            ColumnType::Json,
        ];
        let names: Vec<_> = all.iter().map(|t| pg_type(*t).0).collect();
        assert_eq!(
            names,
            [
                "boolean",
                "integer",
                "bigint",
                "double precision",
                "numeric",
                "text",
                "bytea",
                "timestamptz",
                "date",
                "uuid",
                "jsonb"
            ]
        );
    }

    #[test]
    fn creates_the_table_with_not_null_and_the_key() {
        let table = TableName {
            schema: Some("ops".into()),
            name: "cdr".into(),
        };
        assert_eq!(
            create_table(&table, &schema(), &["id", "site"], None),
            r#"CREATE TABLE IF NOT EXISTS "ops"."cdr" ("id" bigint NOT NULL, "site" text NOT NULL, "amount" numeric, "at" timestamptz NOT NULL, PRIMARY KEY ("id", "site"))"#
        );
        let s = schema();
        let keys = table_keys(&s, Some("at"));
        assert_eq!(keys, ["id", "site", "at"]);
        assert_eq!(
            create_table(&table, &s, &keys, Some("at")),
            r#"CREATE TABLE IF NOT EXISTS "ops"."cdr" ("id" bigint NOT NULL, "site" text NOT NULL, "amount" numeric, "at" timestamptz NOT NULL, PRIMARY KEY ("id", "site", "at")) PARTITION BY RANGE ("at")"#
        );
        assert_eq!(table_keys(&s, Some("id")), ["id", "site"]);
    }

    #[test]
    fn adds_missing_columns_in_one_statement() {
        let table = TableName {
            schema: None,
            name: "cdr".into(),
        };
        let a = column("note", ColumnType::Text, true, false);
        let b = column("day", ColumnType::Date, true, false);
        assert_eq!(
            add_columns(&table, &[&a, &b]),
            r#"ALTER TABLE "cdr" ADD COLUMN IF NOT EXISTS "note" text, ADD COLUMN IF NOT EXISTS "day" date"#
        );
    }

    #[test]
    fn write_statements() {
        let table = TableName {
            schema: Some("ops".into()),
            name: "cdr".into(),
        };
        let s = Statements::new(&table, &schema(), &["id", "site"]);
        assert_eq!(
            s.copy_table,
            r#"COPY "ops"."cdr" ("id", "site", "amount", "at") FROM STDIN (FORMAT binary)"#
        );
        assert_eq!(
            s.copy_stage,
            r#"COPY pg_temp."sluice_stage_cdr" ("id", "site", "amount", "at") FROM STDIN (FORMAT binary)"#
        );
        assert_eq!(
            s.begin_and_create_stage,
            r#"BEGIN; CREATE TEMP TABLE IF NOT EXISTS "sluice_stage_cdr" (LIKE "ops"."cdr" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"#
        );
        assert_eq!(
            s.insert_from_stage,
            r#"INSERT INTO "ops"."cdr" ("id", "site", "amount", "at") SELECT "id", "site", "amount", "at" FROM pg_temp."sluice_stage_cdr" ON CONFLICT ("id", "site") DO NOTHING; RELEASE SAVEPOINT sluice_piece"#
        );
        assert_eq!(
            s.insert_and_commit,
            r#"INSERT INTO "ops"."cdr" ("id", "site", "amount", "at") SELECT "id", "site", "amount", "at" FROM pg_temp."sluice_stage_cdr" ON CONFLICT ("id", "site") DO NOTHING; COMMIT"#
        );
        assert_eq!(
            s.savepoint_and_clear_stage,
            r#"SAVEPOINT sluice_piece; TRUNCATE pg_temp."sluice_stage_cdr""#
        );
        assert_eq!(
            s.drop_stage,
            r#"DROP TABLE IF EXISTS pg_temp."sluice_stage_cdr""#
        );
    }

    #[test]
    fn stage_name_stays_within_the_identifier_limit() {
        let long = "é".repeat(31); // 62 bytes, a valid table name
        let name = stage_name(&long);
        assert!(name.len() <= IDENTIFIER_MAX_BYTES, "{}", name.len());
        assert!(name.starts_with("sluice_stage_éé"));
    }
}
