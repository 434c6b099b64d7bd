//! Creating the table for a schema, and evolving it when the schema gains
//! columns: what `open` does before any row is written.

use crate::partition::Partitioning;
use crate::sql::{self, TableName, identifier_problem, pg_type};
use sluice_plugin_sdk::postgres::{Connection, PgError, PgValue};
use sluice_plugin_sdk::{Column, PluginError, Schema};

/// A column as the existing table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// Its name.
    pub name: String,
    /// Its type's `pg_type.typname` (`int8`), compared with the mapping.
    pub typname: String,
    /// Its type as Postgres shows it (`numeric(10,2)`), for messages.
    pub shown_type: String,
    /// Whether it is `NOT NULL`.
    pub not_null: bool,
    /// Whether a row that does not set it still gets a value (a default, an
    /// identity or a generated column).
    pub has_default: bool,
}

/// What the table needs so that rows of the schema can land in it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evolution<'a> {
    /// Nullable columns of the schema that the table lacks.
    pub add: Vec<&'a Column>,
    /// Things that work but will refuse some rows.
    pub warnings: Vec<String>,
}

/// The problems that make `schema` unusable by this writer, all of them.
pub fn schema_problems(schema: &Schema) -> Vec<String> {
    // The SDK's rules (names, a key, keys not nullable), then Postgres's own limit.
    let mut problems: Vec<String> = schema.validate().err().into_iter().collect();
    for column in &schema.columns {
        if let Some(why) = identifier_problem(&column.name) {
            problems.push(format!("column name {:?} {why}", column.name));
        }
    }
    problems
}

/// Compares the existing table (`columns`, and the sorted, comma-separated column
/// sets of its unique indexes) with `schema`. The error lists every
/// incompatibility.
pub fn plan<'a>(
    table: &TableName,
    schema: &'a Schema,
    keys: &[&str],
    columns: &[TableColumn],
    unique_keys: &[String],
) -> Result<Evolution<'a>, Vec<String>> {
    let mut evolution = Evolution::default();
    let mut problems = Vec::new();
    for column in &schema.columns {
        let (sql_type, typname) = pg_type(column.ty);
        match columns.iter().find(|c| c.name == column.name) {
            Some(existing) if existing.typname != typname => problems.push(format!(
                "column {:?} of table {table} has type {}, but the schema's {} column maps to {sql_type}",
                column.name,
                existing.shown_type,
                column.ty
            )),
            Some(existing) if existing.not_null && column.nullable => evolution.warnings.push(format!(
                "column {:?} of table {table} is NOT NULL but nullable in the schema: rows with a null there will be rejected",
                column.name
            )),
            Some(_) => {}
            None if column.nullable => evolution.add.push(column),
            None => problems.push(format!(
                "column {:?} ({sql_type}, not nullable) is missing from table {table}: only nullable columns can be \
                 added to an existing table, so this is an incompatible schema change",
                column.name
            )),
        }
    }
    for existing in columns {
        let known = schema.columns.iter().any(|c| c.name == existing.name);
        if !known && existing.not_null && !existing.has_default {
            evolution.warnings.push(format!(
                "column {:?} of table {table} is NOT NULL without a default and not in the schema: every row will be rejected",
                existing.name
            ));
        }
    }
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    let keys = keys.join(",");
    if !unique_keys.contains(&keys) {
        problems.push(format!(
            "table {table} has no primary key or unique index on exactly the key columns ({keys}), so writes \
             could not be idempotent"
        ));
    }
    if problems.is_empty() {
        Ok(evolution)
    } else {
        Err(problems)
    }
}

/// Creates the table if it is missing and adds the schema's new nullable
/// columns, in one transaction under an advisory lock so that daemons starting
/// together do not race. Returns the warnings to log.
pub fn prepare(
    connection: &Connection,
    table: &TableName,
    schema: &Schema,
    keys: &[&str],
    partition: Option<&Partitioning>,
) -> Result<Vec<String>, PluginError> {
    connection
        .batch_execute("BEGIN")
        .map_err(|e| failure("starting the table setup", e))?;
    let result =
        prepare_in_transaction(connection, table, schema, keys, partition).and_then(|warnings| {
            connection
                .batch_execute("COMMIT")
                .map(|()| warnings)
                .map_err(|e| failure("committing the table setup", e))
        });
    if result.is_err() {
        // Best effort: a broken connection has no transaction left to roll back.
        let _ = connection.batch_execute("ROLLBACK");
    }
    result
}

fn prepare_in_transaction(
    connection: &Connection,
    table: &TableName,
    schema: &Schema,
    keys: &[&str],
    partition: Option<&Partitioning>,
) -> Result<Vec<String>, PluginError> {
    let lock = [PgValue::Text(sql::lock_key(table))];
    connection
        .execute(sql::LOCK_TABLE_SETUP, &lock)
        .map_err(|e| failure("locking the table setup", e))?;
    let kind = table_kind(connection, table)?;
    if let Some(problem) = kind_problem(table, kind.as_ref(), partition) {
        return Err(PluginError::InvalidConfig(problem));
    }
    let mut columns = table_columns(connection, table)?;
    if kind.is_none() {
        let partition_by = partition.map(|p| p.column.as_str());
        connection
            .batch_execute(&sql::create_table(table, schema, keys, partition_by))
            .map_err(|e| failure(&format!("creating table {table}"), e))?;
        match partition {
            None => sluice_plugin_sdk::info!(
                "created table {table} for schema {} version {}",
                schema.name,
                schema.version
            ),
            Some(p) => sluice_plugin_sdk::info!(
                "created table {table} for schema {} version {}, partitioned by range of {:?} every {}, keyed on ({})",
                schema.name,
                schema.version,
                p.column,
                p.interval,
                keys.join(", ")
            ),
        }
        columns = table_columns(connection, table)?;
    }
    let unique_keys = connection
        .query(sql::UNIQUE_KEYS, &[PgValue::Text(table.quoted())])
        .map_err(|e| failure(&format!("reading the unique indexes of {table}"), e))?
        .into_iter()
        .filter_map(|row| match row.into_iter().next() {
            Some(PgValue::Text(keys)) => Some(keys),
            _ => None,
        })
        .collect::<Vec<_>>();
    let evolution = plan(table, schema, keys, &columns, &unique_keys).map_err(|problems| {
        PluginError::InvalidConfig(format!(
            "table {table} cannot take schema {} version {}: {}",
            schema.name,
            schema.version,
            problems.join("; ")
        ))
    })?;
    if !evolution.add.is_empty() {
        connection
            .batch_execute(&sql::add_columns(table, &evolution.add))
            .map_err(|e| failure(&format!("adding columns to {table}"), e))?;
        for column in &evolution.add {
            sluice_plugin_sdk::info!(
                "added column {:?} ({}) to table {table} for schema {} version {}",
                column.name,
                pg_type(column.ty).0,
                schema.name,
                schema.version
            );
        }
    }
    Ok(evolution.warnings)
}

/// What an existing table is: its `relkind` (`r` plain, `p` partitioned) and the
/// columns of its partition key, comma-separated. `None` when it does not exist.
fn table_kind(
    connection: &Connection,
    table: &TableName,
) -> Result<Option<(String, Option<String>)>, PluginError> {
    let rows = connection
        .query(sql::TABLE_KIND, &[PgValue::Text(table.quoted())])
        .map_err(|e| failure(&format!("reading what {table} is"), e))?;
    Ok(rows.into_iter().next().map(|row| {
        let mut values = row.into_iter();
        let kind = match values.next() {
            Some(PgValue::Text(kind)) => kind,
            _ => String::new(),
        };
        let key = match values.next() {
            Some(PgValue::Text(key)) => Some(key),
            _ => None,
        };
        (kind, key)
    }))
}

/// Why an existing table (`kind`, from [`table_kind`]) does not fit the
/// configuration: a plain table under a partitioned config, or the reverse.
/// Nothing is converted behind the operator's back.
pub fn kind_problem(
    table: &TableName,
    kind: Option<&(String, Option<String>)>,
    partition: Option<&Partitioning>,
) -> Option<String> {
    let (kind, key) = kind?;
    match (kind.as_str(), partition) {
        ("r", Some(p)) => Some(format!(
            "table {table} exists as a plain table, but this writer's config partitions it by {:?}: Sluice does not \
             convert tables. Either remove `partition` from the writer's config to keep writing the plain table, or \
             set `table` to a new name for the partitioned table (and copy the old rows into it yourself, e.g. \
             INSERT INTO new SELECT * FROM old)",
            p.column
        )),
        ("p", None) => Some(format!(
            "table {table} is partitioned (by {}), but this writer's config has no `partition`: add \
             `partition = {{ column = \"{}\", interval = \"…\" }}` to the writer's config as the table is \
             partitioned, or set `table` to another table",
            key.as_deref().unwrap_or("an expression"),
            key.as_deref().unwrap_or("…"),
        )),
        ("p", Some(p)) if key.as_deref() != Some(p.column.as_str()) => Some(format!(
            "table {table} is partitioned by {}, but this writer's config partitions it by {:?}: set \
             `partition.column` to how the table is partitioned, or set `table` to another table",
            key.as_deref().unwrap_or("an expression"),
            p.column
        )),
        _ => None,
    }
}

/// The table's columns; none when the table does not exist.
fn table_columns(
    connection: &Connection,
    table: &TableName,
) -> Result<Vec<TableColumn>, PluginError> {
    let rows = connection
        .query(sql::TABLE_COLUMNS, &[PgValue::Text(table.quoted())])
        .map_err(|e| failure(&format!("reading the columns of {table}"), e))?;
    rows.into_iter()
        .map(|row| match row.as_slice() {
            [
                PgValue::Text(name),
                PgValue::Text(typname),
                PgValue::Text(shown_type),
                PgValue::Boolean(not_null),
                PgValue::Boolean(has_default),
            ] => Ok(TableColumn {
                name: name.clone(),
                typname: typname.clone(),
                shown_type: shown_type.clone(),
                not_null: *not_null,
                has_default: *has_default,
            }),
            other => Err(PluginError::Fatal(format!(
                "unexpected row reading the columns of {table}: {other:?}"
            ))),
        })
        .collect()
}

/// The plugin error for a failed setup step.
fn failure(doing: &str, error: PgError) -> PluginError {
    crate::plugin_error(doing, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::ColumnType;

    fn column(name: &str, ty: ColumnType, nullable: bool, key: bool) -> Column {
        Column {
            name: name.into(),
            ty,
            nullable,
            key,
        }
    }

    fn existing(name: &str, typname: &str, not_null: bool) -> TableColumn {
        TableColumn {
            name: name.into(),
            typname: typname.into(),
            shown_type: typname.into(),
            not_null,
            has_default: false,
        }
    }

    fn schema(columns: Vec<Column>) -> Schema {
        Schema {
            name: "cdr".into(),
            version: 2,
            columns,
        }
    }

    fn keys(schema: &Schema) -> Vec<&str> {
        sql::key_names(schema).collect()
    }

    fn table() -> TableName {
        TableName {
            schema: None,
            name: "cdr".into(),
        }
    }

    #[test]
    fn a_matching_table_needs_nothing() {
        let s = schema(vec![
            column("id", ColumnType::Int64, false, true),
            column("amount", ColumnType::Numeric, true, false),
        ]);
        let columns = [
            existing("id", "int8", true),
            TableColumn {
                shown_type: "numeric(10,2)".into(),
                ..existing("amount", "numeric", false)
            },
        ];
        assert_eq!(
            plan(&table(), &s, &keys(&s), &columns, &["id".into()]),
            Ok(Evolution::default())
        );
    }

    #[test]
    fn new_nullable_columns_are_added() {
        let s = schema(vec![
            column("id", ColumnType::Int64, false, true),
            column("note", ColumnType::Text, true, false),
            column("day", ColumnType::Date, true, false),
        ]);
        let evolution = plan(
            &table(),
            &s,
            &keys(&s),
            &[existing("id", "int8", true)],
            &["id".into()],
        )
        .unwrap();
        assert_eq!(
            evolution
                .add
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["note", "day"]
        );
    }

    #[test]
    fn incompatible_changes_are_all_reported() {
        let s = schema(vec![
            column("id", ColumnType::Int64, false, true),
            column("site", ColumnType::Text, false, true),
            column("amount", ColumnType::Float64, true, false),
            column("region", ColumnType::Text, false, false),
        ]);
        let columns = [
            existing("id", "int4", true),
            existing("site", "text", true),
            TableColumn {
                shown_type: "numeric(10,2)".into(),
                ..existing("amount", "numeric", false)
            },
        ];
        let problems = plan(&table(), &s, &keys(&s), &columns, &["id".into()]).unwrap_err();
        assert_eq!(
            problems,
            [
                r#"column "id" of table "cdr" has type int4, but the schema's int64 column maps to bigint"#,
                r#"column "amount" of table "cdr" has type numeric(10,2), but the schema's float64 column maps to double precision"#,
                r#"column "region" (text, not nullable) is missing from table "cdr": only nullable columns can be added to an existing table, so this is an incompatible schema change"#,
                r#"table "cdr" has no primary key or unique index on exactly the key columns (id,site), so writes could not be idempotent"#,
            ]
        );
    }

    #[test]
    fn a_unique_index_on_the_keys_in_any_order_will_do() {
        let s = schema(vec![
            column("site", ColumnType::Text, false, true),
            column("id", ColumnType::Int64, false, true),
        ]);
        let columns = [existing("id", "int8", true), existing("site", "text", true)];
        assert!(plan(&table(), &s, &keys(&s), &columns, &["id".into()]).is_err());
        assert!(plan(&table(), &s, &keys(&s), &columns, &["id,site,x".into()]).is_err());
        assert!(
            plan(
                &table(),
                &s,
                &keys(&s),
                &columns,
                &["id".into(), "id,site".into()]
            )
            .is_ok()
        );
    }

    #[test]
    fn warns_about_columns_that_will_refuse_rows() {
        let s = schema(vec![
            column("id", ColumnType::Int64, false, true),
            column("note", ColumnType::Text, true, false),
        ]);
        let columns = [
            existing("id", "int8", true),
            existing("note", "text", true),
            existing("legacy", "text", true),
            TableColumn {
                has_default: true,
                ..existing("created", "timestamptz", true)
            },
        ];
        let evolution = plan(&table(), &s, &keys(&s), &columns, &["id".into()]).unwrap();
        assert_eq!(evolution.warnings.len(), 2, "{:?}", evolution.warnings);
        assert!(evolution.warnings[0].contains(r#""note""#));
        assert!(evolution.warnings[1].contains(r#""legacy""#));
    }

    #[test]
    fn an_existing_table_of_the_other_kind_is_refused_with_what_to_do() {
        let partition =
            crate::partition::tests::parse(r#"{"column": "at", "interval": "1 day"}"#).unwrap();
        let plain = ("r".to_string(), None);
        let by_at = ("p".to_string(), Some("at".to_string()));
        let by_id = ("p".to_string(), Some("id".to_string()));
        assert_eq!(kind_problem(&table(), None, Some(&partition)), None);
        assert_eq!(kind_problem(&table(), Some(&plain), None), None);
        assert_eq!(kind_problem(&table(), Some(&by_at), Some(&partition)), None);
        let refused = kind_problem(&table(), Some(&plain), Some(&partition)).unwrap();
        assert!(refused.starts_with(r#"table "cdr" exists as a plain table, but this writer's config partitions it by "at""#), "{refused}");
        assert!(refused.contains("remove `partition`"), "{refused}");
        let refused = kind_problem(&table(), Some(&by_at), None).unwrap();
        assert!(refused.contains(r#"is partitioned (by at), but this writer's config has no `partition`: add `partition = { column = "at""#), "{refused}");
        let refused = kind_problem(&table(), Some(&by_id), Some(&partition)).unwrap();
        assert!(
            refused
                .contains("is partitioned by id, but this writer's config partitions it by \"at\""),
            "{refused}"
        );
    }

    #[test]
    fn schema_problems_are_all_reported() {
        let long = "a".repeat(64);
        let s = schema(vec![
            column("a", ColumnType::Int64, false, false),
            column(&long, ColumnType::Text, true, false),
        ]);
        assert_eq!(
            schema_problems(&s),
            [
                "no key column".to_string(),
                format!(
                    "column name {long:?} is longer than 63 bytes, which Postgres would truncate"
                )
            ]
        );
        assert!(
            schema_problems(&schema(vec![column("id", ColumnType::Int64, false, true)])).is_empty()
        );
    }
}
