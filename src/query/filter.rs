//! `--filter EXPR`: a small SQL-like predicate over a dataset's documents and chunks.
//!
//! ```text
//! expr    := and (OR and)*
//! and     := unary (AND unary)*
//! unary   := NOT unary | '(' expr ')' | test
//! test    := column op literal | column [NOT] IN '(' literal, ... ')' | column [NOT] LIKE 'pattern'
//!          | column IS [NOT] NULL
//! op      := = | != | <> | < | <= | > | >=
//! column  := name | "quoted name"
//! literal := 'string' | number | TRUE | FALSE
//! ```
//!
//! Keywords are case-insensitive. Columns are the built-ins ([`BUILTINS`]) and the dataset's metadata fields;
//! literals are checked against the column's type when the filter is parsed, and timestamps are written as strings
//! (`modified >= '2024-05-01'`). Comparisons follow SQL's three-valued logic: a null value matches no comparison,
//! only `IS NULL` (so `NOT (year > 2000)` does not match a document without a year). Errors say where in the
//! expression they are.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::source::meta::parse_timestamp;
use crate::source::{FieldType, Value};
use crate::store::DocRecord;

/// Columns every dataset has, and their types. `page` and `chunk_index` are the chunk's; the rest its document's.
pub const BUILTINS: &[(&str, FieldType)] = &[
    ("doc", FieldType::String),
    ("file", FieldType::String),
    ("format", FieldType::String),
    ("title", FieldType::String),
    ("modified", FieldType::Timestamp),
    ("size", FieldType::Int64),
    ("page", FieldType::Int64),
    ("chunk_index", FieldType::Int64),
];

/// Longest filter accepted, in bytes (a server takes filters from clients).
pub const MAX_FILTER_BYTES: usize = 8192;
/// Deepest nesting accepted (the parser recurses).
const MAX_DEPTH: usize = 64;

/// A filter that does not parse or does not fit the dataset's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub message: String,
    /// The expression, and the byte range of the part at fault.
    pub expr: String,
    pub span: (usize, usize),
}

impl FilterError {
    /// Where the part at fault starts, in characters from 1.
    pub fn column(&self) -> usize {
        self.expr.get(..self.span.0.min(self.expr.len())).map_or(0, |s| s.chars().count()) + 1
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (start, end) = self.span;
        let column = self.column() - 1;
        let width = self.expr.get(start..end).map_or(1, |s| s.chars().count().max(1));
        write!(
            f,
            "--filter at column {}: {}\n  {}\n  {}{}",
            column + 1,
            self.message,
            self.expr,
            " ".repeat(column),
            "^".repeat(width)
        )
    }
}

impl std::error::Error for FilterError {}

/// A column a filter can name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    Doc,
    File,
    Format,
    Title,
    Modified,
    Size,
    Page,
    ChunkIndex,
    /// A metadata field.
    Field(Arc<str>),
}

impl Column {
    /// Whether the column is the chunk's rather than its document's.
    pub fn per_chunk(&self) -> bool {
        matches!(self, Column::Page | Column::ChunkIndex)
    }
}

/// The columns of a dataset, by name, with their types.
#[derive(Debug, Clone)]
pub struct Columns(BTreeMap<String, (Column, FieldType)>);

impl Columns {
    /// The built-ins and the metadata fields of a dataset (from its manifest). A metadata field named `mtime` is
    /// that field; otherwise `mtime` is `modified`.
    pub fn new(metadata: &BTreeMap<String, FieldType>) -> Self {
        let mut map = BTreeMap::new();
        for (name, ty) in BUILTINS {
            let column = match *name {
                "doc" => Column::Doc,
                "file" => Column::File,
                "format" => Column::Format,
                "title" => Column::Title,
                "modified" => Column::Modified,
                "size" => Column::Size,
                "page" => Column::Page,
                _ => Column::ChunkIndex,
            };
            map.insert((*name).to_owned(), (column, *ty));
        }
        map.insert("mtime".to_owned(), (Column::Modified, FieldType::Timestamp));
        for (name, ty) in metadata {
            map.insert(name.clone(), (Column::Field(Arc::from(name.as_str())), *ty));
        }
        Self(map)
    }

    fn get(&self, name: &str) -> Option<&(Column, FieldType)> {
        self.0.get(name)
    }

    /// `name (type)` of every column, for telling a model what its filters may use.
    pub fn listing(&self) -> String {
        self.0.iter().map(|(name, (_, ty))| format!("{name} ({})", ty.name())).collect::<Vec<_>>().join(", ")
    }

    fn names(&self) -> String {
        self.0.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A checked filter, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare { column: Column, op: Op, value: Value },
    In { column: Column, values: Vec<Value>, negated: bool },
    Like { column: Column, pattern: Vec<LikePart>, negated: bool },
    IsNull { column: Column, negated: bool },
}

/// A piece of a `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LikePart {
    Literal(String),
    /// `_`
    AnyChar,
    /// `%`
    AnyRun,
}

/// The values of one chunk's columns, as a filter reads them.
pub struct Row<'a> {
    pub doc: &'a DocRecord,
    pub page: Option<u32>,
    pub chunk_index: Option<u32>,
}

impl Filter {
    /// Parses every expression and joins them with AND (`--filter` repeated).
    pub fn parse_all<S: AsRef<str>>(exprs: &[S], columns: &Columns) -> Result<Option<Filter>, FilterError> {
        let mut joined: Option<Filter> = None;
        for expr in exprs {
            let filter = Filter::parse(expr.as_ref(), columns)?;
            joined = Some(match joined {
                Some(before) => Filter::And(Box::new(before), Box::new(filter)),
                None => filter,
            });
        }
        Ok(joined)
    }

    pub fn parse(expr: &str, columns: &Columns) -> Result<Filter, FilterError> {
        let error = |message: String, span: (usize, usize)| FilterError { message, expr: expr.to_owned(), span };
        if expr.len() > MAX_FILTER_BYTES {
            return Err(error(format!("longer than {MAX_FILTER_BYTES} bytes"), (0, 0)));
        }
        let tokens = lex(expr).map_err(|(message, span)| error(message, span))?;
        let mut parser = Parser { tokens, at: 0, columns, end: expr.len(), depth: 0 };
        let filter = parser.or().map_err(|(message, span)| error(message, span))?;
        if let Some(token) = parser.tokens.get(parser.at) {
            return Err(error(format!("unexpected {} after a complete filter", token.kind), token.span));
        }
        Ok(filter)
    }

    /// Whether the filter reads a chunk's own columns (so it must be evaluated per chunk, not per document).
    pub fn per_chunk(&self) -> bool {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => a.per_chunk() || b.per_chunk(),
            Filter::Not(a) => a.per_chunk(),
            Filter::Compare { column, .. }
            | Filter::In { column, .. }
            | Filter::Like { column, .. }
            | Filter::IsNull { column, .. } => column.per_chunk(),
        }
    }

    /// Whether `row` matches (SQL's unknown counts as no).
    pub fn matches(&self, row: &Row<'_>) -> bool {
        self.eval(row) == Some(true)
    }

    /// Three-valued: `None` is SQL's unknown.
    fn eval(&self, row: &Row<'_>) -> Option<bool> {
        match self {
            Filter::And(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Filter::Or(a, b) => match (a.eval(row), b.eval(row)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Filter::Not(a) => a.eval(row).map(|b| !b),
            Filter::IsNull { column, negated } => Some(value(row, column).is_none() != *negated),
            Filter::Compare { column, op, value: wanted } => {
                let ordering = compare(&value(row, column)?, wanted)?;
                Some(match op {
                    Op::Eq => ordering.is_eq(),
                    Op::Ne => ordering.is_ne(),
                    Op::Lt => ordering.is_lt(),
                    Op::Le => ordering.is_le(),
                    Op::Gt => ordering.is_gt(),
                    Op::Ge => ordering.is_ge(),
                })
            }
            Filter::In { column, values, negated } => {
                let got = value(row, column)?;
                let found = values.iter().any(|v| compare(&got, v).is_some_and(|o| o.is_eq()));
                Some(found != *negated)
            }
            Filter::Like { column, pattern, negated } => match value(row, column)? {
                Value::String(s) => Some(like(&s, pattern) != *negated),
                _ => None,
            },
        }
    }
}

/// The value of `column` for `row`; `None` for null.
fn value(row: &Row<'_>, column: &Column) -> Option<Value> {
    let doc = row.doc;
    Some(match column {
        Column::Doc => Value::String(doc.doc.clone()),
        Column::File => Value::String(doc.file.clone()),
        Column::Format => Value::String(doc.format?.name().to_owned()),
        Column::Title => Value::String(doc.title.clone()?),
        Column::Modified if doc.mtime_ns == 0 => return None,
        Column::Modified => Value::Timestamp(doc.mtime_ns.div_euclid(1000)),
        Column::Size => Value::Int64(i64::try_from(doc.size).unwrap_or(i64::MAX)),
        Column::Page => Value::Int64(i64::from(row.page?)),
        Column::ChunkIndex => Value::Int64(i64::from(row.chunk_index?)),
        Column::Field(name) => match doc.fields.get(name)? {
            Value::Null => return None,
            v => v.clone(),
        },
    })
}

/// Values of one type (or numbers of either type), ordered; `None` when they cannot be compared.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Int64(a), Value::Int64(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Float64(a), Value::Float64(b)) => a.partial_cmp(b),
        (Value::Int64(a), Value::Float64(b)) => (*a as f64).partial_cmp(b),
        (Value::Float64(a), Value::Int64(b)) => a.partial_cmp(&(*b as f64)),
        _ => None,
    }
}

/// SQL `LIKE`: `%` any run of characters, `_` any one character. Linear in practice: a greedy match that
/// backtracks only to the last `%`.
fn like(text: &str, pattern: &[LikePart]) -> bool {
    fn go(text: &str, pattern: &[LikePart]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((LikePart::Literal(lit), rest)) => text.strip_prefix(lit.as_str()).is_some_and(|t| go(t, rest)),
            Some((LikePart::AnyChar, rest)) => {
                let mut chars = text.chars();
                chars.next().is_some() && go(chars.as_str(), rest)
            }
            Some((LikePart::AnyRun, rest)) => {
                if rest.is_empty() {
                    return true;
                }
                // Try every suffix, shortest run first; a following literal narrows the candidates.
                let mut at = 0;
                loop {
                    if go(&text[at..], rest) {
                        return true;
                    }
                    match text[at..].chars().next() {
                        Some(c) => at += c.len_utf8(),
                        None => return false,
                    }
                }
            }
        }
    }
    go(text, pattern)
}

fn like_pattern(pattern: &str) -> Vec<LikePart> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' | '_' => {
                if !literal.is_empty() {
                    parts.push(LikePart::Literal(std::mem::take(&mut literal)));
                }
                // Consecutive `%` are one.
                if c == '_' {
                    parts.push(LikePart::AnyChar);
                } else if parts.last() != Some(&LikePart::AnyRun) {
                    parts.push(LikePart::AnyRun);
                }
            }
            // `\%` and `\_` are the characters themselves.
            '\\' => literal.push(chars.next().unwrap_or('\\')),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(LikePart::Literal(literal));
    }
    parts
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Name(String),
    /// `"quoted name"`: never a keyword.
    Quoted(String),
    Str(String),
    Number(String),
    Op(Op),
    Open,
    Close,
    Comma,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Name(n) => write!(f, "{n:?}"),
            Kind::Quoted(n) => write!(f, "\"{n}\""),
            Kind::Str(s) => write!(f, "'{s}'"),
            Kind::Number(n) => write!(f, "{n}"),
            Kind::Op(op) => write!(f, "{}", op_text(*op)),
            Kind::Open => write!(f, "'('"),
            Kind::Close => write!(f, "')'"),
            Kind::Comma => write!(f, "','"),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    span: (usize, usize),
}

type Fault = (String, (usize, usize));

fn lex(expr: &str) -> Result<Vec<Token>, Fault> {
    let bytes = expr.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b'=' => {
                i += if bytes.get(i + 1) == Some(&b'=') { 2 } else { 1 };
                Kind::Op(Op::Eq)
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                i += 2;
                Kind::Op(Op::Ne)
            }
            b'<' => match bytes.get(i + 1) {
                Some(b'=') => {
                    i += 2;
                    Kind::Op(Op::Le)
                }
                Some(b'>') => {
                    i += 2;
                    Kind::Op(Op::Ne)
                }
                _ => {
                    i += 1;
                    Kind::Op(Op::Lt)
                }
            },
            b'>' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Kind::Op(Op::Ge)
                } else {
                    i += 1;
                    Kind::Op(Op::Gt)
                }
            }
            b'\'' | b'"' => {
                // Quotes are escaped by doubling them, as in SQL.
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(rel) = expr[i..].find(quote as char) else {
                        return Err(("unterminated quote".to_owned(), (start, expr.len())));
                    };
                    text.push_str(&expr[i..i + rel]);
                    i += rel + 1;
                    if bytes.get(i) == Some(&quote) {
                        text.push(quote as char);
                        i += 1;
                    } else {
                        break;
                    }
                }
                if quote == b'\'' { Kind::Str(text) } else { Kind::Quoted(text) }
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => {
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.' || bytes[i] == b'_') {
                    // An exponent's sign belongs to the number.
                    if matches!(bytes[i], b'e' | b'E') && matches!(bytes.get(i + 1), Some(b'-' | b'+')) {
                        i += 1;
                    }
                    i += 1;
                }
                Kind::Number(expr[start..i].to_owned())
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                Kind::Name(expr[start..i].to_owned())
            }
            _ => {
                let ch = expr[i..].chars().next().unwrap_or('?');
                return Err((format!("unexpected character {ch:?}"), (i, i + ch.len_utf8())));
            }
        };
        tokens.push(Token { kind, span: (start, i) });
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    columns: &'a Columns,
    end: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self, wanted: &str) -> Result<Token, Fault> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| (format!("expected {wanted}, found the end"), (self.end, self.end)))?;
        self.at += 1;
        Ok(token)
    }

    /// Takes the keyword `word` if it is next.
    fn keyword(&mut self, word: &str) -> bool {
        let found = matches!(self.peek(), Some(Token { kind: Kind::Name(n), .. }) if n.eq_ignore_ascii_case(word));
        if found {
            self.at += 1;
        }
        found
    }

    fn or(&mut self) -> Result<Filter, Fault> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let span = self.peek().map_or((self.end, self.end), |t| t.span);
            return Err((format!("nested more than {MAX_DEPTH} deep"), span));
        }
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, Fault> {
        let mut left = self.unary()?;
        while self.keyword("AND") {
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, Fault> {
        if self.keyword("NOT") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                let span = self.peek().map_or((self.end, self.end), |t| t.span);
                return Err((format!("nested more than {MAX_DEPTH} deep"), span));
            }
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if matches!(self.peek(), Some(Token { kind: Kind::Open, .. })) {
            let open = self.next("'('")?;
            let inner = self.or()?;
            match self.next("')'") {
                Ok(Token { kind: Kind::Close, .. }) => return Ok(inner),
                Ok(token) => return Err((format!("expected ')', found {}", token.kind), token.span)),
                Err(_) => return Err(("this '(' is never closed".to_owned(), open.span)),
            }
        }
        self.test()
    }

    fn test(&mut self) -> Result<Filter, Fault> {
        let token = self.next("a column name")?;
        let name = match &token.kind {
            Kind::Quoted(n) => n.clone(),
            Kind::Name(n) if !is_keyword(n) => n.clone(),
            other => return Err((format!("expected a column name, found {other}"), token.span)),
        };
        let (column, ty) = self.columns.get(&name).cloned().ok_or_else(|| {
            (format!("no column {name:?}; the dataset's columns are {}", self.columns.names()), token.span)
        })?;
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            if !self.keyword("NULL") {
                let span = self.peek().map_or((self.end, self.end), |t| t.span);
                return Err(("expected NULL after IS".to_owned(), span));
            }
            return Ok(Filter::IsNull { column, negated });
        }
        let negated = self.keyword("NOT");
        if self.keyword("IN") {
            match self.next("'('")? {
                Token { kind: Kind::Open, .. } => {}
                t => return Err((format!("expected '(' after IN, found {}", t.kind), t.span)),
            }
            let mut values = Vec::new();
            loop {
                let literal = self.next("a value")?;
                values.push(literal_value(&literal, &name, ty)?);
                match self.next("',' or ')'")? {
                    Token { kind: Kind::Comma, .. } => continue,
                    Token { kind: Kind::Close, .. } => break,
                    t => return Err((format!("expected ',' or ')', found {}", t.kind), t.span)),
                }
            }
            return Ok(Filter::In { column, values, negated });
        }
        if self.keyword("LIKE") {
            let literal = self.next("a pattern")?;
            if ty != FieldType::String {
                return Err((format!("LIKE needs a string column; {name:?} is {}", type_name(ty)), token.span));
            }
            let Kind::Str(pattern) = &literal.kind else {
                return Err((format!("expected a quoted pattern, found {}", literal.kind), literal.span));
            };
            return Ok(Filter::Like { column, pattern: like_pattern(pattern), negated });
        }
        if negated {
            let span = self.peek().map_or((self.end, self.end), |t| t.span);
            return Err(("expected IN or LIKE after NOT".to_owned(), span));
        }
        let op_token = self.next("a comparison (=, !=, <, <=, >, >=, IN, LIKE, IS NULL)")?;
        let Kind::Op(op) = op_token.kind else {
            return Err((
                format!("expected a comparison (=, !=, <, <=, >, >=, IN, LIKE, IS NULL), found {}", op_token.kind),
                op_token.span,
            ));
        };
        let literal = self.next("a value")?;
        if ty == FieldType::Bool && !matches!(op, Op::Eq | Op::Ne) {
            return Err((format!("{name:?} is a bool: compare it with = or !="), op_token.span));
        }
        let value = literal_value(&literal, &name, ty)?;
        Ok(Filter::Compare { column, op, value })
    }
}

fn is_keyword(word: &str) -> bool {
    ["AND", "OR", "NOT", "IN", "LIKE", "IS", "NULL", "TRUE", "FALSE"].iter().any(|k| word.eq_ignore_ascii_case(k))
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::Int64 => "an int64",
        FieldType::Float64 => "a float64",
        FieldType::Bool => "a bool",
        FieldType::Timestamp => "a timestamp",
    }
}

/// The literal as a value to compare with the column `name` of type `ty`.
fn literal_value(token: &Token, name: &str, ty: FieldType) -> Result<Value, Fault> {
    let mismatch = |what: &str| (format!("{name:?} is {} and this is {what}", type_name(ty)), token.span);
    match (&token.kind, ty) {
        (Kind::Str(s), FieldType::String) => Ok(Value::String(s.clone())),
        (Kind::Str(s), FieldType::Timestamp) => parse_timestamp(s).map(Value::Timestamp).ok_or_else(|| {
            (format!("{s:?} is not a timestamp (write '2024-05-01' or '2024-05-01T12:00:00Z')"), token.span)
        }),
        (Kind::Str(_), _) => Err(mismatch("a string")),
        (Kind::Number(n), FieldType::Int64 | FieldType::Float64) => match n.parse::<i64>() {
            Ok(i) if ty == FieldType::Int64 => Ok(Value::Int64(i)),
            Ok(i) => Ok(Value::Float64(i as f64)),
            Err(_) => match n.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Value::Float64(x)),
                _ => Err((format!("{n:?} is not a number"), token.span)),
            },
        },
        (Kind::Number(_), FieldType::Timestamp) => {
            Err((format!("{name:?} is a timestamp: write it as a quoted date or time ('2024-05-01')"), token.span))
        }
        (Kind::Number(_), _) => Err(mismatch("a number")),
        (Kind::Name(n), FieldType::Bool) if n.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
        (Kind::Name(n), FieldType::Bool) if n.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
        (Kind::Name(n), _) if n.eq_ignore_ascii_case("true") || n.eq_ignore_ascii_case("false") => {
            Err(mismatch("a bool"))
        }
        (Kind::Name(n), _) if n.eq_ignore_ascii_case("null") => {
            Err((format!("nothing equals NULL: write {name} IS NULL"), token.span))
        }
        (Kind::Name(n), FieldType::String) => {
            Err((format!("expected a value, found {n:?}; quote strings with single quotes ('{n}')"), token.span))
        }
        (other, _) => Err((format!("expected a value, found {other}"), token.span)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Format;

    fn columns() -> Columns {
        Columns::new(&BTreeMap::from([
            ("year".to_owned(), FieldType::Int64),
            ("score".to_owned(), FieldType::Float64),
            ("lang".to_owned(), FieldType::String),
            ("draft".to_owned(), FieldType::Bool),
            ("published".to_owned(), FieldType::Timestamp),
            ("first name".to_owned(), FieldType::String),
        ]))
    }

    fn doc() -> DocRecord {
        DocRecord {
            doc: "guides/intro.md".into(),
            file: "/corpus/guides/intro.md".into(),
            size: 1200,
            mtime_ns: 1_714_521_600_000_000_000,
            stat_trusted: true,
            content_hash: String::new(),
            rows: vec![0, 1],
            missing: 0,
            format: Some(Format::Markdown),
            title: Some("Intro".into()),
            fields: [
                ("year", Value::Int64(2021)),
                ("score", Value::Float64(0.5)),
                ("lang", Value::String("en".into())),
                ("draft", Value::Bool(false)),
                ("published", Value::Timestamp(1_714_521_600_000_000)),
                ("first name", Value::String("Ada".into())),
            ]
            .into_iter()
            .map(|(k, v)| (Arc::from(k), v))
            .collect(),
        }
    }

    fn check(expr: &str) -> bool {
        let filter = Filter::parse(expr, &columns()).unwrap_or_else(|e| panic!("{e}"));
        filter.matches(&Row { doc: &doc(), page: Some(3), chunk_index: Some(1) })
    }

    fn fails(expr: &str) -> FilterError {
        Filter::parse(expr, &columns()).expect_err(expr)
    }

    #[test]
    fn every_operator_and_type() {
        let cases = [
            ("year = 2021", true),
            ("year == 2021", true),
            ("year != 2021", false),
            ("year <> 2020", true),
            ("year < 2022", true),
            ("year <= 2021", true),
            ("year > 2021", false),
            ("year >= 2021.0", true),
            ("year > 2020.5", true),
            ("score > 0.25", true),
            ("score < 1", true),
            ("score = 5e-1", true),
            ("lang = 'en'", true),
            ("lang > 'de'", true),
            ("lang IN ('de', 'en')", true),
            ("lang NOT IN ('de', 'en')", false),
            ("year IN (1999, 2021)", true),
            ("draft = false", true),
            ("draft != TRUE", true),
            ("published >= '2024-05-01'", true),
            ("published < '2024-05-01T00:00:01Z'", true),
            ("published > '2024-05-01T01:00:00+02:00'", true),
            ("modified = '2024-05-01'", true),
            ("mtime < '2024-04-30'", false),
            ("doc LIKE 'guides/%'", true),
            ("doc LIKE '%intro%'", true),
            ("doc LIKE 'guides/_ntro.md'", true),
            ("doc NOT LIKE 'api/%'", true),
            ("doc LIKE 'intro%'", false),
            ("file = '/corpus/guides/intro.md'", true),
            ("format = 'markdown'", true),
            ("title = 'Intro'", true),
            ("size > 1000", true),
            ("page = 3", true),
            ("chunk_index = 1", true),
            ("\"first name\" = 'Ada'", true),
            ("lang IS NULL", false),
            ("lang IS NOT NULL", true),
            ("missing_field_is_error = 1", false),
        ];
        for (expr, want) in cases {
            if expr.starts_with("missing") {
                assert!(Filter::parse(expr, &columns()).is_err());
                continue;
            }
            assert_eq!(check(expr), want, "{expr}");
        }
    }

    #[test]
    fn logic_is_three_valued() {
        assert!(check("year = 2021 AND lang = 'en'"));
        assert!(!check("year = 2021 AND lang = 'de'"));
        assert!(check("year = 1 OR lang = 'en'"));
        assert!(check("NOT (year = 1)"));
        assert!(check("not year = 1 and (lang = 'en' or lang = 'de')"));
        // AND binds tighter than OR.
        assert!(check("lang = 'de' AND year = 1 OR year = 2021"));
        assert!(!check("lang = 'de' AND (year = 1 OR year = 2021)"));
        // A null matches no comparison, negated or not.
        let mut record = doc();
        record.fields.remove("year");
        let row = Row { doc: &record, page: None, chunk_index: None };
        let parse = |e: &str| Filter::parse(e, &columns()).expect("parse");
        assert!(!parse("year = 2021").matches(&row));
        assert!(!parse("NOT (year = 2021)").matches(&row));
        assert!(!parse("year NOT IN (1)").matches(&row));
        assert!(parse("year IS NULL").matches(&row));
        assert!(parse("year IS NULL OR year > 1").matches(&row));
        assert!(!parse("page = 1").matches(&row));
        assert!(parse("page IS NULL").matches(&row));
    }

    #[test]
    fn errors_point_at_the_offending_part() {
        let e = fails("yeer > 2000");
        assert_eq!(e.span, (0, 4));
        assert!(e.message.contains("no column \"yeer\"") && e.message.contains("year"), "{e}");
        assert!(e.to_string().ends_with("  yeer > 2000\n  ^^^^"), "{e}");

        let e = fails("year = 'abc'");
        assert_eq!((e.span, e.message.as_str()), ((7, 12), "\"year\" is an int64 and this is a string"));
        let e = fails("lang = en");
        assert!(e.message.contains("quote strings"), "{e}");
        assert_eq!(e.span, (7, 9));
        assert_eq!(fails("year > 1 AND").message, "expected a column name, found the end");
        assert_eq!(fails("(year > 1").span, (0, 1));
        assert_eq!(fails("year > 1 lang").span, (9, 13));
        assert_eq!(fails("lang = 'en").message, "unterminated quote");
        assert!(fails("year LIKE '1%'").message.contains("LIKE needs a string column"));
        assert!(fails("draft < true").message.contains("compare it with = or !="));
        assert!(fails("published > '05/01/2024'").message.contains("is not a timestamp"));
        assert!(fails("published > 2024").message.contains("quoted date"));
        assert!(fails("year = NULL").message.contains("IS NULL"));
        assert!(fails("year ~ 1").message.contains("unexpected character '~'"));
        assert!(fails("year IN (1, 'a')").message.contains("string"));
        assert!(fails("year = 1e999").message.contains("not a number"));
        let deep = format!("{}year = 1{}", "(".repeat(100), ")".repeat(100));
        assert!(fails(&deep).message.contains("nested"));
        assert!(fails(&"NOT ".repeat(100)).message.contains("nested"));
        assert!(fails(&"x".repeat(MAX_FILTER_BYTES + 1)).message.contains("longer than"));
        // Columns counted in characters, not bytes, for the caret.
        let e = fails("title = 'é' AND nope = 1");
        assert!(e.to_string().ends_with("                ^^^^"), "{e}");
    }

    #[test]
    fn repeated_filters_are_anded() {
        let f = Filter::parse_all(&["year = 2021", "lang = 'de'"], &columns()).expect("parse").expect("some");
        assert!(!f.matches(&Row { doc: &doc(), page: None, chunk_index: None }));
        assert_eq!(Filter::parse_all::<&str>(&[], &columns()).expect("none"), None);
        assert!(!f.per_chunk());
        assert!(Filter::parse("page > 2", &columns()).expect("p").per_chunk());
    }

    #[test]
    fn like_patterns() {
        let m = |t: &str, p: &str| like(t, &like_pattern(p));
        assert!(m("abc", "abc"));
        assert!(m("abc", "a%"));
        assert!(m("abc", "%c"));
        assert!(m("abc", "%%b%"));
        assert!(m("abc", "a_c"));
        assert!(!m("abc", "a_"));
        assert!(m("a%c", "a\\%c"));
        assert!(!m("abc", "a\\%c"));
        assert!(m("ééé", "_é_"));
        assert!(m("", "%"));
        assert!(!m("", "_"));
    }
}
