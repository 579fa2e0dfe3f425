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
