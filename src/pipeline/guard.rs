//! The mass-deletion guard: a run over the whole source deletes the documents it did not find, so an empty mount,
//! an unplugged volume or an `--include` pattern that selects too little would delete a paid-for dataset. Like
//! rsync's `--max-delete`, a run that would delete more than a limit stops before publishing.

use std::fmt;

use crate::error::plural;

/// How many of the dataset's documents one run may delete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeleteLimit {
    Unlimited,
    /// At most this many documents.
    Count(u64),
    /// At most this percentage (0 to 100) of the dataset's documents.
    Percent(f64),
}

impl Default for DeleteLimit {
    /// Half of the dataset: a run that finds no documents where the dataset has some is always refused.
    fn default() -> Self {
        DeleteLimit::Percent(50.0)
    }
}

impl DeleteLimit {
    /// `N` (documents) or `P%` (of the dataset's documents).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || format!("{text:?} is neither a number of documents (10) nor a percentage (25%)");
        match text.strip_suffix('%') {
            Some(pct) => {
                let pct: f64 = pct.trim().parse().map_err(|_| bad())?;
                if !(0.0..=100.0).contains(&pct) {
                    return Err(format!("{text:?} is not a percentage between 0% and 100%"));
                }
                Ok(DeleteLimit::Percent(pct))
            }
            None => text.parse().map(DeleteLimit::Count).map_err(|_| bad()),
        }
    }

    /// Whether deleting `deleted` of `documents` documents is within the limit.
    pub fn allows(&self, deleted: u64, documents: u64) -> bool {
        match *self {
            DeleteLimit::Unlimited => true,
            DeleteLimit::Count(max) => deleted <= max,
            DeleteLimit::Percent(pct) => deleted == 0 || 100.0 * deleted as f64 <= pct * documents as f64,
        }
    }
}

impl fmt::Display for DeleteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteLimit::Unlimited => write!(f, "no limit"),
            DeleteLimit::Count(n) => write!(f, "{n} {}", plural(*n, "document")),
            DeleteLimit::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

/// A run refused because it would delete more documents than allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "refusing to delete {deleted} of the dataset's {documents} {} ({:.0}%; the limit is {limit}): this run found \
     {found} {}. An input that is empty, unmounted or unreadable, or an --include/--exclude pattern that selects too \
     little, looks like this. Nothing was published and the dataset is unchanged. If the deletions are intended, run \
     again with --allow-mass-delete, or raise the limit with --max-delete N or --max-delete P%",
    plural(*documents, "document"),
    100.0 * *deleted as f64 / (*documents).max(1) as f64,
    plural(*found, "document")
)]
pub struct MassDelete {
    pub deleted: u64,
    pub documents: u64,
    /// Documents the run found (read, unchanged, or kept because unreadable).
    pub found: u64,
    pub limit: DeleteLimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_apply() {
        assert_eq!(DeleteLimit::parse("10"), Ok(DeleteLimit::Count(10)));
        assert_eq!(DeleteLimit::parse(" 25% "), Ok(DeleteLimit::Percent(25.0)));
        assert_eq!(DeleteLimit::parse("7%").expect("valid").to_string(), "7%");
        assert!(DeleteLimit::parse("lots").is_err());
        assert!(DeleteLimit::parse("150%").is_err());
        assert!(DeleteLimit::parse("-1").is_err());

        let half = DeleteLimit::default();
        assert!(half.allows(5, 10));
        assert!(!half.allows(6, 10));
        assert!(!half.allows(1, 1), "a run that finds nothing of a one-document dataset is refused");
        assert!(half.allows(0, 0));
        assert!(DeleteLimit::Count(3).allows(3, 4));
        assert!(!DeleteLimit::Count(3).allows(4, 1000));
        assert!(DeleteLimit::Percent(100.0).allows(10, 10));
        assert!(DeleteLimit::Percent(29.0).allows(29, 100) && !DeleteLimit::Percent(29.0).allows(30, 100));
        assert!(DeleteLimit::Unlimited.allows(10, 10));
    }

    #[test]
    fn the_refusal_names_the_overrides() {
        let refusal = MassDelete { deleted: 40, documents: 40, found: 0, limit: DeleteLimit::default() };
        let text = refusal.to_string();
        for needle in [
            "40 of the dataset's 40 documents",
            "100%",
            "limit is 50%",
            "found 0 documents",
            "--allow-mass-delete",
            "--max-delete",
        ] {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
    }
}
