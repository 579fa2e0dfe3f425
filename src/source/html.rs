//! HTML input: the page as Markdown (htmd, on html5ever), so headings, paragraphs and lists stay visible to the
//! chunker, which splits it as Markdown. Scripts, styles, navigation chrome and images are left out, and links keep
//! their text only (a URL is noise to an embedding). Chunk offsets refer to this converted text.

use std::sync::OnceLock;

use htmd::HtmlToMarkdown;

/// What an HTML page holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Page {
    pub markdown: String,
    /// `<title>`, else the first heading.
    pub title: Option<String>,
}

fn converter() -> &'static HtmlToMarkdown {
    // Built once per thread would do as well; the converter is Send + Sync and immutable after building.
    static CONVERTER: OnceLock<HtmlToMarkdown> = OnceLock::new();
    CONVERTER.get_or_init(|| {
        HtmlToMarkdown::builder()
            .skip_tags(vec![
                "head", "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "img",
                "picture", "video", "audio", "form", "button", "input", "select", "textarea", "nav",
            ])
            .add_handler(vec!["a"], |handlers: &dyn htmd::element_handler::Handlers, element: htmd::Element| {
                Some(handlers.walk_children(element.node))
            })
            .build()
    })
}

pub(super) fn extract(html: &str) -> Page {
    // htmd's conversion only fails when writing to its own buffer does; fall back to the text with tags removed.
    let markdown = converter().convert(html).unwrap_or_else(|_| strip_tags(html));
    let markdown = tidy(&markdown);
    let title = html_title(html).or_else(|| super::files::markdown_title(&markdown));
    Page { markdown, title }
}

/// The text of the first `<title>` element, entities decoded.
fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let inner = html.get(start..end)?;
    let text = htmd::convert(&format!("<p>{inner}</p>")).unwrap_or_else(|_| inner.to_owned());
    let text = text.replace('\\', "").split_whitespace().collect::<Vec<_>>().join(" ");
    (!text.is_empty()).then_some(text)
}

/// At most one blank line in a row, no trailing spaces: what is left of layout markup.
fn tidy(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    let mut blank = 0;
    for line in markdown.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_become_markdown_without_markup_scripts_or_styles() {
        let html = r#"<!doctype html><html><head><title>The &amp; Page</title><style>p { color: red }</style>
            <script>var secret = "tracking";</script></head>
            <body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
            <h1>Install</h1><p>Run <code>make</code> then read the <a href="https://example.com/docs">manual</a>.</p>
            <h2>Options</h2><ul><li>fast</li><li>safe</li></ul><img src="x.png" alt="diagram">
            <p>Second&nbsp;paragraph.</p></body></html>"#;
        let page = extract(html);
        assert_eq!(page.title.as_deref(), Some("The & Page"));
        let md = &page.markdown;
        for absent in ["<", "color", "secret", "tracking", "https://", "Home", "x.png"] {
            assert!(!md.contains(absent), "{absent:?} in {md:?}");
        }
        assert!(md.starts_with("# Install\n\nRun `make` then read the manual."), "{md:?}");
        assert!(md.contains("## Options"), "{md:?}");
        assert!(md.contains("fast") && md.contains("safe") && md.contains("Second"), "{md:?}");
    }

    #[test]
    fn without_a_title_element_the_first_heading_is_the_title() {
        let page = extract("<body><p>intro</p><h2>First heading</h2><p>text</p></body>");
        assert_eq!(page.title.as_deref(), Some("First heading"));
        assert_eq!(extract("<p>just text</p>").title, None);
    }
}
