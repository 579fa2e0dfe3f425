//! Images for vision models (tars-chat.md §7): what a file is by its bytes (never its extension), a copy within
//! every provider's limits, the `data:` URL that carries it, and what it will cost in prompt tokens.
//!
//! The policy of §7.2: re-encode every image with its long edge at most 1568 px (Claude's bound, about 1.15 MP,
//! well under OpenAI's and Anthropic's size limits), as JPEG, or PNG when it has transparency; one image per request.

use std::io::Cursor;

use base64::Engine as _;
use image::{DynamicImage, ImageFormat, imageops::FilterType};

use super::chat::{Content, ImageUrl, Message, Part, Role};

/// The longest edge sent.
pub const MAX_EDGE: u32 = 1568;

/// Anthropic's per-image limit, which is the tightest (§7.2).
pub const MAX_ENCODED_BYTES: usize = 5 * 1024 * 1024;

/// Edges under this many pixels degrade what a model sees (§7.2); such images are still sent, with a warning.
pub const SMALL_EDGE: u32 = 200;

/// The image formats every provider takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Png,
    Jpeg,
    Gif,
    Webp,
}

impl ImageKind {
    /// From the file's first bytes.
    pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageKind::Png)
        } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
            Some(ImageKind::Jpeg)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(ImageKind::Gif)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(ImageKind::Webp)
        } else {
            None
        }
    }

    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Png => "image/png",
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Gif => "image/gif",
            ImageKind::Webp => "image/webp",
        }
    }

    pub fn format(self) -> ImageFormat {
        match self {
            ImageKind::Png => ImageFormat::Png,
            ImageKind::Jpeg => ImageFormat::Jpeg,
            ImageKind::Gif => ImageFormat::Gif,
            ImageKind::Webp => ImageFormat::WebP,
        }
    }
}

/// An image ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    /// `data:<mime>;base64,<standard padded base64, no line breaks>`.
    pub data_url: String,
    /// As sent.
    pub width: u32,
    pub height: u32,
    /// As read.
    pub original: (u32, u32),
    /// Encoded size as sent.
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("not a PNG, JPEG, GIF or WebP image (by its first bytes)")]
    Unsupported,
    #[error("the {0} image cannot be decoded: {1}")]
    Decode(&'static str, String),
    #[error("re-encoding the image failed: {0}")]
    Encode(String),
    #[error("the image is still {0} bytes after resizing, over the 5 MB a provider takes")]
    Oversize(usize),
}

/// Decodes `bytes`, scales the image to fit [`MAX_EDGE`] (never up), and re-encodes it (the first frame of an
/// animated GIF).
pub fn prepare(bytes: &[u8]) -> Result<PreparedImage, ImageError> {
    let kind = ImageKind::sniff(bytes).ok_or(ImageError::Unsupported)?;
    let image = image::load_from_memory_with_format(bytes, kind.format())
        .map_err(|e| ImageError::Decode(kind.mime(), e.to_string()))?;
    let original = (image.width(), image.height());
    let image = if original.0.max(original.1) > MAX_EDGE {
        image.resize(MAX_EDGE, MAX_EDGE, FilterType::Lanczos3)
    } else {
        image
    };
    let (encoded, mime) = encode(&image)?;
    if encoded.len() > MAX_ENCODED_BYTES {
        return Err(ImageError::Oversize(encoded.len()));
    }
    let data = base64::engine::general_purpose::STANDARD.encode(&encoded);
    Ok(PreparedImage {
        data_url: format!("data:{mime};base64,{data}"),
        width: image.width(),
        height: image.height(),
        original,
        bytes: encoded.len(),
    })
}

/// PNG when the image has transparency (JPEG would drop it), else JPEG at quality 85.
fn encode(image: &DynamicImage) -> Result<(Vec<u8>, &'static str), ImageError> {
    let mut out = Cursor::new(Vec::new());
    let fail = |e: image::ImageError| ImageError::Encode(e.to_string());
    if image.color().has_alpha() {
        image.write_to(&mut out, ImageFormat::Png).map_err(fail)?;
        return Ok((out.into_inner(), "image/png"));
    }
    let rgb = DynamicImage::ImageRgb8(image.to_rgb8());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    rgb.write_with_encoder(encoder).map_err(fail)?;
    Ok((out.into_inner(), "image/jpeg"))
}

/// What a caption request asks: a description for search, with any visible text transcribed.
pub const CAPTION_PROMPT: &str = "Describe this image for a search index, in plain prose: what it shows, its \
setting, any people, objects, charts or diagrams and what they convey. Transcribe all visible text verbatim. Do not \
speculate beyond what is visible.";

/// The one user message of a caption request.
pub fn caption_message(image: &PreparedImage) -> Message {
    Message {
        role: Role::User,
        content: Some(Content::Parts(vec![
            Part::Text { text: CAPTION_PROMPT.to_owned() },
            // High detail: corpora hold screenshots and documents, whose text low detail cannot read (§7.3).
            Part::ImageUrl { image_url: ImageUrl { url: image.data_url.clone(), detail: "high" } },
        ])),
        tool_calls: Vec::new(),
        tool_call_id: None,
    }
}

/// Prompt tokens an image of `width` × `height` (as sent) costs with `model` at high detail, by the formulas of
/// tars-chat.md §7.3: tiles for gpt-4o, gpt-4.1 and o1/o3 (gpt-4o-mini at its own rate), 32-px patches for
/// gpt-4.1-mini/nano, o4-mini and gpt-5, w·h/750 for Claude. Other models are counted as gpt-4o.
pub fn estimate_tokens(model: &str, width: u32, height: u32) -> u64 {
    let id = super::model_id(model);
    let (w, h) = (u64::from(width.max(1)), u64::from(height.max(1)));
    if id.contains("claude") {
        return (w * h).div_ceil(750).min(1600);
    }
    let patch_multiplier = if id.starts_with("gpt-4.1-mini") {
        Some(1.62)
    } else if id.starts_with("gpt-4.1-nano") {
        Some(2.46)
    } else if id.starts_with("o4-mini") || id.starts_with("gpt-5") {
        Some(1.0)
    } else {
        None
    };
    if let Some(multiplier) = patch_multiplier {
        let patches = (w.div_ceil(32) * h.div_ceil(32)).min(1536);
        return (patches as f64 * multiplier).ceil() as u64;
    }
    let (base, per_tile) = if id.starts_with("gpt-4o-mini") { (2833, 5667) } else { (85, 170) };
    // Fit within 2048 × 2048, then the shortest side down to 768, then 512-px tiles.
    let (mut w, mut h) = (w as f64, h as f64);
    let fit = (2048.0 / w.max(h)).min(1.0);
    (w, h) = (w * fit, h * fit);
    let shortest = (768.0 / w.min(h)).min(1.0);
    (w, h) = (w * shortest, h * shortest);
    let tiles = ((w / 512.0).ceil() * (h / 512.0).ceil()) as u64;
    base + per_tile * tiles
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    fn png(image: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    fn decoded(prepared: &PreparedImage) -> DynamicImage {
        let (head, data) = prepared.data_url.split_once(',').expect("a data URL");
        assert!(head.starts_with("data:image/") && head.ends_with(";base64"), "{head}");
        let bytes = base64::engine::general_purpose::STANDARD.decode(data).expect("standard base64");
        image::load_from_memory(&bytes).expect("an image")
    }

    #[test]
    fn kinds_by_their_first_bytes_not_their_names() {
        assert_eq!(ImageKind::sniff(b"\x89PNG\r\n\x1a\n...."), Some(ImageKind::Png));
        assert_eq!(ImageKind::sniff(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10]), Some(ImageKind::Jpeg));
        assert_eq!(ImageKind::sniff(b"GIF89a\x01\x00"), Some(ImageKind::Gif));
        assert_eq!(ImageKind::sniff(b"RIFF\x24\x00\x00\x00WEBPVP8 "), Some(ImageKind::Webp));
        assert_eq!(ImageKind::sniff(b"RIFF\x24\x00\x00\x00WAVEfmt "), None);
        assert_eq!(ImageKind::sniff(b"<svg xmlns="), None);
        assert_eq!(prepare(b"%PDF-1.7"), Err(ImageError::Unsupported));
        assert!(matches!(prepare(b"\x89PNG\r\n\x1a\ntruncated"), Err(ImageError::Decode("image/png", _))));
    }

    #[test]
    fn a_large_photo_is_scaled_to_the_long_edge_and_sent_as_jpeg() {
        let photo = RgbImage::from_fn(3000, 1000, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
        let prepared = prepare(&png(DynamicImage::ImageRgb8(photo))).expect("prepared");
        assert_eq!((prepared.original, prepared.width, prepared.height), ((3000, 1000), 1568, 523));
        assert!(prepared.data_url.starts_with("data:image/jpeg;base64,"));
        assert!(!prepared.data_url.contains('\n'));
        let back = decoded(&prepared);
        assert_eq!((back.width(), back.height()), (1568, 523));
        assert_eq!(
            prepared.bytes,
            base64::engine::general_purpose::STANDARD.decode(&prepared.data_url[23..]).expect("b64").len()
        );
    }

    #[test]
    fn transparency_keeps_png_and_small_images_are_not_scaled_up() {
        let icon = RgbaImage::from_fn(64, 32, |x, _| Rgba([255, 0, 0, if x < 32 { 0 } else { 255 }]));
        let prepared = prepare(&png(DynamicImage::ImageRgba8(icon))).expect("prepared");
        assert!(prepared.data_url.starts_with("data:image/png;base64,"));
        assert_eq!((prepared.width, prepared.height), (64, 32));
        let back = decoded(&prepared).to_rgba8();
        assert_eq!(back.get_pixel(0, 0)[3], 0, "transparency kept");
        let message = serde_json::to_value(caption_message(&prepared)).expect("json");
        assert_eq!(message["content"][1]["image_url"]["url"], prepared.data_url.as_str());
        assert_eq!(message["content"][1]["image_url"]["detail"], "high");
    }

    #[test]
    fn token_estimates_match_the_documented_examples() {
        // gpt-4o: 1024² → 765; 2048 × 4096 → 1105 (OpenAI's guide, §7.3).
        assert_eq!(estimate_tokens("tars/gpt-4o", 1024, 1024), 765);
        assert_eq!(estimate_tokens("tars/gpt-4o", 2048, 4096), 1105);
        assert_eq!(estimate_tokens("tars/gpt-4o", 100, 100), 255);
        // gpt-4o-mini at its own rate: 128 × 64 measured at 8512 (§7.3); the formula gives 8500.
        assert_eq!(estimate_tokens("tars/gpt-4o-mini", 128, 64), 8500);
        // Patches: 1568 × 523 is 49 × 17 = 833 patches.
        assert_eq!(estimate_tokens("tars/gpt-5-mini", 1568, 523), 833);
        assert_eq!(estimate_tokens("tars/gpt-4.1-mini", 1568, 523), 1350);
        assert_eq!(estimate_tokens("tars/gpt-5", 4000, 4000), 1536);
        // Claude: w·h/750, at most about 1600.
        assert_eq!(estimate_tokens("tars/claude-sonnet-4-20250514", 1000, 1000), 1334);
        assert_eq!(estimate_tokens("tars/claude-sonnet-4-20250514", 1568, 1568), 1600);
    }
}
