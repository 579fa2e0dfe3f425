//! Metadata carried from records into the dataset: typed values, the fields asked for, and the mapping shared by
//! the record formats (JSONL, CSV, Parquet) from a record to a document.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The type of a metadata column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int64,
    Float64,
    Bool,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
}

impl FieldType {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" | "str" | "utf8" => FieldType::String,
            "int64" | "int" | "integer" | "i64" => FieldType::Int64,
            "float64" | "float" | "double" | "f64" => FieldType::Float64,
            "bool" | "boolean" => FieldType::Bool,
            "timestamp" | "datetime" => FieldType::Timestamp,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int64 => "int64",
            FieldType::Float64 => "float64",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    String(String),
    Int64(i64),
    Float64(f64),
    Bool(bool),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

impl Value {
    pub fn field_type(&self) -> Option<FieldType> {
        Some(match self {
            Value::Null => return None,
            Value::String(_) => FieldType::String,
            Value::Int64(_) => FieldType::Int64,
            Value::Float64(_) => FieldType::Float64,
            Value::Bool(_) => FieldType::Bool,
            Value::Timestamp(_) => FieldType::Timestamp,
        })
    }

    /// The value as `to`, if it is one: numbers widen to float, strings parse as the type (CSV has only strings),
    /// timestamps are RFC 3339 / ISO 8601 strings, dates, or integer seconds since the epoch. `None` for a value
    /// that is not of the type.
    pub fn convert(self, to: FieldType) -> Option<Value> {
        Some(match (to, self) {
            (_, Value::Null) => Value::Null,
            (FieldType::String, Value::String(s)) => Value::String(s),
            (FieldType::String, Value::Int64(n)) => Value::String(n.to_string()),
            (FieldType::String, Value::Float64(x)) => Value::String(x.to_string()),
            (FieldType::String, Value::Bool(b)) => Value::String(b.to_string()),
            (FieldType::String, Value::Timestamp(t)) => Value::String(format_timestamp(t)),
            (FieldType::Int64, Value::Int64(n)) => Value::Int64(n),
            (FieldType::Int64, Value::String(s)) => Value::Int64(s.trim().parse().ok()?),
            (FieldType::Int64, Value::Float64(x)) if x.fract() == 0.0 && x.abs() < 9.0e15 => Value::Int64(x as i64),
            // NaN is no value (and never equals itself, which would make every run see a change).
            (FieldType::Float64, Value::Float64(x)) if x.is_nan() => Value::Null,
            (FieldType::Float64, Value::Float64(x)) => Value::Float64(x),
            (FieldType::Float64, Value::Int64(n)) => Value::Float64(n as f64),
            (FieldType::Float64, Value::String(s)) => {
                let x: f64 = s.trim().parse().ok()?;
                if x.is_nan() { Value::Null } else { Value::Float64(x) }
            }
            (FieldType::Bool, Value::Bool(b)) => Value::Bool(b),
            (FieldType::Bool, Value::String(s)) => Value::Bool(match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => true,
                "false" | "no" | "0" => false,
                _ => return None,
            }),
            (FieldType::Timestamp, Value::Timestamp(t)) => Value::Timestamp(t),
            (FieldType::Timestamp, Value::Int64(seconds)) => Value::Timestamp(seconds.checked_mul(1_000_000)?),
            (FieldType::Timestamp, Value::String(s)) => Value::Timestamp(parse_timestamp(&s)?),
            _ => return None,
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::String(_) => "a string",
            Value::Int64(_) => "an integer",
            Value::Float64(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Timestamp(_) => "a timestamp",
        }
    }
}

/// RFC 3339 (`2024-05-01T12:00:00Z`, any offset), a date and time without offset (taken as UTC, `T` or space), or a
/// date (`2024-05-01`, midnight UTC): microseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros())
}

/// RFC 3339 in UTC, for messages and string conversion.
pub fn format_timestamp(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map_or_else(|| format!("{micros}µs"), |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// A metadata field asked for: `--metadata FIELD[:TYPE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: String,
    /// Without one, the type is the record's own: Parquet's column type, JSON's value type, CSV's string.
    pub field_type: Option<FieldType>,
}

/// The metadata fields a run carries: `--metadata` (repeatable), `'*'` for every scalar field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataSpec {
    pub fields: Vec<FieldSpec>,
    /// `'*'`: every scalar field of every record (other than its text and id).
    pub all: bool,
}

/// A malformed `--metadata` value or a field that clashes with a built-in column.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error(
        "{0:?}: expected FIELD or FIELD:TYPE, TYPE one of string, int64, float64, bool, timestamp (a field whose name \
         has a colon takes a type: dc:title:string)"
    )]
    Syntax(String),
    #[error("{field:?} is the name of a built-in column ({builtins}): rename it in the input, or leave it out")]
    Reserved { field: String, builtins: String },
    #[error("{0:?} is asked for twice")]
    Duplicate(String),
}

/// Columns every dataset has (the chunk rows' and the documents table's): a metadata field may not take their names.
pub const RESERVED: &[&str] = &[
    "row_id",
    "id",
    "doc",
    "chunk_index",
    "start",
    "end",
    "tokens",
    "text",
    "hash",
    "embedding",
    "page",
    "file",
    "format",
    "size",
    "modified",
    "mtime_ns",
    "title",
    "stat_trusted",
    "content_hash",
    "rows",
    "missing",
];

impl MetadataSpec {
    /// From `--metadata` values (or the pipeline file's `input.metadata`), checked.
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, MetadataError> {
        let mut spec = MetadataSpec::default();
        for value in values {
            let value = value.as_ref().trim();
            if value == "*" {
                spec.all = true;
                continue;
            }
            let (name, field_type) = match value.rsplit_once(':') {
                Some((name, t)) => {
                    (name.trim(), Some(FieldType::parse(t.trim()).ok_or_else(|| MetadataError::Syntax(value.into()))?))
                }
                None => (value, None),
            };
            if name.is_empty() {
                return Err(MetadataError::Syntax(value.into()));
            }
            if RESERVED.contains(&name) {
                return Err(MetadataError::Reserved { field: name.into(), builtins: RESERVED.join(", ") });
            }
            if spec.fields.iter().any(|f| f.name == name) {
                return Err(MetadataError::Duplicate(name.into()));
            }
            spec.fields.push(FieldSpec { name: name.to_owned(), field_type });
        }
        Ok(spec)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && !self.all
    }

    /// The spec as `--metadata` values, sorted: what the manifest records, to tell when it changes.
    pub fn to_strings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .fields
            .iter()
            .map(|f| match f.field_type {
                Some(t) => format!("{}:{t}", f.name),
                None => f.name.clone(),
            })
            .collect();
        if self.all {
            out.push("*".to_owned());
        }
        out.sort();
        out
    }

    pub fn declared(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Whether a record's field `name` is carried (its text and id fields never are, they have their columns).
    pub fn wants(&self, name: &str) -> bool {
        self.declared(name).is_some() || (self.all && !RESERVED.contains(&name))
    }
}

/// A document's metadata fields, by name.
pub type Fields = BTreeMap<Arc<str>, Value>;

/// A field of one record that could not be carried as asked: it is null in the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {:?} {}", self.field, self.problem)
    }
}

/// How a run maps the records of JSONL, CSV and Parquet inputs to documents: which field holds the text, which
/// the id, and which are metadata, with the type each metadata field has in this run (declared, or the first value
/// seen, or the dataset's from before).
#[derive(Debug, Clone)]
pub struct RecordMapping {
    pub text_field: String,
    pub id_field: Option<String>,
    pub metadata: MetadataSpec,
    /// The type each field has in the dataset: declared, the dataset's from an earlier run, or the first value's.
    /// Shared by the clones of a mapping (one per file read), so a type is fixed once per run, not once per file.
    types: Arc<std::sync::Mutex<BTreeMap<String, FieldType>>>,
}

impl Default for RecordMapping {
    fn default() -> Self {
        Self::new("text".to_owned(), None, MetadataSpec::default(), BTreeMap::new())
    }
}

impl RecordMapping {
    /// `known` are the field types the dataset has already (declared types take precedence).
    pub fn new(
        text_field: String,
        id_field: Option<String>,
        metadata: MetadataSpec,
        known: BTreeMap<String, FieldType>,
    ) -> Self {
        let mut types: BTreeMap<String, FieldType> =
            known.into_iter().filter(|(name, _)| metadata.wants(name)).collect();
        for field in &metadata.fields {
            if let Some(t) = field.field_type {
                types.insert(field.name.clone(), t);
            }
        }
        Self { text_field, id_field, metadata, types: Arc::new(std::sync::Mutex::new(types)) }
    }

    /// The mapping with the types a dataset's fields have already, for fields this run does not declare.
    pub fn with_known_types(self, known: &BTreeMap<String, FieldType>) -> Self {
        if let Ok(mut types) = self.types.lock() {
            for (name, t) in known {
                if self.metadata.wants(name) && self.declared_type(name).is_none() {
                    types.insert(name.clone(), *t);
                }
            }
        }
        self
    }

    /// The type each field has in this run so far; a field asked for by name and never seen with a value is a
    /// string (it still has its column).
    pub fn field_types(&self) -> BTreeMap<String, FieldType> {
        let mut types = self.types.lock().map(|t| t.clone()).unwrap_or_default();
        for field in &self.metadata.fields {
            types.entry(field.name.clone()).or_insert(FieldType::String);
        }
        types
    }

    fn declared_type(&self, name: &str) -> Option<FieldType> {
        self.metadata.declared(name).and_then(|f| f.field_type)
    }

    /// Whether a record field is carried as metadata.
    pub fn carries(&self, name: &str) -> bool {
        name != self.text_field && self.id_field.as_deref() != Some(name) && self.metadata.wants(name)
    }

    /// Stores `value` for `name` in `fields`, converted to the field's type (fixed by the first value when it was
    /// not declared). A value that does not convert is null, and the problem is returned for the report.
    pub fn put(&mut self, fields: &mut Fields, name: &str, value: Value) -> Option<FieldProblem> {
        let key: Arc<str> = Arc::from(name);
        let Some(found) = value.field_type() else {
            fields.insert(key, Value::Null);
            return None;
        };
        let to = match self.types.lock() {
            Ok(mut types) => {
                let to = types.entry(name.to_owned()).or_insert(found);
                // JSON has one kind of number: an undeclared field that met an integer first widens to float.
                if *to == FieldType::Int64 && found == FieldType::Float64 && self.declared_type(name).is_none() {
                    *to = FieldType::Float64;
                }
                *to
            }
            Err(_) => found,
        };
        let kind = value.kind();
        let text = match &value {
            Value::String(s) => Some(s.chars().take(40).collect::<String>()),
            _ => None,
        };
        match value.convert(to) {
            Some(converted) => {
                fields.insert(key, converted);
                None
            }
            None => {
                fields.insert(key, Value::Null);
                let shown = text.map_or_else(|| kind.to_owned(), |t| format!("{t:?}"));
                Some(FieldProblem { field: name.to_owned(), problem: format!("is {shown}, not {to}: stored as null") })
            }
        }
    }

    /// The fields asked for by name that `fields` lacks (null in the dataset), to report.
    fn missing(&self, fields: &Fields) -> Vec<FieldProblem> {
        let missing = self.metadata.fields.iter().filter(|spec| !fields.contains_key(spec.name.as_str()));
        missing
            .map(|spec| FieldProblem { field: spec.name.clone(), problem: "is missing: stored as null".into() })
            .collect()
    }
}

impl RecordMapping {
    /// The metadata of one record from its fields (name and value, in the record's order): those carried, converted
    /// to their types, and null for each field asked for by name that the record lacks. Problems are for the report.
    pub fn collect<'a>(&mut self, record: impl Iterator<Item = (&'a str, Value)>) -> (Fields, Vec<FieldProblem>) {
        let mut fields = Fields::new();
        let mut problems = Vec::new();
        if self.metadata.is_empty() {
            return (fields, problems);
        }
        for (name, value) in record {
            if self.carries(name) {
                problems.extend(self.put(&mut fields, name, value));
            }
        }
        problems.extend(self.missing(&fields));
        // Null and absent are one thing (the documents table has a null wherever a record lacks a field): only
        // values are kept, so a record compares equal to itself read back from the table.
        fields.retain(|_, v| *v != Value::Null);
        (fields, problems)
    }
}

/// The items of one record: a note per metadata problem, then its document.
pub(super) fn record_items(
    document: super::Document,
    problems: Vec<FieldProblem>,
) -> impl Iterator<Item = super::SourceItem> {
    let origin = document.origin.clone();
    problems
        .into_iter()
        .map(move |problem| super::SourceItem::FieldProblem { origin: origin.clone(), problem })
        .chain(std::iter::once(super::SourceItem::Document(document)))
}

impl Value {
    /// Row `i` of an Arrow column of one of the types values are read as (`Utf8`, `Int64`, `Float64`, `Boolean`,
    /// microsecond timestamps); `None` for a column of another type.
    pub fn from_arrow(column: &arrow::array::ArrayRef, i: usize) -> Option<Value> {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
        if column.is_null(i) {
            return Some(Value::Null);
        }
        Some(match column.data_type() {
            DataType::Utf8 => Value::String(column.as_string::<i32>().value(i).to_owned()),
            DataType::Int64 => Value::Int64(column.as_primitive::<Int64Type>().value(i)),
            DataType::Float64 => {
                let x = column.as_primitive::<Float64Type>().value(i);
                if x.is_nan() { Value::Null } else { Value::Float64(x) }
            }
            DataType::Boolean => Value::Bool(column.as_boolean().value(i)),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Value::Timestamp(column.as_primitive::<TimestampMicrosecondType>().value(i))
            }
            _ => return None,
        })
    }
}

/// JSON to a metadata value: scalars as they are, arrays and objects as their JSON text.
pub fn from_json(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int64(i),
            None => n.as_f64().map_or(Value::Null, Value::Float64),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_builtin_names() {
        let spec = MetadataSpec::parse(&["title_x", "year:int64", "score_x:Float", "*"]).expect("valid");
        assert!(spec.all);
        assert_eq!(spec.fields[1], FieldSpec { name: "year".into(), field_type: Some(FieldType::Int64) });
        assert_eq!(spec.fields[2].field_type, Some(FieldType::Float64));
        assert!(matches!(MetadataSpec::parse(&["title"]), Err(MetadataError::Reserved { .. })));
        assert!(matches!(MetadataSpec::parse(&["year:decimal"]), Err(MetadataError::Syntax(_))));
        assert!(matches!(MetadataSpec::parse(&["a", "a:int64"]), Err(MetadataError::Duplicate(_))));
        assert!(matches!(MetadataSpec::parse(&[":int64"]), Err(MetadataError::Syntax(_))));
    }

    #[test]
    fn values_convert_to_declared_types_or_are_refused() {
        assert_eq!(Value::String("42".into()).convert(FieldType::Int64), Some(Value::Int64(42)));
        assert_eq!(Value::Int64(3).convert(FieldType::Float64), Some(Value::Float64(3.0)));
        assert_eq!(Value::String("yes".into()).convert(FieldType::Bool), Some(Value::Bool(true)));
        assert_eq!(Value::String("soon".into()).convert(FieldType::Timestamp), None);
        assert_eq!(Value::Float64(1.5).convert(FieldType::Int64), None);
        assert_eq!(
            Value::String("2024-05-01".into()).convert(FieldType::Timestamp),
            Some(Value::Timestamp(1_714_521_600_000_000))
        );
        assert_eq!(parse_timestamp("2024-05-01T02:00:00+02:00"), Some(1_714_521_600_000_000));
        assert_eq!(parse_timestamp("2024-05-01 00:00:00.5"), Some(1_714_521_600_500_000));
        assert_eq!(format_timestamp(1_714_521_600_000_000), "2024-05-01T00:00:00Z");
    }

    #[test]
    fn an_undeclared_field_takes_its_first_values_type() {
        let spec = MetadataSpec::parse(&["*"]).expect("valid");
        let mut mapping = RecordMapping::new("text".into(), Some("id".into()), spec, BTreeMap::new());
        assert!(!mapping.carries("text") && !mapping.carries("id") && mapping.carries("year"));
        let mut fields = Fields::new();
        assert_eq!(mapping.put(&mut fields, "year", Value::Int64(2020)), None);
        let problem = mapping.put(&mut fields, "year", Value::String("unknown".into())).expect("refused");
        assert_eq!(problem.to_string(), r#"field "year" is "unknown", not int64: stored as null"#);
        assert_eq!(fields["year"], Value::Null);
        assert_eq!(mapping.field_types()["year"], FieldType::Int64);
        // A clone (another file of the run) shares the types fixed so far; JSON numbers widen to float.
        let mut other = mapping.clone();
        assert!(other.put(&mut fields, "year", Value::Float64(2.5)).is_none());
        assert_eq!(mapping.field_types()["year"], FieldType::Float64);
        assert_eq!(other.put(&mut fields, "score_x", Value::String("NaN".into())), None);
        assert_eq!(Value::String("NaN".into()).convert(FieldType::Float64), Some(Value::Null));
    }
}
