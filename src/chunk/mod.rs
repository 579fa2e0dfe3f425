//! Stage 2: splitting documents into token-bounded chunks.
//!
//! Chunking is CPU-only and synchronous; the pipeline runs it on a blocking thread. The [`TokenChunker`] measures
//! with the tokenizer of the model that will embed the chunks ([`TokenCounter`]: cl100k_base for text-embedding-3-*,
//! the model's own for a local model) and lets `text-splitter` choose the cut points: it prefers paragraph, then
//! sentence, then word boundaries (Markdown structure for Markdown files) and never exceeds the token budget.

use std::sync::Arc;

use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use crate::source::{Document, TextFormat};

/// The most tokens one input may have on the wire (the API documents 8192; 8191 is the safe cap).
pub const MAX_INPUT_TOKENS: usize = 8191;

/// One piece of a document, ready to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Stable id: a hash of the document name, position and text.
    pub id: String,
    pub doc: Arc<str>,
    pub chunk_index: u32,
    /// Byte offsets of `text` in the document's text.
    pub start: u64,
    pub end: u64,
    /// Tokens in `text`, as the embedding model's tokenizer counts them.
    pub tokens: u32,
    pub text: String,
    /// blake3 of `text`, hex.
    pub hash: String,
    /// The 1-based page the chunk starts on, for a paged document (PDF).
    pub page: Option<u32>,
}

/// Stage boundary: turns one document into its chunks.
pub trait Chunker: Send + Sync {
    fn chunk(&self, document: &Document) -> Vec<Chunk>;
}

/// Chunking settings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSettings {
    pub max_tokens: usize,
    pub overlap: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkSettingsError {
    #[error("must be between 1 and {limit}, the model's input limit (got {got})")]
    MaxTokens { got: usize, limit: usize },
    #[error("{overlap} must be smaller than the chunk size {max_tokens}")]
    Overlap { overlap: usize, max_tokens: usize },
}

impl ChunkSettings {
    /// Settings for the API's models (at most [`MAX_INPUT_TOKENS`] per chunk).
    pub fn new(max_tokens: usize, overlap: usize) -> Result<Self, ChunkSettingsError> {
        Self::with_limit(max_tokens, overlap, MAX_INPUT_TOKENS)
    }

    /// Settings for a model that takes at most `limit` tokens per input.
    pub fn with_limit(max_tokens: usize, overlap: usize, limit: usize) -> Result<Self, ChunkSettingsError> {
        if max_tokens == 0 || max_tokens > limit {
            return Err(ChunkSettingsError::MaxTokens { got: max_tokens, limit });
        }
        if overlap >= max_tokens {
            return Err(ChunkSettingsError::Overlap { overlap, max_tokens });
        }
        Ok(Self { max_tokens, overlap })
    }
}

/// The process-wide cl100k_base tokenizer: bpe-openai's, which gives tiktoken's tokens (the tests compare them) in
/// a third to half of tiktoken-rs's time, most of which was its look-ahead regex (built once, on first use).
pub fn cl100k() -> &'static bpe_openai::Tokenizer {
    bpe_openai::cl100k_base()
}

/// cl100k_base token count of `text`, as the API counts it (special-token text is ordinary text).
pub fn count_tokens(text: &str) -> usize {
    cl100k().count(text)
}

/// How chunk sizes are measured: with the tokenizer of the model that embeds the chunks.
#[derive(Clone)]
pub enum TokenCounter {
    /// cl100k_base, the tokenizer of text-embedding-3-* (and what the API limits count).
    Cl100k,
    /// A Hugging Face tokenizer (a local model's), counting without special tokens.
    HuggingFace { name: String, tokenizer: Arc<tokenizers::Tokenizer> },
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCounter({})", self.name())
    }
}

impl TokenCounter {
    pub fn count(&self, text: &str) -> usize {
        match self {
            TokenCounter::Cl100k => count_tokens(text),
            // A WordPiece/BPE tokenizer does not fail on text; if one ever does, count bytes, which over-counts and
            // so keeps chunks within the window.
            TokenCounter::HuggingFace { tokenizer, .. } => {
                tokenizer.encode_fast(text, false).map(|e| e.len()).unwrap_or(text.len())
            }
        }
    }

    /// The byte spans of `text`'s tokens, as starts and ends (ascending); `None` if the tokenizer cannot say.
    fn spans(&self, text: &str) -> Option<(Vec<usize>, Vec<usize>)> {
        match self {
            TokenCounter::Cl100k => {
                let tokenizer = cl100k();
                let (mut starts, mut ends) = (Vec::with_capacity(text.len() / 4), Vec::with_capacity(text.len() / 4));
                let mut at = 0;
                // Pre-tokenised pieces are contiguous and cover the text; each piece's tokens cover the piece.
                for piece in tokenizer.split(text) {
                    for token in tokenizer.bpe.encode_via_backtracking(piece.as_bytes()) {
                        starts.push(at);
                        at += tokenizer.bpe.token_len(token);
                        ends.push(at);
                    }
                }
                // The tokens' bytes are the text's bytes: anything else means the table is wrong, not the text.
                (at == text.len()).then_some((starts, ends))
            }
            TokenCounter::HuggingFace { tokenizer, .. } => {
                let encoding = tokenizer.encode(text, false).ok()?;
                let (starts, ends) = encoding.get_offsets().iter().copied().unzip();
                Some((starts, ends))
            }
        }
    }

    /// Recorded in the manifest.
    pub fn name(&self) -> String {
        match self {
            TokenCounter::Cl100k => "cl100k_base".to_owned(),
            TokenCounter::HuggingFace { name, .. } => name.clone(),
        }
    }
}

impl ChunkSizer for TokenCounter {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

/// Token-aware chunker.
pub struct TokenChunker {
    settings: ChunkSettings,
    counter: TokenCounter,
    plain: TextSplitter<TokenCounter>,
    markdown: MarkdownSplitter<TokenCounter>,
}

impl TokenChunker {
    /// A chunker measuring with cl100k_base.
    pub fn new(settings: ChunkSettings) -> Self {
        Self::with_counter(settings, TokenCounter::Cl100k)
    }

    pub fn with_counter(settings: ChunkSettings, counter: TokenCounter) -> Self {
        let config = || {
            ChunkConfig::new(settings.max_tokens)
                .with_sizer(counter.clone())
                .with_overlap(settings.overlap)
                .expect("ChunkSettings guarantees overlap < max_tokens")
        };
        Self { settings, plain: TextSplitter::new(config()), markdown: MarkdownSplitter::new(config()), counter }
    }

    /// The splitter's chunks of `text`, sized against one tokenisation of it ([`Measured`]).
    fn split<'t>(&self, format: TextFormat, text: &'t str) -> Vec<(usize, &'t str)> {
        let Some(sizer) = Measured::new(&self.counter, text) else {
            return self.split_exact(format, text);
        };
        let Ok(config) =
            ChunkConfig::new(self.settings.max_tokens).with_sizer(sizer).with_overlap(self.settings.overlap)
        else {
            return self.split_exact(format, text);
        };
        match format {
            TextFormat::Plain => TextSplitter::new(config).chunk_indices(text).collect(),
            TextFormat::Markdown => MarkdownSplitter::new(config).chunk_indices(text).collect(),
        }
    }

    /// The splitter's chunks of `text`, every candidate tokenised on its own: exact, and several times slower.
    fn split_exact<'t>(&self, format: TextFormat, text: &'t str) -> Vec<(usize, &'t str)> {
        match format {
            TextFormat::Plain => self.plain.chunk_indices(text).collect(),
            TextFormat::Markdown => self.markdown.chunk_indices(text).collect(),
        }
    }

    /// The splitter's chunks of the whole document, found window by window (see [`windowed`]), sized by estimate
    /// ([`Measured`]) or, with `exact`, by tokenising every candidate.
    fn pieces<'t>(&self, document: &'t Document, exact: bool) -> Vec<(usize, &'t str)> {
        let window = (CHUNKS_PER_WINDOW * self.settings.max_tokens * 4).max(MIN_WINDOW_BYTES);
        if exact {
            windowed(&document.text, window, |text| self.split_exact(document.format, text))
        } else {
            windowed(&document.text, window, |text| self.split(document.format, text))
        }
    }

    /// Chunks of `document` with their exact token counts; `None` if a piece does not fit (an estimate was low).
    fn counted<'t>(&self, document: &'t Document, exact: bool) -> Option<Vec<(usize, &'t str, usize)>> {
        let max = self.settings.max_tokens;
        let mut out = Vec::new();
        for (offset, text) in self.pieces(document, exact) {
            let tokens = self.counter.count(text);
            if tokens > max {
                if !exact {
                    return None;
                }
                // Even the exact splitter overshot (it should not): halve until every piece fits.
                out.extend(fit(&self.counter, offset, text, max));
                continue;
            }
            out.push((offset, text, tokens));
        }
        Some(out)
    }
}

/// About this many chunks (of four bytes a token: English prose averages about four bytes per cl100k token) make a
/// window of a long document: more costs more per byte, fewer makes window ends (where the last chunk is dropped
/// and split again) more frequent.
const CHUNKS_PER_WINDOW: usize = 4;
const MIN_WINDOW_BYTES: usize = 4 * 1024;

/// Runs `split` over `text` a window of about `window` bytes at a time, and returns its chunks as offsets into `text`.
///
/// text-splitter measures candidate chunks from their start up to the next boundary of the level it considers, and
/// in text with few boundaries (a long line without whitespace, minified JSON or HTML) that is the rest of the
/// document: chunking time grew with the square of the length (a 400 KB line took 13 s). So a long document is
/// split a window at a time: a window's chunks are kept except the last, which the window's end may have cut, and
/// the next window starts where that chunk starts (with overlap, the splitter has placed it already). Every window
/// is a few chunk lengths long, so the work per byte is bounded and chunking is linear in the length whatever the
/// text's shape. A document of one window is split whole, as before.
fn windowed<'t>(
    text: &'t str,
    window: usize,
    mut split: impl FnMut(&'t str) -> Vec<(usize, &'t str)>,
) -> Vec<(usize, &'t str)> {
    if text.len() <= window {
        return split(text);
    }
    let mut pieces = Vec::new();
    let (mut start, mut size) = (0, window);
    while start < text.len() {
        let end = floor_char_boundary(text, start + size);
        let chunks = split(&text[start..end]);
        if end == text.len() {
            pieces.extend(chunks.into_iter().map(|(offset, piece)| (start + offset, piece)));
            break;
        }
        match chunks.len() {
            // Only whitespace: nothing to keep from here.
            0 => start = end,
            // One chunk may be cut short by the window's end: look further (tokens longer than assumed).
            1 => size *= 2,
            n => {
                let next = start + chunks[n - 1].0;
                pieces.extend(chunks.into_iter().take(n - 1).map(|(offset, piece)| (start + offset, piece)));
                (start, size) = (next, window);
            }
        }
    }
    pieces
}

/// The largest char boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    let mut at = at;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl Chunker for TokenChunker {
    fn chunk(&self, document: &Document) -> Vec<Chunk> {
        let doc: Arc<str> = Arc::from(document.doc.as_str());
        // Each chosen chunk is counted exactly once. If an estimate came out low and a chunk does not fit, the
        // document is chunked again measuring every candidate (rare: see `Measured`), so chunks always fit.
        let pieces = match self.counted(document, false) {
            Some(pieces) => pieces,
            None => self.counted(document, true).unwrap_or_default(),
        };
        let mut chunks = Vec::with_capacity(pieces.len());
        for (offset, text, tokens) in pieces {
            if text.trim().is_empty() {
                continue; // the API rejects empty inputs
            }
            let index = chunks.len() as u32;
            let mut chunk = make_chunk(&doc, index, offset, text, tokens);
            chunk.page = document.meta.page_at(chunk.start);
            chunks.push(chunk);
        }
        chunks
    }
}

/// Sizes pieces of one text by the tokens of a single tokenisation of the whole text that they overlap: two binary
/// searches instead of tokenising every candidate the splitter tries (text-splitter measures each candidate chunk
/// from its start, several per chunk, so chunking cost several tokenisations of the text).
///
/// A piece's own tokenisation can differ at its edges: a piece that starts or ends inside a token of the whole text
/// tokenises that part afresh, which may take two tokens. An edge that cuts a token is therefore counted as two
/// (except a start that only drops the token's leading space, as every word after the first of a trimmed piece
/// does in cl100k, where the rest is one token). The estimate can still be low in rare text; every chosen chunk is
/// counted exactly, and a document with a chunk over the limit is chunked again exactly.
struct Measured<'a> {
    text: &'a str,
    counter: &'a TokenCounter,
    /// Byte offsets where each token starts and ends, both ascending.
    starts: Vec<usize>,
    ends: Vec<usize>,
}

impl<'a> Measured<'a> {
    /// `None` when the tokenizer's spans do not describe `text` (then every candidate is tokenised).
    fn new(counter: &'a TokenCounter, text: &'a str) -> Option<Self> {
        let (starts, ends) = counter.spans(text)?;
        Some(Self { text, counter, starts, ends })
    }
}

impl ChunkSizer for Measured<'_> {
    fn size(&self, chunk: &str) -> usize {
        // The splitter hands over slices of the text it splits; the slice's address gives its offset.
        let at = (chunk.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        if at > self.text.len() || self.text.len() - at < chunk.len() {
            return self.counter.count(chunk);
        }
        let (start, end) = (at, at + chunk.len());
        if start == end {
            return 0;
        }
        let begun = self.starts.partition_point(|&s| s < end);
        let finished = self.ends.partition_point(|&e| e <= start);
        let mut size = begun.saturating_sub(finished);
        // The first token overlapping the piece begins before it by more than a space: it is cut.
        if let Some(&first) = self.starts.get(finished)
            && first < start
            && start - first > 1
        {
            size += 1;
        }
        // The last token overlapping the piece ends after it: it is cut.
        if begun > 0 && self.ends[begun - 1] > end && (begun - 1 > finished || self.starts[begun - 1] >= start) {
            size += 1;
        }
        size
    }
}

/// Guarantees the token bound if even the exact splitter overshoots (it should not): halves at a char boundary
/// until every piece fits.
fn fit<'t>(counter: &TokenCounter, offset: usize, text: &'t str, max_tokens: usize) -> Vec<(usize, &'t str, usize)> {
    let tokens = counter.count(text);
    if tokens <= max_tokens || text.chars().nth(1).is_none() {
        return vec![(offset, text, tokens)];
    }
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid += 1;
    }
    let (left, right) = text.split_at(mid);
    let mut out = fit(counter, offset, left, max_tokens);
    out.extend(fit(counter, offset + mid, right, max_tokens));
    out
}

fn make_chunk(doc: &Arc<str>, chunk_index: u32, offset: usize, text: &str, tokens: usize) -> Chunk {
    let hash = blake3::hash(text.as_bytes());
    let mut id = blake3::Hasher::new();
    id.update(doc.as_bytes());
    id.update(&[0]);
    id.update(&chunk_index.to_le_bytes());
    id.update(hash.as_bytes());
    Chunk {
        id: id.finalize().to_hex()[..32].to_owned(),
        doc: Arc::clone(doc),
        chunk_index,
        start: offset as u64,
        end: (offset + text.len()) as u64,
        tokens: tokens as u32,
        text: text.to_owned(),
        hash: hash.to_hex().to_string(),
        page: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn document(text: &str, format: TextFormat) -> Document {
        Document::new("d.txt", text, format)
    }

    fn chunk(text: &str, max: usize, overlap: usize) -> Vec<Chunk> {
        let chunker = TokenChunker::new(ChunkSettings::new(max, overlap).expect("valid settings"));
        chunker.chunk(&document(text, TextFormat::Plain))
    }

    #[test]
    fn settings_are_validated() {
        assert_eq!(ChunkSettings::new(0, 0), Err(ChunkSettingsError::MaxTokens { got: 0, limit: 8191 }));
        assert_eq!(ChunkSettings::new(8192, 0), Err(ChunkSettingsError::MaxTokens { got: 8192, limit: 8191 }));
        assert_eq!(ChunkSettings::with_limit(300, 0, 254), Err(ChunkSettingsError::MaxTokens { got: 300, limit: 254 }));
        assert_eq!(ChunkSettings::new(10, 10), Err(ChunkSettingsError::Overlap { overlap: 10, max_tokens: 10 }));
        assert!(ChunkSettings::new(8191, 8190).is_ok());
    }

    #[test]
    fn prefers_paragraph_boundaries() {
        let para = "The quick brown fox jumps over the lazy dog. ".repeat(4);
        let text = format!("{para}\n\n{para}\n\n{para}");
        let per_para = count_tokens(para.trim());
        let chunks = chunk(&text, per_para + 2, 0);
        assert_eq!(chunks.len(), 3, "{chunks:#?}");
        for c in &chunks {
            assert_eq!(c.text, para.trim());
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let text = "alpha beta gamma. ".repeat(200);
        let a = chunk(&text, 50, 10);
        let b = chunk(&text, 50, 10);
        assert_eq!(a, b);
        let ids: std::collections::HashSet<&str> = a.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), a.len());
        assert!(a.iter().all(|c| c.hash == blake3::hash(c.text.as_bytes()).to_hex().as_str()));
    }

    #[test]
    fn whitespace_only_documents_give_no_chunks() {
        assert!(chunk(" \n\n\t ", 10, 0).is_empty());
        assert!(chunk("", 10, 0).is_empty());
    }

    #[test]
    fn markdown_is_split_at_headings() {
        let section = "Some words about a topic that go on for a while. ".repeat(3);
        let text = format!("# One\n\n{section}\n\n# Two\n\n{section}");
        let max = count_tokens(&format!("# One\n\n{section}")) + 2;
        let chunker = TokenChunker::new(ChunkSettings::new(max, 0).expect("valid"));
        let chunks = chunker.chunk(&document(&text, TextFormat::Markdown));
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].text.starts_with("# One"));
        assert!(chunks[1].text.starts_with("# Two"));
    }

    fn corpus() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            "[a-z]{1,12}",
            "[A-Z][a-z]{0,8}[.!?]",
            Just("\n\n".to_owned()),
            Just("\n".to_owned()),
            "[é日本語🦀ß]{1,4}",
            "[0-9]{1,6}",
        ];
        prop::collection::vec(word, 0..400).prop_map(|words| words.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn chunks_fit_point_at_their_text_and_overlap(text in corpus(), max in 8usize..80, overlap_pct in 0usize..50) {
            let overlap = max * overlap_pct / 100;
            let chunks = chunk(&text, max, overlap);
            let mut previous_end = 0u64;
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.chunk_index as usize, i);
                prop_assert!(c.tokens as usize <= max, "chunk {} has {} tokens > {}", i, c.tokens, max);
                prop_assert_eq!(c.tokens as usize, count_tokens(&c.text));
                prop_assert_eq!(&text[c.start as usize..c.end as usize], c.text.as_str());
                prop_assert!(!c.text.trim().is_empty());
                if i > 0 {
                    // Chunks advance through the document; with overlap they may start before the previous end,
                    // without it they never do.
                    prop_assert!(c.start >= chunks[i - 1].start);
                    if overlap == 0 {
                        prop_assert!(c.start >= previous_end);
                    }
                }
                previous_end = c.end;
            }
            // Every non-whitespace byte of the document is in some chunk.
            let mut covered = vec![false; text.len()];
            for c in &chunks {
                covered[c.start as usize..c.end as usize].iter_mut().for_each(|b| *b = true);
            }
            for (i, ch) in text.char_indices() {
                if !ch.is_whitespace() {
                    prop_assert!(covered[i], "byte {} ({:?}) is in no chunk", i, ch);
                }
            }
        }
    }

    /// Long stretches without whitespace (DNA, minified JSON or HTML, base64), with the odd space and newline.
    fn unbroken() -> impl Strategy<Value = String> {
        let run = prop_oneof![
            ("[ACGT]{1,8}", 100usize..3000).prop_map(|(unit, n)| unit.repeat(n)),
            (1usize..400).prop_map(|n| "{\"k\":[1,2],\"v\":\"x\"},".repeat(n)),
            (1usize..300).prop_map(|n| "<div class=\"a\"><p>é</p></div>".repeat(n)),
            "[A-Za-z0-9+/=]{1,2000}",
            Just(" ".to_owned()),
            Just("\n\n".to_owned()),
        ];
        prop::collection::vec(run, 1..12).prop_map(|runs| runs.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn long_unbroken_text_is_chunked_window_by_window(text in unbroken(), max in 8usize..120, overlap_pct in 0usize..40) {
            let overlap = max * overlap_pct / 100;
            let chunks = chunk(&text, max, overlap);
            let mut covered = vec![false; text.len()];
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!(c.chunk_index as usize, i);
                prop_assert!(c.tokens as usize <= max, "chunk {} has {} tokens > {}", i, c.tokens, max);
                prop_assert_eq!(&text[c.start as usize..c.end as usize], c.text.as_str());
                if i > 0 {
                    prop_assert!(c.start > chunks[i - 1].start, "chunks advance");
                }
                covered[c.start as usize..c.end as usize].iter_mut().for_each(|b| *b = true);
            }
            for (i, ch) in text.char_indices() {
                if !ch.is_whitespace() {
                    prop_assert!(covered[i], "byte {} ({:?}) is in no chunk", i, ch);
                }
            }
        }
    }

    #[test]
    fn long_documents_are_split_in_bounded_windows() {
        let chunker = TokenChunker::new(ChunkSettings::new(64, 8).expect("valid"));
        for text in ["ACGT".repeat(64 * 1024), "{\"k\":[1,2],\"v\":\"x\"},".repeat(12_000), "word ".repeat(50_000)] {
            let window = 4096;
            let (mut handed, mut largest) = (0, 0);
            let pieces = windowed(&text, window, |part| {
                handed += part.len();
                largest = largest.max(part.len());
                chunker.split(TextFormat::Plain, part)
            });
            // Each byte reaches the splitter about once (a window's last chunk is split again), never the whole rest
            // of the document: the work is linear in the length.
            assert!(handed < 2 * text.len(), "{handed} bytes handed over for {}", text.len());
            assert!(largest <= 2 * window, "a window grew to {largest} bytes");
            let last = pieces.last().expect("pieces");
            assert_eq!(last.0 + last.1.len(), text.trim_end().len(), "the document is chunked to its end");
            assert!(pieces.windows(2).all(|w| w[1].0 > w[0].0));
        }
    }

    #[test]
    fn one_tokenisation_sizes_pieces_within_a_token_or_two() {
        let text = "The splitter asks for the size of many candidate pieces.\n\nEach is measured here from \
                    one tokenisation of the text, not tokenised again: naïve café, 日本語, 12345 and 3.14159!"
            .repeat(20);
        let sizer = Measured::new(&TokenCounter::Cl100k, &text).expect("cl100k spans cover the text");
        assert_eq!(sizer.size(&text), count_tokens(&text), "the whole text is exact");
        let boundaries: Vec<usize> =
            text.char_indices().filter(|(_, c)| c.is_whitespace()).map(|(i, _)| i).chain([text.len()]).collect();
        let mut worst = 0usize;
        for (n, &start) in boundaries.iter().enumerate().step_by(7) {
            for &end in boundaries[n..].iter().step_by(11) {
                let piece = text[start..end].trim();
                let offset = start + text[start..end].find(piece).unwrap_or(0);
                let piece = &text[offset..offset + piece.len()];
                worst = worst.max(sizer.size(piece).abs_diff(count_tokens(piece)));
            }
        }
        assert!(worst <= 2, "an estimate was {worst} tokens off");
        // A string that is not part of the text is tokenised on its own.
        assert_eq!(sizer.size("elsewhere entirely"), count_tokens("elsewhere entirely"));
    }

    /// Text that stresses cl100k's pre-tokenisation: contractions, digit runs, whitespace before words and at the
    /// end, CR/LF runs, punctuation runs, special-token text, letters from several scripts and emoji.
    fn tokenizer_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z]{1,10}",
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)",
            "[0-9]{1,7}",
            "[ \t]{1,4}",
            "[\r\n]{1,3}",
            "[!-/:-@\\[-`{-~]{1,4}",
            Just("<|endoftext|>".to_owned()),
            "[éÉßøñ日本語한국어Ωπ🦀👩‍💻\u{0301}\u{00a0}]{1,3}",
        ];
        prop::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The API counts with tiktoken's cl100k_base; bpe-openai's must agree token for token.
        #[test]
        fn cl100k_counts_and_spans_are_tiktokens(text in tokenizer_text()) {
            let reference = tiktoken_rs::cl100k_base_singleton().encode_ordinary(&text);
            prop_assert_eq!(count_tokens(&text), reference.len());
            let (starts, ends) = TokenCounter::Cl100k.spans(&text).expect("spans cover the text");
            let lengths: Vec<usize> = reference
                .iter()
                .map(|&rank| tiktoken_rs::cl100k_base_singleton().decode_bytes(&[rank]).map_or(0, |b| b.len()))
                .collect();
            let spans: Vec<usize> = starts.iter().zip(&ends).map(|(s, e)| e - s).collect();
            prop_assert_eq!(spans, lengths);
        }
    }

    #[test]
    fn cl100k_agrees_with_tiktoken_on_known_text() {
        let reference = tiktoken_rs::cl100k_base_singleton();
        for text in [
            "",
            "hello world",
            "  leading and trailing spaces  ",
            "tabs\tand\r\nCRLF\n\n\nlines",
            "I'm sure they'll've DONE it",
            "12345678901234567890",
            "<|endoftext|> is ordinary text here",
            "naïve café, 日本語, 한국어 and 🦀👩‍💻",
            "--flag=value; x += 1; // comment",
        ] {
            assert_eq!(count_tokens(text), reference.encode_ordinary(text).len(), "{text:?}");
        }
    }

    #[test]
    fn overlap_repeats_text_between_neighbours() {
        let text = (0..300).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        let chunks = chunk(&text, 40, 15);
        assert!(chunks.len() > 3);
        for pair in chunks.windows(2) {
            let overlap_bytes = pair[0].end.saturating_sub(pair[1].start);
            assert!(overlap_bytes > 0, "neighbours do not overlap: {:?} / {:?}", pair[0].text, pair[1].text);
            let shared = &text[pair[1].start as usize..pair[0].end as usize];
            assert!(count_tokens(shared) <= 15 + 1, "overlap {shared:?} exceeds the configured 15 tokens");
        }
        let without = chunk(&text, 40, 0);
        assert!(without.len() < chunks.len());
    }
}
