//! `export`: a dataset's newest version into a vector database; [`crate::export`] does it, this module prints.

use std::io::Write;
use std::sync::Arc;

use super::target::Target;
use super::{Failure, PgvectorArgs, QdrantArgs, damage_advice, exit};
use crate::error::count;
use crate::export::pgvector::{self, PgTarget, TableName};
use crate::export::qdrant::{self, QdrantTarget};
use crate::export::{ExportError, ExportKind, Report, Source};

pub async fn pgvector(args: PgvectorArgs) -> Result<u8, Failure> {
    let (target, source) = open(&args.dataset).await?;
    let table = match &args.table {
        Some(name) => TableName::parse(name).map_err(Failure::usage)?,
        None => TableName::from_dataset(&target.name),
    };
    let settings = PgTarget {
        url: args.to,
        table,
        full: args.full,
        hnsw: (!args.no_index).then_some((args.m, args.ef_construction.max(2 * args.m))),
    };
    let report = pgvector::export(source, &target.name, &settings).await.map_err(|e| failure(e, &target))?;
    print(&report, &target.name, "table", args.json);
    Ok(exit::SUCCESS)
}

pub async fn qdrant(args: QdrantArgs) -> Result<u8, Failure> {
    let (target, source) = open(&args.dataset).await?;
    let collection = args.collection.clone().unwrap_or_else(|| qdrant::name_from_dataset(&target.name));
    qdrant::check_name(&collection).map_err(Failure::usage)?;
    let settings = QdrantTarget {
        url: args.to,
        api_key: std::env::var(&args.api_key_env).ok().filter(|k| !k.is_empty()),
        collection,
        full: args.full,
        batch: args.batch as usize,
        parallel: args.parallel as usize,
        hnsw: (args.m, args.ef_construct),
    };
    let report = qdrant::export(source, &target.name, &settings).await.map_err(|e| failure(e, &target))?;
    print(&report, &target.name, "collection", args.json);
    Ok(exit::SUCCESS)
}

/// The dataset's newest version (pulled into the mirror when it is remote), with its documents read.
async fn open(dataset: &std::path::Path) -> Result<(Target, Arc<Source>), Failure> {
    let target = Target::for_read(dataset).await.map_err(Failure::usage)?;
    let dir = target.dir.clone();
    let source = tokio::task::spawn_blocking(move || Source::open(&dir))
        .await
        .map_err(Failure::run)?
        .map_err(|e| failure(ExportError::Store(e), &target))?;
    Ok((target, Arc::new(source)))
}

fn failure(error: ExportError, target: &Target) -> Failure {
    match error {
        e if e.is_usage() => Failure::usage(e),
        ExportError::Store(e) => {
            let advice = damage_advice(&e, &target.dir);
            Failure { advice, ..Failure::run(e) }
        }
        e => Failure::run(e),
    }
}

fn print(report: &Report, dataset: &str, holder: &str, json: bool) {
    let mut stdout = std::io::stdout().lock();
    if json {
        let _ = writeln!(stdout, "{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        let what = match &report.kind {
            ExportKind::UpToDate => format!("up to date: version {} was exported already", report.generation),
            ExportKind::Full { reason } => {
                format!("full export ({}): {} written", reason.describe(), count(report.rows_written, "row"),)
            }
            ExportKind::Incremental => format!(
                "incremental: {} of {} written, {} of {} deleted, metadata of {} updated",
                count(report.rows_written, "row"),
                count(report.docs_written as u64, "new or changed document"),
                count(report.rows_deleted, "row"),
                count(report.docs_deleted as u64, "changed or deleted document"),
                count(report.docs_updated as u64, "document"),
            ),
        };
        let rate = match report.rows_written {
            0 => String::new(),
            n => format!(", {:.0} rows/s", n as f64 / report.seconds.max(1e-3)),
        };
        let _ = writeln!(
            stdout,
            "{dataset} version {} -> {} {holder} {}: {what}; it holds {} ({:.1} s{rate})",
            report.generation,
            report.target,
            report.name,
            count(report.rows, "row"),
            report.seconds,
        );
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
}
