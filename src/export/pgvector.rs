//! Export to Postgres with pgvector: one table of the live rows (the dataset's columns, its metadata fields as typed
//! columns, the vector as `vector(d)`, or `halfvec(d)` past the 2,000 dimensions pgvector indexes as `vector`) with
//! an HNSW index for cosine distance, written by binary COPY.
//!
//! Everything happens in one transaction, so readers see the table before or after an export, never during:
//! - a full export loads `<table>__load`, indexes it, drops the old table and renames the new one in its place
//!   (Postgres DDL is transactional);
//! - an incremental one copies the rows of the added and changed documents into a temporary table, deletes the rows
//!   of the changed and gone documents, and inserts the staged rows (upserting by row id);
//! - both record the exported version in `tars_index_exports` (in the table's schema) and the documents' digests in
//!   `<table>__docs`, which the next export compares with.
//!
//! Exports of one table are serialised by an advisory lock: a second waits, then finds the first's version.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures::TryStreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Transaction};

use super::{Column, Diff, DocDigest, ExportError, ExportKind, FullReason, Report, Row, Source};
use crate::source::{FieldType, Value};
use crate::store::DocRecord;

/// pgvector's HNSW index takes `vector` up to this many dimensions, `halfvec` up to [`HALFVEC_INDEX_MAX`].
pub const VECTOR_INDEX_MAX: usize = 2000;
pub const HALFVEC_INDEX_MAX: usize = 4000;
/// The most dimensions a `vector` column holds.
const VECTOR_MAX: usize = 16000;
/// Table names are kept short enough that `<name>__load_embedding_idx` fits Postgres's 63 bytes.
const TABLE_NAME_MAX: usize = 40;
/// The advisory lock every export takes while it creates the record table.
const SETUP_LOCK: i64 = 0x7461_7273_2d69_6478; // "tars-idx"
/// Batches read ahead of the COPY.
const READ_AHEAD: usize = 4;

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// A libpq connection string or `postgres://` URL. It may hold a password: never shown.
    pub url: String,
    pub table: TableName,
    /// Rebuild into a new table and swap it in, whatever the target holds.
    pub full: bool,
    /// The HNSW index's `m` and `ef_construction`; `None`: no index.
    pub hnsw: Option<(u32, u32)>,
}

/// A table name, optionally schema-qualified: plain identifiers only, always quoted in SQL (case is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// `name` or `schema.name`, each `[A-Za-z_][A-Za-z0-9_]*`, the name at most 40 characters.
    pub fn parse(text: &str) -> Result<Self, ExportError> {
        let (schema, name) = match text.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, text),
        };
        let plain = |s: &str| {
            let mut chars = s.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !schema.is_none_or(plain) || !plain(name) || name.len() > TABLE_NAME_MAX {
            return Err(ExportError::Refused(format!(
                "--table {text:?} is not a table name: letters, digits and _ (not first), at most {TABLE_NAME_MAX} \
                 characters, optionally after a schema and a dot"
            )));
        }
        Ok(Self { schema: schema.map(str::to_owned), name: name.to_owned() })
    }

    /// A table name made from a dataset's name: its last path segment, lowercased, other characters as `_`.
    pub fn from_dataset(dataset: &str) -> Self {
        let last = dataset.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
        let mut name: String = last
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(TABLE_NAME_MAX)
            .collect();
        if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            name = format!("t_{name}");
            name.truncate(TABLE_NAME_MAX);
        }
        Self { schema: None, name }
    }

    /// The name of a relation beside this table: `suffix` appended to the name, same schema, quoted.
    fn sibling(&self, suffix: &str) -> String {
        self.in_schema(&format!("{}{suffix}", self.name))
    }

    /// `name` in this table's schema, quoted.
    fn in_schema(&self, name: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote(schema), quote(name)),
            None => quote(name),
        }
    }

    fn quoted(&self) -> String {
        self.sibling("")
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// An identifier quoted for SQL (the names here are checked plain ones; doubling quotes keeps any other safe).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The column type the vectors go into, and whether pgvector can index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VectorType {
    Vector,
    Half,
}

impl VectorType {
    fn for_dimensions(dims: usize) -> Result<(Self, bool), ExportError> {
        if dims <= VECTOR_INDEX_MAX {
            Ok((VectorType::Vector, true))
        } else if dims <= HALFVEC_INDEX_MAX {
            Ok((VectorType::Half, true))
        } else if dims <= VECTOR_MAX {
            Ok((VectorType::Vector, false))
        } else {
            Err(ExportError::Refused(format!(
                "pgvector holds vectors of at most {VECTOR_MAX} dimensions; this dataset's have {dims}"
            )))
        }
    }

    fn sql(self) -> &'static str {
        match self {
            VectorType::Vector => "vector",
            VectorType::Half => "halfvec",
        }
    }

    fn cosine_ops(self) -> &'static str {
        match self {
            VectorType::Vector => "vector_cosine_ops",
            VectorType::Half => "halfvec_cosine_ops",
        }
    }
}

/// What the record table says of an earlier export.
struct Recorded {
    lineage: String,
    generation: i64,
    layout: serde_json::Value,
    rows: i64,
}

/// Exports the version `source` holds (named `dataset` in the record) to `target`.
pub async fn export(source: Arc<Source>, dataset: &str, target: &PgTarget) -> Result<Report, ExportError> {
    let started = Instant::now();
    let (mut client, shown) = connect(&target.url).await?;
    let manifest = &source.dataset.manifest;
    let (vector_type, indexable) = VectorType::for_dimensions(source.dimensions)?;
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS vector").await.map_err(|e| {
        ExportError::Refused(format!(
            "{shown}: the pgvector extension is not available ({}); it must be installed on the server and created \
             in the database (CREATE EXTENSION vector) by a user allowed to",
            describe(&e)
        ))
    })?;
    let exports = target.table.in_schema("tars_index_exports");
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({SETUP_LOCK});
             CREATE TABLE IF NOT EXISTS {exports} (
                 \"table\" text PRIMARY KEY,
                 dataset text NOT NULL,
                 lineage text NOT NULL,
                 generation bigint NOT NULL,
                 layout jsonb NOT NULL,
                 rows bigint NOT NULL,
                 exported_at timestamptz NOT NULL DEFAULT now()
             );
             SELECT pg_advisory_unlock({SETUP_LOCK});"
        ))
        .await
        .map_err(refused(&shown, &format!("creating {exports}")))?;

    let key = target.table.to_string();
    let tx = client.transaction().await.map_err(failed(&shown, "starting a transaction"))?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&format!("tars-index export {key}")])
        .await
        .map_err(failed(&shown, "locking the table for the export"))?;
    let recorded = tx
        .query_opt(&format!("SELECT lineage, generation, layout, rows FROM {exports} WHERE \"table\" = $1"), &[&key])
        .await
        .map_err(failed(&shown, "reading the last export"))?
        .map(|row| Recorded { lineage: row.get(0), generation: row.get(1), layout: row.get(2), rows: row.get(3) });
    let exists = |name: String| {
        let tx = &tx;
        let shown = &shown;
        async move {
            let row = tx
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
                .await
                .map_err(failed(shown, "looking for the table"))?;
            Ok::<bool, ExportError>(row.get(0))
        }
    };
    let table_exists = exists(target.table.quoted()).await?;
    let docs_exist = exists(target.table.sibling("__docs")).await?;
    let layout = source.signature();
    let kind = match &recorded {
        None if table_exists => {
            return Err(ExportError::Refused(format!(
                "{shown}: table {} exists, and no tars-index export wrote it (it is not in {exports}): choose another \
                 --table, or drop it",
                target.table
            )));
        }
        None => ExportKind::Full { reason: FullReason::First },
        Some(_) if target.full => ExportKind::Full { reason: FullReason::Asked },
        Some(_) if !table_exists || !docs_exist => ExportKind::Full { reason: FullReason::Missing },
        Some(r) if r.lineage != manifest.lineage => ExportKind::Full { reason: FullReason::NewLineage },
        Some(r) if r.layout != layout => ExportKind::Full { reason: FullReason::NewLayout },
        Some(r) if r.generation == manifest.generation as i64 => ExportKind::UpToDate,
        Some(_) => ExportKind::Incremental,
    };
    let rows = recorded.as_ref().map_or(0, |r| r.rows.max(0) as u64);
    let mut report = Report::new(shown.clone(), target.table.to_string(), manifest.generation, kind.clone(), rows);
    let types = column_types(&source, &tx, vector_type, &shown).await?;
    let writer = Writer { source: &source, tx: &tx, table: &target.table, types, vector_type, shown: &shown };
    match kind {
        ExportKind::UpToDate => {
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        ExportKind::Full { .. } => {
            let diff = source.everything();
            report.rows_written = writer.full(&diff).await?;
            report.docs_written = diff.added.len();
            report.rows = report.rows_written;
            writer.index(target.hnsw.filter(|_| indexable)).await?;
            if target.hnsw.is_some() && !indexable {
                report.notes.push(format!(
                    "no HNSW index: pgvector indexes vectors of at most {HALFVEC_INDEX_MAX} dimensions (as halfvec), \
                     and these have {}; queries scan the table",
                    source.dimensions
                ));
            }
            writer.swap().await?;
        }
        ExportKind::Incremental => {
            let exported = writer.digests().await?;
            let diff = source.diff(&exported);
            let (written, deleted) = writer.update(&diff).await?;
            report.rows_written = written;
            report.rows_deleted = deleted;
            report.docs_written = diff.added.len() + diff.changed.len();
            report.docs_updated = diff.updated.len();
            report.docs_deleted = diff.gone.len();
            report.rows = (report.rows + written).saturating_sub(deleted);
        }
    }
    tx.execute(
        &format!(
            "INSERT INTO {exports} (\"table\", dataset, lineage, generation, layout, rows, exported_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())
             ON CONFLICT (\"table\") DO UPDATE SET dataset = EXCLUDED.dataset, lineage = EXCLUDED.lineage,
                 generation = EXCLUDED.generation, layout = EXCLUDED.layout, rows = EXCLUDED.rows,
                 exported_at = EXCLUDED.exported_at"
        ),
        &[&key, &dataset, &manifest.lineage, &(manifest.generation as i64), &layout, &(report.rows as i64)],
    )
    .await
    .map_err(failed(&shown, "recording the export"))?;
    tx.commit().await.map_err(failed(&shown, "committing the export"))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The writes of one export, inside its transaction.
struct Writer<'a> {
    source: &'a Arc<Source>,
    tx: &'a Transaction<'a>,
    table: &'a TableName,
    /// The COPY types of the columns, the vector's last.
    types: Vec<Type>,
    vector_type: VectorType,
    shown: &'a str,
}

impl Writer<'_> {
    /// Loads every live row into `<table>__load` (and the digests into `<table>__load_docs`).
    async fn full(&self, diff: &Diff) -> Result<u64, ExportError> {
        let (load, load_docs) = (self.table.sibling("__load"), self.table.sibling("__load_docs"));
        let pkey = quote(&format!("{}__load_pkey", self.table.name));
        let docs_pkey = quote(&format!("{}__load_docs_pkey", self.table.name));
        let columns: Vec<String> = self
            .source
            .columns()
            .iter()
            .map(|(name, column)| format!("{} {}", quote(name), sql_type(*column, self.source)))
            .collect();
        self.tx
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {load}, {load_docs};
                 CREATE TABLE {load} ({}, embedding {}({}) NOT NULL, CONSTRAINT {pkey} PRIMARY KEY (row_id));
                 CREATE TABLE {load_docs} (doc text NOT NULL, rows bytea NOT NULL, meta bytea NOT NULL,
                     CONSTRAINT {docs_pkey} PRIMARY KEY (doc));",
                columns.join(", "),
                self.vector_type.sql(),
                self.source.dimensions,
            ))
            .await
            .map_err(failed(self.shown, "creating the table"))?;
        let rows = self.copy_rows(&load, &diff.added).await?;
        self.copy_digests(&load_docs, &diff.recorded()).await?;
        Ok(rows)
    }

    /// Indexes the loaded table: by `doc` (what incremental exports delete by), and by HNSW with `hnsw`'s `m` and
    /// `ef_construction` when given.
    async fn index(&self, hnsw: Option<(u32, u32)>) -> Result<(), ExportError> {
        let (table, name) = (self.table.sibling("__load"), format!("{}__load", self.table.name));
        let mut sql = format!("CREATE INDEX {} ON {table} (doc);", quote(&format!("{name}_doc_idx")));
        if let Some((m, ef_construction)) = hnsw {
            sql.push_str(&format!(
                "CREATE INDEX {} ON {table} USING hnsw (embedding {}) WITH (m = {m}, ef_construction = {ef_construction});",
                quote(&format!("{name}_embedding_idx")),
                self.vector_type.cosine_ops(),
            ));
        }
        self.tx.batch_execute(&sql).await.map_err(failed(self.shown, "building the indexes"))
    }

    /// Replaces the table (and its documents table) with the loaded ones, indexes renamed to match.
    async fn swap(&self) -> Result<(), ExportError> {
        let name = &self.table.name;
        let (table, docs) = (self.table.quoted(), self.table.sibling("__docs"));
        let mut sql = format!(
            "DROP TABLE IF EXISTS {table}, {docs};
             ALTER TABLE {} RENAME TO {};
             ALTER TABLE {} RENAME TO {};
             ALTER INDEX {} RENAME TO {};",
            self.table.sibling("__load"),
            quote(name),
            self.table.sibling("__load_docs"),
            quote(&format!("{name}__docs")),
            self.table.in_schema(&format!("{name}__load_pkey")),
            quote(&format!("{name}_pkey")),
        );
        sql.push_str(&format!(
            "ALTER INDEX {} RENAME TO {};",
            self.table.in_schema(&format!("{name}__load_docs_pkey")),
            quote(&format!("{name}__docs_pkey"))
        ));
        for index in ["embedding_idx", "doc_idx"] {
            let loaded = self.table.in_schema(&format!("{name}__load_{index}"));
            sql.push_str(&format!("ALTER INDEX IF EXISTS {loaded} RENAME TO {};", quote(&format!("{name}_{index}"))));
        }
        self.tx.batch_execute(&sql).await.map_err(failed(self.shown, "putting the new table in place"))
    }

    /// The documents' digests the table was last written with.
    async fn digests(&self) -> Result<std::collections::HashMap<String, DocDigest>, ExportError> {
        let sql = format!("SELECT doc, rows, meta FROM {}", self.table.sibling("__docs"));
        let rows = self
            .tx
            .query_raw(&sql, std::iter::empty::<&(dyn ToSql + Sync)>())
            .await
            .map_err(failed(self.shown, "reading the exported documents"))?;
        let mut rows = std::pin::pin!(rows);
        let mut found = std::collections::HashMap::new();
        while let Some(row) = rows.try_next().await.map_err(failed(self.shown, "reading the exported documents"))? {
            // A digest of another size never matches: that document is written again.
            let digest = |i: usize| row.get::<_, &[u8]>(i).try_into().unwrap_or_default();
            found.insert(row.get::<_, String>(0), DocDigest { rows: digest(1), meta: digest(2) });
        }
        Ok(found)
    }

    /// Applies `diff` to the table: returns rows written and rows deleted.
    async fn update(&self, diff: &Diff) -> Result<(u64, u64), ExportError> {
        if diff.is_empty() {
            return Ok((0, 0));
        }
        let (table, docs) = (self.table.quoted(), self.table.sibling("__docs"));
        let meta_columns: Vec<(String, Column)> =
            self.source.columns().into_iter().filter(|(_, c)| c.is_metadata()).collect();
        let meta_types: Vec<String> =
            meta_columns.iter().map(|(n, c)| format!("{} {}", quote(n), sql_type(*c, self.source))).collect();
        self.tx
            .batch_execute(&format!(
                "CREATE TEMPORARY TABLE tars_index_stage (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP;
                 CREATE TEMPORARY TABLE tars_index_dropped (doc text NOT NULL) ON COMMIT DROP;
                 CREATE TEMPORARY TABLE tars_index_meta (doc text NOT NULL, {}) ON COMMIT DROP;",
                meta_types.join(", ")
            ))
            .await
            .map_err(failed(self.shown, "creating the staging tables"))?;
        let written = diff.written();
        let rows = self.copy_rows("tars_index_stage", &written).await?;
        self.copy_names("tars_index_dropped", &diff.dropped()).await?;
        self.copy_metadata("tars_index_meta", &meta_columns, &diff.updated).await?;
        let deleted = self
            .tx
            .execute(&format!("DELETE FROM {table} WHERE doc IN (SELECT doc FROM tars_index_dropped)"), &[])
            .await
            .map_err(failed(self.shown, "deleting the rows of changed and deleted documents"))?;
        let columns = self.source.columns();
        let upsert: Vec<String> = columns
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(std::iter::once("embedding"))
            .filter(|n| *n != "row_id")
            .map(|n| format!("{} = EXCLUDED.{}", quote(n), quote(n)))
            .collect();
        let set_meta: Vec<String> =
            meta_columns.iter().map(|(n, _)| format!("{} = m.{}", quote(n), quote(n))).collect();
        self.tx
            .batch_execute(&format!(
                "INSERT INTO {table} SELECT * FROM tars_index_stage ON CONFLICT (row_id) DO UPDATE SET {};
                 UPDATE {table} AS t SET {} FROM tars_index_meta AS m WHERE t.doc = m.doc;
                 DELETE FROM {docs} WHERE doc IN (SELECT doc FROM tars_index_dropped UNION ALL SELECT doc FROM tars_index_meta);",
                upsert.join(", "),
                set_meta.join(", "),
            ))
            .await
            .map_err(failed(self.shown, "writing the new rows and metadata"))?;
        self.copy_digests(&docs, &diff.recorded()).await?;
        Ok((rows, deleted))
    }

    /// COPYs the metadata columns of the documents `names` into `into` (one row per document).
    async fn copy_metadata(
        &self,
        into: &str,
        columns: &[(String, Column)],
        names: &[String],
    ) -> Result<(), ExportError> {
        let mut list = vec!["doc".to_owned()];
        list.extend(columns.iter().map(|(n, _)| quote(n)));
        let sink = self
            .tx
            .copy_in(&format!("COPY {into} ({}) FROM STDIN (FORMAT binary)", list.join(", ")))
            .await
            .map_err(failed(self.shown, "starting the COPY of metadata"))?;
        let all = self.source.columns();
        let mut types = vec![Type::TEXT];
        types.extend(
            columns.iter().filter_map(|(n, _)| all.iter().position(|(m, _)| m == n)).map(|i| self.types[i].clone()),
        );
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let fields: Vec<&str> = self.source.fields().into_iter().map(|(n, _)| n).collect();
        for name in names {
            let Some(doc) = self.source.docs.get(name) else { continue };
            let mut cells = vec![Cell::Text(name)];
            for (_, column) in columns {
                cells.push(doc_cell(*column, doc, &fields)?);
            }
            let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            writer.as_mut().write(&refs).await.map_err(failed(self.shown, "sending metadata"))?;
        }
        writer.as_mut().finish().await.map_err(failed(self.shown, "finishing the COPY of metadata"))?;
        Ok(())
    }

    /// COPYs the rows of the documents `names` into `into`; returns how many.
    async fn copy_rows(&self, into: &str, names: &[String]) -> Result<u64, ExportError> {
        let columns = self.source.columns();
        let mut list: Vec<String> = columns.iter().map(|(n, _)| quote(n)).collect();
        list.push("embedding".into());
        let sink = self
            .tx
            .copy_in(&format!("COPY {into} ({}) FROM STDIN (FORMAT binary)", list.join(", ")))
            .await
            .map_err(failed(self.shown, "starting the COPY"))?;
        let writer = BinaryCopyInWriter::new(sink, &self.types);
        let mut writer = std::pin::pin!(writer);
        let fields: Vec<&str> = self.source.fields().into_iter().map(|(n, _)| n).collect();
        let mut batches = self.source.rows(names, READ_AHEAD);
        while let Some(batch) = batches.recv().await {
            for mut row in batch? {
                // The vector moves into its cell: one copy of it per row is enough (the reader's).
                let vector = match self.vector_type {
                    VectorType::Vector => Cell::Vector(pgvector::Vector::from(std::mem::take(&mut row.vector))),
                    VectorType::Half => Cell::Half(pgvector::HalfVector::from_f32_slice(&row.vector)),
                };
                let doc = self.source.docs.get(&*row.chunk.doc);
                let mut cells = Vec::with_capacity(columns.len() + 1);
                for (_, column) in &columns {
                    cells.push(cell(*column, &row, doc, &fields)?);
                }
                cells.push(vector);
                let refs: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                writer.as_mut().write(&refs).await.map_err(failed(self.shown, "sending rows"))?;
            }
        }
        writer.as_mut().finish().await.map_err(failed(self.shown, "finishing the COPY"))
    }

    async fn copy_digests(&self, into: &str, names: &[String]) -> Result<(), ExportError> {
        let sink = self
            .tx
            .copy_in(&format!("COPY {into} (doc, rows, meta) FROM STDIN (FORMAT binary)"))
            .await
            .map_err(failed(self.shown, "starting the COPY of documents"))?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::BYTEA, Type::BYTEA]);
        let mut writer = std::pin::pin!(writer);
        for (name, digest) in self.source.digests(names) {
            let (rows, meta): (&[u8], &[u8]) = (&digest.rows, &digest.meta);
            writer.as_mut().write(&[&name, &rows, &meta]).await.map_err(failed(self.shown, "sending documents"))?;
        }
        writer.as_mut().finish().await.map_err(failed(self.shown, "finishing the COPY of documents"))?;
        Ok(())
    }

    async fn copy_names(&self, into: &str, names: &[String]) -> Result<(), ExportError> {
        let sink = self
            .tx
            .copy_in(&format!("COPY {into} (doc) FROM STDIN (FORMAT binary)"))
            .await
            .map_err(failed(self.shown, "starting the COPY of document names"))?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT]);
        let mut writer = std::pin::pin!(writer);
        for name in names {
            writer.as_mut().write(&[name]).await.map_err(failed(self.shown, "sending document names"))?;
        }
        writer.as_mut().finish().await.map_err(failed(self.shown, "finishing the COPY of document names"))?;
        Ok(())
    }
}

/// The COPY types of the exported columns, the vector's (an extension type, looked up) last.
async fn column_types(
    source: &Source,
    tx: &Transaction<'_>,
    vector_type: VectorType,
    shown: &str,
) -> Result<Vec<Type>, ExportError> {
    let fields = source.fields();
    let mut types: Vec<Type> = source
        .columns()
        .iter()
        .map(|(_, column)| match column {
            Column::RowId | Column::Start | Column::End | Column::Size => Type::INT8,
            Column::ChunkIndex | Column::Tokens | Column::Page => Type::INT4,
            Column::Id | Column::Doc | Column::Text | Column::File | Column::Format | Column::Title => Type::TEXT,
            Column::Modified => Type::TIMESTAMPTZ,
            Column::Field(i) => match fields[*i].1 {
                FieldType::String => Type::TEXT,
                FieldType::Int64 => Type::INT8,
                FieldType::Float64 => Type::FLOAT8,
                FieldType::Bool => Type::BOOL,
                FieldType::Timestamp => Type::TIMESTAMPTZ,
            },
        })
        .collect();
    let statement = tx
        .prepare(&format!("SELECT $1::{}", vector_type.sql()))
        .await
        .map_err(failed(shown, "looking up the vector type"))?;
    types.push(statement.params()[0].clone());
    Ok(types)
}

fn sql_type(column: Column, source: &Source) -> &'static str {
    match column {
        Column::RowId | Column::Start | Column::End | Column::Size => "bigint NOT NULL",
        Column::ChunkIndex | Column::Tokens => "integer NOT NULL",
        Column::Page => "integer",
        Column::Id | Column::Doc | Column::Text | Column::File => "text NOT NULL",
        Column::Format | Column::Title => "text",
        Column::Modified => "timestamptz",
        Column::Field(i) => match source.fields()[i].1 {
            FieldType::String => "text",
            FieldType::Int64 => "bigint",
            FieldType::Float64 => "double precision",
            FieldType::Bool => "boolean",
            FieldType::Timestamp => "timestamptz",
        },
    }
}

/// One value of a COPY row.
#[derive(Debug)]
enum Cell<'a> {
    Null,
    I64(i64),
    I32(i32),
    F64(f64),
    Bool(bool),
    Text(&'a str),
    Time(SystemTime),
    Vector(pgvector::Vector),
    Half(pgvector::HalfVector),
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Cell::Null => Ok(IsNull::Yes),
            Cell::I64(v) => v.to_sql(ty, out),
            Cell::I32(v) => v.to_sql(ty, out),
            Cell::F64(v) => v.to_sql(ty, out),
            Cell::Bool(v) => v.to_sql(ty, out),
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::Time(v) => v.to_sql(ty, out),
            Cell::Vector(v) => v.to_sql(ty, out),
            Cell::Half(v) => v.to_sql(ty, out),
        }
    }

    // The column types are chosen with the cells (`column_types`), so every pairing is one the value encodes.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn cell<'a>(
    column: Column,
    row: &'a Row,
    doc: Option<&'a DocRecord>,
    fields: &[&str],
) -> Result<Cell<'a>, ExportError> {
    let chunk = &row.chunk;
    let what = || format!("row {}", row.row_id);
    Ok(match column {
        Column::RowId => big(row.row_id, "row id", what)?,
        Column::Id => Cell::Text(&chunk.id),
        Column::Doc => Cell::Text(&chunk.doc),
        Column::ChunkIndex => small(chunk.chunk_index, "chunk index", what)?,
        Column::Start => big(chunk.start, "offset", what)?,
        Column::End => big(chunk.end, "offset", what)?,
        Column::Tokens => small(chunk.tokens, "token count", what)?,
        Column::Page => match chunk.page {
            Some(p) => small(p, "page", what)?,
            None => Cell::Null,
        },
        Column::Text => Cell::Text(&chunk.text),
        metadata => match doc {
            Some(doc) => doc_cell(metadata, doc, fields)?,
            None if metadata == Column::File => Cell::Text(""),
            None if metadata == Column::Size => Cell::I64(0),
            None => Cell::Null,
        },
    })
}

/// A column every row of `doc` carries alike (see [`Column::is_metadata`]).
fn doc_cell<'a>(column: Column, doc: &'a DocRecord, fields: &[&str]) -> Result<Cell<'a>, ExportError> {
    let what = || format!("document {}", doc.doc);
    Ok(match column {
        Column::File => Cell::Text(&doc.file),
        Column::Size => big(doc.size, "size", what)?,
        Column::Format => doc.format.map_or(Cell::Null, |f| Cell::Text(f.name())),
        Column::Title => doc.title.as_deref().map_or(Cell::Null, Cell::Text),
        Column::Modified if doc.mtime_ns != 0 => Cell::Time(since_epoch(doc.mtime_ns, 1)),
        Column::Field(i) => match doc.fields.get(fields[i]) {
            None | Some(Value::Null) => Cell::Null,
            Some(Value::String(s)) => Cell::Text(s),
            Some(Value::Int64(v)) => Cell::I64(*v),
            Some(Value::Float64(v)) => Cell::F64(*v),
            Some(Value::Bool(v)) => Cell::Bool(*v),
            Some(Value::Timestamp(us)) => Cell::Time(since_epoch(*us, 1000)),
        },
        _ => Cell::Null,
    })
}

fn big(v: u64, name: &str, whose: impl Fn() -> String) -> Result<Cell<'static>, ExportError> {
    i64::try_from(v)
        .map(Cell::I64)
        .map_err(|_| ExportError::Refused(format!("{}: {name} {v} is past a Postgres bigint", whose())))
}

fn small(v: u32, name: &str, whose: impl Fn() -> String) -> Result<Cell<'static>, ExportError> {
    i32::try_from(v)
        .map(Cell::I32)
        .map_err(|_| ExportError::Refused(format!("{}: {name} {v} is past a Postgres integer", whose())))
}

/// `value` units of `nanos_per` nanoseconds from the Unix epoch.
fn since_epoch(value: i64, nanos_per: u64) -> SystemTime {
    let span = Duration::from_nanos(value.unsigned_abs().saturating_mul(nanos_per));
    if value >= 0 { UNIX_EPOCH + span } else { UNIX_EPOCH.checked_sub(span).unwrap_or(UNIX_EPOCH) }
}

/// How to secure the connection, after libpq's `sslmode` (which tokio-postgres only partly parses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    /// `disable`.
    Off,
    /// `allow`, `prefer` (the default), `require`: encrypted when (or only if, for `require`) the server offers it,
    /// its certificate not checked, as libpq does without a root certificate.
    Unverified { required: bool },
    /// `verify-ca`, `verify-full`: the certificate must chain to `sslrootcert` or a Mozilla root and name the host
    /// (both are held to `verify-full`).
    Verified,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL or key=value), as tokio-postgres does not know
/// every value of them.
fn split_tls(url: &str) -> Result<(String, TlsMode, Option<std::path::PathBuf>), ExportError> {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(std::path::PathBuf::from(value));
            true
        }
        _ => false,
    };
    let rest = if let Some((base, query)) =
        url.split_once('?').filter(|(b, _)| b.starts_with("postgres://") || b.starts_with("postgresql://"))
    {
        let kept: Vec<&str> =
            query.split('&').filter(|p| !p.split_once('=').is_some_and(|(k, v)| take(k, v))).collect();
        if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_owned()
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|t| !t.split_once('=').is_some_and(|(k, v)| take(k.trim(), v.trim_matches('\''))))
            .collect();
        kept.join(" ")
    };
    let mode = match mode.as_deref() {
        Some("disable") => TlsMode::Off,
        None | Some("allow" | "prefer") => TlsMode::Unverified { required: false },
        Some("require") if root.is_some() => TlsMode::Verified,
        Some("require") => TlsMode::Unverified { required: true },
        Some("verify-ca" | "verify-full") => TlsMode::Verified,
        Some(other) => {
            return Err(ExportError::Refused(format!(
                "sslmode={other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    Ok((rest, mode, root))
}

/// Connects as `sslmode` says (see [`TlsMode`]). Returns the client and the target as it may be shown: without its
/// password.
async fn connect(url: &str) -> Result<(Client, String), ExportError> {
    let (url, mode, root) = split_tls(url)?;
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        ExportError::Refused(format!("--to is not a Postgres connection string or URL ({e})"))
    })?;
    config.ssl_mode(match mode {
        TlsMode::Off => tokio_postgres::config::SslMode::Disable,
        TlsMode::Unverified { required: false } => tokio_postgres::config::SslMode::Prefer,
        TlsMode::Unverified { required: true } | TlsMode::Verified => tokio_postgres::config::SslMode::Require,
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(30));
    }
    if config.get_application_name().is_none() {
        config.application_name("tars-index");
    }
    let shown = shown(&config);
    let tls = tls(mode, root.as_deref())?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| ExportError::Target(format!("cannot connect to {shown}: {}", describe(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok((client, shown))
}

fn tls(mode: TlsMode, root: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ExportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ExportError::Target(format!("TLS set-up: {e}")))?;
    let config = if mode == TlsMode::Verified {
        let mut roots = rustls::RootCertStore::empty();
        match root {
            Some(path) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let bad =
                    |e: &dyn std::fmt::Display| ExportError::Refused(format!("sslrootcert {}: {e}", path.display()));
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                    roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified(provider))).with_no_client_auth()
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// libpq's `sslmode=prefer`/`require`: any certificate, but its handshake signatures still checked.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `postgres://user@host:port/db`: what a connection string may show of itself.
fn shown(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("postgres://{user}{host}:{port}/{db}")
}

/// A Postgres error as one line: the server's message, code, detail and hint when it sent them.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(e) {
                text.push_str(&format!(": {source}"));
            }
            text
        }
    }
}

fn failed<'a>(shown: &'a str, doing: &'a str) -> impl FnOnce(tokio_postgres::Error) -> ExportError + 'a {
    move |e| ExportError::Target(format!("{shown}: {doing}: {}", describe(&e)))
}

fn refused<'a>(shown: &'a str, doing: &'a str) -> impl FnOnce(tokio_postgres::Error) -> ExportError + 'a {
    move |e| ExportError::Refused(format!("{shown}: {doing}: {}", describe(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers_and_quoted() {
        let t = TableName::parse("docs_v2").expect("plain");
        assert_eq!((t.quoted(), t.sibling("__docs")), ("\"docs_v2\"".into(), "\"docs_v2__docs\"".into()));
        let t = TableName::parse("search.Chunks").expect("qualified");
        assert_eq!(t.quoted(), "\"search\".\"Chunks\"");
        assert_eq!(t.to_string(), "search.Chunks");
        for bad in ["", "1abc", "a-b", "a.b.c", "x; DROP TABLE y", "a\"b", &"n".repeat(41)] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(TableName::from_dataset("s3://bucket/team/Man-Pages/").to_string(), "man_pages");
        assert_eq!(TableName::from_dataset("out/2024").to_string(), "t_2024");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn vectors_past_what_pgvector_indexes_go_to_halfvec_or_unindexed() {
        assert_eq!(VectorType::for_dimensions(1536).ok(), Some((VectorType::Vector, true)));
        assert_eq!(VectorType::for_dimensions(3072).ok(), Some((VectorType::Half, true)));
        assert_eq!(VectorType::for_dimensions(8192).ok(), Some((VectorType::Vector, false)));
        assert!(VectorType::for_dimensions(16001).is_err());
    }

    #[test]
    fn a_connection_string_is_shown_without_its_password() {
        let config: tokio_postgres::Config =
            "postgres://alice:s3cret@db.example.com:6543/corpus?sslmode=require".parse().expect("url");
        assert_eq!(shown(&config), "postgres://alice@db.example.com:6543/corpus");
        let config: tokio_postgres::Config = "host=h user=u password=s3cret".parse().expect("key=value");
        assert!(!shown(&config).contains("s3cret"));
        let bad = "postgres://alice:s3cret@db:notaport/x".parse::<tokio_postgres::Config>().expect_err("bad port");
        assert!(!bad.to_string().contains("s3cret"), "{bad}");
    }

    #[test]
    fn sslmode_is_read_as_libpq_reads_it() {
        let (rest, mode, root) =
            split_tls("postgres://u:p@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5")
                .expect("url");
        assert_eq!(rest, "postgres://u:p@h/db?connect_timeout=5");
        assert_eq!((mode, root), (TlsMode::Verified, Some("/etc/ca.pem".into())));
        let (rest, mode, _) = split_tls("postgres://u@h/db?sslmode=require").expect("url");
        assert_eq!((rest.as_str(), mode), ("postgres://u@h/db", TlsMode::Unverified { required: true }));
        let (rest, mode, _) = split_tls("host=h user=u sslmode=disable dbname=x").expect("key=value");
        assert_eq!((rest.as_str(), mode), ("host=h user=u dbname=x", TlsMode::Off));
        assert_eq!(split_tls("postgres://h/db").expect("plain").1, TlsMode::Unverified { required: false });
        assert!(split_tls("postgres://h/db?sslmode=sometimes").is_err());
    }

    #[test]
    fn timestamps_before_the_epoch_stay_before_it() {
        assert_eq!(since_epoch(-1_000_000, 1000), UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(since_epoch(1_500, 1), UNIX_EPOCH + Duration::from_nanos(1_500));
    }
}
