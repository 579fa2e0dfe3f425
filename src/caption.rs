//! Image captions: the text of an image document is what a vision model behind TARS says the image shows (with
//! any visible text transcribed), so it is chunked, embedded and searched like any other document.
//!
//! A [`Captioner`] reads the image, looks its content up in the [`CaptionCache`] (so no run pays for the same
//! description twice), and otherwise scales it to the providers' limits and asks the model. A failure is one
//! image's: it is written to the cache's log as a dead-letter entry and returned, and the run goes on. An error
//! that every later request would meet too (a bad key, an unknown model, no credit) stops the captioning, not the
//! run: the images after it fail at once instead of paying for nothing.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::store::{CaptionCache, CaptionLine, StoreError};
use crate::tars::chat::{ChatClient, ChatError, ChatRequest, Usage};
use crate::tars::vision::{self, ImageError, ImageKind, MAX_EDGE};

/// Output budget of one caption: a thorough description of a dense screenshot fits, a runaway one stops.
pub const CAPTION_MAX_TOKENS: u32 = 1024;
/// Captions requested at once.
pub const CAPTIONS_IN_FLIGHT: usize = 4;
/// Whole requests again after a stream cut mid-way (nothing was shown, so it is safe to ask again).
const STREAM_RETRIES: u32 = 2;

/// What a caption is asked with, named in the cache: another prompt or another image size is another caption.
pub fn prompt_id() -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(vision::CAPTION_PROMPT.as_bytes());
    hasher.update(format!("\0edge={MAX_EDGE}\0detail=high").as_bytes());
    hasher.finalize().to_hex()[..16].to_owned()
}

/// A caption, or in a dry run the cost of asking for one.
#[derive(Debug, Clone, PartialEq)]
pub enum Caption {
    Text {
        text: String,
        /// From the cache: nothing was sent.
        cached: bool,
    },
    /// A dry run, and no caption cached: the prompt tokens the image itself would cost (§7.3 of tars-chat.md; the
    /// caption prompt's ~60 text tokens come on top).
    Estimate { tokens: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error("{0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the caption model refused to describe it: {0}")]
    Refused(String),
    #[error("the caption model's content filter stopped the description")]
    Filtered,
    #[error("the caption model returned no description")]
    Empty,
    #[error("the caption model failed")]
    Chat(#[from] ChatError),
    /// Not sent: an earlier caption failed in a way every request would.
    #[error("not sent: captioning stopped after an earlier error: {0}")]
    Stopped(String),
    #[error("the caption cache")]
    Cache(#[source] StoreError),
    #[error("a caption thread failed: {0}")]
    Thread(String),
}

/// Writes image documents' text.
pub struct Captioner {
    /// `None` in a dry run: nothing is sent.
    chat: Option<Arc<ChatClient>>,
    model: String,
    prompt: String,
    cache: Arc<CaptionCache>,
    /// Set by the first error every later request would meet too.
    stopped: OnceLock<String>,
}

impl std::fmt::Debug for Captioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captioner").field("model", &self.model).field("dry_run", &self.chat.is_none()).finish()
    }
}

impl Captioner {
    pub fn new(chat: Arc<ChatClient>, cache: CaptionCache) -> Self {
        let model = chat.model().to_owned();
        Self { chat: Some(chat), model, prompt: prompt_id(), cache: Arc::new(cache), stopped: OnceLock::new() }
    }

    /// A captioner that sends nothing: cached captions, else estimates.
    pub fn dry_run(model: &str, cache: CaptionCache) -> Self {
        Self {
            chat: None,
            model: model.to_owned(),
            prompt: prompt_id(),
            cache: Arc::new(cache),
            stopped: OnceLock::new(),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The caption of the image at `path`, and the tokens the model reported (a refusal is paid for too). A failure
    /// is recorded in the cache's log (outside a dry run).
    pub async fn caption(&self, path: &Path) -> (Result<Caption, CaptionError>, Option<Usage>) {
        let mut usage = None;
        let result = self.caption_with(path, &mut usage).await;
        (result, usage)
    }

    async fn caption_with(&self, path: &Path, usage: &mut Option<Usage>) -> Result<Caption, CaptionError> {
        let read = {
            let (path, cache, model, prompt) =
                (path.to_path_buf(), Arc::clone(&self.cache), self.model.clone(), self.prompt.clone());
            tokio::task::spawn_blocking(move || -> Result<_, CaptionError> {
                let bytes = std::fs::read(&path).map_err(CaptionError::Read)?;
                let hash = blake3::hash(&bytes).to_hex().to_string();
                let cached = cache.get(&hash, &model, &prompt).map_err(CaptionError::Cache)?;
                Ok((bytes, hash, cached))
            })
            .await
            .map_err(|e| CaptionError::Thread(e.to_string()))??
        };
        let (bytes, hash, cached) = read;
        if let Some(text) = cached {
            return Ok(Caption::Text { text, cached: true });
        }
        let Some(chat) = &self.chat else {
            let (width, height) = sent_size(&bytes)?;
            return Ok(Caption::Estimate { tokens: vision::estimate_tokens(&self.model, width, height) });
        };
        let mut line = CaptionLine {
            hash,
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            caption: None,
            error: None,
            file: path.display().to_string(),
            width: 0,
            height: 0,
            prompt_tokens: None,
            completion_tokens: None,
            unix: 0,
        };
        let described = self.describe(chat, bytes, &mut line, usage).await;
        match &described {
            Ok(Caption::Text { text, .. }) => line.caption = Some(text.clone()),
            Ok(Caption::Estimate { .. }) => {}
            Err(e) => line.error = Some(e.to_string()),
        }
        let cache = Arc::clone(&self.cache);
        let saved = tokio::task::spawn_blocking(move || cache.put(line)).await;
        match saved {
            Ok(Ok(())) => {}
            // The caption is still good for this run; the next one pays for it again.
            Ok(Err(e)) => {
                tracing::warn!("{}: the caption could not be cached: {}", path.display(), crate::error::Chain(&e))
            }
            Err(e) => tracing::warn!("{}: the caption could not be cached: {e}", path.display()),
        }
        described
    }

    async fn describe(
        &self,
        chat: &ChatClient,
        bytes: Vec<u8>,
        line: &mut CaptionLine,
        usage: &mut Option<Usage>,
    ) -> Result<Caption, CaptionError> {
        if let Some(reason) = self.stopped.get() {
            return Err(CaptionError::Stopped(reason.clone()));
        }
        // Decoding and scaling a photo is ~100 ms of CPU: off the async workers.
        let image = tokio::task::spawn_blocking(move || vision::prepare(&bytes))
            .await
            .map_err(|e| CaptionError::Thread(e.to_string()))??;
        (line.width, line.height) = (image.width, image.height);
        let request = ChatRequest {
            max_tokens: Some(CAPTION_MAX_TOKENS),
            ..ChatRequest::new(vec![vision::caption_message(&image)])
        };
        drop(image);
        let mut attempt = 0;
        let completion = loop {
            match chat.complete(&request, &mut |_| {}).await {
                Ok(completion) => break completion,
                Err(ChatError::Truncated | ChatError::Interrupted(_) | ChatError::Stalled(_))
                    if attempt < STREAM_RETRIES =>
                {
                    attempt += 1;
                }
                Err(e) => {
                    if stops_captioning(&e) {
                        let _ = self.stopped.set(e.to_string());
                    }
                    return Err(e.into());
                }
            }
        };
        if let Some(used) = completion.usage {
            (line.prompt_tokens, line.completion_tokens) = (used.prompt_tokens, used.completion_tokens);
        }
        *usage = completion.usage;
        let text = completion.text.trim();
        if completion.refused {
            return Err(CaptionError::Refused(text.to_owned()));
        }
        if completion.finish_reason.as_deref() == Some("content_filter") {
            return Err(CaptionError::Filtered);
        }
        if text.is_empty() {
            return Err(CaptionError::Empty);
        }
        Ok(Caption::Text { text: text.to_owned(), cached: false })
    }
}

/// Errors every later caption request would meet too.
fn stops_captioning(error: &ChatError) -> bool {
    match error {
        ChatError::Quota { .. } | ChatError::Invalid(_) | ChatError::Client(_) => true,
        // Bad key, no access, unknown model. A 400 is about this request (an image the provider refuses).
        ChatError::Rejected { status, .. } => matches!(status, 401 | 403 | 404),
        _ => false,
    }
}

/// The size the image would be sent at, from its header alone (a dry run decodes nothing).
fn sent_size(bytes: &[u8]) -> Result<(u32, u32), CaptionError> {
    let kind = ImageKind::sniff(bytes).ok_or(ImageError::Unsupported)?;
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), kind.format());
    let (width, height) = reader.into_dimensions().map_err(|e| ImageError::Decode(kind.mime(), e.to_string()))?;
    let longest = width.max(height).max(1);
    if longest <= MAX_EDGE {
        return Ok((width, height));
    }
    let scale = |side: u32| ((u64::from(side) * u64::from(MAX_EDGE)).div_ceil(u64::from(longest)) as u32).max(1);
    Ok((scale(width), scale(height)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::new(width, height))
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    #[test]
    fn the_sent_size_is_read_from_the_header_and_scaled_like_the_image() {
        assert_eq!(sent_size(&png(800, 600)).expect("size"), (800, 600));
        assert_eq!(sent_size(&png(3136, 1000)).expect("size"), (1568, 500));
        let prepared = vision::prepare(&png(3136, 1000)).expect("prepare");
        assert_eq!((prepared.width, prepared.height), (1568, 500), "the dry run's size is what a run sends");
        assert!(matches!(sent_size(b"GIF89a but cut"), Err(CaptionError::Image(ImageError::Decode(..)))));
        assert!(matches!(sent_size(b"plain text"), Err(CaptionError::Image(ImageError::Unsupported))));
    }

    #[tokio::test]
    async fn a_dry_run_estimates_what_is_not_cached_and_uses_what_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("a.png");
        std::fs::write(&image, png(1024, 1024)).expect("write");
        let captioner = Captioner::dry_run("tars/gpt-4o", CaptionCache::open(dir.path()).expect("open"));
        // 1024² at high detail: 768², four tiles (tars-chat.md §7.3).
        assert_eq!(captioner.caption(&image).await.0.expect("estimate"), Caption::Estimate { tokens: 85 + 4 * 170 });

        let cache = CaptionCache::open(dir.path()).expect("open");
        let hash = blake3::hash(&std::fs::read(&image).expect("read")).to_hex().to_string();
        cache
            .put(CaptionLine {
                hash,
                model: "tars/gpt-4o".to_owned(),
                prompt: prompt_id(),
                caption: Some("a black square".to_owned()),
                error: None,
                file: image.display().to_string(),
                width: 1024,
                height: 1024,
                prompt_tokens: None,
                completion_tokens: None,
                unix: 0,
            })
            .expect("put");
        let captioner = Captioner::dry_run("tars/gpt-4o", CaptionCache::open_read_only(dir.path()).expect("open"));
        assert_eq!(
            captioner.caption(&image).await.0.expect("cached"),
            Caption::Text { text: "a black square".to_owned(), cached: true }
        );
    }
}
