//! PDF input: the text of each page, extracted by pdf-extract (pure Rust, on lopdf), pages joined by a blank line.
//! Chunk offsets refer to this extracted text, and [`Pdf::pages`] says where each page starts in it, so each chunk
//! knows its page. A PDF with no text to extract (scanned pages) is not a document.

use crate::error::quietly;

use super::SkipReason;

/// What a PDF holds, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pdf {
    pub text: String,
    /// Byte offset in `text` where each page starts; the first is 0.
    pub pages: Vec<u64>,
    /// The document information's `Title`, when it has one.
    pub title: Option<String>,
}

/// Text, pages and title of the PDF in `bytes`, or why there is none.
pub(super) fn extract(bytes: &[u8]) -> Result<Pdf, SkipReason> {
    // The extractor has panicked on malformed files before: a panic is that file's failure, not the run's.
    match quietly(|| extract_unguarded(bytes)) {
        Ok(result) => result,
        Err(_) => Err(SkipReason::NoText("the PDF text extractor failed on this file (malformed PDF?)".into())),
    }
}

fn extract_unguarded(bytes: &[u8]) -> Result<Pdf, SkipReason> {
    let mut doc =
        lopdf::Document::load_mem(bytes).map_err(|e| SkipReason::NoText(format!("not a readable PDF: {e}")))?;
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(SkipReason::NoText("the PDF is encrypted and needs a password".into()));
    }
    let title = title(&doc);
    let (mut text, mut pages, mut failed) = (String::new(), Vec::new(), 0usize);
    let numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    for number in &numbers {
        let mut page = String::new();
        {
            let mut output = pdf_extract::PlainTextOutput::new(&mut page);
            if pdf_extract::output_doc_page(&doc, &mut output, *number).is_err() {
                failed += 1;
            }
        }
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        pages.push(text.len() as u64);
        text.push_str(page.trim());
    }
    if text.trim().is_empty() {
        let why = if numbers.is_empty() {
            "the PDF has no pages".to_owned()
        } else if failed == numbers.len() {
            "no page's text could be extracted".to_owned()
        } else {
            format!(
                "no extractable text on its {} (scanned pages or images only: OCR it first)",
                crate::error::count(numbers.len() as u64, "page")
            )
        };
        return Err(SkipReason::NoText(why));
    }
    if failed > 0 {
        tracing::debug!("{failed} of {} PDF pages gave no text", numbers.len());
    }
    Ok(Pdf { text, pages, title })
}

/// The `Title` of the document information dictionary.
fn title(doc: &lopdf::Document) -> Option<String> {
    let info = match doc.trailer.get(b"Info").ok()? {
        lopdf::Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        lopdf::Object::Dictionary(info) => info,
        _ => return None,
    };
    let title = lopdf::decode_text_string(info.get(b"Title").ok()?).ok()?;
    let title = title.trim().trim_matches('\0').trim();
    (!title.is_empty()).then(|| title.to_owned())
}
