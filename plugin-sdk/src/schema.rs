//! Schemas: the named, versioned columns a source declares and writers store.

use std::fmt;
use std::str::FromStr;

/// The type of a column. Each type has a fixed encoding in a [`RowBatch`](crate::rows::RowBatch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// true or false.
    Boolean,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// IEEE 754 double.
    Float64,
    /// Arbitrary-precision decimal, carried as its decimal text (`-12.340`).
    Numeric,
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
    /// An instant, in microseconds since 1970-01-01T00:00:00Z.
    Timestamp,
    /// A calendar date, in days since 1970-01-01.
    Date,
    /// A UUID (16 bytes).
    Uuid,
    /// A JSON document, carried as its text.
    Json,
}

impl ColumnType {
    /// Every column type, in the order of the WIT enum.
    pub const ALL: [ColumnType; 11] = [
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

    /// The name used in configuration files (`"bool"`, `"int32"`, `"timestamp"`...).
    ///
    /// ```
    /// use sluice_plugin_sdk::ColumnType;
    /// assert_eq!(ColumnType::Boolean.as_str(), "bool");
    /// assert_eq!("boolean".parse::<ColumnType>(), Ok(ColumnType::Boolean));
    /// assert_eq!("int64".parse::<ColumnType>(), Ok(ColumnType::Int64));
    /// assert!("int".parse::<ColumnType>().is_err());
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            ColumnType::Boolean => "bool",
            ColumnType::Int32 => "int32",
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Numeric => "numeric",
            ColumnType::Text => "text",
            ColumnType::Bytes => "bytes",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Date => "date",
            ColumnType::Uuid => "uuid",
            ColumnType::Json => "json",
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown column type name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownColumnType(pub String);

impl fmt::Display for UnknownColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown type {:?} (expected one of ", self.0)?;
        for (i, ty) in ColumnType::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(ty.as_str())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownColumnType {}

impl FromStr for ColumnType {
    type Err = UnknownColumnType;

    /// Parses the names of [`ColumnType::as_str`]; `"boolean"` is accepted for `"bool"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "bool" | "boolean" => ColumnType::Boolean,
            "int32" => ColumnType::Int32,
            "int64" => ColumnType::Int64,
            "float64" => ColumnType::Float64,
            "numeric" => ColumnType::Numeric,
            "text" => ColumnType::Text,
            "bytes" => ColumnType::Bytes,
            "timestamp" => ColumnType::Timestamp,
            "date" => ColumnType::Date,
            "uuid" => ColumnType::Uuid,
            "json" => ColumnType::Json,
            other => return Err(UnknownColumnType(other.to_owned())),
        })
    }
}

/// One column of a schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name: lowercase ASCII letters, digits and `_`, starting with a letter.
    pub name: String,
    /// The column's type.
    pub ty: ColumnType,
    /// Whether the column may hold null. Key columns are never nullable.
    pub nullable: bool,
    /// Whether the column is part of the key: writers make writes idempotent on it.
    pub key: bool,
}

/// The shape of the rows a source produces: a named, versioned list of columns.
///
/// A new version may add nullable columns at the end; any other change is
/// incompatible and pauses the pipeline.
///
/// ```
/// use sluice_plugin_sdk::{ColumnType, Schema};
///
/// let schema = Schema::new("cdr", 1)
///     .key("call_id", ColumnType::Text)
///     .required("started_at", ColumnType::Timestamp)
///     .column("cost", ColumnType::Numeric);
/// assert_eq!(schema.validate(), Ok(()));
/// assert_eq!(schema.key_columns().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["call_id"]);
/// assert!(schema.columns[2].nullable);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// Name of the data set, used by writers as the table name by default.
    pub name: String,
    /// Version of the schema, increasing with each change.
    pub version: u32,
    /// Columns, in the order rows carry their values. At least one is a key column.
    pub columns: Vec<Column>,
}

impl Schema {
    /// A schema without columns; add them with [`key`](Self::key),
    /// [`required`](Self::required) and [`column`](Self::column).
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        Schema {
            name: name.into(),
            version,
            columns: Vec::new(),
        }
    }

    /// Adds a key column (never nullable).
    pub fn key(self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.push(name.into(), ty, false, true)
    }

    /// Adds a nullable column.
    pub fn column(self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.push(name.into(), ty, true, false)
    }

    /// Adds a column that is not nullable and not part of the key.
    pub fn required(self, name: impl Into<String>, ty: ColumnType) -> Self {
        self.push(name.into(), ty, false, false)
    }

    fn push(mut self, name: String, ty: ColumnType, nullable: bool, key: bool) -> Self {
        self.columns.push(Column {
            name,
            ty,
            nullable,
            key,
        });
        self
    }

    /// The key columns, in schema order.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> + '_ {
        self.columns.iter().filter(|c| c.key)
    }

    /// The column types in schema order, as [`RowReader`](crate::rows::RowReader) takes them.
    pub fn column_types(&self) -> Vec<ColumnType> {
        self.columns.iter().map(|c| c.ty).collect()
    }

    /// Whether `name` is a valid schema or column name: a lowercase ASCII letter,
    /// then lowercase ASCII letters, digits and `_` (so it is a plain SQL identifier).
    pub fn is_valid_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        matches!(bytes.next(), Some(b'a'..=b'z'))
            && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
    }

    /// Checks the rules every schema follows: valid and unique names, at least one
    /// key column, key columns not nullable. Reports every problem, separated by `; `.
    ///
    /// ```
    /// use sluice_plugin_sdk::{ColumnType, Schema};
    ///
    /// let bad = Schema::new("cdr", 1).column("Call", ColumnType::Text);
    /// assert_eq!(
    ///     bad.validate(),
    ///     Err("column 0: invalid name \"Call\" (use a lowercase ASCII letter, then \
    ///          lowercase ASCII letters, digits or _); no key column".to_owned())
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        const RULE: &str =
            "use a lowercase ASCII letter, then lowercase ASCII letters, digits or _";
        let mut problems = Vec::new();
        if !Self::is_valid_name(&self.name) {
            problems.push(format!("invalid schema name {:?} ({RULE})", self.name));
        }
        for (i, column) in self.columns.iter().enumerate() {
            if !Self::is_valid_name(&column.name) {
                problems.push(format!(
                    "column {i}: invalid name {:?} ({RULE})",
                    column.name
                ));
            } else if self.columns[..i].iter().any(|c| c.name == column.name) {
                problems.push(format!("column {i}: duplicate name {:?}", column.name));
            }
            if column.key && column.nullable {
                problems.push(format!(
                    "column {i} ({}): a key column cannot be nullable",
                    column.name
                ));
            }
        }
        if !self.columns.iter().any(|c| c.key) {
            problems.push("no key column".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_type_names_round_trip() {
        for ty in ColumnType::ALL {
            assert_eq!(ty.as_str().parse::<ColumnType>(), Ok(ty));
            assert_eq!(ty.to_string(), ty.as_str());
        }
        assert_eq!("boolean".parse::<ColumnType>(), Ok(ColumnType::Boolean));
        let err = "int".parse::<ColumnType>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown type \"int\" (expected one of bool, int32,"),
            "{err}"
        );
    }

    #[test]
    fn builder_sets_nullability_and_key() {
        let s = Schema::new("t", 2)
            .key("a", ColumnType::Int64)
            .required("b", ColumnType::Text)
            .column("c", ColumnType::Json);
        let flags: Vec<_> = s.columns.iter().map(|c| (c.nullable, c.key)).collect();
        assert_eq!(flags, [(false, true), (false, false), (true, false)]);
        assert_eq!(
            s.column_types(),
            [ColumnType::Int64, ColumnType::Text, ColumnType::Json]
        );
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut s = Schema::new("9cdr", 1)
            .column("a", ColumnType::Text)
            .column("a", ColumnType::Text)
            .column("b-c", ColumnType::Text)
            .column("", ColumnType::Text);
        let err = s.validate().unwrap_err();
        assert!(err.contains("invalid schema name \"9cdr\""), "{err}");
        assert!(err.contains("column 1: duplicate name \"a\""), "{err}");
        assert!(err.contains("column 2: invalid name \"b-c\""), "{err}");
        assert!(err.contains("column 3: invalid name \"\""), "{err}");
        assert!(err.ends_with("no key column"), "{err}");

        s = Schema::new("cdr", 1).key("id", ColumnType::Uuid);
        s.columns[0].nullable = true;
        assert_eq!(
            s.validate(),
            Err("column 0 (id): a key column cannot be nullable".to_owned())
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "abc_1", "z9_"] {
            assert!(Schema::is_valid_name(ok), "{ok}");
        }
        for bad in ["", "_a", "1a", "aB", "a-b", "a b", "é"] {
            assert!(!Schema::is_valid_name(bad), "{bad}");
        }
    }
}
