//! Compaction: rewriting a dataset's live rows into new files once dead rows (of deleted and older versions of
//! documents) outweigh them, so that storage and full scans stay proportional to the corpus, not to its history.

use std::collections::HashMap;

use super::reader::Dataset;
use super::writer::DatasetWriter;
use super::{DocRecord, Manifest, StoreError};

/// Compact once more than this share of the stored rows is dead.
pub const COMPACT_DEAD_SHARE: f64 = 0.5;

pub fn needs_compaction(manifest: &Manifest) -> bool {
    let dead = manifest.rows.saturating_sub(manifest.live_rows);
    manifest.docs_file.is_some() && dead > 0 && dead as f64 > COMPACT_DEAD_SHARE * manifest.rows as f64
}

/// Writes the live rows of `dataset`, in row-id order, as a new version that starts a new lineage (row ids from 0;
/// the index is rebuilt), and publishes it like any run: the old version stays readable until the switch.
pub fn compact(dataset: &Dataset) -> Result<Manifest, StoreError> {
    let current = &dataset.manifest;
    let Some(live) = dataset.live_rows()? else { return Ok(current.clone()) };
    let mut docs: HashMap<String, DocRecord> = HashMap::new();
    dataset.for_each_doc(|d| {
        docs.insert(d.doc.clone(), d);
    })?;
    let mut settings = Manifest::new(current.model.clone(), current.requested_dimensions, current.chunking.clone());
    settings.metadata_spec = current.metadata_spec.clone();
    let mut writer = DatasetWriter::begin(&dataset.dir, settings, Some(current), false)?;
    let mut renumbered: HashMap<u64, u64> = HashMap::with_capacity(live.len());
    dataset.for_each_chunk_batch(|row_ids, chunks, vectors| {
        let dims = vectors.len().checked_div(chunks.len()).unwrap_or(0);
        let (mut kept, mut kept_vectors, mut kept_ids) = (Vec::new(), Vec::new(), Vec::new());
        for (i, chunk) in chunks.into_iter().enumerate() {
            if live.binary_search(&row_ids[i]).is_ok() {
                kept_ids.push(row_ids[i]);
                kept_vectors.extend_from_slice(&vectors[i * dims..(i + 1) * dims]);
                kept.push(chunk);
            }
        }
        if kept.is_empty() {
            return Ok(());
        }
        let first = writer.write(&kept, &kept_vectors, dims)?;
        renumbered.extend(kept_ids.iter().enumerate().map(|(i, old)| (*old, first + i as u64)));
        Ok(())
    })?;
    for doc in docs.values_mut() {
        for row in &mut doc.rows {
            *row = *renumbered.get(row).ok_or_else(|| StoreError::Corrupt {
                path: dataset.dir.clone(),
                message: format!("document {} lists row {row}, which no data file holds", doc.doc),
            })?;
        }
    }
    let failed = dataset.failed_chunks()?;
    writer.finish(&docs, &failed, current.status.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chunk::Chunk;
    use crate::store::{ChunkingInfo, RunStatus};

    fn chunk(i: u32) -> Chunk {
        Chunk {
            id: format!("id-{i}"),
            doc: Arc::from(format!("doc-{i}").as_str()),
            chunk_index: 0,
            start: 0,
            end: 4,
            tokens: 1,
            text: format!("t{i}"),
            hash: format!("{i:064x}"),
            page: None,
        }
    }

    fn record(i: u32, row: u64) -> DocRecord {
        DocRecord {
            doc: format!("doc-{i}"),
            file: format!("f{i}"),
            size: 1,
            mtime_ns: 2,
            stat_trusted: true,
            content_hash: format!("c{i}"),
            rows: vec![row],
            missing: 0,
            format: None,
            title: None,
            fields: Default::default(),
        }
    }

    #[test]
    fn live_rows_are_rewritten_renumbered_and_the_old_files_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings =
            Manifest::new("m".into(), None, ChunkingInfo { tokenizer: "t".into(), max_tokens: 8, overlap: 0 });
        let chunks: Vec<Chunk> = (0..10).map(chunk).collect();
        let vectors: Vec<f32> = (0..10).flat_map(|i| [i as f32, -(i as f32)]).collect();
        let mut writer = DatasetWriter::begin(dir.path(), settings, None, false).expect("begin").with_rows_per_file(4);
        writer.write(&chunks, &vectors, 2).expect("write");
        // Only documents 2, 5 and 9 are live.
        let docs: HashMap<String, DocRecord> =
            [2u32, 5, 9].iter().map(|&i| (format!("doc-{i}"), record(i, u64::from(i)))).collect();
        let v1 = writer.finish(&docs, &[], RunStatus::Complete).expect("finish");
        assert!(needs_compaction(&v1), "{v1:?}");

        let v2 = compact(&Dataset { dir: dir.path().into(), manifest: v1.clone() }).expect("compact");
        assert!(!needs_compaction(&v2));
        assert_eq!((v2.rows, v2.live_rows, v2.generation), (3, 3, v1.generation + 1));
        assert_ne!(v2.lineage, v1.lineage, "new row ids: the index must be rebuilt");
        assert_eq!(v2.files.iter().map(|f| (f.rows, f.first_row)).collect::<Vec<_>>(), [(3, 0)]);
        assert!(v2.files[0].path.starts_with("data/part-000002-"), "{:?}", v2.files);
        for old in &v1.files {
            assert!(!dir.path().join(&old.path).exists(), "{} is left behind", old.path);
        }
        let dataset = Dataset::open(dir.path()).expect("open");
        let mut back = Vec::new();
        dataset.for_each_doc(|d| back.push((d.doc.clone(), d.rows.clone(), d.content_hash.clone()))).expect("docs");
        back.sort();
        assert_eq!(
            back,
            [
                ("doc-2".into(), vec![0], "c2".into()),
                ("doc-5".into(), vec![1], "c5".into()),
                ("doc-9".into(), vec![2], "c9".into())
            ]
        );
        let rows = dataset.read_vectors(&[0, 1, 2]).expect("vectors");
        assert_eq!(rows.iter().map(|(_, _, v)| v[0]).collect::<Vec<_>>(), [2.0, 5.0, 9.0]);
        assert_eq!(dataset.fetch(&[2]).expect("fetch")[0].id, "id-9");
    }
}
