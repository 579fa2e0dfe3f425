//! The keyword index: BM25 over the chunks' texts, their documents' titles and the identifiers in them (tantivy),
//! kept beside the HNSW graph and updated with it.
//!
//! It lives in `<dataset>/keyword/`: `keyword.json` names the current tantivy directory, and that directory's last
//! commit carries, as its payload, the dataset version it matches ([`KeywordMeta`]). An update deletes the rows no
//! longer live and adds the rows added since in one tantivy commit, which is atomic: an update killed at any point
//! leaves the last commit. A rebuild (a new lineage, or too many deleted rows) writes a new directory and then
//! switches `keyword.json` (write, fsync, rename), as the graph's update switches `index.json`.
//!
//! Three fields are searched: the text, stemmed (English), the title, stemmed, at half weight, and the text's
//! identifiers (flags, error codes, function and file names: words with digits, `_`, `-`, `.`, `:`, `/` and the like,
//! or inner capitals), whole and lower-cased, at twice the weight, so that a query for `--max-retries` or
//! `ERR_CONN_RESET` matches the chunk that contains exactly that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tantivy::collector::{Collector, FilterCollector, SegmentCollector, TopDocs};
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::{
    DocAddress, DocId, Index, IndexReader, ReloadPolicy, Score, SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

use super::IndexError;
use crate::error::quietly;
use crate::store::{Dataset, StoreError, write_json_atomic};

/// The keyword index's folder in a dataset.
pub const KEYWORD_DIR: &str = "keyword";
const POINTER_FILE: &str = "keyword.json";
/// Our layout of the tantivy index (fields, analysers); another one is rebuilt.
const FORMAT: u32 = 2;
/// Rebuild rather than extend once this share of the documents ever added is deleted (their terms still count in
/// BM25's statistics until tantivy merges them away).
const MAX_DELETED_SHARE: f64 = 0.25;
/// tantivy's indexing memory budget (one thread).
const WRITER_BUDGET: usize = 64 << 20;

const ROW: &str = "row";
const TEXT: &str = "text";
const TITLE: &str = "title";
const IDENTS: &str = "idents";
const TITLE_BOOST: f32 = 0.5;
const IDENT_BOOST: f32 = 2.0;

/// What the index holds: the payload of its last commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeywordMeta {
    pub format: u32,
    /// The dataset version it matches.
    pub lineage: String,
    pub generation: u64,
    /// Rows with smaller ids were considered (the live ones are in it).
    pub covered_rows: u64,
    /// Live rows in the index.
    pub rows: u64,
    /// Rows added to this directory and deleted since.
    pub deleted: u64,
    /// Row ids below `covered_rows` that are not live, as sorted `[start, end)` ranges (so an update deletes only the
    /// rows that died since).
    #[serde(default)]
    pub dead_ranges: Vec<[u64; 2]>,
    /// How the last update went: `built`, `extended` or `current`.
    pub mode: String,
    /// Rows added and deleted by the last update.
    pub added_now: u64,
    pub deleted_now: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    dir: String,
}

#[derive(Clone, Copy)]
struct Fields {
    row: Field,
    text: Field,
    title: Field,
    idents: Field,
}

/// The text and title analyser: words, lower-cased, without English stop words, stemmed.
const TEXT_ANALYZER: &str = "tars_en";

/// English stop words: Lucene's list plus the function words of questions ("how do I ...", "what is the ..."),
/// which would otherwise match every chunk that happens to use them (NLTK's list, less its negations).
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

fn register_analyzers(index: &Index) {
    use tantivy::tokenizer::{Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter};
    let analyzer = tantivy::tokenizer::TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::remove(STOP_WORDS.iter().map(|w| (*w).to_owned())))
        .filter(Stemmer::new(Language::English))
        .build();
    index.tokenizers().register(TEXT_ANALYZER, analyzer);
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(TEXT_ANALYZER).set_index_option(IndexRecordOption::WithFreqs),
    );
    let whole = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer("whitespace").set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        row: builder.add_u64_field(ROW, INDEXED | FAST),
        text: builder.add_text_field(TEXT, stemmed.clone()),
        title: builder.add_text_field(TITLE, stemmed),
        idents: builder.add_text_field(IDENTS, whole),
    };
    (builder.build(), fields)
}

/// The identifiers in `text`, lower-cased: whitespace-separated words stripped of surrounding quotes and
/// punctuation that hold a digit, an inner capital or one of `_-.:/@#$%+=~*&`. Plain words are left to the stemmed
/// text field.
pub fn identifiers(text: &str) -> Vec<String> {
    const EDGES: &[char] = &[
        '"', '\'', '`', '(', ')', '[', ']', '{', '}', '<', '>', ',', ';', '!', '?', '.', ':', '*', '“', '”', '‘', '’',
    ];
    const INNER: &[char] = &['_', '-', '.', ':', '/', '@', '#', '$', '%', '+', '=', '~', '*', '&'];
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let word = word.trim_matches(EDGES);
        let chars = word.chars().count();
        if !(2..=64).contains(&chars) {
            continue;
        }
        let inner_capital = word.chars().skip(1).any(char::is_uppercase) && word.chars().any(char::is_lowercase);
        let marked = word.chars().any(|c| c.is_ascii_digit() || INNER.contains(&c));
        if (marked || inner_capital) && word.chars().any(char::is_alphanumeric) {
            out.push(word.to_lowercase());
        }
    }
    out
}

/// A keyword hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeywordHit {
    pub row: u64,
    /// BM25.
    pub score: f32,
    /// Whether the chunk holds every identifier of the query (false when the query has none).
    pub exact: bool,
}

/// A saved keyword index, open for searching.
pub struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    pub meta: KeywordMeta,
    pub path: PathBuf,
}

fn damaged(dataset: &Dataset, message: String) -> IndexError {
    IndexError::Damaged { path: dataset.dir.join(KEYWORD_DIR), dataset: dataset.dir.clone(), message }
}

fn tantivy_error(dataset: &Dataset, what: &str) -> impl Fn(tantivy::TantivyError) -> IndexError {
    let (path, dataset) = (dataset.dir.join(KEYWORD_DIR), dataset.dir.clone());
    let what = what.to_owned();
    move |e| IndexError::Damaged { path: path.clone(), dataset: dataset.clone(), message: format!("{what}: {e}") }
}

/// The bytes that say which commit of the keyword index in `dataset_dir` is current: the pointer to its folder and
/// that folder's tantivy `meta.json` (which an update in place rewrites before it deletes the files it replaced).
/// Missing parts are empty.
pub fn commit_stamp(dataset_dir: &Path) -> Vec<u8> {
    let root = dataset_dir.join(KEYWORD_DIR);
    let mut bytes = std::fs::read(root.join(POINTER_FILE)).unwrap_or_default();
    if let Ok(pointer) = serde_json::from_slice::<Pointer>(&bytes)
        && !pointer.dir.contains(['/', '\\'])
        && !pointer.dir.starts_with('.')
    {
        bytes.extend(std::fs::read(root.join(&pointer.dir).join("meta.json")).unwrap_or_default());
    }
    bytes
}

impl KeywordIndex {
    /// Opens `<dataset>/keyword`, whatever version it matches ([`KeywordMeta`] says which).
    pub fn open(dataset: &Dataset) -> Result<Self, IndexError> {
        let root = dataset.dir.join(KEYWORD_DIR);
        let pointer_path = root.join(POINTER_FILE);
        let bytes = match std::fs::read(&pointer_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::Missing { path: root, dataset: dataset.dir.clone() });
            }
            Err(e) => return Err(StoreError::Io { path: pointer_path, source: e }.into()),
        };
        let pointer: Pointer =
            serde_json::from_slice(&bytes).map_err(|e| damaged(dataset, format!("{POINTER_FILE}: {e}")))?;
        if pointer.dir.contains(['/', '\\']) || pointer.dir.starts_with('.') {
            return Err(damaged(dataset, format!("{POINTER_FILE} names {:?}", pointer.dir)));
        }
        let path = root.join(&pointer.dir);
        // Replaced by a rebuild since the pointer was read: not damage (the caller may look again).
        if !path.is_dir() {
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, "replaced while opening");
            return Err(StoreError::Io { path, source }.into());
        }
        let opened = quietly(|| -> Result<_, tantivy::TantivyError> {
            let index = Index::open_in_dir(&path)?;
            register_analyzers(&index);
            let reader: IndexReader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
            // The payload (which rows the index covers) must be that of the commit the reader opened: an update
            // committing in between would leave the reader holding rows the payload does not admit to.
            for _ in 0..3 {
                let metas = index.load_metas()?;
                let committed: std::collections::BTreeMap<_, _> =
                    metas.segments.iter().map(|s| (s.id(), s.delete_opstamp())).collect();
                if &committed == reader.searcher().generation().segments() {
                    return Ok(Some((index, metas.payload, reader)));
                }
                reader.reload()?;
            }
            Ok(None)
        });
        let (index, payload, reader) = match opened {
            Ok(Ok(Some(result))) => result,
            Ok(Ok(None)) => {
                let source = std::io::Error::new(std::io::ErrorKind::NotFound, "updated while opening");
                return Err(StoreError::Io { path, source }.into());
            }
            Ok(Err(e)) => return Err(tantivy_error(dataset, "cannot open")(e)),
            Err(_) => return Err(damaged(dataset, "tantivy failed on its files".to_owned())),
        };
        let meta: KeywordMeta = payload
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| damaged(dataset, format!("commit payload: {e}")))?
            .ok_or_else(|| damaged(dataset, "no commit payload".to_owned()))?;
        let field = |name: &str| index.schema().get_field(name).map_err(|e| damaged(dataset, e.to_string()));
        let fields = Fields { row: field(ROW)?, text: field(TEXT)?, title: field(TITLE)?, idents: field(IDENTS)? };
        Ok(Self { index, reader, fields, meta, path })
    }

    /// The `n` best rows for `text` by BM25, of those `allowed` accepts (`None`: every row the index holds).
    pub fn search(&self, text: &str, n: usize, allowed: Option<&RowFilter>) -> Result<Vec<KeywordHit>, IndexError> {
        let fields = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in [(fields.text, 1.0), (fields.title, TITLE_BOOST)] {
            for term in self.analysed(field, text) {
                let query: Box<dyn Query> = Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                clauses.push((Occur::Should, Box::new(BoostQuery::new(query, boost))));
            }
        }
        let idents: Vec<Term> =
            dedup(identifiers(text)).iter().map(|i| Term::from_field_text(fields.idents, i)).collect();
        for term in &idents {
            let query: Box<dyn Query> = Box::new(TermQuery::new(term.clone(), IndexRecordOption::WithFreqs));
            clauses.push((Occur::Should, Box::new(BoostQuery::new(query, IDENT_BOOST))));
        }
        if clauses.is_empty() || n == 0 {
            return Ok(Vec::new());
        }
        let mut hits = self.top(&BooleanQuery::new(clauses), n, allowed)?;
        if !idents.is_empty() {
            let all: Vec<(Occur, Box<dyn Query>)> = idents
                .into_iter()
                .map(|t| (Occur::Must, Box::new(TermQuery::new(t, IndexRecordOption::Basic)) as Box<dyn Query>))
                .collect();
            let exact: std::collections::HashSet<u64> =
                self.top(&BooleanQuery::new(all), n, allowed)?.into_iter().map(|h| h.row).collect();
            hits.iter_mut().for_each(|h| h.exact = exact.contains(&h.row));
        }
        Ok(hits)
    }

    fn top(&self, query: &dyn Query, n: usize, allowed: Option<&RowFilter>) -> Result<Vec<KeywordHit>, IndexError> {
        let searcher = self.reader.searcher();
        let fail = |e: tantivy::TantivyError| IndexError::Search(format!("keyword search: {e}"));
        let found = match allowed {
            Some(allowed) => {
                let allowed = Arc::clone(allowed);
                let collector = FilterCollector::new(
                    ROW.to_owned(),
                    move |row: u64| allowed(row),
                    TopDocs::with_limit(n).order_by_score(),
                );
                quietly(|| searcher.search(query, &collector))
            }
            None => quietly(|| searcher.search(query, &TopScores(n))),
        };
        let found = found
            .map_err(|_| IndexError::Search("keyword search failed on the index files".to_owned()))?
            .map_err(fail)?;
        let mut hits = Vec::with_capacity(found.len());
        for (score, address) in found {
            let row = searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .u64(ROW)
                .map_err(fail)?
                .first(address.doc_id)
                .ok_or_else(|| IndexError::Search("keyword index: a document without its row".to_owned()))?;
            hits.push(KeywordHit { row, score, exact: false });
        }
        Ok(hits)
    }

    fn analysed(&self, field: Field, text: &str) -> Vec<Term> {
        let Ok(mut analyzer) = self.index.tokenizer_for_field(field) else { return Vec::new() };
        let mut stream = analyzer.token_stream(text);
        let mut words = Vec::new();
        while stream.advance() {
            words.push(stream.token().text.clone());
        }
        dedup(words).iter().map(|w| Term::from_field_text(field, w)).collect()
    }
}

/// Which rows a keyword search may answer with.
pub type RowFilter = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// The `n` best documents by score, ties by ascending address, as `TopDocs` orders them, but scoring every match
/// without a per-document filter: on a version without deletions no row needs checking, and the filter's fast-field
/// read per matching document was a third of a batch's keyword time. (`TopDocs` alone would take tantivy's
/// block-max WAND path, which the boosts around each term keep from pruning: slower here, measured.)
struct TopScores(usize);

impl Collector for TopScores {
    type Fruit = Vec<(Score, DocAddress)>;
    type Child = SegmentTop;

    fn for_segment(&self, segment: SegmentOrdinal, _reader: &SegmentReader) -> tantivy::Result<SegmentTop> {
        Ok(SegmentTop { segment, n: self.0, heap: std::collections::BinaryHeap::with_capacity(self.0 + 1) })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<Vec<(Score, DocAddress)>>) -> tantivy::Result<Self::Fruit> {
        let mut all: Vec<(Score, DocAddress)> = fruits.into_iter().flatten().collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all.truncate(self.0);
        Ok(all)
    }
}

/// A segment's best `n` so far, the worst on top. Documents arrive in ascending id order, so one that only ties
/// the worst kept comes after it and stays out.
struct SegmentTop {
    segment: SegmentOrdinal,
    n: usize,
    heap: std::collections::BinaryHeap<Worst>,
}

/// Ordered so that the heap's top is the worst kept: the lowest score, then the highest id.
#[derive(PartialEq)]
struct Worst(Score, DocId);

impl Eq for Worst {}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

impl SegmentCollector for SegmentTop {
    type Fruit = Vec<(Score, DocAddress)>;

    fn collect(&mut self, doc: DocId, score: Score) {
        if self.heap.len() < self.n {
            self.heap.push(Worst(score, doc));
        } else if let Some(mut worst) = self.heap.peek_mut()
            && score > worst.0
        {
            *worst = Worst(score, doc);
        }
    }

    fn harvest(self) -> Self::Fruit {
        let segment = self.segment;
        self.heap.into_iter().map(|Worst(score, doc)| (score, DocAddress::new(segment, doc))).collect()
    }
}

fn dedup(mut words: Vec<String>) -> Vec<String> {
    words.sort_unstable();
    words.dedup();
    words
}

/// Brings the keyword index of `dataset` up to date (see the module docs); `rebuild` starts it again.
pub fn update(dataset: &Dataset, rebuild: bool) -> Result<KeywordMeta, IndexError> {
    let manifest = &dataset.manifest;
    let live = dataset.live_rows()?;
    let end = manifest.next_row();
    let is_live = |row: u64| row < end && live.as_ref().is_none_or(|l| l.binary_search(&row).is_ok());
    let mut titles: HashMap<String, String> = HashMap::new();
    if manifest.docs_file.is_some() {
        dataset.for_each_doc(|d| {
            if let Some(title) = d.title {
                titles.insert(d.doc, title);
            }
        })?;
    }
    let existing = if rebuild { None } else { KeywordIndex::open(dataset).ok() };
    if let Some(index) = &existing {
        let meta = &index.meta;
        if meta.format == FORMAT
            && meta.lineage == manifest.lineage
            && meta.generation == manifest.generation
            && meta.covered_rows == end
        {
            return Ok(KeywordMeta { mode: "current".to_owned(), added_now: 0, deleted_now: 0, ..meta.clone() });
        }
    }
    let extend = existing.filter(|index| {
        let meta = &index.meta;
        let added = meta.rows + meta.deleted;
        meta.format == FORMAT
            && meta.lineage == manifest.lineage
            && meta.covered_rows <= end
            && (meta.deleted as f64) <= MAX_DELETED_SHARE * added.max(1) as f64
    });
    let root = dataset.dir.join(KEYWORD_DIR);
    let write_error = tantivy_error(dataset, "cannot write");
    let (index, fields, path, from, mut meta, fresh) = match extend {
        Some(existing) => {
            let from = existing.meta.covered_rows;
            (existing.index, existing.fields, existing.path, from, existing.meta, false)
        }
        None => {
            let name = format!("kw-g{}-{}", manifest.generation, std::process::id());
            let path = root.join(&name);
            if path.exists() {
                std::fs::remove_dir_all(&path).map_err(StoreError::io(&path))?;
            }
            std::fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
            let (schema, fields) = schema();
            let index = Index::create_in_dir(&path, schema).map_err(&write_error)?;
            register_analyzers(&index);
            let meta = KeywordMeta {
                format: FORMAT,
                lineage: manifest.lineage.clone(),
                generation: manifest.generation,
                covered_rows: 0,
                rows: 0,
                deleted: 0,
                dead_ranges: Vec::new(),
                mode: String::new(),
                added_now: 0,
                deleted_now: 0,
            };
            (index, fields, path, 0, meta, true)
        }
    };
    let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, WRITER_BUDGET).map_err(&write_error)?;
    // Rows that died since the last update (rows never come back to life, and none below `from` is new).
    let mut deleted_now = 0u64;
    if !fresh {
        let known_dead = |row: u64| {
            let at = meta.dead_ranges.partition_point(|r| r[1] <= row);
            meta.dead_ranges.get(at).is_some_and(|r| r[0] <= row)
        };
        for row in (0..from).filter(|&row| !is_live(row) && !known_dead(row)) {
            writer.delete_term(Term::from_field_u64(fields.row, row));
            deleted_now += 1;
        }
    }
    let first_file = manifest.files.partition_point(|f| f.first_row + f.rows <= from);
    let mut added_now = 0u64;
    let mut failed: Option<tantivy::TantivyError> = None;
    dataset.for_each_text(first_file, |row, doc, text| {
        if row < from || !is_live(row) || failed.is_some() {
            return;
        }
        match writer.add_document(document(fields, row, text, titles.get(doc).map(String::as_str))) {
            Ok(_) => added_now += 1,
            Err(e) => failed = Some(e),
        }
    })?;
    if let Some(e) = failed {
        return Err(write_error(e));
    }
    meta.generation = manifest.generation;
    meta.covered_rows = end;
    meta.rows = (meta.rows + added_now).saturating_sub(deleted_now);
    meta.deleted += deleted_now;
    meta.dead_ranges = super::dead_ranges(live.as_deref(), end);
    meta.mode = if fresh { "built" } else { "extended" }.to_owned();
    meta.added_now = added_now;
    meta.deleted_now = deleted_now;
    let payload = serde_json::to_string(&meta).map_err(|e| damaged(dataset, e.to_string()))?;
    let mut prepared = writer.prepare_commit().map_err(&write_error)?;
    prepared.set_payload(&payload);
    prepared.commit().map_err(&write_error)?;
    writer.wait_merging_threads().map_err(&write_error)?;
    if fresh {
        // The switch; a process killed before it leaves the old index in use and this directory for the next
        // update to remove.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        write_json_atomic(&root.join(POINTER_FILE), &Pointer { dir: name.clone() })?;
        remove_others(&root, &name)?;
    }
    Ok(meta)
}

fn document(fields: Fields, row: u64, text: &str, title: Option<&str>) -> TantivyDocument {
    let mut document = TantivyDocument::default();
    document.add_u64(fields.row, row);
    document.add_text(fields.text, text);
    if let Some(title) = title {
        document.add_text(fields.title, title);
    }
    document.add_text(fields.idents, identifiers(text).join(" "));
    document
}

impl KeywordIndex {
    /// An in-memory index of the rows from `from` on that `allowed` accepts: for the rows a run added since the
    /// saved index was updated, which are then searched as the vector side scores them exactly. Their BM25
    /// statistics are their own.
    pub fn of_rows_since(
        dataset: &Dataset,
        from: u64,
        title: &dyn Fn(&str) -> Option<String>,
        allowed: &dyn Fn(u64) -> bool,
    ) -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        let index = Index::create_in_ram(schema);
        register_analyzers(&index);
        let fail = tantivy_error(dataset, "in-memory keyword index");
        let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, 15 << 20).map_err(&fail)?;
        let first_file = dataset.manifest.files.partition_point(|f| f.first_row + f.rows <= from);
        let (mut rows, mut failed) = (0u64, None);
        dataset.for_each_text(first_file, |row, doc, text| {
            if row >= from && allowed(row) && failed.is_none() {
                match writer.add_document(document(fields, row, text, title(doc).as_deref())) {
                    Ok(_) => rows += 1,
                    Err(e) => failed = Some(e),
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(fail(e));
        }
        writer.commit().map_err(&fail)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(&fail)?;
        let manifest = &dataset.manifest;
        let meta = KeywordMeta {
            format: FORMAT,
            lineage: manifest.lineage.clone(),
            generation: manifest.generation,
            covered_rows: manifest.next_row(),
            rows,
            deleted: 0,
            dead_ranges: Vec::new(),
            mode: "in-memory".to_owned(),
            added_now: rows,
            deleted_now: 0,
        };
        Ok(Self { index, reader, fields, meta, path: PathBuf::new() })
    }
}

/// Removes every directory of `root` but `keep` (earlier indexes, and ones a killed update left).
fn remove_others(root: &Path, keep: &str) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(root).map_err(StoreError::io(root))? {
        let entry = entry.map_err(StoreError::io(root))?;
        if entry.file_name() != keep && entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(entry.path()).map_err(StoreError::io(entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_the_words_a_stemmer_would_break() {
        let text = "Pass `--max-retries 5` or set TARS_API_KEY; on ERR_CONN_RESET see src/embed/retry.rs, \
                    parseGoDuration() and v1.2.3. Plain words stay out, as do 'a' and -.";
        assert_eq!(
            identifiers(text),
            ["--max-retries", "tars_api_key", "err_conn_reset", "src/embed/retry.rs", "parsegoduration", "v1.2.3"]
        );
        assert!(identifiers("The quick brown fox.").is_empty());
    }

    /// The unfiltered collector returns what `TopDocs` behind an accept-all filter returns, ties included, across
    /// segments.
    #[test]
    fn top_scores_orders_as_top_docs_does() {
        let (schema, fields) = schema();
        let index = Index::create_in_ram(schema);
        register_analyzers(&index);
        let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, 15 << 20).expect("writer");
        // Repeated texts (with the same title) score alike: ties within a segment and across segments.
        let texts = ["alpha beta", "alpha", "beta gamma alpha", "alpha beta", "gamma", "alpha", "alpha alpha beta"];
        for segment in 0..3u64 {
            for (i, text) in texts.iter().enumerate() {
                let row = segment * 100 + i as u64;
                writer
                    .add_document(document(fields, row, text, (text.len() % 2 == 0).then_some("alpha")))
                    .expect("add");
            }
            writer.commit().expect("commit");
        }
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().expect("reader");
        let searcher = reader.searcher();
        assert_eq!(searcher.segment_readers().len(), 3, "three segments");
        for text in ["alpha", "alpha beta", "gamma", "beta gamma"] {
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            for term in [fields.text, fields.title]
                .into_iter()
                .flat_map(|field| text.split(' ').map(move |w| Term::from_field_text(field, w)).collect::<Vec<_>>())
            {
                let query: Box<dyn Query> = Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                clauses.push((Occur::Should, Box::new(BoostQuery::new(query, 0.5))));
            }
            let query = BooleanQuery::new(clauses);
            for n in 1..=24 {
                let filtered =
                    FilterCollector::new(ROW.to_owned(), |_: u64| true, TopDocs::with_limit(n).order_by_score());
                let expected = searcher.search(&query, &filtered).expect("top docs");
                let got = searcher.search(&query, &TopScores(n)).expect("top scores");
                assert!(!expected.is_empty());
                assert_eq!(got, expected, "{text:?}, n = {n}");
            }
        }
    }
}
