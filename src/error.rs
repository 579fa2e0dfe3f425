//! Messages: error chains on one line, and counts with their plurals.
//!
//! Error messages on one line. Each error type says only its own part and keeps what caused it as its `source`;
//! [`Chain`] (like anyhow's `{:#}`) joins the parts, so every cause is printed once.

use std::fmt;

/// Displays an error and its causes: `outer: cause: root cause`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `word` or `words`, for `n` of them (regular plurals only).
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 { word.to_owned() } else { format!("{word}s") }
}

/// `n word(s)`.
pub fn count(n: u64, word: &str) -> String {
    format!("{n} {}", plural(n, word))
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic without printing it: for libraries that panic on damaged input (a PDF, an index
/// file), which is then reported as an error instead.
pub fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn each_cause_is_shown_once() {
        let error = StoreError::Io { path: "ds/manifest.json".into(), source: std::io::Error::other("disk on fire") };
        assert_eq!(Chain(&error).to_string(), "ds/manifest.json: disk on fire");
        let wrapped = anyhow::Error::new(error).context("publishing");
        assert_eq!(format!("{wrapped:#}"), "publishing: ds/manifest.json: disk on fire");
    }
}
